//! Sparse inference: each committed Sparse VD model (LeNet-300-100; LeNet-5 once its run is
//! committed), exported with only its kept weights, predicts exactly what the dense masked model
//! predicts on all 10,000 test images, at batch 1 and batch 100, and is much smaller.

use burn::tensor::Device;
use datasets::Mnist;
use runner::output;
use sparse_inference::SparseNet;
use sparsevd::{LeNet5Config, MlpConfig, Network, Posterior, WeightLayerView};
use std::path::PathBuf;

const THRESHOLD: f64 = 3.0;

/// The harness's evaluation path (masks from log α) and a plain network holding the masked
/// weights agree, and the sparse network built from the plain network's layer list agrees with
/// both; returns (dense, sparse) bytes.
fn check<N: Network>(
    views: &[WeightLayerView],
    variational: N,
    plain: N,
    images: &[f32],
) -> (usize, usize) {
    let device = Device::flex();
    let eval = plain
        .eval_layers()
        .expect("the LeNets describe their layers");
    let sparse = SparseNet::new(&eval, views, THRESHOLD).unwrap();
    let variational = variational.with_weight_layers(views).unwrap().valid();
    let masked: Vec<WeightLayerView> = views.iter().map(|v| v.masked(THRESHOLD)).collect();
    let dense = plain.with_weight_layers(&masked).unwrap().valid();
    let predict = |n: &N| runner::train::predict(n, images, 784, THRESHOLD, 1000, &device);
    let expected = predict(&variational);
    assert_eq!(predict(&dense), expected);
    for batch in [1, 100] {
        assert_eq!(sparse.predict(images, batch), expected, "batch {batch}");
    }
    let dense_bytes = views
        .iter()
        .map(|v| 4 * (v.theta.len() + v.bias.len()))
        .sum();
    (dense_bytes, sparse.bytes())
}

#[test]
fn sparse_models_predict_like_the_dense_masked_models() {
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../results");
    let device = Device::flex();
    let mnist = Mnist::load(&datasets::data_dir(None)).unwrap();
    let images = &mnist.test.images;

    let views = output::read_model(&results.join("lenet300/sparse_vd/seed_1")).unwrap();
    let sizes = check(
        &views,
        MlpConfig::lenet300(Posterior::sparse_vd(-10.0)).init(&device),
        MlpConfig::lenet300(Posterior::Point).init(&device),
        images,
    );
    println!("lenet300: dense {} B, sparse {} B", sizes.0, sizes.1);
    assert!(sizes.1 * 10 < sizes.0, "> 10× smaller at 117× compression");

    let lenet5 = results.join("lenet5/sparse_vd/seed_1");
    if !lenet5.join(output::SUMMARY_CSV).is_file() {
        println!(
            "{}: not committed yet, LeNet-5 not checked",
            lenet5.display()
        );
        return;
    }
    let views = output::read_model(&lenet5).unwrap();
    let sizes = check(
        &views,
        LeNet5Config::new()
            .with_posterior(Posterior::sparse_vd(-10.0))
            .init(&device),
        LeNet5Config::new().init(&device),
        images,
    );
    println!("lenet5: dense {} B, sparse {} B", sizes.0, sizes.1);
    assert!(sizes.1 * 10 < sizes.0, "> 10× smaller");
}
