//! The KL terms of a Sparse VD layer in one parallel pass over its weights on the host: Σ KL of
//! the sigmoid approximation (Molchanov et al. 2017, eq. 14), its gradients, log α, the LRT
//! variance with its gradients, and the train clip. The composed form — the same formulas in
//! burn's tensor operations, differentiated by burn's autodiff — is `sparsevd::kl`'s, the
//! readable reference this pass is tested against.

use crate::simd;
use crate::slope::plus_zero_with_slope;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// log α is clipped to [−8, 8], as in the authors' code.
pub const LOG_ALPHA_CLIP: f64 = 8.0;

/// Fitted constants k₁, k₂, k₃ of the approximation (Molchanov et al. 2017, eq. 14).
pub const K1: f64 = 0.63576;
pub const K2: f64 = 1.87320;
pub const K3: f64 = 1.48695;

/// Where ε enters log α = log σ² − log(θ² + ε), and which variance v the LRT sample takes: the
/// rules of one Sparse VD layer (`sparsevd::kl::additive_rules` says which, per variance form and
/// layer kind).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdditiveRules {
    /// v = exp(log α_f)·W², log α_f clipped (the authors' form), rather than v = σ².
    pub clipped_alpha_variance: bool,
    /// ε of log α in the KL term.
    pub kl_eps: f32,
    /// ε of log α in the forward pass: train clip, evaluation mask and the variance.
    pub forward_eps: f32,
    /// The variance takes θ after the train clip: removed weights give no variance.
    pub variance_after_train_clip: bool,
}

/// Σ KL of one Sparse VD layer, its gradient with respect to the layer's parameters, log α and
/// the LRT variance with its gradients, computed in one parallel pass over the weights on the
/// host.
///
/// Per weight, with ℓ = log σ² − log(θ² + ε_KL), log α = clip(ℓ, −8, 8), z = k2 + k3·log α:
/// - KL ≈ k1 − k1·sigmoid(z) + 0.5·softplus(−log α), where softplus(−log α) is the stable
///   form of log(1 + 1/α) (it never forms 1/α);
/// - ∂KL/∂ℓ = −k1·k3·sigmoid(z)·(1 − sigmoid(z)) − 0.5·sigmoid(−log α) for −8 < ℓ < 8, and 0
///   where ℓ is clipped (the clip passes no gradient);
/// - ∂KL/∂log σ² = ∂KL/∂ℓ and ∂KL/∂θ = ∂KL/∂ℓ · (−2θ / (θ² + ε_KL)) in the additive
///   parameterization ([`KlTerms::additive`]); in the original one ([`KlTerms::of_log_alpha`]) ℓ
///   is the learned log α itself and KL does not depend on θ.
///
/// The variance v (additive parameterization), with log α_f = clip(ℓ_f, −8, 8) of the forward
/// ε, ℓ_f = log σ² − log(θ² + ε_f):
/// - σ² form: v = exp(log σ²), ∂v/∂log σ² = v, ∂v/∂θ = 0;
/// - clipped-α form: v = exp(log α_f)·W², W = θ (0 where removed, if the rules take θ after the
///   train clip). Inside the clip ∂v/∂log σ² = v and ∂v/∂θ = 2θ·α + v·(−2θ / (θ² + ε_f)),
///   which is 2θ·α·ε_f / (θ² + ε_f) (0 for ε_f = 0, where v = σ² exactly); where ℓ_f is clipped
///   ∂v/∂log σ² = 0 and ∂v/∂θ = 2θ·e^(±8); a removed weight gets 0 for both.
///
/// Inside the clip ∂v/∂θ is summed from its two terms, as the authors' code (Theano's symbolic
/// gradient) and any autodiff compute it, rather than written as its closed form: in f32 the two
/// terms cancel only up to rounding, and Adam normalises that residue into steps of the
/// learning rate's size wherever nothing else moves θ — at the weights the train clip removes
/// while β = 0, and at removed weights generally. The closed form (exactly 0 for ε = 0) freezes
/// them instead and trains measurably differently (LeNet-300-100, one epoch at β = 0: 28.5 /
/// 23.9 / 17.0 % removed per layer with the closed form, 23.9 / 16.8 / 8.9 % with this sum,
/// 23.3 / 16.0 / 8.7 % with `sparsevd::kl::composed_additive_terms` under burn's autodiff).
///
/// Why not burn's autodiff (`sparsevd::kl::composed_additive_terms` is that form, and the
/// reference the tests hold this pass to): the KL as a chain of ~15 elementwise tensor ops and
/// their backward steps took 14.2 ms for 400,000 weights (LeNet-5's dense1, 2 threads), which was 14 % of a
/// LeNet-5 step and more than half of a LeNet-300-100 step.
#[derive(Debug, Clone)]
pub struct KlTerms {
    pub kl: f64,
    /// log α of the forward pass, clipped.
    pub log_alpha: Vec<f32>,
    /// ∂KL/∂θ; `None` when KL does not depend on θ.
    pub d_theta: Option<Vec<f32>>,
    /// ∂KL/∂ of the learned noise parameter (log σ² or log α).
    pub d_noise: Vec<f32>,
    /// The LRT variance of the additive parameterization (burn's exp is a scalar libm call per
    /// value, so it is computed in the same pass); `None` for the log α one.
    pub variance: Option<Variance>,
}

/// The LRT variance v of a Sparse VD layer and its gradients (see [`KlTerms`]).
#[derive(Debug, Clone)]
pub struct Variance {
    pub value: Vec<f32>,
    /// ∂v/∂log σ²; `None` where it is v itself (the σ² form).
    pub d_log_sigma2: Option<Vec<f32>>,
    /// ∂v/∂θ; `None` where v does not depend on θ (the σ² form).
    pub d_theta: Option<Vec<f32>>,
}

/// Weights per parallel chunk; fixed, so that the f64 sum of KL does not depend on threads.
const CHUNK: usize = 1 << 14;

impl KlTerms {
    /// The terms of the additive (θ, log σ²) parameterization under `rules`; `train_clip` is the
    /// threshold of the train clip, if it is on.
    pub fn additive(
        theta: &[f32],
        log_sigma2: &[f32],
        rules: AdditiveRules,
        train_clip: Option<f64>,
    ) -> Self {
        assert_eq!(theta.len(), log_sigma2.len(), "θ and log σ² differ in size");
        Self::from_weights(Weights::Additive {
            theta,
            log_sigma2,
            rules,
            train_clip: train_clip.unwrap_or(f64::INFINITY),
        })
    }

    /// The terms of the original (θ, log α) parameterization, `log_alpha` unclipped.
    pub fn of_log_alpha(log_alpha: &[f32]) -> Self {
        Self::from_weights(Weights::LogAlpha(log_alpha))
    }

    fn from_weights(weights: Weights) -> Self {
        let n = weights.len();
        let (additive, clipped_alpha) = match weights {
            Weights::Additive { rules, .. } => (true, rules.clipped_alpha_variance),
            Weights::LogAlpha(_) => (false, false),
        };
        let zeros = || simd::zeros(n);
        let (mut log_alpha, mut d_noise) = (zeros(), zeros());
        let [
            mut d_theta,
            mut variance,
            mut variance_d_noise,
            mut variance_d_theta,
        ] = [additive, additive, clipped_alpha, clipped_alpha].map(|wanted| wanted.then(zeros));
        let chunks = n.div_ceil(CHUNK);
        let outputs: Vec<Outputs> = log_alpha
            .chunks_mut(CHUNK)
            .zip(d_noise.chunks_mut(CHUNK))
            .zip(chunked(&mut d_theta, chunks))
            .zip(chunked(&mut variance, chunks))
            .zip(chunked(&mut variance_d_noise, chunks))
            .zip(chunked(&mut variance_d_theta, chunks))
            .map(
                |(
                    ((((log_alpha, d_noise), d_theta), variance), variance_d_noise),
                    variance_d_theta,
                )| {
                    Outputs {
                        log_alpha,
                        d_noise,
                        d_theta,
                        variance,
                        variance_d_noise,
                        variance_d_theta,
                    }
                },
            )
            .collect();
        let chunk_kl: Vec<f64> = outputs
            .into_par_iter()
            .enumerate()
            .map(|(c, out)| {
                let part = weights.range(c * CHUNK, out.log_alpha.len());
                simd::with_simd(
                    #[inline(always)]
                    || fill(part, out),
                )
            })
            .collect();
        KlTerms {
            kl: chunk_kl.iter().sum(),
            log_alpha,
            d_theta,
            d_noise,
            variance: variance.map(|value| Variance {
                value,
                d_log_sigma2: variance_d_noise,
                d_theta: variance_d_theta,
            }),
        }
    }

    /// θ with the weights whose log α ≥ `threshold` set to 0 (the train clip), as a tensor whose
    /// gradient with respect to `theta` (the tensor these terms were computed from; its values
    /// `theta_values`) is 1 where a weight is kept and 0 where it is removed
    /// ([`plus_zero_with_slope`]). A kept weight whose θ is exactly 0 becomes the smallest normal
    /// f32 (1.2e-38, far below any sum's rounding), so that the result is 0 exactly where a weight
    /// is removed: the LRT kernels then skip the mean's gradient wherever it is 0
    /// ([`crate::MeanGradient::WhereNonzero`]). One parallel pass on the host: as a
    /// mask built one weight at a time and burn's `mask_fill` forward and backward it was 3 % of
    /// a LeNet-5 Sparse VD step.
    pub fn train_clipped<const D: usize>(
        &self,
        theta: Tensor<D>,
        theta_values: &[f32],
        threshold: f64,
    ) -> Tensor<D> {
        assert_eq!(
            theta_values.len(),
            self.log_alpha.len(),
            "θ and log α differ"
        );
        let n = theta_values.len();
        let (mut kept, mut slope) = (simd::zeros(n), simd::zeros(n));
        kept.par_chunks_mut(CHUNK)
            .zip(slope.par_chunks_mut(CHUNK))
            .zip(theta_values.par_chunks(CHUNK))
            .zip(self.log_alpha.par_chunks(CHUNK))
            .for_each(|(((kept, slope), theta), log_alpha)| {
                let weights = kept.iter_mut().zip(slope).zip(theta).zip(log_alpha);
                simd::with_simd(
                    #[inline(always)]
                    || {
                        for (((k, s), &t), &a) in weights {
                            let removed = a as f64 >= threshold;
                            (*k, *s) = match (removed, t == 0.0) {
                                (true, _) => (0.0, 0.0),
                                (false, true) => (f32::MIN_POSITIVE, 1.0),
                                (false, false) => (t, 1.0),
                            };
                        }
                    },
                );
            });
        let (shape, device) = (theta.dims(), theta.device());
        let tensor = |v: Vec<f32>| Tensor::<D>::from_data(TensorData::new(v, shape), &device);
        plus_zero_with_slope(tensor(kept), theta, tensor(slope))
    }

    /// Σ KL as a scalar tensor whose gradient with respect to `theta` and `noise` (the tensors
    /// these terms were computed from) is [`KlTerms::d_theta`] and [`KlTerms::d_noise`]:
    /// KL + Σ (θ − θ̄)·∂KL/∂θ + Σ (ν − ν̄)·∂KL/∂ν, with θ̄, ν̄ detached copies, so that the added
    /// sums are exactly 0 ([`plus_zero_with_slope`]).
    pub fn into_tensor<const D: usize>(self, theta: Tensor<D>, noise: Tensor<D>) -> Tensor<1> {
        let device = theta.device();
        let shape: [usize; D] = theta.dims();
        let constant = |v: Vec<f32>| Tensor::<D>::from_data(TensorData::new(v, shape), &device);
        let kl = Tensor::<1>::from_data(TensorData::new(vec![self.kl as f32], [1]), &device);
        let kl = plus_zero_with_slope(kl, noise, constant(self.d_noise));
        match self.d_theta {
            Some(d_theta) => plus_zero_with_slope(kl, theta, constant(d_theta)),
            None => kl,
        }
    }

    /// The LRT variance (see [`KlTerms::variance`]) as a tensor with its gradients with respect
    /// to `theta` and `log_sigma2`, the tensors these terms were computed from
    /// ([`plus_zero_with_slope`]). Panics for the log α parameterization, which has none.
    pub fn variance_tensor<const D: usize>(
        &mut self,
        theta: Tensor<D>,
        log_sigma2: Tensor<D>,
    ) -> Tensor<D> {
        let variance = self
            .variance
            .take()
            .expect("the variance of the additive parameterization");
        let (shape, device) = (log_sigma2.dims(), log_sigma2.device());
        let tensor = |v: Vec<f32>| Tensor::<D>::from_data(TensorData::new(v, shape), &device);
        let value = tensor(variance.value);
        let d_log_sigma2 = variance.d_log_sigma2.map_or_else(|| value.clone(), tensor);
        let value = plus_zero_with_slope(value, log_sigma2, d_log_sigma2);
        match variance.d_theta {
            Some(d_theta) => plus_zero_with_slope(value, theta, tensor(d_theta)),
            None => value,
        }
    }
}

/// One `Some` chunk of `values` per parallel chunk, or `count` times `None`.
fn chunked(values: &mut Option<Vec<f32>>, count: usize) -> Vec<Option<&mut [f32]>> {
    match values {
        Some(values) => values.chunks_mut(CHUNK).map(Some).collect(),
        None => (0..count).map(|_| None).collect(),
    }
}

/// What the KL pass reads per weight.
#[derive(Clone, Copy)]
enum Weights<'a> {
    Additive {
        theta: &'a [f32],
        log_sigma2: &'a [f32],
        rules: AdditiveRules,
        /// The train clip's threshold; +∞ when it is off.
        train_clip: f64,
    },
    /// The learned log α, unclipped.
    LogAlpha(&'a [f32]),
}

impl<'a> Weights<'a> {
    fn len(&self) -> usize {
        match self {
            Weights::Additive { theta, .. } => theta.len(),
            Weights::LogAlpha(log_alpha) => log_alpha.len(),
        }
    }

    fn range(&self, start: usize, len: usize) -> Weights<'a> {
        let cut = |v: &'a [f32]| &v[start..start + len];
        match *self {
            Weights::Additive {
                theta,
                log_sigma2,
                rules,
                train_clip,
            } => Weights::Additive {
                theta: cut(theta),
                log_sigma2: cut(log_sigma2),
                rules,
                train_clip,
            },
            Weights::LogAlpha(log_alpha) => Weights::LogAlpha(cut(log_alpha)),
        }
    }
}

/// One chunk of [`KlTerms`]' per-weight vectors; the options are there for the additive
/// parameterization (the variance's slopes for the clipped-α form only).
struct Outputs<'a> {
    log_alpha: &'a mut [f32],
    d_noise: &'a mut [f32],
    d_theta: Option<&'a mut [f32]>,
    variance: Option<&'a mut [f32]>,
    variance_d_noise: Option<&'a mut [f32]>,
    variance_d_theta: Option<&'a mut [f32]>,
}

/// Writes the chunk's per-weight terms and returns its Σ KL. Branch-free loops over slices, so
/// that they vectorise (see [`simd`]).
#[inline(always)]
fn fill(weights: Weights, out: Outputs) -> f64 {
    let mut kl = vec![0f32; out.log_alpha.len()];
    let per_weight = out
        .log_alpha
        .iter_mut()
        .zip(out.d_noise.iter_mut())
        .zip(kl.iter_mut());
    match weights {
        Weights::Additive {
            theta,
            log_sigma2,
            rules,
            train_clip,
        } => {
            const BUILT: &str = "allocated for the additive parameterization";
            let d_theta = out.d_theta.expect(BUILT);
            let eps = rules.kl_eps;
            let inputs = theta.iter().zip(log_sigma2).zip(d_theta.iter_mut());
            for (((la, dn), k), ((&t, &s), dt)) in per_weight.zip(inputs) {
                let ell = additive_log_alpha(t, s, eps);
                let term = sigmoid_kl(ell);
                (*la, *dn, *k) = (term.log_alpha, term.d_log_alpha, term.kl);
                // Selected rather than multiplied: with ε = 0 the ratio is 0/0 at θ = 0.
                let ratio = -2.0 * t / (t * t + eps);
                *dt = if inside_clip(ell) {
                    term.d_log_alpha * ratio
                } else {
                    0.0
                };
            }
            if rules.forward_eps != rules.kl_eps {
                let log_alpha = out.log_alpha.iter_mut().zip(theta).zip(log_sigma2);
                let clip = LOG_ALPHA_CLIP as f32;
                let eps = rules.forward_eps;
                for ((la, &t), &s) in log_alpha {
                    *la = additive_log_alpha(t, s, eps).clamp(-clip, clip);
                }
            }
            let variance = out.variance.expect(BUILT);
            if rules.clipped_alpha_variance {
                clipped_alpha_variance(
                    theta,
                    out.log_alpha,
                    ClippedAlphaVariance {
                        value: variance,
                        d_log_sigma2: out.variance_d_noise.expect(BUILT),
                        d_theta: out.variance_d_theta.expect(BUILT),
                    },
                    rules,
                    train_clip,
                );
            } else {
                for (v, &s) in variance.iter_mut().zip(log_sigma2) {
                    *v = simd::exp(s);
                }
            }
        }
        Weights::LogAlpha(log_alpha) => {
            for (((la, dn), k), &l) in per_weight.zip(log_alpha) {
                let term = sigmoid_kl(l);
                (*la, *dn, *k) = (term.log_alpha, term.d_log_alpha, term.kl);
            }
        }
    }
    lane_sum(&kl)
}

/// One chunk of the clipped-α variance and its slopes.
struct ClippedAlphaVariance<'a> {
    value: &'a mut [f32],
    d_log_sigma2: &'a mut [f32],
    d_theta: &'a mut [f32],
}

/// v = exp(log α)·W² and its slopes from θ and the forward pass's clipped log α (see
/// [`KlTerms`]); log α is inside the clip exactly where its clipped value is.
#[inline(always)]
fn clipped_alpha_variance(
    theta: &[f32],
    log_alpha: &[f32],
    out: ClippedAlphaVariance,
    rules: AdditiveRules,
    train_clip: f64,
) {
    let eps = rules.forward_eps;
    let removable = rules.variance_after_train_clip;
    let outputs = out.value.iter_mut().zip(out.d_log_sigma2).zip(out.d_theta);
    for (((v, dv_ds), dv_dt), (&t, &la)) in outputs.zip(theta.iter().zip(log_alpha)) {
        let alpha = simd::exp(la);
        let removed = removable && la as f64 >= train_clip;
        let (value, slope_theta) = (alpha * t * t, 2.0 * t * alpha);
        let inside = inside_clip(la);
        *v = if removed { 0.0 } else { value };
        *dv_ds = if inside && !removed { value } else { 0.0 };
        // Inside the clip, the two paths of the chain rule as autodiff adds them (see KlTerms).
        let through_log_alpha = value * (-2.0 * t / (t * t + eps));
        *dv_dt = match (removed, inside) {
            (true, _) => 0.0,
            (false, true) => slope_theta + through_log_alpha,
            (false, false) => slope_theta,
        };
    }
}

/// −8 < ℓ < 8: where the clip of log α passes a gradient (none at the edges, as Theano's
/// `switch` in the authors' code).
#[inline(always)]
fn inside_clip(unclipped: f32) -> bool {
    let clip = LOG_ALPHA_CLIP as f32;
    unclipped > -clip && unclipped < clip
}

/// Σ values in f64, over 8 interleaved partial sums so that the loop vectorises; the order is
/// fixed, so the sum does not depend on the CPU.
#[inline(always)]
fn lane_sum(values: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v);
        }
    }
    let rest: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    lanes.iter().sum::<f64>() + rest
}

/// One weight's KL, clipped log α and ∂KL/∂ℓ.
struct WeightTerm {
    kl: f32,
    log_alpha: f32,
    d_log_alpha: f32,
}

/// ℓ = log σ² − log(θ² + ε): one weight's log α in the additive parameterization, before the
/// clip (θ² + ε floored at the smallest normal f32, as in `sparsevd::kl::log_alpha`).
#[inline(always)]
pub fn additive_log_alpha(theta: f32, log_sigma2: f32, eps: f32) -> f32 {
    log_sigma2 - simd::ln((theta * theta + eps).max(f32::MIN_POSITIVE))
}

/// KL, clipped log α and ∂KL/∂ℓ at unclipped log α = ℓ.
#[inline(always)]
fn sigmoid_kl(unclipped: f32) -> WeightTerm {
    let (k1, k2, k3) = (K1 as f32, K2 as f32, K3 as f32);
    let clip = LOG_ALPHA_CLIP as f32;
    let log_alpha = unclipped.clamp(-clip, clip);
    let sig = 1.0 / (1.0 + simd::exp(-(k2 + k3 * log_alpha)));
    // e = exp(−|log α|) gives both softplus(−log α) and sigmoid(−log α) without overflow;
    // e ≥ exp(−8) keeps the absolute error of ln(1 + e) (rather than ln_1p(e)) below 1e-7.
    let e = simd::exp(-log_alpha.abs());
    let softplus_neg = (-log_alpha).max(0.0) + simd::ln(1.0 + e);
    let sigmoid_neg = if log_alpha >= 0.0 {
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + e)
    };
    let d_log_alpha = if inside_clip(unclipped) {
        -k1 * k3 * sig * (1.0 - sig) - 0.5 * sigmoid_neg
    } else {
        0.0
    };
    WeightTerm {
        kl: k1 - k1 * sig + 0.5 * softplus_neg,
        log_alpha,
        d_log_alpha,
    }
}
