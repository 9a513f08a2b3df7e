//! Interruption: a run killed mid-epoch (SIGKILL, a real process kill) resumes from its last
//! checkpoint and finishes with exactly the per-epoch numbers of an uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Small enough for CI: 3,000 training images, 1,000 test images, 4 epochs.
const EXPERIMENT: &str = r#"
name = "resume"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = 4
batch_size = 100
seed = 5
threshold = 3.0
train_clip = true
optimizer = { kind = "adam", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 2 }
kl_warmup = { zero_epochs = 1, ramp_epochs = 2 }
init = { theta_std = 0.01, log_sigma2 = -10.0 }
train_subset = 3000
test_subset = 1000

[[variant]]
name = "sparse_vd"
layer = "sparse_vd"
paper = { net = "lenet300", method = "sparse_vd" }
"#;

fn harness(work: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.arg(work.join("experiments/resume.toml"))
        .arg("--results-dir")
        .arg(work.join("results"))
        .arg("--figures-dir")
        .arg(work.join("figures"))
        .arg("--data-dir")
        .arg(datasets::data_dir(None))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn setup(name: &str) -> PathBuf {
    let work = std::env::temp_dir().join(format!("harness-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("experiments")).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("experiments/paper_reference.toml"),
        work.join("experiments/paper_reference.toml"),
    )
    .unwrap();
    std::fs::write(work.join("experiments/resume.toml"), EXPERIMENT).unwrap();
    work
}

/// epochs.csv without the wall-time column, which legitimately differs between runs.
fn epochs_without_time(work: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(work.join("results/resume/sparse_vd/epochs.csv")).unwrap();
    text.lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_numbers() {
    let reference = setup("reference");
    assert!(harness(&reference).status().unwrap().success());

    let interrupted = setup("interrupted");
    let mut child = harness(&interrupted).spawn().unwrap();
    let state = interrupted.join("results/resume/sparse_vd/checkpoint/state.toml");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !state.is_file() {
        assert!(Instant::now() < deadline, "no checkpoint within 300 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Into the next epoch, then SIGKILL: no chance to clean up.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let summary = interrupted.join("results/resume/sparse_vd/summary.csv");
    assert!(
        !summary.exists(),
        "the run finished before it could be killed; make it longer"
    );

    let resumed = harness(&interrupted).status().unwrap();
    assert!(resumed.success());
    assert_eq!(
        epochs_without_time(&interrupted),
        epochs_without_time(&reference)
    );
    let provenance =
        std::fs::read_to_string(interrupted.join("results/resume/sparse_vd/provenance.toml"))
            .unwrap();
    assert!(
        !provenance.contains("resumed_after_epoch = 0"),
        "{provenance}"
    );
    assert!(
        !interrupted
            .join("results/resume/sparse_vd/checkpoint")
            .exists()
    );
    for dir in [reference, interrupted] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
