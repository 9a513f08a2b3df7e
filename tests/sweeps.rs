//! Seed sweeps run in parallel: `--jobs 2` runs a two-stage, two-seed experiment as separate
//! processes and gets exactly the results of a sequential run; `harness slurm` writes job
//! arrays whose dependencies follow the stages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn harness(work: &Path, tag: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.arg(repo().join("tests/sweep_tiny.toml"))
        .arg("--results-dir")
        .arg(work.join(tag))
        .arg("--figures-dir")
        .arg(work.join(format!("figures_{tag}")))
        .arg("--data-dir")
        .arg(datasets::data_dir(None))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Every run's folder of the tiny experiment (variant/seed_n), relative to its results root.
const RUNS: [&str; 4] = [
    "sweep_tiny/dense/seed_1",
    "sweep_tiny/dense/seed_2",
    "sweep_tiny/sparse_vd/seed_1",
    "sweep_tiny/sparse_vd/seed_2",
];

/// The rows of `epochs.csv` without its timing columns (`seconds`, `steps_per_second`).
fn epochs_without_time(dir: &Path) -> Vec<String> {
    let mut reader = csv::Reader::from_path(dir.join("epochs.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let timing: Vec<usize> = ["seconds", "steps_per_second"]
        .iter()
        .filter_map(|name| header.iter().position(|h| h == *name))
        .collect();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            r.iter()
                .enumerate()
                .filter(|(i, _)| !timing.contains(i))
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[test]
fn jobs_2_gives_the_results_of_a_sequential_run() {
    let work = std::env::temp_dir().join(format!("harness-sweeps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    // Each of the two processes gets one thread: the sequential run gets one too.
    let sequential = harness(&work, "sequential")
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .unwrap();
    assert!(sequential.success());
    let parallel = harness(&work, "parallel")
        .args(["--jobs", "2"])
        .env("RAYON_NUM_THREADS", "2")
        .status()
        .unwrap();
    assert!(parallel.success());
    for run in RUNS {
        let (a, b) = (
            work.join("sequential").join(run),
            work.join("parallel").join(run),
        );
        let model = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
        assert!(model(&a) == model(&b), "{run}: the models differ");
        assert_eq!(epochs_without_time(&a), epochs_without_time(&b), "{run}");
        let provenance = std::fs::read_to_string(b.join("provenance.toml")).unwrap();
        let seed = &run[run.len() - 1..];
        assert!(
            provenance.contains(&format!("\nseed = {seed}\n")),
            "{provenance}"
        );
        assert!(provenance.contains("\nthreads = 1\n"), "{provenance}");
    }
    // The seeds differ: a spread, not one run copied.
    let comparison =
        std::fs::read_to_string(work.join("parallel/sweep_tiny/comparison.md")).unwrap();
    let sparse = comparison
        .lines()
        .find(|l| l.starts_with("| sparse_vd"))
        .unwrap();
    assert!(sparse.contains("| n = 2 of 2 |"), "{comparison}");
    assert!(sparse.contains(" ± "), "{comparison}");
    assert!(
        epochs_without_time(&work.join("parallel").join(RUNS[2]))
            != epochs_without_time(&work.join("parallel").join(RUNS[3])),
        "seeds 1 and 2 trained alike"
    );
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn slurm_job_arrays_follow_the_stages() {
    let work = std::env::temp_dir().join(format!("harness-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let status = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(repo())
        .args(["slurm", "experiments/vgg_cifar10.toml", "--gres", "gpu:1"])
        .args(["--time", "24:00:00", "--results-dir"])
        .arg(&work)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let dir = work.join("vgg_cifar10/slurm");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    // (variant, seed) of each array task of a stage script.
    let tasks = |script: &str| -> Vec<(String, String)> {
        script
            .lines()
            .filter_map(|l| l.trim().split_once(") VARIANT="))
            .map(|(_, rest)| {
                let (variant, seed) = rest.split_once("; SEED=").unwrap();
                let seed = seed.trim_end_matches(" ;;");
                (variant.to_string(), seed.to_string())
            })
            .collect()
    };
    let (stage0, stage1) = (read("stage0.sbatch"), read("stage1.sbatch"));
    let (first, second) = (tasks(&stage0), tasks(&stage1));
    // 4 widths × 5 seeds in each stage: binary dropout first, Sparse VD from it.
    assert_eq!(first.len(), 20, "{stage0}");
    assert_eq!(second.len(), 20, "{stage1}");
    assert!(stage0.contains("#SBATCH --array=0-19"), "{stage0}");
    assert!(stage0.contains("#SBATCH --gres=gpu:1"), "{stage0}");
    assert!(stage0.contains("#SBATCH --time=24:00:00"), "{stage0}");
    assert!(first.iter().all(|(v, _)| v.starts_with("bd_k")));
    for (variant, seed) in &second {
        let source = variant.replace("sparse_vd_k", "bd_k");
        assert!(
            first.contains(&(source, seed.clone())),
            "{variant} seed {seed} starts from a run of the stage before"
        );
    }
    assert!(
        stage1.contains("--variant \"$VARIANT\" --seed \"$SEED\""),
        "{stage1}"
    );
    assert!(!dir.join("stage2.sbatch").exists());
    let submit = read("submit.sh");
    assert!(
        submit.contains("job1=$(sbatch --parsable --dependency=afterok:$job0 stage1.sbatch)"),
        "{submit}"
    );
    assert!(
        submit.contains("--dependency=afterok:$job0:$job1 report.sbatch"),
        "{submit}"
    );
    assert!(read("report.sbatch").contains(" figures "));
    std::fs::remove_dir_all(&work).unwrap();
}
