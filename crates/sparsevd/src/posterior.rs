//! Which approximate posterior q(w) a layer's weights have: the links of the dropout family
//! that live in the weights (binary and Gaussian dropout live on the layer inputs instead, see
//! [`crate::mode::Dropout`]).

use burn::config::Config;
use burn::serde::{Deserialize, Serialize};

/// The posterior of a layer's weights; every variational one is trained with the local
/// reparameterization trick (see [`crate::weights::VariationalWeights`]).
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Posterior {
    /// Deterministic weights θ (no noise, no KL).
    Point,
    /// Sparse VD, additive parameterization (the paper's): q(w_ij) = N(θ_ij, σ²_ij), learned θ
    /// and log σ² per weight, α_ij = σ²_ij / θ²_ij, log α clipped to [−8, 8], sigmoid KL; the
    /// LRT sample's variance in the form `variance`.
    SparseVd {
        log_sigma2_init: f64,
        variance: LrtVariance,
    },
    /// Sparse VD in the original parameterization: learned θ and log α per weight (clipped to
    /// [−8, 8]), σ²_ij = α_ij·θ²_ij, sigmoid KL. The gradient with respect to θ carries the
    /// noise through σ², which is what the additive form removes.
    SparseVdLogAlpha { log_alpha_init: LogAlphaInit },
    /// Kingma et al. (2015)'s variational dropout: q(w_ij) = N(θ_ij, α·θ²_ij) with one learned
    /// log α per output unit or per layer, clipped to [−8, 0] (α ≤ 1, where the cubic KL
    /// approximation holds), KL ≈ (γ + ln 2)/2 − (0.5·log α + c1·α + c2·α² + c3·α³) per weight.
    VariationalDropout {
        log_alpha_init: f64,
        sharing: AlphaSharing,
    },
}

/// The per-weight variance v of the LRT sample δ = A(x ⊙ x, v) of a Sparse VD layer; written
/// `"clipped_alpha"` or `"sigma2"` in experiment files. The two agree wherever log α is inside
/// the clip range (there exp(log α)·θ² = σ² in value and gradient), and differ where it binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(crate = "burn::serde", rename_all = "snake_case")]
pub enum LrtVariance {
    /// The authors' code (svdo-lasagne `nets/layers.py`): v = exp(log α)·W², log α clipped to
    /// [−8, 8], so v is capped at e⁸·θ² and log σ² gets no gradient while log α is clipped.
    /// Per layer kind, as there: a dense layer takes log α = log σ² − log θ² and W = θ; a
    /// convolution takes log α = log σ² − log(θ² + 1e-8) and W = θ after the train clip (removed
    /// weights give neither mean nor variance). Their KL term takes log σ² − log θ² in both.
    #[default]
    ClippedAlpha,
    /// v = σ² = exp(log σ²), the posterior's own variance, never capped; log α = log σ² −
    /// log(θ² + 1e-8) everywhere. The paper's text reads this way; this harness used it before.
    Sigma2,
}

impl LrtVariance {
    /// The name experiment files and provenance use.
    pub fn key(self) -> &'static str {
        match self {
            LrtVariance::ClippedAlpha => "clipped_alpha",
            LrtVariance::Sigma2 => "sigma2",
        }
    }

    /// The form named `key` ([`LrtVariance::key`]).
    pub fn from_key(key: &str) -> Option<Self> {
        [LrtVariance::ClippedAlpha, LrtVariance::Sigma2]
            .into_iter()
            .find(|form| form.key() == key)
    }
}

/// Where the learned per-weight log α of [`Posterior::SparseVdLogAlpha`] starts.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum LogAlphaInit {
    /// The same log α for every weight.
    Constant { log_alpha: f64 },
    /// log α_ij = clip(log σ²₀ − log(θ²_ij + 1e-8), −8, 8): the posterior q(w_ij) = N(θ_ij, σ²₀)
    /// that the additive parameterization starts from with log σ² = log σ²₀, so that a
    /// comparison of the two parameterizations starts from the same q(w).
    FromLogSigma2 { log_sigma2: f64 },
}

impl LogAlphaInit {
    /// The initial log α of each weight of initial value `theta`.
    pub fn values(self, theta: &[f32]) -> Vec<f32> {
        match self {
            LogAlphaInit::Constant { log_alpha } => vec![log_alpha as f32; theta.len()],
            LogAlphaInit::FromLogSigma2 { log_sigma2 } => theta
                .iter()
                .map(|&t| {
                    cpu_kernels::kl::additive_log_alpha(
                        t,
                        log_sigma2 as f32,
                        crate::kl::LOG_ALPHA_EPS,
                    )
                    .clamp(-CLIP, CLIP)
                })
                .collect(),
        }
    }
}

const CLIP: f32 = crate::kl::LOG_ALPHA_CLIP as f32;

/// How many weights share one α in [`Posterior::VariationalDropout`]; written `"per_unit"` or
/// `"per_layer"` in experiment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "burn::serde", rename_all = "snake_case")]
pub enum AlphaSharing {
    /// One α per output unit (dense column, conv output channel).
    PerUnit,
    /// One α for the whole layer.
    PerLayer,
}

/// Upper clip of log α for Kingma's variational dropout: α ≤ 1.
pub const VD_LOG_ALPHA_MAX: f64 = 0.0;

impl Posterior {
    /// The paper's Sparse VD with log σ² starting at `log_sigma2_init`, the authors' LRT variance.
    pub fn sparse_vd(log_sigma2_init: f64) -> Self {
        Posterior::SparseVd {
            log_sigma2_init,
            variance: LrtVariance::default(),
        }
    }

    /// Shape of the learned log α for weights θ of shape `theta` whose output unit is axis
    /// `unit_axis`; `None` when the posterior has no log α parameter.
    pub fn log_alpha_shape<const D: usize>(
        &self,
        theta: [usize; D],
        unit_axis: usize,
    ) -> Option<[usize; D]> {
        match self {
            Posterior::Point | Posterior::SparseVd { .. } => None,
            Posterior::SparseVdLogAlpha { .. } => Some(theta),
            Posterior::VariationalDropout { sharing, .. } => {
                let mut shape = [1; D];
                if *sharing == AlphaSharing::PerUnit {
                    shape[unit_axis] = theta[unit_axis];
                }
                Some(shape)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_alpha_is_per_weight_per_unit_or_per_layer() {
        let dense = [784, 300];
        let vd = |sharing| Posterior::VariationalDropout {
            log_alpha_init: -4.0,
            sharing,
        };
        assert_eq!(Posterior::Point.log_alpha_shape(dense, 1), None);
        assert_eq!(Posterior::sparse_vd(-10.0).log_alpha_shape(dense, 1), None);
        assert_eq!(
            Posterior::SparseVdLogAlpha {
                log_alpha_init: LogAlphaInit::Constant { log_alpha: -4.0 }
            }
            .log_alpha_shape(dense, 1),
            Some(dense)
        );
        assert_eq!(
            vd(AlphaSharing::PerUnit).log_alpha_shape(dense, 1),
            Some([1, 300])
        );
        assert_eq!(
            vd(AlphaSharing::PerUnit).log_alpha_shape([50, 20, 5, 5], 0),
            Some([50, 1, 1, 1])
        );
        assert_eq!(
            vd(AlphaSharing::PerLayer).log_alpha_shape([50, 20, 5, 5], 0),
            Some([1, 1, 1, 1])
        );
    }

    #[test]
    fn log_alpha_starts_constant_or_where_the_additive_posterior_starts() {
        let theta = [0.01f32, -0.1, 0.0, 1.0];
        assert_eq!(
            LogAlphaInit::Constant { log_alpha: -4.0 }.values(&theta),
            vec![-4.0; 4]
        );
        // log σ² = −10: log α = −10 − log θ², clipped to [−8, 8] (θ = 0 gives −10 + 18.42).
        let from = LogAlphaInit::FromLogSigma2 { log_sigma2: -10.0 }.values(&theta);
        let expected = [-10.0 + 9.2103, -10.0 + 4.6052, 8.0, -8.0];
        for (got, want) in from.iter().zip(expected) {
            assert!((got - want).abs() < 1e-3, "{from:?} vs {expected:?}");
        }
    }
}
