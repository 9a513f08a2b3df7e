//! log α and the sigmoid approximation of KL(q(w | θ, σ²) ‖ p(w)) under the log-uniform prior.

use burn::tensor::{Tensor, activation};

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

/// Σ KL over all weights, with per-weight
/// KL ≈ k1 − k1·sigmoid(k2 + k3·log α) + 0.5·softplus(−log α).
///
/// `softplus(−log α)` is the stable form of log(1 + 1/α): it never forms 1/α.
pub fn kl_approx<const D: usize>(log_alpha: Tensor<D>) -> Tensor<1> {
    let count = log_alpha.shape().num_elements() as f64;
    let sig = activation::sigmoid(log_alpha.clone() * K3 + K2);
    let softplus = activation::softplus(-log_alpha, 1.0);
    (softplus * 0.5 - sig * K1).sum() + K1 * count
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
    0.5 * log_alpha + 1.161_451_24 * a - 1.502_041_18 * a * a + 0.586_299_21 * a * a * a
        - NEG_KL_LIMIT
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

    #[test]
    fn tensor_kl_sums_the_scalar_formula() {
        let device = Device::flex();
        let values: Vec<f32> = REFERENCE.iter().map(|(a, _)| *a as f32).collect();
        let tensor = Tensor::<1>::from_data(TensorData::from(values.as_slice()), &device);
        let got: f32 = kl_approx(tensor).into_scalar();
        let want: f64 = REFERENCE.iter().map(|(a, _)| kl_approx_value(*a)).sum();
        assert!((got as f64 - want).abs() < 1e-4, "{got} vs {want}");
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
}
