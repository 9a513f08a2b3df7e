//! The method: Sparse Variational Dropout layers, the KL approximation, and the networks of the
//! paper built from them. Formulas and symbol names follow `docs/method.md`.
//!
//! Layers call the operations of [`ops`], the one place that decides whether burn's composed
//! tensor operations or the CPU backend's kernels (crate `cpu_kernels`) run; nothing else here
//! knows which backend computes.

#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod conv;
pub mod dense;
pub mod kl;
pub mod lenet5;
pub mod mlp;
pub mod mode;
pub mod ops;
pub mod posterior;
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
pub use mode::{
    Dropout, EvalLayer, EvalLayers, ForwardMode, NetOutput, Network, NormLayerView, WeightLayerView,
};
pub use posterior::{AlphaSharing, LogAlphaInit, LrtVariance, Posterior};
pub use vgglike::{VggLike, VggLikeConfig};
