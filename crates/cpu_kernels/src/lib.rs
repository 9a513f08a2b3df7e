//! The CPU backend's (Flex) kernels for the operations of a Sparse VD training step: each a
//! single pass over host memory that fuses what the composed form (burn's tensor operations, in
//! the method crate `sparsevd`) does in many, with its own backward pass where it is
//! differentiated. They compute the same formulas as the composed forms, which are their
//! readable reference and the oracle of their tests; `sparsevd::ops` decides which runs.
//!
//! - [`lrt_dense`], [`lrt_conv`]: the local reparameterization sample of a dense and a
//!   convolutional layer, and the plain convolution with bias;
//! - [`max_pool`]: 2×2 max pooling; [`batch_norm`]: batch norm in training with ReLU; [`noise`]: the training noise; [`kl`]: the KL terms, the LRT
//!   variance and the train clip of a Sparse VD layer; [`slope`]: a host value given its gradient;
//!   [`adam`]: the Adam update;
//! - building blocks: [`tensor`] (host slices of the backend's tensors), [`gemm`] (matrix
//!   products), [`sparse_rows`] (products with a mostly-zero matrix), [`simd`] (vectorisable
//!   exp, ln and sums), and one helper that makes a kernel a node of burn's autodiff graph.

#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod adam;
pub mod batch_norm;
pub mod gemm;
mod host_op;
pub mod kl;
pub mod lrt_conv;
pub mod lrt_dense;
pub mod max_pool;
pub mod noise;
pub mod simd;
pub mod slope;
pub mod sparse_rows;
pub mod tensor;

/// ε under the square root of the LRT variance, √(δ + ε), so that its gradient stays finite.
pub const VARIANCE_EPS: f64 = 1e-8;

/// Where the gradient of the LRT mean is used, so that a kernel may leave it 0 elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeanGradient {
    /// At every weight.
    Everywhere,
    /// Only where the mean is nonzero: after the train clip the mean is 0 exactly at the removed
    /// weights, whose gradient the clip discards. LeNet-5's second convolution has 94 % of its
    /// weights removed by epoch 21, and ∂θ there is then a few hundred dot products instead of a
    /// matrix product.
    WhereNonzero,
}
