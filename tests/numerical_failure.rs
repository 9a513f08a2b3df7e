//! Numerical failure: a run whose loss becomes non-finite stops with a message naming the epoch,
//! the step and the layer, and writes no summary, model or comparison row.

mod common;

use common::ShortRun;
use runner::spec::LoadedExperiment;
use runner::{RunError, output};

/// A learning rate of 1e30 throws θ to ~1e30 in one Adam step: θ² overflows and log α, the
/// KL and the loss become non-finite within the first few steps.
const RUN: ShortRun = ShortRun {
    name: "nan",
    epochs: 2,
    seed: 1,
    lr: 1e30,
    decay_start_epoch: 2,
    kl_zero_epochs: 0,
    kl_ramp_epochs: 0,
    train_subset: 1000,
    test_subset: Some(500),
};

#[test]
fn non_finite_loss_stops_the_run_without_writing_results() {
    let (work, path) = RUN.scratch("run");
    let exp = LoadedExperiment::load(&path).unwrap();
    let options = common::options(&work);
    let err = runner::run_experiment(&exp, &options).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RunError::Train { .. }), "{message}");
    assert!(
        message.contains("non-finite") && message.contains("epoch 1, step"),
        "{message}"
    );
    assert!(message.contains("layer dense"), "{message}");
    let dir = work.join("results/nan/sparse_vd");
    for file in [
        output::SUMMARY_CSV,
        output::MODEL_SAFETENSORS,
        output::PROVENANCE_TOML,
    ] {
        assert!(!dir.join(file).exists(), "{file} written for a failed run");
    }
    assert!(
        !work
            .join("results/nan")
            .join(output::COMPARISON_MD)
            .exists()
    );
    std::fs::remove_dir_all(&work).unwrap();
}
