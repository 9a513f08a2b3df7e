//! The method: Sparse Variational Dropout layers, the KL approximation, and the networks of the
//! paper built from them. Formulas and symbol names follow `shared/paper/sparse-vd.md`.

pub mod dense;
pub mod kl;
pub mod mlp;
pub mod mode;

pub use dense::{Dense, DenseConfig};
pub use kl::{LOG_ALPHA_CLIP, kl_approx, kl_approx_value, log_alpha};
pub use mlp::{Mlp, MlpConfig};
pub use mode::{ForwardMode, NetOutput, Network, WeightLayerView};
