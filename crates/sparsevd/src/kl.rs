//! log α, the sigmoid approximation of KL(q(w | θ, σ²) ‖ p(w)) under the log-uniform prior, and
//! the LRT variance of a Sparse VD layer, by the rules of an [`LrtVariance`] form.

use crate::host_gradient::plus_zero_with_slope;
use crate::posterior::LrtVariance;
use crate::vector_math;
use crate::weights::MapKind;
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// log α is clipped to [−8, 8], as in the authors' code.
pub const LOG_ALPHA_CLIP: f64 = 8.0;

/// ε of log α = log σ² − log(θ² + ε) in the σ² form, and in the authors' convolutions.
pub const LOG_ALPHA_EPS: f32 = 1e-8;

/// Fitted constants of the approximation (Molchanov et al. 2017, eq. 14).
const K1: f64 = 0.63576;
const K2: f64 = 1.87320;
const K3: f64 = 1.48695;

/// log α = clip(log σ² − log(θ² + ε), −8, 8), elementwise (θ² + ε floored at the smallest normal
/// f32, so that θ = 0 with ε = 0 gives log α = 8 rather than a logarithm of 0).
pub fn log_alpha<const D: usize>(theta: Tensor<D>, log_sigma2: Tensor<D>, eps: f32) -> Tensor<D> {
    clip_log_alpha(unclipped_log_alpha(theta, log_sigma2, eps))
}

fn unclipped_log_alpha<const D: usize>(
    theta: Tensor<D>,
    log_sigma2: Tensor<D>,
    eps: f32,
) -> Tensor<D> {
    log_sigma2 - (theta.square() + eps).clamp_min(f32::MIN_POSITIVE).log()
}

/// clip(ℓ, −8, 8) whose gradient is 0 where ℓ is clipped, edges included (as Theano's `switch`
/// in the authors' code), whatever burn's `clamp` passes there.
fn clip_log_alpha<const D: usize>(unclipped: Tensor<D>) -> Tensor<D> {
    let c = LOG_ALPHA_CLIP;
    let outside = unclipped
        .clone()
        .lower_equal_elem(-c)
        .bool_or(unclipped.clone().greater_equal_elem(c));
    let clipped = unclipped.clone().detach().clamp(-c, c);
    unclipped.mask_where(outside, clipped)
}

/// Where ε enters log α = log σ² − log(θ² + ε), and which variance v the LRT sample takes: the
/// rules of one Sparse VD layer under an [`LrtVariance`] form (see there for the sources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdditiveRules {
    pub variance: LrtVariance,
    /// ε of log α in the KL term.
    pub kl_eps: f32,
    /// ε of log α in the forward pass: train clip, evaluation mask and the variance.
    pub forward_eps: f32,
    /// The variance takes θ after the train clip: removed weights give no variance.
    pub variance_after_train_clip: bool,
}

impl AdditiveRules {
    pub fn new(variance: LrtVariance, map: MapKind) -> Self {
        let (kl_eps, forward_eps, variance_after_train_clip) = match (variance, map) {
            (LrtVariance::Sigma2, _) => (LOG_ALPHA_EPS, LOG_ALPHA_EPS, false),
            (LrtVariance::ClippedAlpha, MapKind::Dense) => (0.0, 0.0, false),
            (LrtVariance::ClippedAlpha, MapKind::Convolution) => (0.0, LOG_ALPHA_EPS, true),
        };
        Self {
            variance,
            kl_eps,
            forward_eps,
            variance_after_train_clip,
        }
    }
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
/// 23.3 / 16.0 / 8.7 % with [`composed_additive_terms`] under burn's autodiff).
///
/// Why not burn's autodiff ([`composed_additive_terms`] is that form, and the reference the
/// tests hold this pass to): the KL as a chain of ~15 elementwise tensor ops and their backward
/// steps took 14.2 ms for 400,000 weights (LeNet-5's dense1, 2 threads), which was 14 % of a
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
            Weights::Additive { rules, .. } => (true, rules.variance == LrtVariance::ClippedAlpha),
            Weights::LogAlpha(_) => (false, false),
        };
        let zeros = || vector_math::zeros(n);
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
                vector_math::with_simd(
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
    /// ([`crate::weights::MeanGradient::WhereNonzero`]). One parallel pass on the host: as a
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
        let (mut kept, mut slope) = (vector_math::zeros(n), vector_math::zeros(n));
        kept.par_chunks_mut(CHUNK)
            .zip(slope.par_chunks_mut(CHUNK))
            .zip(theta_values.par_chunks(CHUNK))
            .zip(self.log_alpha.par_chunks(CHUNK))
            .for_each(|(((kept, slope), theta), log_alpha)| {
                let weights = kept.iter_mut().zip(slope).zip(theta).zip(log_alpha);
                vector_math::with_simd(
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

/// Σ KL, the forward pass's log α and the LRT variance of a Sparse VD layer, composed from
/// burn's tensor operations and differentiated by burn's autodiff: the readable form of
/// [`KlTerms::additive`] (same formulas, same rules), the reference its tests hold it to, and
/// the path of backends other than the CPU's. `train_clip` is the train clip's threshold, if on.
pub struct ComposedTerms<const D: usize> {
    pub kl: Tensor<1>,
    /// log α of the forward pass, clipped, without gradient.
    pub log_alpha: Tensor<D>,
    pub variance: Tensor<D>,
}

pub fn composed_additive_terms<const D: usize>(
    theta: Tensor<D>,
    log_sigma2: Tensor<D>,
    rules: AdditiveRules,
    train_clip: Option<f64>,
) -> ComposedTerms<D> {
    let kl = kl_approx(log_alpha(theta.clone(), log_sigma2.clone(), rules.kl_eps)).sum();
    let forward = log_alpha(theta.clone(), log_sigma2.clone(), rules.forward_eps);
    let variance = match rules.variance {
        LrtVariance::Sigma2 => log_sigma2.exp(),
        LrtVariance::ClippedAlpha => {
            let w = match train_clip.filter(|_| rules.variance_after_train_clip) {
                Some(t) => theta.mask_fill(forward.clone().greater_equal_elem(t), 0.0),
                None => theta,
            };
            forward.clone().exp() * w.square()
        }
    };
    ComposedTerms {
        kl,
        log_alpha: forward.detach(),
        variance,
    }
}

/// KL ≈ k₁ − k₁·σ(k₂ + k₃·log α) + ½·log(1 + 1/α) per weight (the paper's eq. 14, negated), from
/// log α already clipped, in burn's operations; ½·log(1 + 1/α) is ½·softplus(−log α).
pub fn kl_approx<const D: usize>(log_alpha: Tensor<D>) -> Tensor<D> {
    softplus(log_alpha.clone().neg(), 1.0) * 0.5 - sigmoid(log_alpha * K3 + K2) * K1 + K1
}

/// Σ KL of the original (θ, log α) parameterization in burn's operations, from the learned log α
/// (unclipped): the composed form of [`KlTerms::of_log_alpha`].
pub fn composed_log_alpha_kl<const D: usize>(learned_log_alpha: Tensor<D>) -> Tensor<1> {
    kl_approx(clip_log_alpha(learned_log_alpha)).sum()
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
/// that they vectorise (see [`vector_math`]).
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
            match rules.variance {
                LrtVariance::Sigma2 => {
                    for (v, &s) in variance.iter_mut().zip(log_sigma2) {
                        *v = vector_math::exp(s);
                    }
                }
                LrtVariance::ClippedAlpha => clipped_alpha_variance(
                    theta,
                    out.log_alpha,
                    ClippedAlphaVariance {
                        value: variance,
                        d_log_sigma2: out.variance_d_noise.expect(BUILT),
                        d_theta: out.variance_d_theta.expect(BUILT),
                    },
                    rules,
                    train_clip,
                ),
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
        let alpha = vector_math::exp(la);
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
/// clip (θ² + ε floored at the smallest normal f32, as in [`log_alpha`]).
#[inline(always)]
pub fn additive_log_alpha(theta: f32, log_sigma2: f32, eps: f32) -> f32 {
    log_sigma2 - vector_math::ln((theta * theta + eps).max(f32::MIN_POSITIVE))
}

/// KL, clipped log α and ∂KL/∂ℓ at unclipped log α = ℓ.
#[inline(always)]
fn sigmoid_kl(unclipped: f32) -> WeightTerm {
    let (k1, k2, k3) = (K1 as f32, K2 as f32, K3 as f32);
    let clip = LOG_ALPHA_CLIP as f32;
    let log_alpha = unclipped.clamp(-clip, clip);
    let sig = 1.0 / (1.0 + vector_math::exp(-(k2 + k3 * log_alpha)));
    // e = exp(−|log α|) gives both softplus(−log α) and sigmoid(−log α) without overflow;
    // e ≥ exp(−8) keeps the absolute error of ln(1 + e) (rather than ln_1p(e)) below 1e-7.
    let e = vector_math::exp(-log_alpha.abs());
    let softplus_neg = (-log_alpha).max(0.0) + vector_math::ln(1.0 + e);
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

/// The same approximation for one value of log α (for tests, tables and figures).
pub fn kl_approx_value(log_alpha: f64) -> f64 {
    let sig = 1.0 / (1.0 + (-(K2 + K3 * log_alpha)).exp());
    let softplus = (-log_alpha).max(0.0) + (-(log_alpha.abs())).exp().ln_1p();
    K1 - K1 * sig + 0.5 * softplus
}

/// −E[log|ξ|] for ξ ~ N(0, 1) = (γ_Euler + ln 2) / 2: the constant that makes −KL → 0 as α → ∞.
const NEG_KL_LIMIT: f64 = 0.635_181_422_730_739;

/// −KL up to the constant fixed by −KL → 0 as α → ∞, estimated from standard normal samples ξ:
/// −KL = 0.5·log α − E[log|1 + √α·ξ|] − (γ + ln 2)/2 (the expectation is over ε = 1 + √α·ξ ~ N(1, α)).
pub fn neg_kl_monte_carlo(log_alpha: f64, normals: &[f64]) -> f64 {
    let sqrt_alpha = (0.5 * log_alpha).exp();
    let mean_log = normals
        .iter()
        .map(|xi| (1.0 + sqrt_alpha * xi).abs().ln())
        .sum::<f64>()
        / normals.len() as f64;
    0.5 * log_alpha - mean_log - NEG_KL_LIMIT
}

/// Kingma et al. (2015)'s cubic approximation of −KL, valid for α ≤ 1, with the same constant:
/// 0.5·log α + 1.16145124·α − 1.50204118·α² + 0.58629921·α³ − (γ + ln 2)/2.
pub fn neg_kl_kingma(log_alpha: f64) -> f64 {
    let a = log_alpha.exp();
    0.5 * log_alpha + KINGMA[0] * a + KINGMA[1] * a * a + KINGMA[2] * a * a * a - NEG_KL_LIMIT
}

/// c1, c2, c3 of Kingma et al.'s cubic approximation.
const KINGMA: [f64; 3] = [1.161_451_24, -1.502_041_18, 0.586_299_21];

/// KL per weight under Kingma et al.'s cubic approximation, elementwise: −[`neg_kl_kingma`].
pub fn kl_kingma<const D: usize>(log_alpha: Tensor<D>) -> Tensor<D> {
    let a = log_alpha.clone().exp();
    let cubic = ((a.clone() * KINGMA[2] + KINGMA[1]) * a.clone() + KINGMA[0]) * a;
    (log_alpha * 0.5 + cubic).neg() + NEG_KL_LIMIT
}

/// About `n` standard normal values from a regular lattice of (u1, u2) pairs through
/// Box–Muller: deterministic, and smoother than random draws for Monte Carlo estimates.
pub fn normal_lattice(n: usize) -> Vec<f64> {
    let side = (n as f64).sqrt().ceil() as usize;
    let mut v = Vec::with_capacity(side * side);
    for i in 0..side {
        for j in 0..side {
            let u1 = (i as f64 + 0.5) / side as f64;
            let u2 = (j as f64 + 0.5) / side as f64;
            v.push((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// The σ² form: ε = 1e-8 in every log α (the same rules for both map kinds).
    fn sigma2_rules() -> AdditiveRules {
        AdditiveRules::new(LrtVariance::Sigma2, MapKind::Dense)
    }

    /// Reference values of KL (positive) from sparse-vd.md.
    const REFERENCE: [(f64, f64); 5] = [
        (-8.0, 4.6359),
        (-4.0, 2.6342),
        (0.0, 0.4312),
        (3.0, 0.0254),
        (8.0, 1.7e-4),
    ];

    #[test]
    fn scalar_kl_matches_reference_points() {
        for (log_alpha, kl) in REFERENCE {
            let got = kl_approx_value(log_alpha);
            let tol = if kl < 1e-3 { 2e-5 } else { 2e-4 };
            assert!((got - kl).abs() < tol, "log α = {log_alpha}: {got} vs {kl}");
        }
    }

    /// θ and log σ² covering both clip regions and the interior, with θ = 1 so that
    /// log α = log σ² − log(1 + 1e-8).
    fn grid() -> (Vec<f32>, Vec<f32>) {
        let mut theta = vec![1.0f32; 33];
        let mut log_sigma2: Vec<f32> = (0..33).map(|i| -12.0 + 0.75 * i as f32).collect();
        // Small, negative and large θ too.
        theta.extend([1e-3, -0.02, 0.5, -3.0]);
        log_sigma2.extend([-10.0, -9.0, -1.0, 2.0]);
        (theta, log_sigma2)
    }

    #[test]
    fn kl_terms_sum_the_scalar_formula() {
        let (theta, log_sigma2) = grid();
        let terms = KlTerms::additive(&theta, &log_sigma2, sigma2_rules(), None);
        let want: f64 = theta
            .iter()
            .zip(&log_sigma2)
            .map(|(&t, &s)| {
                let la = (s as f64 - ((t as f64).powi(2) + 1e-8).ln()).clamp(-8.0, 8.0);
                kl_approx_value(la)
            })
            .sum();
        assert!((terms.kl - want).abs() < 1e-4, "{} vs {want}", terms.kl);
    }

    /// The same KL written as burn tensor ops, differentiated by burn's autodiff: the
    /// reference for the hand-derived gradient.
    fn autodiff_gradient(theta: &[f32], log_sigma2: &[f32]) -> (Vec<f32>, Vec<f32>) {
        use burn::tensor::activation::{sigmoid, softplus};
        let device = Device::flex().autodiff();
        let tensor =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::from(v), &device).require_grad();
        let (t, s) = (tensor(theta), tensor(log_sigma2));
        let la = log_alpha(t.clone(), s.clone(), LOG_ALPHA_EPS);
        let kl = (softplus(-la.clone(), 1.0) * 0.5 - sigmoid(la * K3 + K2) * K1).sum();
        let grads = kl.backward();
        let grad = |x: &Tensor<1>| crate::weights::host_vec(x.grad(&grads).expect("tracked"));
        (grad(&t), grad(&s))
    }

    #[test]
    fn kl_gradient_matches_autodiff_of_the_formula() {
        let (theta, log_sigma2) = grid();
        let terms = KlTerms::additive(&theta, &log_sigma2, sigma2_rules(), None);
        let (d_theta, d_log_sigma2) = autodiff_gradient(&theta, &log_sigma2);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
        for i in 0..theta.len() {
            assert!(
                close(terms.d_noise[i], d_log_sigma2[i]),
                "∂KL/∂log σ² at θ = {}, log σ² = {}: {} vs autodiff {}",
                theta[i],
                log_sigma2[i],
                terms.d_noise[i],
                d_log_sigma2[i]
            );
            assert!(
                close(terms.d_theta.as_ref().expect("additive")[i], d_theta[i]),
                "∂KL/∂θ at θ = {}, log σ² = {}: {} vs autodiff {}",
                theta[i],
                log_sigma2[i],
                terms.d_theta.as_ref().expect("additive")[i],
                d_theta[i]
            );
        }
        // Clipped weights get no gradient: log α = −12 and +12 are outside [−8, 8].
        assert_eq!(terms.d_noise[0], 0.0);
        assert_eq!(terms.d_noise[32], 0.0);
        assert!(terms.d_noise[16] < 0.0);
    }

    /// In the (θ, log α) parameterization KL is a function of log α alone: the same values as
    /// the additive form at the same log α, ∂KL/∂log α from burn's autodiff of the formula,
    /// nothing for θ, and no gradient where log α is clipped.
    #[test]
    fn kl_of_learned_log_alpha_matches_the_additive_form_and_autodiff() {
        let (theta, log_sigma2) = grid();
        let additive = KlTerms::additive(&theta, &log_sigma2, sigma2_rules(), None);
        let unclipped: Vec<f32> = theta
            .iter()
            .zip(&log_sigma2)
            .map(|(t, s)| s - (t * t + 1e-8).ln())
            .collect();
        let terms = KlTerms::of_log_alpha(&unclipped);
        assert!(terms.d_theta.is_none());
        assert!((terms.kl - additive.kl).abs() < 1e-4);
        assert_eq!(terms.log_alpha, additive.log_alpha);
        // With θ = 1 in the grid's first 33 entries, ∂KL/∂log σ² = ∂KL/∂log α.
        let (_, d_log_sigma2) = autodiff_gradient(&theta, &log_sigma2);
        for i in 0..33 {
            assert!(
                (terms.d_noise[i] - d_log_sigma2[i]).abs() <= 1e-4 * (1.0 + d_log_sigma2[i].abs()),
                "∂KL/∂log α at {}: {} vs {}",
                unclipped[i],
                terms.d_noise[i],
                d_log_sigma2[i]
            );
        }
        assert_eq!(terms.d_noise[0], 0.0, "log α = −12 is clipped");
    }

    /// Kingma et al.'s cubic KL at known points (the constant (γ + ln 2)/2 included).
    #[test]
    fn cubic_kl_has_known_values() {
        let device = Device::flex();
        let got = crate::weights::host_vec(kl_kingma(Tensor::<1>::from_data(
            TensorData::from([0.0f32, -4.0, -8.0]),
            &device,
        )));
        for (got, want) in got.iter().zip([0.389_472_15, 2.614_408_98, 4.634_791_97]) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!((neg_kl_kingma(-4.0) + 2.614_408_98).abs() < 1e-7);
    }

    #[test]
    fn kl_tensor_carries_value_and_gradient() {
        let (theta, log_sigma2) = grid();
        let terms = KlTerms::additive(&theta, &log_sigma2, sigma2_rules(), None);
        let device = Device::flex().autodiff();
        let tensor =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::from(v), &device).require_grad();
        let (t, s) = (tensor(&theta), tensor(&log_sigma2));
        let kl = terms.clone().into_tensor(t.clone(), s.clone());
        let value: f32 = kl.clone().into_scalar();
        assert!((value as f64 - terms.kl).abs() < 1e-3 * terms.kl.abs());
        let grads = (kl * 2.0).backward();
        let d_theta = crate::weights::host_vec(t.grad(&grads).expect("tracked"));
        let want: Vec<f32> = terms
            .d_theta
            .expect("additive")
            .iter()
            .map(|g| 2.0 * g)
            .collect();
        assert_eq!(d_theta, want);
    }

    /// The train clip zeroes the weights with log α ≥ 3 and passes the gradient only to the
    /// others; a kept θ of exactly 0 (log α = −25 + 18.4 here) stays nonzero, so that the
    /// result is 0 exactly at the removed weights.
    #[test]
    fn train_clip_follows_log_alpha_gradient_included() {
        let device = Device::flex().autodiff();
        let values = [1.0, -1.0, 1.0, 0.5, 0.0];
        let terms = KlTerms::additive(&values, &[2.0, 3.5, 9.0, -4.0, -25.0], sigma2_rules(), None);
        let theta =
            Tensor::<1>::from_data(TensorData::new(values.to_vec(), [5]), &device).require_grad();
        let clipped = terms.train_clipped(theta.clone(), &values, 3.0);
        let got = crate::weights::host_vec(clipped.clone());
        assert_eq!(got, vec![1.0, 0.0, 0.0, 0.5, f32::MIN_POSITIVE]);
        let weights =
            Tensor::<1>::from_data(TensorData::new(vec![2.0, 3.0, 4.0, 5.0, 6.0], [5]), &device);
        let grads = (clipped * weights).sum().backward();
        let grad = crate::weights::host_vec(theta.grad(&grads).expect("tracked"));
        assert_eq!(grad, vec![2.0, 0.0, 0.0, 5.0, 6.0]);
    }

    #[test]
    fn sigmoid_approximation_matches_monte_carlo() {
        let normals = normal_lattice(250_000);
        for log_alpha in [-6.0, -2.0, 0.0, 2.0, 6.0] {
            let mc = neg_kl_monte_carlo(log_alpha, &normals);
            let approx = -kl_approx_value(log_alpha);
            assert!(
                (mc - approx).abs() < 0.02,
                "log α = {log_alpha}: MC {mc} vs approx {approx}"
            );
        }
        // Kingma's cubic agrees for small α.
        let mc = neg_kl_monte_carlo(-4.0, &normals);
        assert!((neg_kl_kingma(-4.0) - mc).abs() < 0.02);
    }

    #[test]
    fn kl_is_stable_at_extreme_log_alpha() {
        assert!(kl_approx_value(-1e4).is_finite());
        assert!(kl_approx_value(1e4).abs() < 1e-6);
    }

    #[test]
    fn log_alpha_is_clipped_and_exact_inside_the_range() {
        let device = Device::flex();
        let theta = Tensor::<1>::from_data(TensorData::from([1.0f32, 1e-3, 10.0]), &device);
        let log_sigma2 = Tensor::<1>::from_data(TensorData::from([0.5f32, 0.0, -20.0]), &device);
        let got = crate::weights::host_vec(log_alpha(theta, log_sigma2, LOG_ALPHA_EPS));
        assert!((got[0] - 0.5).abs() < 1e-6);
        assert_eq!(got[1], 8.0);
        assert_eq!(got[2], -8.0);
    }

    #[test]
    fn variance_tensor_is_exp_of_log_sigma2_with_its_gradient() {
        let device = Device::flex().autodiff();
        let log_sigma2 = [-10.0f32, -3.5, 0.0, 2.25];
        let noise = Tensor::<1>::from_data(TensorData::from(log_sigma2), &device).require_grad();
        let theta = [0.1, -0.2, 0.3, 0.0];
        let mut terms = KlTerms::additive(&theta, &log_sigma2, sigma2_rules(), None);
        let theta = Tensor::<1>::from_data(TensorData::from(theta), &device).require_grad();
        let variance = terms.variance_tensor(theta, noise.clone());
        let grads = variance.clone().sum().backward();
        let value = variance.into_data().try_to_vec::<f32>().expect("f32");
        let slope = noise
            .grad(&grads)
            .expect("tracked")
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        for (i, &l) in log_sigma2.iter().enumerate() {
            let exact = l.exp();
            assert!(
                (value[i] - exact).abs() <= 4.0 * f32::EPSILON * exact,
                "{l}: {}",
                value[i]
            );
            assert_eq!(slope[i], value[i], "d exp(ℓ)/dℓ = exp(ℓ)");
        }
    }

    fn authors(kind: MapKind) -> AdditiveRules {
        AdditiveRules::new(LrtVariance::ClippedAlpha, kind)
    }

    /// One weight's KL and LRT variance in f64, straight from the formulas of [`KlTerms`].
    fn reference(t: f64, s: f64, rules: AdditiveRules, train_clip: Option<f64>) -> (f64, f64) {
        let ell = |eps: f32| s - (t * t + eps as f64).ln();
        let kl = kl_approx_value(ell(rules.kl_eps).clamp(-8.0, 8.0));
        let la = ell(rules.forward_eps).clamp(-8.0, 8.0);
        let removed = rules.variance_after_train_clip && train_clip.is_some_and(|c| la >= c);
        let v = match rules.variance {
            LrtVariance::Sigma2 => s.exp(),
            LrtVariance::ClippedAlpha if removed => 0.0,
            LrtVariance::ClippedAlpha => la.exp() * t * t,
        };
        (kl, v)
    }

    /// ∂v/∂log σ² and ∂v/∂θ of the first weight of `terms`.
    fn variance_slopes(terms: &KlTerms, i: usize) -> (f32, f32) {
        let v = terms.variance.as_ref().expect("additive");
        let d_s = v.d_log_sigma2.as_ref().map_or(v.value[i], |d| d[i]);
        let d_t = v.d_theta.as_ref().map_or(0.0, |d| d[i]);
        (d_s, d_t)
    }

    /// The authors' form caps the variance at e⁸·θ² and floors it at e⁻⁸·θ², where log σ² then
    /// gets no gradient and θ gets 2θ·e^(±8); inside the clip it is σ² with σ²'s gradient.
    #[test]
    fn clipped_alpha_variance_at_known_values_in_both_clip_regions() {
        let theta = [0.5f32, 1e-3, 2.0];
        let log_sigma2 = [-3.0f32, 0.0, -12.0];
        let terms = KlTerms::additive(&theta, &log_sigma2, authors(MapKind::Dense), None);
        let v = &terms.variance.as_ref().expect("additive").value;
        let e8 = 8f64.exp();
        let want = [(-3f64).exp(), e8 * 1e-6, 4.0 / e8];
        for i in 0..3 {
            assert!(
                (v[i] as f64 - want[i]).abs() <= 1e-5 * want[i],
                "v[{i}] = {} vs {}",
                v[i],
                want[i]
            );
        }
        assert_eq!(terms.log_alpha[1], 8.0);
        assert_eq!(terms.log_alpha[2], -8.0);
        let slopes: Vec<(f32, f32)> = (0..3).map(|i| variance_slopes(&terms, i)).collect();
        assert_eq!(slopes[0].0, v[0], "inside: ∂σ²/∂log σ² = σ²");
        assert_eq!(
            slopes[0].1, 0.0,
            "inside, ε = 0: v = σ² does not depend on θ"
        );
        assert_eq!(
            (slopes[1].0, slopes[2].0),
            (0.0, 0.0),
            "clipped: no log σ² gradient"
        );
        assert!((slopes[1].1 as f64 - 2e-3 * e8).abs() < 1e-3 * 2e-3 * e8);
        assert!((slopes[2].1 as f64 - 4.0 / e8).abs() < 1e-3 * 4.0 / e8);
        // The σ² form is σ² everywhere: 1 and e⁻¹² where the authors' form is capped.
        let sigma2 = KlTerms::additive(&theta, &log_sigma2, sigma2_rules(), None);
        let v2 = &sigma2.variance.as_ref().expect("additive").value;
        assert!((v2[1] - 1.0).abs() < 1e-6 && (v2[2] as f64 - (-12f64).exp()).abs() < 1e-11);
    }

    /// Under the train clip (threshold 3) a convolution's removed weights give no variance and
    /// no variance gradient; a dense layer's keep both. The convolution's log α has ε = 1e-8,
    /// the dense layer's none, so a tiny θ can be removed in one and kept in the other; the KL
    /// term has no ε in either.
    #[test]
    fn train_clip_removes_variance_in_convolutions_only() {
        let theta = [0.5f32, 0.01, 0.02, 1e-5];
        let log_sigma2 = [-3.0f32, -6.0, -1.0, -20.0];
        let dense = KlTerms::additive(&theta, &log_sigma2, authors(MapKind::Dense), Some(3.0));
        let conv = KlTerms::additive(
            &theta,
            &log_sigma2,
            authors(MapKind::Convolution),
            Some(3.0),
        );
        // log α (ε = 0): −1.61, 3.21, 6.82, 3.03; with ε = 1e-8 the last is −20 + 18.41.
        assert!(
            (dense.log_alpha[3] - 3.026).abs() < 1e-2,
            "{:?}",
            dense.log_alpha
        );
        assert!(
            (conv.log_alpha[3] + 1.589).abs() < 1e-2,
            "{:?}",
            conv.log_alpha
        );
        assert_eq!(dense.kl, conv.kl);
        let value = |t: &KlTerms| t.variance.as_ref().expect("additive").value.clone();
        let (vd, vc) = (value(&dense), value(&conv));
        for i in 0..3 {
            let sigma2 = (log_sigma2[i] as f64).exp();
            assert!(
                (vd[i] as f64 - sigma2).abs() < 1e-5 * sigma2,
                "dense v[{i}]"
            );
        }
        assert!((vc[0] as f64 - (-3f64).exp()).abs() < 1e-5 * (-3f64).exp());
        assert_eq!((vc[1], vc[2]), (0.0, 0.0), "removed weights: no variance");
        assert!(vc[3] > 0.0, "kept by the convolution's log α");
        for i in [1, 2] {
            assert_eq!(variance_slopes(&conv, i), (0.0, 0.0));
            assert_eq!(variance_slopes(&dense, i).0, vd[i]);
        }
        // Without the train clip the convolution keeps them.
        let unclipped = KlTerms::additive(&theta, &log_sigma2, authors(MapKind::Convolution), None);
        assert!(value(&unclipped)[1] > 0.0);
    }

    /// ∂KL and ∂v with respect to log σ² and θ against central finite differences of the f64
    /// formulas, on both sides of each clip edge (log α = ±7.5, ±8.5), inside, and for a weight
    /// the train clip removes; for every form and map kind.
    #[test]
    fn gradients_match_finite_differences_on_both_sides_of_each_clip_edge() {
        let t = 0.3f64;
        let train_clip = Some(3.0);
        let rule_sets = [
            sigma2_rules(),
            authors(MapKind::Dense),
            authors(MapKind::Convolution),
        ];
        for rules in rule_sets {
            for target in [-8.5, -7.5, 0.0, 5.0, 7.5, 8.5] {
                let s = target + (t * t + rules.forward_eps as f64).ln();
                let terms = KlTerms::additive(&[t as f32], &[s as f32], rules, train_clip);
                let h = 1e-4;
                let diff = |f: &dyn Fn(f64, f64) -> f64, dt: f64, ds: f64| {
                    (f(t + dt, s + ds) - f(t - dt, s - ds)) / (2.0 * h)
                };
                let kl = |t: f64, s: f64| reference(t, s, rules, train_clip).0;
                let v = |t: f64, s: f64| reference(t, s, rules, train_clip).1;
                let (dv_ds, dv_dt) = variance_slopes(&terms, 0);
                let checks = [
                    ("∂KL/∂log σ²", terms.d_noise[0], diff(&kl, 0.0, h)),
                    (
                        "∂KL/∂θ",
                        terms.d_theta.as_ref().expect("additive")[0],
                        diff(&kl, h, 0.0),
                    ),
                    ("∂v/∂log σ²", dv_ds, diff(&v, 0.0, h)),
                    ("∂v/∂θ", dv_dt, diff(&v, h, 0.0)),
                ];
                for (what, got, want) in checks {
                    assert!(
                        (got as f64 - want).abs() <= 2e-3 * want.abs() + 1e-6,
                        "{rules:?}, log α {target}: {what} = {got}, finite difference {want}"
                    );
                }
            }
        }
    }

    /// The host pass and the composed burn form (autodiff) give the same KL, log α, variance and
    /// gradients of KL + Σ c·v, for every form and map kind, with and without the train clip.
    #[test]
    fn host_pass_equals_the_composed_tensor_form() {
        let (theta, log_sigma2) = grid();
        let n = theta.len();
        let weights: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let device = Device::flex().autodiff();
        let tensor =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::from(v), &device).require_grad();
        let host = |v: Tensor<1>| crate::weights::host_vec(v);
        let rule_sets = [
            sigma2_rules(),
            authors(MapKind::Dense),
            authors(MapKind::Convolution),
        ];
        for rules in rule_sets {
            for train_clip in [None, Some(3.0)] {
                let c = Tensor::<1>::from_data(TensorData::from(weights.as_slice()), &device);
                let (t1, s1) = (tensor(&theta), tensor(&log_sigma2));
                let mut terms = KlTerms::additive(&theta, &log_sigma2, rules, train_clip);
                let log_alpha_host = terms.log_alpha.clone();
                let kl_value = terms.kl;
                let v1 = terms.variance_tensor(t1.clone(), s1.clone());
                let kl1 = terms.into_tensor(t1.clone(), s1.clone());
                let loss1 = kl1 + (v1.clone() * c.clone()).sum();
                let g1 = loss1.backward();

                let (t2, s2) = (tensor(&theta), tensor(&log_sigma2));
                let composed = composed_additive_terms(t2.clone(), s2.clone(), rules, train_clip);
                let kl2: f32 = composed.kl.clone().into_scalar();
                let v2 = composed.variance.clone();
                let loss2 = composed.kl + (v2.clone() * c).sum();
                let g2 = loss2.backward();

                let case = format!("{rules:?}, train clip {train_clip:?}");
                assert!(
                    (kl_value - kl2 as f64).abs() < 1e-4 * kl_value.abs(),
                    "{case}: KL"
                );
                let close = |a: f32, b: f32, tol: f32| (a - b).abs() <= tol * (1.0 + b.abs());
                let pairs = [
                    ("log α", log_alpha_host, host(composed.log_alpha), 1e-5),
                    ("v", host(v1), host(v2), 1e-5),
                    (
                        "∂/∂θ",
                        host(t1.grad(&g1).expect("tracked")),
                        host(t2.grad(&g2).expect("tracked")),
                        1e-4,
                    ),
                    (
                        "∂/∂log σ²",
                        host(s1.grad(&g1).expect("tracked")),
                        host(s2.grad(&g2).expect("tracked")),
                        1e-4,
                    ),
                ];
                for (what, a, b, tol) in pairs {
                    for i in 0..n {
                        assert!(
                            close(a[i], b[i], tol),
                            "{case}: {what} at θ = {}, log σ² = {}: host {} vs composed {}",
                            theta[i],
                            log_sigma2[i],
                            a[i],
                            b[i]
                        );
                    }
                }
            }
        }
    }
}
