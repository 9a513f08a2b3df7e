//! Checkpoints at the end of every epoch, so that an interrupted run resumes where it stopped
//! and finishes with exactly the numbers of an uninterrupted one (data order and LRT noise are
//! functions of the seed and the step index, see `train`).
//!
//! Layout, in `<variant>/checkpoint/`: `model-<epoch>.bpk` and `optimizer-<epoch>.bpk` (burn's
//! burnpack records, parameter ids included so that Adam's state matches its parameters), then
//! `state.toml`, written last and atomically: it names the epoch whose files are complete.

use crate::output::{OutputError, write_atomic};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sparsevd::Network;
use std::path::{Path, PathBuf};

pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_TOML: &str = "state.toml";

/// What `state.toml` records about the checkpoint it completes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    pub epochs_completed: usize,
    pub epochs_planned: usize,
    pub experiment_sha256: String,
    pub seed: u64,
}

fn err(path: &Path, e: impl std::fmt::Display) -> OutputError {
    OutputError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn files(dir: &Path, epoch: usize) -> (PathBuf, PathBuf) {
    let dir = dir.join(CHECKPOINT_DIR);
    (
        dir.join(format!("model-{epoch}.bpk")),
        dir.join(format!("optimizer-{epoch}.bpk")),
    )
}

/// Write the checkpoint of `state.epochs_completed`, then drop the previous one.
pub fn save<N: Network>(
    variant_dir: &Path,
    model: &N,
    optimizer: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<(), OutputError> {
    let (model_path, optim_path) = files(variant_dir, state.epochs_completed);
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| err(&model_path, format!("{e:?}")))?;
    write_atomic(&model_path, &model_bytes)?;
    let optim_bytes = optimizer
        .into_bytes()
        .map_err(|e| err(&optim_path, format!("{e:?}")))?;
    write_atomic(&optim_path, &optim_bytes)?;
    let state_path = variant_dir.join(CHECKPOINT_DIR).join(STATE_TOML);
    let text = toml::to_string(state).map_err(|e| err(&state_path, e))?;
    write_atomic(&state_path, text.as_bytes())?;
    if state.epochs_completed > 0 {
        let (old_model, old_optim) = files(variant_dir, state.epochs_completed - 1);
        let _ = std::fs::remove_file(old_model);
        let _ = std::fs::remove_file(old_optim);
    }
    Ok(())
}

/// The state of the last complete checkpoint, if any.
pub fn read_state(variant_dir: &Path) -> Result<Option<CheckpointState>, OutputError> {
    let path = variant_dir.join(CHECKPOINT_DIR).join(STATE_TOML);
    if !path.is_file() {
        return Ok(None);
    }
    let read_err = |m: String| OutputError::Read {
        path: path.clone(),
        message: m,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| read_err(e.to_string()))?;
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| read_err(e.to_string()))
}

/// Load the checkpoint of `state` into a freshly initialised model and optimizer.
pub fn load<N: Network>(
    variant_dir: &Path,
    state: &CheckpointState,
    model: N,
    optimizer: ModuleOptimizer,
) -> Result<(N, ModuleOptimizer), OutputError> {
    let (model_path, optim_path) = files(variant_dir, state.epochs_completed);
    let read = |path: &Path| {
        std::fs::read(path)
            .map(Bytes::from_bytes_vec)
            .map_err(|e| OutputError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    };
    let read_err = |path: &Path, e: String| OutputError::Read {
        path: path.to_path_buf(),
        message: e,
    };
    let record = ModuleRecord::from_bytes(read(&model_path)?)
        .map_err(|e| read_err(&model_path, format!("{e:?}")))?;
    let model = model
        .try_load_record(record)
        .map_err(|e| read_err(&model_path, format!("{e:?}")))?;
    let optimizer = optimizer
        .from_bytes(read(&optim_path)?)
        .map_err(|e| read_err(&optim_path, format!("{e:?}")))?;
    Ok((model, optimizer))
}

/// Remove the checkpoint folder (after the run has finished and its results are written).
pub fn remove(variant_dir: &Path) {
    let _ = std::fs::remove_dir_all(variant_dir.join(CHECKPOINT_DIR));
}
