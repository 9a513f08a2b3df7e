//! The vector side of sparse inference: activations image-innermost (`[f32; L]` holds one
//! feature of `L` images), built by interleaving images, and the elementwise kernels on them
//! (fused multiply-add, ReLU with 2×2 max pooling, argmax), written so that they compile to
//! vector instructions in the AVX2 and AVX-512 copies of the forward pass.

#[cfg(target_arch = "x86_64")]
use cpu_kernels::simd::has_avx2_fma;

/// `len` zeroed positions of `L` floats from `storage`, starting at a cache line (64 bytes), so
/// that a 512-bit load of 16 floats at an even position of 8 images does not straddle two
/// lines: `vec!` gave 16-byte alignment, where every such load straddled. LeNet-5 at batch 112,
/// one thread, six alternated rounds of best of 10: 26–39 ms against 33–46 ms.
pub(crate) fn cache_aligned<const L: usize>(storage: &mut Vec<f32>, len: usize) -> &mut [[f32; L]] {
    const LINE: usize = 16;
    *storage = vec![0.0; len * L + LINE];
    // `align_offset` may decline (usize::MAX); the buffer then works unaligned.
    let skip = Some(storage.as_ptr().align_offset(4 * LINE)).filter(|&s| s < LINE);
    storage[skip.unwrap_or(0)..][..len * L]
        .as_chunks_mut::<L>()
        .0
}

/// `L` images (rows of `lanes.len()` floats in `images`) into `lanes`, image-innermost: a group
/// of 8 by [`interleave_8_with_avx`] on CPUs with AVX, otherwise pixel by pixel (for one image,
/// a copy).
#[inline(always)]
pub(crate) fn interleave<const L: usize>(images: &[f32], lanes: &mut [[f32; L]]) {
    #[cfg(target_arch = "x86_64")]
    if L == 8 && has_avx2_fma() {
        let lanes = lanes.as_flattened_mut().as_chunks_mut::<8>().0;
        // SAFETY: the CPU has AVX2, hence AVX (checked just above).
        return unsafe { interleave_8_with_avx(images, lanes) };
    }
    let n = lanes.len();
    for (p, pixel) in lanes.iter_mut().enumerate() {
        *pixel = std::array::from_fn(|l| images[l * n + p]);
    }
}

/// [`interleave`] of 8 images by 8 × 8 transposes in AVX registers (unpack, shuffle, swap of
/// 128-bit halves: 24 shuffles per block of 8 pixels). Written as plain array code, pixel by
/// pixel or in blocks, the transpose was compiled, in the AVX-512 copy, to 512-bit scatters: 45 %
/// of LeNet-300-100's inference time at batch 100 on an AMD EPYC (Zen 4), where scatters are
/// slow.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn interleave_8_with_avx(images: &[f32], lanes: &mut [[f32; 8]]) {
    use std::arch::x86_64::*;
    let n = lanes.len();
    let images: [&[f32]; 8] = std::array::from_fn(|l| &images[l * n..(l + 1) * n]);
    let (blocks, rest) = lanes.as_chunks_mut::<8>();
    for (b, block) in blocks.iter_mut().enumerate() {
        // SAFETY: each load reads the 8 floats of a (bounds-checked) 8-float slice.
        let r: [__m256; 8] =
            std::array::from_fn(|l| unsafe { _mm256_loadu_ps(images[l][8 * b..][..8].as_ptr()) });
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let pixels = [
            _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
            _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
        ];
        for (pixel, v) in block.iter_mut().zip(pixels) {
            // SAFETY: a pixel holds 8 floats.
            unsafe { _mm256_storeu_ps(pixel.as_mut_ptr(), v) };
        }
    }
    let done = 8 * blocks.len();
    for (p, pixel) in rest.iter_mut().enumerate() {
        *pixel = std::array::from_fn(|l| images[l][done + p]);
    }
}

/// `acc += v · x`, element by element (flat, so that it compiles to vector operations), as one
/// fused multiply-add per element: half the instructions of a multiply and an add, and one
/// rounding, the same on every CPU (the copy compiled without FMA calls libm's `fmaf`).
#[inline(always)]
pub(crate) fn axpy(acc: &mut [f32], v: f32, x: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(x) {
        *a = v.mul_add(x, *a);
    }
}

/// ReLU and 2×2 max-pool (stride 2) of `x` of shape `[c, h, w]`.
///
/// The maximum is a plain comparison, not `f32::max`: the values are finite, and `f32::max`'s
/// NaN handling made each of the four maxima three instructions.
#[inline(always)]
pub(crate) fn relu_max_pool<const L: usize>(
    x: &[[f32; L]],
    [c, h, w]: [usize; 3],
    out: &mut [[f32; L]],
) {
    let (oh, ow) = (h / 2, w / 2);
    for (plane_out, plane) in out
        .chunks_exact_mut(oh * ow)
        .zip(x.chunks_exact(h * w))
        .take(c)
    {
        for (row_out, pair) in plane_out
            .chunks_exact_mut(ow)
            .zip(plane.chunks_exact(2 * w))
        {
            let (top, bottom) = pair.split_at(w);
            if L == 1 {
                pool_image_row(
                    top.as_flattened(),
                    bottom.as_flattened(),
                    row_out.as_flattened_mut(),
                );
                continue;
            }
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            for (o, (t, b)) in row_out.iter_mut().zip(windows) {
                *o = std::array::from_fn(|l| {
                    let top = larger(t[0][l], t[1][l]);
                    larger(larger(top, larger(b[0][l], b[1][l])), 0.0)
                });
            }
        }
    }
}

/// One row of [`relu_max_pool`] for one image, whose neighbouring positions are neighbouring
/// floats: [`POOLED`] outputs at a time (the last step shifted to end at the row's end), so
/// that neighbours pair by shuffles in vector registers. Position by position, as for groups
/// of images, they were paired in scalar registers: pooling was a quarter of LeNet-5's sparse
/// inference time at batch 1.
#[inline(always)]
fn pool_image_row(top: &[f32], bottom: &[f32], out: &mut [f32]) {
    for start in tile_starts(out.len(), POOLED) {
        let [t, b]: [[f32; 2 * POOLED]; 2] =
            [top, bottom].map(|row| row[2 * start..][..2 * POOLED].try_into().expect("2·POOLED"));
        let step: &mut [f32; POOLED] = (&mut out[start..][..POOLED]).try_into().expect("POOLED");
        *step = std::array::from_fn(|p| {
            let top = larger(t[2 * p], t[2 * p + 1]);
            larger(larger(top, larger(b[2 * p], b[2 * p + 1])), 0.0)
        });
    }
}

/// Outputs per step of [`pool_image_row`]: 4 floats fill a 128-bit register. Pooled rows must
/// be at least this wide (checked when the net is built).
pub(crate) const POOLED: usize = 4;

/// The larger of two finite values.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Index of the largest value; the first on ties, as burn's argmax.
pub(crate) fn argmax(values: impl Iterator<Item = f32>) -> u8 {
    let (mut best, mut best_value) = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best_value {
            (best, best_value) = (i, v);
        }
    }
    best as u8
}

/// Starts of `length`-long tiles covering `0..n` (n ≥ `length`), the last shifted to end at `n`.
pub(crate) fn tile_starts(n: usize, length: usize) -> impl Iterator<Item = usize> {
    (0..n).step_by(length).map(move |s| s.min(n - length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_puts_pixel_p_of_image_l_in_lane_l_of_position_p() {
        fn check<const L: usize>() {
            // 21 pixels: two blocks of 8 and a remainder.
            let n = 21;
            let images: Vec<f32> = (0..L * n).map(|i| i as f32).collect();
            let mut lanes = vec![[f32::NAN; L]; n];
            interleave(&images, &mut lanes);
            for (p, pixel) in lanes.iter().enumerate() {
                let expected: [f32; L] = std::array::from_fn(|l| (l * n + p) as f32);
                assert_eq!(*pixel, expected, "L = {L}, pixel {p}");
            }
        }
        check::<8>(); // by AVX transposes where the CPU has AVX
        check::<4>(); // pixel by pixel
    }

    #[test]
    fn relu_max_pool_takes_the_positive_maximum_of_each_window() {
        let x = [
            1.0, -2.0, 3.0, 4.0, -1.0, -5.0, -6.0, -7.0, 0.5, 9.0, 2.0, 0.0, -1.0, -2.0, -3.0, -4.0,
        ];
        let lanes = x.map(|v| [v, -v]);
        let mut out = [[0.0; 2]; 4];
        relu_max_pool(&lanes, [1, 4, 4], &mut out);
        assert_eq!(out, [[1.0, 5.0], [4.0, 7.0], [9.0, 2.0], [2.0, 4.0]]);

        // One image (L = 1), two channels of 3 × 10: pooled rows of 5, in two overlapping steps.
        let x: Vec<f32> = (0..60).map(|i| (i as f32 * 1.7).sin()).collect();
        let lanes: Vec<[f32; 1]> = x.iter().map(|&v| [v]).collect();
        let mut out = [[f32::NAN]; 10];
        relu_max_pool(&lanes, [2, 3, 10], &mut out);
        for (i, [got]) in out.into_iter().enumerate() {
            let (c, xo) = (i / 5, i % 5);
            let at = |dy: usize, dx: usize| x[c * 30 + dy * 10 + 2 * xo + dx];
            let want = [at(0, 0), at(0, 1), at(1, 0), at(1, 1), 0.0]
                .into_iter()
                .fold(0.0, f32::max);
            assert_eq!(got, want, "channel {c}, column {xo}");
        }
    }
}
