//! Interruption: a run killed mid-epoch (SIGKILL, a real process kill) resumes from its last
//! checkpoint and finishes with exactly the per-epoch numbers of an uninterrupted run.

mod common;

use common::ShortRun;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Small enough for CI: 3,000 training images, 1,000 test images, 4 epochs.
const RUN: ShortRun = ShortRun {
    name: "resume",
    epochs: 4,
    seed: 5,
    lr: 1e-3,
    decay_start_epoch: 2,
    kl_zero_epochs: 1,
    kl_ramp_epochs: 2,
    train_subset: 3000,
    test_subset: Some(1000),
};

fn harness(work: &Path, experiment: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.arg(experiment)
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

/// epochs.csv without the wall-time column, which legitimately differs between runs.
/// The rows of `epochs.csv` without its two timing columns (`seconds`, `steps_per_second`).
fn epochs_without_time(work: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(work.join("results/resume/sparse_vd/epochs.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let timing = |i: &usize| ["seconds", "steps_per_second"].contains(&header[*i]);
    text.lines()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let kept: Vec<&str> = (0..cells.len())
                .filter(|i| !timing(i))
                .map(|i| cells[i])
                .collect();
            kept.join(",")
        })
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_numbers() {
    let (reference, reference_file) = RUN.scratch("reference");
    assert!(
        harness(&reference, &reference_file)
            .status()
            .unwrap()
            .success()
    );

    let (interrupted, interrupted_file) = RUN.scratch("interrupted");
    let mut child = harness(&interrupted, &interrupted_file).spawn().unwrap();
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
    // The cut-short run already says where its epochs came from, and that it did not finish.
    let cut_short =
        runner::output::read_provenance(&interrupted.join("results/resume/sparse_vd")).unwrap();
    assert!(cut_short.finished.is_empty(), "{cut_short:?}");
    assert!(cut_short.epochs_completed >= 1, "{cut_short:?}");
    assert_eq!(cut_short.epochs_planned, RUN.epochs);

    let resumed = harness(&interrupted, &interrupted_file).status().unwrap();
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
