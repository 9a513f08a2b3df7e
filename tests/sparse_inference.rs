//! Sparse inference: the committed LeNet-300-100 Sparse VD model, exported to CSR layers with
//! only its kept weights, predicts exactly what the dense masked model predicts on all 10,000
//! test images, at batch 1 and batch 100, and is much smaller.

use burn::module::Module;
use datasets::Mnist;
use runner::output;
use sparsevd::{MlpConfig, Network, SparseNet, WeightLayerView};
use std::path::PathBuf;

#[test]
fn csr_model_predicts_like_the_dense_masked_model() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../results/lenet300/sparse_vd");
    let views = output::read_model(&dir).unwrap();
    let threshold = 3.0;
    let device = burn::tensor::Device::flex();
    let mnist = Mnist::load(&datasets::data_dir(None)).unwrap();
    let images = &mnist.test.images;

    // The harness's evaluation path (masks from log α) and the plain pre-masked network agree.
    let variational = MlpConfig::lenet300(Some(-10.0))
        .init(&device)
        .with_weight_layers(&views)
        .unwrap()
        .valid();
    let masked: Vec<WeightLayerView> = views.iter().map(|v| v.masked(threshold)).collect();
    let dense = MlpConfig::lenet300(None)
        .init(&device)
        .with_weight_layers(&masked)
        .unwrap()
        .valid();
    let expected = runner::train::predict(&variational, images, 784, threshold, 1000, &device);
    assert_eq!(
        runner::train::predict(&dense, images, 784, threshold, 1000, &device),
        expected
    );

    let sparse = SparseNet::mlp(&views, threshold).unwrap();
    for batch in [1, 100] {
        assert_eq!(sparse.predict(images, batch), expected, "batch {batch}");
    }
    let dense_bytes: usize = views
        .iter()
        .map(|v| 4 * (v.theta.len() + v.bias.len()))
        .sum();
    println!("dense {dense_bytes} B, CSR {} B", sparse.bytes());
    assert!(
        sparse.bytes() * 10 < dense_bytes,
        "CSR should be >10× smaller at 117× compression"
    );
}
