//! Where a result came from: commit, experiment-file hash, backend, device, seed, epochs, time.

use crate::spec::{LoadedExperiment, Run};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

/// Written beside every result as `provenance.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub experiment_file: String,
    pub experiment_sha256: String,
    /// sha256 of what decides how this variant trains
    /// ([`crate::spec::LoadedExperiment::run_sha256`]); absent in files written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_sha256: Option<String>,
    pub variant: String,
    /// `git describe --always --dirty` of the tree the harness ran from.
    pub commit: String,
    pub backend: String,
    pub device: String,
    pub threads: usize,
    pub seed: u64,
    pub epochs_planned: usize,
    pub epochs_completed: usize,
    /// True when the run used fewer epochs or less data than the experiment's protocol.
    pub shortened: bool,
    /// What was shortened, in words (empty for a full-protocol run).
    pub shortened_how: String,
    pub train_examples: usize,
    pub test_examples: usize,
    /// Σ of the epochs' wall times (training and evaluation), over all segments of a resumed run.
    pub wall_time_s: f64,
    pub mean_epoch_s: f64,
    /// The epoch after which this run was last resumed from a checkpoint (0: never interrupted;
    /// absent in files written before checkpoints existed).
    #[serde(default)]
    pub resumed_after_epoch: usize,
    /// The LRT variance form of a Sparse VD variant (`clipped_alpha` or `sigma2`); absent for
    /// other layers, and in files written before the form was a protocol key, whose Sparse VD
    /// runs all used `sigma2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lrt_variance: Option<String>,
    /// sha256 of each file of a data set read from a folder, by file name (none for the
    /// built-in data sets, which are held to their known checksums).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data_sha256: std::collections::BTreeMap<String, String>,
    pub started: String,
    /// Empty while the run goes on, and in a run that was cut short; written after every epoch.
    pub finished: String,
    pub harness_version: String,
}

impl Provenance {
    /// The LRT variance form this run trained with, by its key: runs from before the form was a
    /// protocol key record none, and used σ².
    pub fn lrt_variance_key(&self) -> &str {
        self.lrt_variance.as_deref().unwrap_or("sigma2")
    }

    /// Why this finished run no longer stands for `run` of `exp` (`None` while it does): its
    /// training spec hash differs from the file's now, or, for runs from before that hash, the
    /// file itself differs.
    pub fn stale_against(&self, exp: &LoadedExperiment, run: Run) -> Option<String> {
        let file = exp.path.display();
        match &self.variant_sha256 {
            Some(recorded) => {
                let now = exp.run_sha256(run);
                (*recorded != now).then(|| {
                    format!(
                        "the variant's training spec in {file} changed since the run (sha256 {recorded} vs {now})"
                    )
                })
            }
            None => {
                let now = exp.sha256();
                (self.experiment_sha256 != now).then(|| {
                    format!(
                        "results were produced from a different version of {file} (sha256 {} vs {now} in the tree)",
                        self.experiment_sha256
                    )
                })
            }
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The commit of the repository at `dir` (the experiment file's folder), with `-dirty` when
/// tracked files outside `results/` and `figures/` differ from it. Results and figures change
/// while runs go on (logs, other variants' files) without changing what a run computes. An
/// experiment file kept outside any repository gets the commit of the harness's own source tree
/// (the code that runs it). A tree copied to another machine (a GPU machine, see
/// `crates/harness/gpu/run_copied_tree.sh`) gets the value of `HARNESS_COMMIT`, which whoever
/// copied it sets to the commit they built, marked "(copied tree)"; else "unknown".
pub fn git_commit(dir: &Path) -> String {
    recorded_commit(std::env::var("HARNESS_COMMIT").ok(), || {
        repository_commit(dir).or_else(|| repository_commit(Path::new(env!("CARGO_MANIFEST_DIR"))))
    })
}

/// A declared commit wins over the repository's: a copied tree can carry a `.git` of another
/// commit (a GPU machine's copy of the work tree held the session's start commit, and runs there
/// recorded it, `-dirty`, instead of the commit the binary was built from).
fn recorded_commit(
    declared: Option<String>,
    repository: impl FnOnce() -> Option<String>,
) -> String {
    match declared.as_deref().map(str::trim) {
        Some(commit) if !commit.is_empty() => format!("{commit} (copied tree)"),
        _ => repository().unwrap_or_else(|| "unknown".to_string()),
    }
}

/// The commit of the git repository holding `dir` (`-dirty` as in [`git_commit`]), if any.
fn repository_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":(top)",
        ":(top,exclude)results",
        ":(top,exclude)figures",
    ]);
    Some(match changed {
        Some(c) if c.is_empty() => commit,
        _ => format!("{commit}-dirty"),
    })
}

/// CPU model name from /proc/cpuinfo, for the device field on CPU backends.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Threads the CPU backend uses (rayon's pool).
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_commit_wins_over_the_repository() {
        let repository = || Some("0123456789ab-dirty".to_string());
        assert_eq!(
            recorded_commit(Some(" c8e78f8 \n".into()), repository),
            "c8e78f8 (copied tree)"
        );
        assert_eq!(
            recorded_commit(Some("  ".into()), repository),
            "0123456789ab-dirty"
        );
        assert_eq!(recorded_commit(None, repository), "0123456789ab-dirty");
        assert_eq!(recorded_commit(None, || None), "unknown");
    }

    #[test]
    fn only_source_changes_make_the_commit_dirty() {
        let repo = std::env::temp_dir().join(format!("provenance-git-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&repo);
        std::fs::create_dir_all(repo.join("results")).unwrap();
        std::fs::create_dir_all(repo.join("experiments")).unwrap();
        let git = |args: &[&str]| {
            let status = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .current_dir(&repo)
                .output()
                .unwrap()
                .status;
            assert!(status.success(), "git {args:?}");
        };
        std::fs::write(repo.join("experiments/a.toml"), "x = 1\n").unwrap();
        std::fs::write(repo.join("results/run.log"), "epoch 1\n").unwrap();
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-qm", "c"]);
        let experiments = repo.join("experiments");
        let clean = git_commit(&experiments);
        assert_eq!(clean.len(), 12, "{clean}");
        assert!(clean.chars().all(|c| c.is_ascii_hexdigit()), "{clean}");
        std::fs::write(repo.join("results/run.log"), "epoch 1\nepoch 2\n").unwrap();
        assert_eq!(
            git_commit(&experiments),
            clean,
            "a results log is not source"
        );
        std::fs::write(repo.join("experiments/a.toml"), "x = 2\n").unwrap();
        assert_eq!(git_commit(&experiments), format!("{clean}-dirty"));
        std::fs::remove_dir_all(&repo).unwrap();
    }

    #[test]
    fn a_file_outside_any_repository_gets_the_harness_commit() {
        let outside = std::env::temp_dir().join(format!("provenance-bare-{}", std::process::id()));
        std::fs::create_dir_all(&outside).unwrap();
        let harness = repository_commit(Path::new(env!("CARGO_MANIFEST_DIR")));
        // Only meaningful where the harness itself is a git checkout and the temporary folder
        // is not inside one.
        if harness.is_some() && repository_commit(&outside).is_none() {
            assert_eq!(Some(git_commit(&outside)), harness);
        }
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
