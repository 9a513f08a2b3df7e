//! exp and ln of f32 as straight-line arithmetic (Cephes' expf and logf polynomials), so that a
//! loop calling them over slices compiles to SIMD code. glibc's expf and logf are opaque calls
//! the compiler cannot vectorise; in the host KL pass ([`crate::kl::KlTerms`]) they were about a
//! quarter of a LeNet-300-100 training step. [`with_simd`] runs such a loop with the AVX2 and FMA
//! instructions where the CPU has them; [`sum`] is a sum of f32 that vectorises.

use rayon::prelude::*;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in f32 and the rest (Cody–Waite), so that x − n·ln 2 is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// eˣ to within a few ulp for x in [−87, 88] (x is clamped to that range).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // eˣ = 2ⁿ·eʳ with n = round(x·log₂e), r = x − n·ln 2 in [−ln 2 / 2, ln 2 / 2].
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * pow2(n)
}

/// 2ⁿ for an integer-valued n in [−126, 127].
#[inline(always)]
fn pow2(n: f32) -> f32 {
    f32::from_bits(whole_number_bits(n).wrapping_add(127) << 23)
}

/// A whole number n with |n| < 2²² as a two's-complement u32. Adding 1.5·2²³ puts n in the low
/// mantissa bits, which avoids `as i32` (a saturating cast that does not vectorise).
#[inline(always)]
pub fn whole_number_bits(n: f32) -> u32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5·2²³
    (n + SHIFT).to_bits().wrapping_sub(SHIFT.to_bits())
}

/// ln x to within a few ulp for positive normal x.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    // x = m·2ᵉ with m in [√½, √2): ln x = ln m + e·ln 2, ln m = ln(1 + f) by a polynomial in f.
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // in [0.5, 1)
    let low = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = (exponent - i32::from(low)) as f32;
    let f = if low { m + m - 1.0 } else { m - 1.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2;
    y = y * f - 1.151_461_1e-1;
    y = y * f + 1.167_699_9e-1;
    y = y * f - 1.242_014_1e-1;
    y = y * f + 1.424_932_3e-1;
    y = y * f - 1.666_805_8e-1;
    y = y * f + 2.000_071_4e-1;
    y = y * f - 2.499_999_4e-1;
    y = y * f + 3.333_333e-1;
    y = y * f * z;
    y += LN2_LO * e;
    y -= 0.5 * z;
    f + y + LN2_HI * e
}

/// Σ values over 8 interleaved partial sums, so that the loop vectorises (a plain `sum` adds one
/// value after another, each waiting for the previous addition); the order is fixed.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// `len` zeros, written by rayon's threads. Every fused operation allocates its outputs zeroed,
/// on the thread that calls it; from the retained heap that is a memset while rayon's threads
/// wait (about 17 % of the calling thread's time in a LeNet-5 Sparse VD step).
pub fn zeros(len: usize) -> Vec<f32> {
    // Below this a serial memset costs less than handing the work to the pool.
    const SERIAL_BELOW: usize = 1 << 16;
    if len < SERIAL_BELOW {
        return vec![0.0; len];
    }
    let mut values = Vec::with_capacity(len);
    values.par_extend(rayon::iter::repeat_n(0f32, len));
    values
}

/// `work()`, compiled again with wider vectors and run that way where the CPU has them: with
/// AVX-512 (16 lanes), else with AVX2 and FMA (8 lanes). Every operation is the same IEEE
/// operation in each copy (Rust does not contract a·b + c into an FMA, nor reorder a sum), so
/// the results do not depend on the CPU.
///
/// The features reach only code inlined into the wider copies, so pass the closure as
/// `with_simd(#[inline(always)] || …)`. A closure that LLVM leaves out of line (the KL pass's and
/// the noise fill's were, being large and called from every copy) is compiled for baseline
/// x86-64: 4-wide SSE2, with `floor` a call to libm's `floorf` (the KL pass took about twice as
/// long that way, judged from its share of a LeNet-5 step profile).
#[inline(always)]
pub fn with_simd<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        if has_avx512() {
            // SAFETY: the CPU has the features `avx512` was compiled for (checked just above).
            return unsafe { avx512(work) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU has the features `avx2` was compiled for (checked just above).
            return unsafe { avx2(work) };
        }
    }
    work()
}

/// Whether the CPU has the AVX-512 subsets [`with_simd`]'s widest copy is compiled for.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && has_avx2_fma()
}

/// Whether the CPU has AVX2 and FMA, for code compiled with `#[target_feature(enable =
/// "avx2,fma")]` where a closure given to [`with_simd`] would be too large to be inlined into it
/// (a closure that is not inlined is compiled without the features).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32 - b.to_bits() as i32).unsigned_abs()
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_std() {
        let mut worst = 0;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            worst = worst.max(ulps(exp(x), x.exp()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn ln_is_within_a_few_ulp_of_std() {
        let mut worst = 0;
        // From 1e-8 (θ² + 1e-8 at θ = 0) to 1e8, log-spaced, and around 1 where ln is near 0.
        for i in 0..=200_000 {
            let x = 10f32.powf(-8.0 + 16.0 * i as f32 / 200_000.0);
            worst = worst.max(ulps(ln(x), x.ln()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        for i in 1..=1000 {
            let x = 1.0 + i as f32 * 1e-4;
            assert!((ln(x) - x.ln()).abs() <= 2.0 * f32::EPSILON * x.ln(), "{x}");
        }
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn sum_adds_every_value() {
        let values: Vec<f32> = (1..=21).map(|i| i as f32).collect();
        assert_eq!(sum(&values), 231.0);
        assert_eq!(sum(&values[..5]), 15.0);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn zeros_has_the_length_asked_for_on_both_sides_of_the_parallel_size() {
        for len in [0, 5, (1 << 16) - 1, 1 << 16, 1_000_003] {
            let values = zeros(len);
            assert_eq!(values.len(), len);
            assert!(values.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn with_simd_returns_the_work_result() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.01).collect();
        let simd: Vec<f32> = with_simd(|| xs.iter().map(|&x| exp(-x)).collect());
        let plain: Vec<f32> = xs.iter().map(|&x| exp(-x)).collect();
        assert_eq!(simd, plain);
    }
}
