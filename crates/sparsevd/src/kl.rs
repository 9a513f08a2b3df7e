//! log α, the sigmoid approximation of KL(q(w | θ, σ²) ‖ p(w)) under the log-uniform prior, and
//! the LRT variance of a Sparse VD layer, by the rules of an [`LrtVariance`] form, composed from
//! burn's tensor operations; the CPU's one-pass form of the same terms is `cpu_kernels::kl`.

use crate::posterior::LrtVariance;
use crate::weights::MapKind;
use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, softplus};
pub use cpu_kernels::kl::{AdditiveRules, KlTerms, LOG_ALPHA_CLIP};
use cpu_kernels::kl::{K1, K2, K3};

/// ε of log α = log σ² − log(θ² + ε) in the σ² form, and in the authors' convolutions.
pub const LOG_ALPHA_EPS: f32 = 1e-8;

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

/// The rules of one Sparse VD layer under the LRT variance form `variance` (see
/// [`LrtVariance`] for the sources): where ε enters log α = log σ² − log(θ² + ε), and whether
/// the variance takes θ after the train clip.
pub fn additive_rules(variance: LrtVariance, map: MapKind) -> AdditiveRules {
    let (kl_eps, forward_eps, variance_after_train_clip) = match (variance, map) {
        (LrtVariance::Sigma2, _) => (LOG_ALPHA_EPS, LOG_ALPHA_EPS, false),
        (LrtVariance::ClippedAlpha, MapKind::Dense) => (0.0, 0.0, false),
        (LrtVariance::ClippedAlpha, MapKind::Convolution) => (0.0, LOG_ALPHA_EPS, true),
    };
    AdditiveRules {
        clipped_alpha_variance: variance == LrtVariance::ClippedAlpha,
        kl_eps,
        forward_eps,
        variance_after_train_clip,
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
    let variance = if rules.clipped_alpha_variance {
        let w = match train_clip.filter(|_| rules.variance_after_train_clip) {
            Some(t) => theta.mask_fill(forward.clone().greater_equal_elem(t), 0.0),
            None => theta,
        };
        forward.clone().exp() * w.square()
    } else {
        log_sigma2.exp()
    };
    ComposedTerms {
        kl,
        log_alpha: forward.detach(),
        variance,
    }
}

/// The train clip in burn's operations: θ with the weights whose `log_alpha` ≥ the threshold set
/// to 0, θ itself when the clip is off (`None`).
pub fn composed_train_clip<const D: usize>(
    theta: Tensor<D>,
    log_alpha: Tensor<D>,
    threshold: Option<f64>,
) -> Tensor<D> {
    match threshold {
        Some(t) => theta.mask_fill(log_alpha.greater_equal_elem(t), 0.0),
        None => theta,
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
        additive_rules(LrtVariance::Sigma2, MapKind::Dense)
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
        additive_rules(LrtVariance::ClippedAlpha, kind)
    }

    /// One weight's KL and LRT variance in f64, straight from the formulas of [`KlTerms`].
    fn reference(t: f64, s: f64, rules: AdditiveRules, train_clip: Option<f64>) -> (f64, f64) {
        let ell = |eps: f32| s - (t * t + eps as f64).ln();
        let kl = kl_approx_value(ell(rules.kl_eps).clamp(-8.0, 8.0));
        let la = ell(rules.forward_eps).clamp(-8.0, 8.0);
        let removed = rules.variance_after_train_clip && train_clip.is_some_and(|c| la >= c);
        let v = match (rules.clipped_alpha_variance, removed) {
            (false, _) => s.exp(),
            (true, true) => 0.0,
            (true, false) => la.exp() * t * t,
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
