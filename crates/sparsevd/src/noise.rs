//! Training noise drawn on the host: ζ ~ N(0, 1) for the local reparameterization trick, and
//! binary and Gaussian dropout masks.
//!
//! burn's `random_like` draws one value at a time through ChaCha12 and a per-value sampler
//! (about 13 ns a value here): 15 % of a LeNet-5 training step, which needs 1.5 M values. This
//! module draws Ziggurat normals (`rand_distr::StandardNormal`) from Xoshiro256++ in parallel
//! blocks, each block seeded from (seed, block index), so a draw is a pure function of the seed
//! and does not depend on the number of threads.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Values per independently seeded block.
const BLOCK: usize = 1 << 14;

/// A tensor of independent standard normal values, determined by `seed`.
pub fn standard_normal<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    draw(shape, seed, device, |rng| StandardNormal.sample(rng))
}

/// Binary (inverted) dropout: x ⊙ m / p with m ~ Bernoulli(p) per element, p = `keep`, the
/// mask determined by `seed`. E[output] = x, so evaluation uses x unchanged.
pub fn binary_dropout<const D: usize>(x: Tensor<D>, keep: f64, seed: u64) -> Tensor<D> {
    let scale = (1.0 / keep) as f32;
    let mask = draw(x.dims(), seed, &x.device(), |rng| {
        if rng.random::<f64>() < keep {
            scale
        } else {
            0.0
        }
    });
    x * mask
}

/// Gaussian dropout: x ⊙ r with r ~ N(1, α) per element, α = (1 − p)/p for p = `keep` (the
/// mean and variance of binary dropout's r), drawn from `seed`. E[output] = x.
pub fn gaussian_dropout<const D: usize>(x: Tensor<D>, keep: f64, seed: u64) -> Tensor<D> {
    let std = ((1.0 - keep) / keep).sqrt() as f32;
    let noise = draw(x.dims(), seed, &x.device(), |rng| {
        let zeta: f32 = StandardNormal.sample(rng);
        1.0 + std * zeta
    });
    x * noise
}

/// A tensor of values drawn by `sample`, in parallel blocks seeded from (`seed`, block index).
fn draw<const D: usize>(
    shape: [usize; D],
    seed: u64,
    device: &Device,
    sample: impl Fn(&mut Xoshiro256PlusPlus) -> f32 + Sync,
) -> Tensor<D> {
    let mut values = vec![0f32; shape.iter().product()];
    values
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, chunk)| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, block as u64));
            chunk.iter_mut().for_each(|v| *v = sample(&mut rng));
        });
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A seed for stream `index` under `seed`, different for every (seed, index) pair in practice:
/// the SplitMix64 finaliser of `seed` combined with that of `index`.
pub fn mix(seed: u64, index: u64) -> u64 {
    splitmix(seed ^ splitmix(index.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// The SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective, well-mixing hash of a word.
pub fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::host_vec;

    #[test]
    fn values_are_standard_normal() {
        let device = Device::flex();
        let n = 1_000_000;
        let v: Vec<f64> = host_vec(standard_normal([n], 3, &device).into_data())
            .into_iter()
            .map(f64::from)
            .collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let beyond_2 = v.iter().filter(|x| x.abs() > 2.0).count() as f64 / n as f64;
        // Standard errors: 1/√n for the mean, √(2/n) for the variance, √(p(1−p)/n) for the
        // tail share p = P(|ζ| > 2) = 0.0455; allow 4 of them.
        let se = 1.0 / (n as f64).sqrt();
        assert!(mean.abs() < 4.0 * se, "mean {mean}");
        assert!((var - 1.0).abs() < 4.0 * 2f64.sqrt() * se, "variance {var}");
        let p = 0.045_500_26;
        assert!(
            (beyond_2 - p).abs() < 4.0 * (p * (1.0 - p)).sqrt() * se,
            "P(|ζ| > 2) = {beyond_2}"
        );
    }

    #[test]
    fn binary_dropout_keeps_a_share_p_scaled_by_one_over_p() {
        let device = Device::flex();
        let n = 200_000;
        let out = host_vec(binary_dropout(Tensor::<1>::ones([n], &device), 0.7, 4).into_data());
        let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // Standard error of the kept share: √(p(1−p)/n); allow 4.
        assert!(
            (kept - 0.7).abs() < 4.0 * (0.7f64 * 0.3 / n as f64).sqrt(),
            "{kept}"
        );
        assert!(
            out.iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6)
        );
    }

    /// Mean and variance of the multiplier r, binary and Gaussian, for keep-probability p:
    /// both E[r] = 1 and Var[r] = (1 − p)/p.
    #[test]
    fn binary_and_gaussian_dropout_have_the_same_first_two_moments() {
        let device = Device::flex();
        let n = 400_000;
        let keep = 0.6;
        let alpha = (1.0 - keep) / keep;
        for (name, out) in [
            (
                "binary",
                binary_dropout(Tensor::<1>::ones([n], &device), keep, 5),
            ),
            (
                "gaussian",
                gaussian_dropout(Tensor::<1>::ones([n], &device), keep, 5),
            ),
        ] {
            let r: Vec<f64> = host_vec(out.into_data())
                .into_iter()
                .map(f64::from)
                .collect();
            let mean = r.iter().sum::<f64>() / n as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            // Standard errors √(α/n) of the mean and α·√(2/n) of the variance for the normal
            // multiplier (the binary one's is smaller at this p); allow 4 of them.
            let se = (alpha / n as f64).sqrt();
            assert!((mean - 1.0).abs() < 4.0 * se, "{name}: mean {mean}");
            assert!(
                (var - alpha).abs() < 4.0 * alpha * (2.0 / n as f64).sqrt(),
                "{name}: variance {var} vs α {alpha}"
            );
        }
    }

    #[test]
    fn a_draw_is_a_function_of_its_seed_and_blocks_differ() {
        let device = Device::flex();
        let draw = |seed| host_vec(standard_normal([2, BLOCK], seed, &device).into_data());
        let (a, b, c) = (draw(9), draw(9), draw(10));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            a[..BLOCK],
            a[BLOCK..],
            "two blocks of one draw must not repeat"
        );
    }
}
