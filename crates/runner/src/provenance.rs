//! Where a result came from: commit, experiment-file hash, backend, device, seed, epochs, time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

/// Written beside every result as `provenance.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub experiment_file: String,
    pub experiment_sha256: String,
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
    pub started: String,
    pub finished: String,
    pub harness_version: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The commit of the repository at `dir`, or "unknown" outside git.
pub fn git_commit(dir: &Path) -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
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
