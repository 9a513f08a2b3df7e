//! The generic path: the composed operations that every backend but the CPU's runs (see
//! `sparsevd::ops`), trained on real MNIST. On the CPU backend under
//! `compose_on_this_thread` always; in the `vulkan` or `wgpu` build also through wgpu, which on
//! a machine without a GPU is Mesa's software Vulkan driver, lavapipe (`scripts/test_gpu_path.sh`).

mod common;

use common::ShortRun;
use runner::spec::LoadedExperiment;

/// The same shortened protocol as `train_lenet300`: 20,000 training images, 10 epochs.
const RUN: ShortRun = ShortRun {
    name: "lenet300_generic",
    epochs: 10,
    seed: 3,
    lr: 1e-3,
    decay_start_epoch: 6,
    kl_zero_epochs: 2,
    kl_ramp_epochs: 3,
    train_subset: 20_000,
    test_subset: None,
};

/// Trains [`RUN`] with `options` and checks that it learned and sparsified.
fn learns_and_sparsifies(tag: &str, device: burn::tensor::Device, backend: &str) {
    let (work, path) = RUN.scratch(tag);
    let exp = LoadedExperiment::load(&path).unwrap();
    let options = runner::RunOptions {
        device,
        backend: backend.into(),
        ..common::options(&work)
    };
    let summaries = runner::run_experiment(&exp, &options).unwrap();
    let s = &summaries[0];
    println!(
        "{backend}: test error {:.2}%, compression {:.1}×, removed {}",
        s.test_error_pct, s.compression, s.removed_pct_per_layer
    );
    assert!(
        s.test_error_pct < 6.0,
        "{backend}: test error {:.2}% (chance is 90%)",
        s.test_error_pct
    );
    assert!(
        s.compression > 20.0,
        "{backend}: compression {:.1}×: too little sparsification",
        s.compression
    );
    let dir = work.join("results").join(RUN.name).join("sparse_vd");
    let provenance = runner::output::read_provenance(&dir).unwrap();
    assert_eq!(provenance.backend, backend);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn composed_sparse_vd_learns_and_sparsifies_on_the_cpu() {
    let _composed = sparsevd::ops::compose_on_this_thread();
    learns_and_sparsifies(
        "composed",
        burn::tensor::Device::flex().autodiff(),
        "flex-composed",
    );
}

#[cfg(any(feature = "vulkan", feature = "wgpu"))]
mod vulkan {
    use super::*;
    use runner::bench::{BenchSettings, time_variant};

    /// The `vulkan` build's device (SPIR-V kernels), else the `wgpu` build's (WGSL kernels).
    fn device() -> burn::tensor::Device {
        #[cfg(feature = "vulkan")]
        return burn::tensor::Device::vulkan(Default::default()).autodiff();
        #[cfg(not(feature = "vulkan"))]
        return burn::tensor::Device::wgpu(Default::default()).autodiff();
    }

    #[test]
    fn sparse_vd_learns_and_sparsifies_through_vulkan() {
        let backend = if cfg!(feature = "vulkan") {
            "vulkan"
        } else {
            "wgpu"
        };
        learns_and_sparsifies(backend, device(), backend);
    }

    /// A VGG-like k = 0.25 training step runs, binary dropout and Sparse VD.
    #[test]
    fn vgglike_steps_run_through_vulkan() {
        let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let exp = LoadedExperiment::load(&repo.join("experiments/vgg_cifar10.toml")).unwrap();
        for variant in ["bd_k0.25", "sparse_vd_k0.25"] {
            let settings = BenchSettings {
                warmup: 1,
                steps: 1,
            };
            let t = time_variant(&exp, variant, settings, &device()).unwrap();
            println!("{}: {:.0} ms per step", t.bench, t.median_ms);
            assert!(t.median_ms.is_finite());
        }
    }
}
