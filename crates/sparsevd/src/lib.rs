//! The method: Sparse Variational Dropout layers, the KL approximation, and the networks of the
//! paper built from them. Formulas and symbol names follow `docs/method.md`.

#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod conv;
pub mod cpu_conv;
pub mod cpu_dense;
pub mod dense;
pub mod flex_host;
pub mod host_gemm;
pub mod host_gradient;
mod host_op;
pub mod host_sparse;
pub mod kl;
pub mod lenet5;
pub mod max_pool;
pub mod mlp;
pub mod mode;
pub mod noise;
pub mod ops;
pub mod posterior;
pub mod sparse_inference;
pub mod vector_math;
pub mod vgglike;
pub mod weights;

pub use conv::{Conv2d, Conv2dConfig};
pub use dense::{Dense, DenseConfig};
pub use kl::{
    KlTerms, LOG_ALPHA_CLIP, kl_approx_value, kl_kingma, log_alpha, neg_kl_kingma,
    neg_kl_monte_carlo, normal_lattice,
};
pub use lenet5::{LeNet5, LeNet5Config};
pub use mlp::{LENET300_WIDTHS, Mlp, MlpConfig};
pub use mode::{Dropout, ForwardMode, NetOutput, Network, NormLayerView, WeightLayerView};
pub use posterior::{AlphaSharing, LogAlphaInit, LrtVariance, Posterior};
pub use sparse_inference::{CsrDense, SparseConv, SparseNet, SparseOp};
pub use vgglike::{VggLike, VggLikeConfig};
