//! Integration test: LeNet-300-100 with Sparse VD trained briefly on real MNIST (a subset, a few
//! epochs) learns and sparsifies, and the run writes every result file.

mod common;

use common::ShortRun;
use runner::output;
use runner::spec::LoadedExperiment;

/// The paper's protocol, shortened: 20,000 training images, 10 epochs, KL warm-up over 5.
const RUN: ShortRun = ShortRun {
    name: "lenet300_short",
    epochs: 10,
    seed: 3,
    lr: 1e-3,
    decay_start_epoch: 6,
    kl_zero_epochs: 2,
    kl_ramp_epochs: 3,
    train_subset: 20_000,
    test_subset: None,
};

#[test]
fn sparse_vd_learns_and_sparsifies_on_real_mnist() {
    let (work, path) = RUN.scratch("learn");
    let exp = LoadedExperiment::load(&path).unwrap();
    let summaries = runner::run_experiment(&exp, &common::options(&work)).unwrap();
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
