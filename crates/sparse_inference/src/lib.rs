//! Inference with the removed weights actually gone. Dense layers keep their surviving weights
//! in compressed sparse rows (CSR) of Wᵀ, one row per output unit; convolutions keep, per output
//! channel, the list of surviving taps (each as its window's offset into the input). A forward
//! pass touches only the kept weights, and only the units whose values reach a logit. Pure host
//! code, no tensors, compiled a second time with AVX2 for CPUs that have it, and for groups of
//! images a third time with AVX-512, in wider tiles.
//!
//! Activations are stored image-innermost: `[f32; L]` holds one feature of `L` images, so that
//! each kept weight is applied to `L` images in one vector operation. Batch 1 is `L = 1`;
//! larger batches run in groups of [`LANES`] images, batches spread over rayon's threads.
//!
//! Modules: [`dense`] and [`conv`] (the two storage formats, on the row layout of `rows`),
//! `dead_units` (pruning of units no logit reads), [`net`] (the net built from a network's
//! [`sparsevd::EvalLayers`] and saved layers, and its forward pass) and `simd` (the vector
//! kernels).

pub mod conv;
mod dead_units;
pub mod dense;
pub mod net;
mod rows;
mod simd;

pub use conv::SparseConv;
pub use dense::CsrDense;
pub use net::{LANES, SparseNet, SparseOp};

/// Saved-layer views and small nets for the tests.
#[cfg(test)]
mod test_views {
    use crate::SparseNet;
    use sparsevd::{EvalLayer, EvalLayers, WeightLayerView};

    pub(crate) fn view(
        theta: Vec<f32>,
        log_alpha: Vec<f32>,
        shape: &[usize],
        bias: Vec<f32>,
    ) -> WeightLayerView {
        WeightLayerView {
            name: "d".into(),
            shape: shape.to_vec(),
            log_sigma2: Some(vec![0.0; theta.len()]),
            theta,
            log_alpha: Some(log_alpha),
            bias,
        }
    }

    /// Dense layers `views` with ReLU between them, on flat inputs.
    pub(crate) fn mlp(views: &[WeightLayerView], threshold: f64) -> Result<SparseNet, String> {
        let mut layers = Vec::new();
        for (i, view) in views.iter().enumerate() {
            if i > 0 {
                layers.push(EvalLayer::Relu);
            }
            layers.push(EvalLayer::Weights(view.name.clone()));
        }
        let first = views.first().ok_or("no layers")?;
        let eval = EvalLayers {
            input: [first.shape[0], 1, 1],
            layers,
        };
        SparseNet::new(&eval, views, threshold)
    }
}
