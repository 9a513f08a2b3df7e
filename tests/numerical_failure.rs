//! Numerical failure: a run whose loss becomes non-finite stops with a message naming the epoch,
//! the step and the layer, and writes no summary, model or comparison row.

use runner::spec::LoadedExperiment;
use runner::{RunError, RunOptions, output};
use std::path::PathBuf;

/// A learning rate of 1e30 throws θ to ~1e30 in one Adam step: θ² overflows and log α, the
/// KL and the loss become non-finite within the first few steps.
const EXPERIMENT: &str = r#"
name = "nan"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = 2
batch_size = 100
seed = 1
threshold = 3.0
train_clip = true
optimizer = { kind = "adam", lr = 1e30, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 2 }
kl_warmup = { zero_epochs = 0, ramp_epochs = 0 }
init = { theta_std = 0.01, log_sigma2 = -10.0 }
train_subset = 1000
test_subset = 500

[[variant]]
name = "sparse_vd"
layer = "sparse_vd"
paper = { net = "lenet300", method = "sparse_vd" }
"#;

#[test]
fn non_finite_loss_stops_the_run_without_writing_results() {
    let work = std::env::temp_dir().join(format!("harness-nan-{}", std::process::id()));
    let experiments = work.join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("experiments/paper_reference.toml"),
        experiments.join("paper_reference.toml"),
    )
    .unwrap();
    std::fs::write(experiments.join("nan.toml"), EXPERIMENT).unwrap();
    let exp = LoadedExperiment::load(&experiments.join("nan.toml")).unwrap();
    let options = RunOptions {
        device: burn::tensor::Device::flex().autodiff(),
        backend: "flex".into(),
        device_description: "CPU (test)".into(),
        data_dir: datasets::data_dir(None),
        results_dir: work.join("results"),
        only_variants: vec![],
        force: false,
        epochs: None,
    };
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
