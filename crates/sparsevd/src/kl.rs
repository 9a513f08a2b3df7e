//! log α and the sigmoid approximation of KL(q(w | θ, σ²) ‖ p(w)) under the log-uniform prior.

use crate::host_gradient::plus_zero_with_slope;
use crate::vector_math;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// log α is clipped to [−8, 8], as in the authors' code.
pub const LOG_ALPHA_CLIP: f64 = 8.0;

/// Fitted constants of the approximation (Molchanov et al. 2017, eq. 14).
const K1: f64 = 0.63576;
const K2: f64 = 1.87320;
const K3: f64 = 1.48695;

/// log α = clip(log σ² − log(θ² + 1e-8), −8, 8), elementwise.
pub fn log_alpha<const D: usize>(theta: Tensor<D>, log_sigma2: Tensor<D>) -> Tensor<D> {
    (log_sigma2 - (theta.square() + 1e-8).log()).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
}

/// Σ KL of one Sparse VD layer, its gradient with respect to the layer's parameters, and log α,
/// computed in one parallel pass over the weights on the host.
///
/// Per weight, with log α = clip(ℓ, −8, 8), z = k2 + k3·log α:
/// - KL ≈ k1 − k1·sigmoid(z) + 0.5·softplus(−log α), where softplus(−log α) is the stable
///   form of log(1 + 1/α) (it never forms 1/α);
/// - ∂KL/∂ℓ = −k1·k3·sigmoid(z)·(1 − sigmoid(z)) − 0.5·sigmoid(−log α), and 0 where ℓ is
///   outside [−8, 8] (the clip passes no gradient).
///
/// In the additive parameterization ([`KlTerms::additive`]) ℓ = log σ² − log(θ² + 1e-8), so
/// ∂KL/∂log σ² = ∂KL/∂ℓ and ∂KL/∂θ = ∂KL/∂ℓ · (−2θ / (θ² + 1e-8)); in the original one
/// ([`KlTerms::of_log_alpha`]) ℓ is the learned log α itself and KL does not depend on θ.
///
/// Why not burn's autodiff: the same formula as a chain of ~15 elementwise tensor ops and their
/// backward steps took 14.2 ms for 400,000 weights (LeNet-5's dense1, 2 threads), which was
/// 14 % of a LeNet-5 step and more than half of a LeNet-300-100 step.
#[derive(Debug, Clone)]
pub struct KlTerms {
    pub kl: f64,
    pub log_alpha: Vec<f32>,
    /// ∂KL/∂θ; `None` when KL does not depend on θ.
    pub d_theta: Option<Vec<f32>>,
    /// ∂KL/∂ of the learned noise parameter (log σ² or log α).
    pub d_noise: Vec<f32>,
    /// σ² = exp(log σ²) of the additive parameterization, computed in the same pass (burn's
    /// exp is a scalar libm call per value); `None` for the log α one.
    pub variance: Option<Vec<f32>>,
}

/// Weights per parallel chunk; fixed, so that the f64 sum of KL does not depend on threads.
const CHUNK: usize = 1 << 14;

impl KlTerms {
    /// The terms of the additive (θ, log σ²) parameterization.
    pub fn additive(theta: &[f32], log_sigma2: &[f32]) -> Self {
        assert_eq!(theta.len(), log_sigma2.len(), "θ and log σ² differ in size");
        Self::from_weights(Weights::Additive { theta, log_sigma2 })
    }

    /// The terms of the original (θ, log α) parameterization, `log_alpha` unclipped.
    pub fn of_log_alpha(log_alpha: &[f32]) -> Self {
        Self::from_weights(Weights::LogAlpha(log_alpha))
    }

    fn from_weights(weights: Weights) -> Self {
        let n = weights.len();
        let additive = matches!(weights, Weights::Additive { .. });
        let zeros = || vector_math::zeros(n);
        let (mut log_alpha, mut d_noise, mut d_theta, mut variance) =
            (zeros(), zeros(), zeros(), zeros());
        let chunk_kl: Vec<f64> = log_alpha
            .par_chunks_mut(CHUNK)
            .zip(d_noise.par_chunks_mut(CHUNK))
            .zip(d_theta.par_chunks_mut(CHUNK))
            .zip(variance.par_chunks_mut(CHUNK))
            .enumerate()
            .map(|(c, (((log_alpha, d_noise), d_theta), variance))| {
                let out = Outputs {
                    log_alpha,
                    d_theta,
                    d_noise,
                    variance,
                };
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
            d_theta: additive.then_some(d_theta),
            d_noise,
            variance: additive.then_some(variance),
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

    /// σ² (see [`KlTerms::variance`]) as a tensor with the gradient of exp with respect to
    /// `log_sigma2`, the tensor these terms were computed from: σ² + (ℓ − ℓ̄) ⊙ σ², ℓ̄ detached
    /// ([`plus_zero_with_slope`]). Panics for the log α parameterization, which has no σ² of its own.
    pub fn variance_tensor<const D: usize>(&mut self, log_sigma2: Tensor<D>) -> Tensor<D> {
        let sigma2 = self
            .variance
            .take()
            .expect("σ² of the additive parameterization");
        let sigma2 = Tensor::<D>::from_data(
            TensorData::new(sigma2, log_sigma2.dims()),
            &log_sigma2.device(),
        );
        plus_zero_with_slope(sigma2.clone(), log_sigma2, sigma2)
    }
}

/// What the KL pass reads per weight.
#[derive(Clone, Copy)]
enum Weights<'a> {
    Additive {
        theta: &'a [f32],
        log_sigma2: &'a [f32],
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
            Weights::Additive { theta, log_sigma2 } => Weights::Additive {
                theta: cut(theta),
                log_sigma2: cut(log_sigma2),
            },
            Weights::LogAlpha(log_alpha) => Weights::LogAlpha(cut(log_alpha)),
        }
    }
}

/// One chunk of [`KlTerms`]' per-weight vectors.
struct Outputs<'a> {
    log_alpha: &'a mut [f32],
    d_theta: &'a mut [f32],
    d_noise: &'a mut [f32],
    variance: &'a mut [f32],
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
        Weights::Additive { theta, log_sigma2 } => {
            let theta_terms = out.d_theta.iter_mut().zip(out.variance.iter_mut());
            let inputs = theta.iter().zip(log_sigma2).zip(theta_terms);
            for (((la, dn), k), ((&t, &s), (dt, var))) in per_weight.zip(inputs) {
                let term = sigmoid_kl(additive_log_alpha(t, s));
                (*la, *dn, *k) = (term.log_alpha, term.d_log_alpha, term.kl);
                *dt = term.d_log_alpha * (-2.0 * t / (t * t + 1e-8));
                *var = vector_math::exp(s);
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

/// ℓ = log σ² − log(θ² + 1e-8): one weight's log α in the additive parameterization, before
/// the clip.
#[inline(always)]
pub fn additive_log_alpha(theta: f32, log_sigma2: f32) -> f32 {
    log_sigma2 - vector_math::ln(theta * theta + 1e-8)
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
    let d_log_alpha = if (-clip..=clip).contains(&unclipped) {
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
        let terms = KlTerms::additive(&theta, &log_sigma2);
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
        let la = log_alpha(t.clone(), s.clone());
        let kl = (softplus(-la.clone(), 1.0) * 0.5 - sigmoid(la * K3 + K2) * K1).sum();
        let grads = kl.backward();
        let grad =
            |x: &Tensor<1>| crate::weights::host_vec(x.grad(&grads).expect("tracked").into_data());
        (grad(&t), grad(&s))
    }

    #[test]
    fn kl_gradient_matches_autodiff_of_the_formula() {
        let (theta, log_sigma2) = grid();
        let terms = KlTerms::additive(&theta, &log_sigma2);
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
        let additive = KlTerms::additive(&theta, &log_sigma2);
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
        let got = crate::weights::host_vec(
            kl_kingma(Tensor::<1>::from_data(
                TensorData::from([0.0f32, -4.0, -8.0]),
                &device,
            ))
            .into_data(),
        );
        for (got, want) in got.iter().zip([0.389_472_15, 2.614_408_98, 4.634_791_97]) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!((neg_kl_kingma(-4.0) + 2.614_408_98).abs() < 1e-7);
    }

    #[test]
    fn kl_tensor_carries_value_and_gradient() {
        let (theta, log_sigma2) = grid();
        let terms = KlTerms::additive(&theta, &log_sigma2);
        let device = Device::flex().autodiff();
        let tensor =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::from(v), &device).require_grad();
        let (t, s) = (tensor(&theta), tensor(&log_sigma2));
        let kl = terms.clone().into_tensor(t.clone(), s.clone());
        let value: f32 = kl.clone().into_scalar();
        assert!((value as f64 - terms.kl).abs() < 1e-3 * terms.kl.abs());
        let grads = (kl * 2.0).backward();
        let d_theta = crate::weights::host_vec(t.grad(&grads).expect("tracked").into_data());
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
        let terms = KlTerms::additive(&values, &[2.0, 3.5, 9.0, -4.0, -25.0]);
        let theta =
            Tensor::<1>::from_data(TensorData::new(values.to_vec(), [5]), &device).require_grad();
        let clipped = terms.train_clipped(theta.clone(), &values, 3.0);
        let got = crate::weights::host_vec(clipped.clone().into_data());
        assert_eq!(got, vec![1.0, 0.0, 0.0, 0.5, f32::MIN_POSITIVE]);
        let weights =
            Tensor::<1>::from_data(TensorData::new(vec![2.0, 3.0, 4.0, 5.0, 6.0], [5]), &device);
        let grads = (clipped * weights).sum().backward();
        let grad = crate::weights::host_vec(theta.grad(&grads).expect("tracked").into_data());
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
        let got = crate::weights::host_vec(log_alpha(theta, log_sigma2).into_data());
        assert!((got[0] - 0.5).abs() < 1e-6);
        assert_eq!(got[1], 8.0);
        assert_eq!(got[2], -8.0);
    }

    #[test]
    fn variance_tensor_is_exp_of_log_sigma2_with_its_gradient() {
        let device = Device::flex().autodiff();
        let log_sigma2 = [-10.0f32, -3.5, 0.0, 2.25];
        let noise = Tensor::<1>::from_data(TensorData::from(log_sigma2), &device).require_grad();
        let mut terms = KlTerms::additive(&[0.1, -0.2, 0.3, 0.0], &log_sigma2);
        let variance = terms.variance_tensor(noise.clone());
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
}
