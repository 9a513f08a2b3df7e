//! Criterion benches: Sparse VD layers (forward + backward), the LRT noise of one LeNet-5 step, one full training step of each
//! LeNet at batch 100, the evaluation pass over the 10,000 test images, and the data pipeline.
//!
//! Run with `cargo bench -p runner` (2 threads: `RAYON_NUM_THREADS=2`). The layer and step
//! benches use synthetic inputs; the evaluation and data benches use real MNIST (fetched on
//! first use, see README "Data").

use burn::tensor::{Device, Distribution, Int, Tensor};
use criterion::{BatchSize, Criterion, criterion_group};
use datasets::Mnist;
use runner::spec::Optimizer;
use runner::train::{Batch, StepSettings, evaluate, optimizer, train_step};
use sparse_inference::SparseNet;
use sparsevd::{
    Conv2dConfig, DenseConfig, ForwardMode, LeNet5Config, MlpConfig, Network, Posterior,
    VggLikeConfig,
};
use std::hint::black_box;

const BATCH: usize = 100;
const TRAIN: ForwardMode = ForwardMode::Train {
    mask_threshold: Some(3.0),
    noise_seed: 1,
};

fn device() -> Device {
    runner::cpu::prepare_for_training();
    Device::flex().autodiff()
}

fn adam() -> Optimizer {
    Optimizer::Adam {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
    }
}

/// A batch of `pixels`-value random images with random labels.
fn synthetic_batch(device: &Device, pixels: usize) -> Batch {
    Batch {
        x: Tensor::random([BATCH, pixels], Distribution::Normal(0.0, 0.3), device),
        y: Tensor::<1, Int>::random([BATCH], Distribution::Uniform(0.0, 10.0), device),
    }
}

fn layers(c: &mut Criterion) {
    let device = device();
    let dense = DenseConfig::new(784, 300)
        .with_posterior(Posterior::sparse_vd(-10.0))
        .init(&device);
    let x = Tensor::<2>::random([BATCH, 784], Distribution::Normal(0.0, 0.3), &device);
    c.bench_function("dense_svd_784x300_fwd_bwd", |b| {
        b.iter(|| {
            let (out, kl) = dense.forward(x.clone(), TRAIN);
            black_box((out.sum() + kl.expect("Sparse VD layer")).backward());
        })
    });
    // LeNet-5's two convolutions: its first on the 28 × 28 images, its second on the pooled
    // 12 × 12 maps.
    for (channels_in, channels_out, side) in [(1, 20, 28), (20, 50, 12)] {
        let conv = Conv2dConfig::new(channels_in, channels_out, 5)
            .with_posterior(Posterior::sparse_vd(-10.0))
            .init(&device);
        let x = Tensor::<4>::random(
            [BATCH, channels_in, side, side],
            Distribution::Normal(0.0, 0.3),
            &device,
        );
        let name = format!("conv_svd_{channels_in}to{channels_out}_5x5_fwd_bwd");
        c.bench_function(&name, |b| {
            b.iter(|| {
                let (out, kl) = conv.forward(x.clone(), TRAIN);
                black_box((out.sum() + kl.expect("Sparse VD layer")).backward());
            })
        });
    }
    // The LRT noise ζ one LeNet-5 Sparse VD step draws (its four layers' outputs at batch 100).
    let lenet5_outputs = BATCH * (20 * 24 * 24 + 50 * 8 * 8 + 500 + 10);
    c.bench_function("noise_lenet5_step_1_5m_normals", |b| {
        b.iter(|| black_box(sparsevd::ops::standard_normal([lenet5_outputs], 1, &device)))
    });
    // The weight-side term alone, at LeNet-5's largest layer (800 × 500): host pass, KL tensor,
    // backward.
    let theta =
        Tensor::<2>::random([800, 500], Distribution::Normal(0.0, 0.05), &device).require_grad();
    let log_sigma2 =
        Tensor::<2>::random([800, 500], Distribution::Uniform(-12.0, 0.0), &device).require_grad();
    c.bench_function("kl_800x500_fwd_bwd", |b| {
        b.iter(|| {
            let terms = sparsevd::KlTerms::additive(
                &sparsevd::ops::read_back(theta.clone())
                    .try_to_vec::<f32>()
                    .expect("f32"),
                &sparsevd::ops::read_back(log_sigma2.clone())
                    .try_to_vec::<f32>()
                    .expect("f32"),
                sparsevd::kl::additive_rules(
                    sparsevd::LrtVariance::ClippedAlpha,
                    sparsevd::weights::MapKind::Dense,
                ),
                None,
            );
            let kl = terms.into_tensor(theta.clone(), log_sigma2.clone());
            black_box(kl.backward());
        })
    });
}

fn bench_step<N: Network>(c: &mut Criterion, name: &str, model: N, pixels: usize, device: &Device) {
    let mut optim = optimizer(&adam());
    let settings = StepSettings {
        train_size: 60_000,
        beta: 1.0,
        lr: 1e-3,
        mask_threshold: Some(3.0),
        noise_seed: 1,
        l2: 0.0,
    };
    let mut model = Some(model);
    // The batch is drawn outside the timed step, as in the PyTorch reference (burn's
    // `Tensor::random` takes about 1 ms for a batch of MNIST-sized images).
    c.bench_function(name, |b| {
        b.iter_batched(
            || synthetic_batch(device, pixels),
            |batch| {
                let (next, losses) =
                    train_step(model.take().expect("model"), &mut optim, batch, &settings);
                model = Some(next);
                black_box(losses);
            },
            BatchSize::SmallInput,
        )
    });
}

fn steps(c: &mut Criterion) {
    let device = device();
    let lenet300 = MlpConfig::lenet300(Posterior::sparse_vd(-10.0)).init(&device);
    bench_step(c, "step_lenet300_sparse_vd", lenet300, 784, &device);
    let lenet5 = LeNet5Config::new()
        .with_posterior(Posterior::sparse_vd(-10.0))
        .init(&device);
    bench_step(c, "step_lenet5_sparse_vd", lenet5, 784, &device);
    // Table 1's other LeNet-5 column: plain convolutions, no KL.
    let lenet5 = LeNet5Config::new().init(&device);
    bench_step(c, "step_lenet5_original", lenet5, 784, &device);
}

/// VGG-like training steps on the CPU, for the time per CIFAR-10 epoch (500 steps);
/// wider nets take minutes per sample here.
fn vgg_steps(c: &mut Criterion) {
    let device = device();
    for k in [0.25, 0.5] {
        let net = VggLikeConfig::new(k)
            .with_posterior(Posterior::sparse_vd(-15.0))
            .init(&device);
        bench_step(
            c,
            &format!("step_vgglike_k{k}_sparse_vd"),
            net,
            3072,
            &device,
        );
    }
    // The pretraining net: plain convolutions with binary dropout.
    let net = VggLikeConfig::new(0.25).with_dropout(true).init(&device);
    bench_step(c, "step_vgglike_k0.25_binary_dropout", net, 3072, &device);
}

fn evaluation_and_data(c: &mut Criterion) {
    let device = device();
    let mnist = Mnist::load(&datasets::data_dir(None)).expect("MNIST (see README, Data)");
    let lenet300 = MlpConfig::lenet300(Posterior::sparse_vd(-10.0)).init(&device);
    c.bench_function("eval_lenet300_10000_test_images", |b| {
        b.iter(|| black_box(evaluate(&lenet300, &mnist.test, 3.0, &device).error_pct))
    });
    let lenet5 = LeNet5Config::new()
        .with_posterior(Posterior::sparse_vd(-10.0))
        .init(&device);
    c.bench_function("eval_lenet5_10000_test_images", |b| {
        b.iter(|| black_box(evaluate(&lenet5, &mnist.test, 3.0, &device).error_pct))
    });
    let order = runner::rng::permutation(mnist.train.len(), 1);
    c.bench_function("data_one_epoch_of_batches", |b| {
        b.iter(|| {
            for chunk in order.chunks_exact(BATCH) {
                black_box(Batch::gather(&mnist.train, chunk, &device));
            }
        })
    });
}

/// The committed Sparse VD models (LeNet-300-100, and LeNet-5 once its run is committed) on all
/// 10,000 test images at batch 1 and 100: the dense masked model (removed weights zeroed once,
/// burn flex) against the same model with only its kept weights ([`SparseNet`]).
fn sparse_inference(c: &mut Criterion) {
    runner::cpu::prepare_for_training();
    let device = Device::flex();
    let mnist = Mnist::load(&datasets::data_dir(None)).expect("MNIST (see README, Data)");
    let images = &mnist.test.images;
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results");
    for net in ["lenet300", "lenet5"] {
        let dir = results.join(net).join("sparse_vd").join("seed_1");
        let Ok(views) = runner::output::read_model(&dir) else {
            eprintln!("{}: no committed model, skipped", dir.display());
            continue;
        };
        if net == "lenet300" {
            let dense = MlpConfig::lenet300(Posterior::Point).init(&device);
            bench_inference(c, net, dense, &views, images, &device);
        } else {
            let dense = LeNet5Config::new().init(&device);
            bench_inference(c, net, dense, &views, images, &device);
        }
    }
}

/// `dense` (a plain net given the saved layers `views`, masked) against the sparse net built from
/// its layer list, at batch 1 and 100.
fn bench_inference<N: Network>(
    c: &mut Criterion,
    net: &str,
    dense: N,
    views: &[sparsevd::WeightLayerView],
    images: &[f32],
    device: &Device,
) {
    let eval = dense
        .eval_layers()
        .expect("the LeNets describe their layers");
    let sparse = SparseNet::new(&eval, views, 3.0).expect("the committed model's layers");
    let masked: Vec<_> = views.iter().map(|v| v.masked(3.0)).collect();
    let dense = dense
        .with_weight_layers(&masked)
        .expect("the committed model fits its net");
    for batch in [1, 100] {
        c.bench_function(
            &format!("infer_{net}_dense_masked_batch{batch}_10000_images"),
            |b| {
                b.iter(|| {
                    black_box(runner::train::predict(
                        &dense, images, 784, 3.0, batch, device,
                    ))
                })
            },
        );
        c.bench_function(
            &format!("infer_{net}_sparse_batch{batch}_10000_images"),
            |b| b.iter(|| black_box(sparse.predict(images, batch))),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = layers, steps, evaluation_and_data
}

criterion_group! {
    name = inference;
    config = Criterion::default().sample_size(10);
    targets = sparse_inference
}
criterion_group! {
    name = vgg;
    config = Criterion::default().sample_size(10);
    targets = vgg_steps
}

/// Criterion's `criterion_main!`, with the benches run on a worker of rayon's pool as the
/// harness runs training and evaluation ([`runner::on_pool_worker`]).
fn main() {
    runner::on_pool_worker(|| {
        benches();
        inference();
        vgg();
    });
    Criterion::default().configure_from_args().final_summary();
}
