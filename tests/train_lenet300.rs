//! Integration test: LeNet-300-100 with Sparse VD trained briefly on real MNIST (a subset, a few
//! epochs) learns and sparsifies, and the run writes every result file.

use runner::spec::LoadedExperiment;
use runner::{RunOptions, output};
use std::path::PathBuf;

/// The paper's protocol, shortened: 20,000 training images, 10 epochs, KL warm-up over 5.
const EXPERIMENT: &str = r#"
name = "lenet300_short"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = 10
batch_size = 100
seed = 3
threshold = 3.0
train_clip = true
optimizer = { kind = "adam", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 6 }
kl_warmup = { zero_epochs = 2, ramp_epochs = 3 }
init = { theta_std = 0.01, log_sigma2 = -10.0 }
train_subset = 20000

[[variant]]
name = "sparse_vd"
layer = "sparse_vd"
paper = { net = "lenet300", method = "sparse_vd" }
"#;

#[test]
fn sparse_vd_learns_and_sparsifies_on_real_mnist() {
    let work = std::env::temp_dir().join(format!("harness-it-{}", std::process::id()));
    let experiments = work.join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("experiments/paper_reference.toml"),
        experiments.join("paper_reference.toml"),
    )
    .unwrap();
    let path = experiments.join("short.toml");
    std::fs::write(&path, EXPERIMENT).unwrap();

    let exp = LoadedExperiment::load(&path).unwrap();
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
    let summaries = runner::run_experiment(&exp, &options).unwrap();
    let s = &summaries[0];
    println!(
        "test error {:.2}%, compression {:.1}×, removed {}",
        s.test_error_pct, s.compression, s.removed_pct_per_layer
    );
    assert!(s.shortened, "a subset run must be labelled shortened");
    assert!(
        s.test_error_pct < 6.0,
        "test error {:.2}% (chance is 90%)",
        s.test_error_pct
    );
    assert!(
        s.compression > 20.0,
        "compression {:.1}×: too little sparsification",
        s.compression
    );

    let dir = work.join("results/lenet300_short/sparse_vd");
    for file in [
        output::EPOCHS_CSV,
        output::SUMMARY_CSV,
        output::PROVENANCE_TOML,
        output::MODEL_SAFETENSORS,
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let provenance = output::read_provenance(&dir).unwrap();
    assert_eq!(provenance.epochs_completed, 10);
    assert_eq!(provenance.experiment_sha256, exp.sha256());
    assert!(
        work.join("results/lenet300_short")
            .join(output::COMPARISON_MD)
            .is_file()
    );
    std::fs::remove_dir_all(&work).unwrap();
}
