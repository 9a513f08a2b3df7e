//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2016) for the 3×3 convolutions with
//! padding 1 on maps of even side and at least [`MIN_CHANNELS`] input channels (ten of VGG-like's
//! thirteen convolutions at k = 0.25, twelve at k = 1). Each 2×2 block of outputs
//! is computed from the 4×4 block d of padded input around it as
//!
//!   Y = Aᵀ [(G θ Gᵀ) ⊙ (Bᵀ d B)] A,
//!
//! with Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]],
//! G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]] and Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]].
//! Summed over the input channels, the product at each of the 16 points ξ of the 4×4 transform
//! is a matrix product, M_ξ = V_ξ·U_ξ `[N, O]` with V = BᵀdB `[16, N, C]` over a tile's N
//! blocks and U = GθGᵀ `[16, C, O]`: 16 multiplications per block and channel pair instead of
//! the 36 of the four outputs' patches. The gradients are the adjoints of the same three linear
//! maps, with ∂M = A ∂Y Aᵀ: ∂U_ξ = V_ξᵀ·∂M_ξ and ∂θ = Gᵀ ∂U G; ∂V_ξ = ∂M_ξ·U_ξᵀ and
//! ∂d = B ∂V Bᵀ, added over the blocks that overlap. The LRT variance path is the same
//! convolution of x ⊙ x with σ².
//!
//! Used from [`MIN_CHANNELS`] input channels, where it pays. A VGG-like k = 0.25 step (criterion,
//! 2 threads, alternated in one binary with and without it, two rounds) took 298–308 ms against
//! 319–330 ms with Sparse VD and 174–185 against 194–210 ms with binary dropout; per layer
//! (100 images, one thread, forward + backward) 31 against 43 ms at 64 channels on 8×8 maps,
//! 12 against 19 ms at 128 channels on 2×2, even at 32 channels, and slower below (27 against
//! 24 ms at 16 channels on 16×16), where the transforms cost more than the products save. The
//! products round differently from the patches'; the tests of [`super::kernels`] hold the two
//! within 1e-4.

use super::kernels::ConvShape;
use crate::gemm::{Matrix, Parallelism, gemm};
use crate::simd::with_simd;

/// The points of the 4×4 transform.
const POINTS: usize = 16;

/// The fewest input channels for which the transform is used (see the measurements above).
const MIN_CHANNELS: usize = 32;

/// Whether a convolution is computed this way: 3×3 kernel, padding 1, maps of even side (whole
/// 2×2 blocks), at least [`MIN_CHANNELS`] input channels.
pub fn applies(shape: ConvShape) -> bool {
    shape.kernel == 3
        && shape.padding == 1
        && shape.height.is_multiple_of(2)
        && shape.width.is_multiple_of(2)
        && shape.channels_in >= MIN_CHANNELS
}

/// Blocks of 2×2 outputs per image.
pub fn blocks(shape: ConvShape) -> usize {
    shape.height / 2 * (shape.width / 2)
}

/// The length of V `[16, N, C]` for a tile of `tile` images.
pub fn transformed_len(shape: ConvShape, tile: usize) -> usize {
    POINTS * shape.channels_in * tile * blocks(shape)
}

/// The length of U `[16, C, O]`.
pub fn transformed_weights_len(shape: ConvShape) -> usize {
    POINTS * shape.channels_out * shape.channels_in
}

/// The length of M `[16, N, O]` for a tile of `tile` images.
pub fn products_len(shape: ConvShape, tile: usize) -> usize {
    POINTS * shape.channels_out * tile * blocks(shape)
}

/// The length of a padded channels-last tile `[tile, H + 2, W + 2, C]`.
pub fn padded_len(shape: ConvShape, tile: usize) -> usize {
    tile * shape.channels_in * (shape.height + 2) * (shape.width + 2)
}

/// F x Fᵀ for a square block x, where `f` multiplies a vector by F. (Plain loops: with
/// `array::from_fn` and `map` the weights' transforms were 6 % of a VGG-like step, not inlined.)
#[inline(always)]
fn both_axes<const I: usize, const J: usize>(
    x: [[f32; I]; I],
    f: impl Fn([f32; I]) -> [f32; J],
) -> [[f32; J]; J] {
    let mut rows = [[0.0; J]; I];
    for i in 0..I {
        rows[i] = f(x[i]);
    }
    let mut out = [[0.0; J]; J];
    for b in 0..J {
        let mut column = [0.0; I];
        for i in 0..I {
            column[i] = rows[i][b];
        }
        let column = f(column);
        for a in 0..J {
            out[a][b] = column[a];
        }
    }
    out
}

#[inline(always)]
fn times_g(w: [f32; 3]) -> [f32; 4] {
    let half = [0.5 * w[0], 0.5 * w[1], 0.5 * w[2]];
    [
        w[0],
        half[0] + half[1] + half[2],
        half[0] - half[1] + half[2],
        w[2],
    ]
}

#[inline(always)]
fn times_g_t(u: [f32; 4]) -> [f32; 3] {
    [
        u[0] + 0.5 * (u[1] + u[2]),
        0.5 * (u[1] - u[2]),
        0.5 * (u[1] + u[2]) + u[3],
    ]
}

/// U = GθGᵀ `[16, C, O]` for weights θ `[O, C, 3, 3]`.
pub fn transform_weights(shape: ConvShape, weights: &[f32]) -> Vec<f32> {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let mut u = vec![0.0; POINTS * outs * ins];
    for (pair, w) in weights.chunks_exact(9).enumerate() {
        let (o, c) = (pair / ins, pair % ins);
        let mut block = [[0.0; 3]; 3];
        for (k, &value) in w.iter().enumerate() {
            block[k / 3][k % 3] = value;
        }
        let block = both_axes(block, times_g);
        for (point, &value) in block.iter().flatten().enumerate() {
            u[(point * ins + c) * outs + o] = value;
        }
    }
    u
}

/// ∂θ = Gᵀ ∂U G `[O, C, 3, 3]` for ∂U `[16, C, O]`.
pub fn weight_gradient(shape: ConvShape, du: &[f32]) -> Vec<f32> {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let mut gradient = vec![0.0; 9 * outs * ins];
    for (pair, gradient) in gradient.chunks_exact_mut(9).enumerate() {
        let (o, c) = (pair / ins, pair % ins);
        let mut block = [[0.0; 4]; 4];
        for (point, value) in block.iter_mut().flatten().enumerate() {
            *value = du[(point * ins + c) * outs + o];
        }
        let block = both_axes(block, times_g_t);
        gradient
            .iter_mut()
            .zip(block.iter().flatten())
            .for_each(|(g, &v)| *g = v);
    }
    gradient
}

// The transforms of the inputs and outputs below work on whole vectors of channels: the padded
// tile is channels-last, `[tile, H + 2, W + 2, C]`, the transforms `[16, N, C]` and `[16, N, O]`,
// and each line of their arithmetic runs over the C (or O) channels of one block, so that it
// vectorises whatever the size of the maps. Along the rows of blocks instead (channels-first),
// the rows of VGG-like's small maps are one to eight blocks long, and the transforms cost more
// than the products save.

/// A tile's images `[tile, C, H, W]` (or their squares) with a border of one zero,
/// channels-last `[tile, H + 2, W + 2, C]`, into `padded`, whose border must hold zeros (as a
/// buffer of zeros reused for one shape and tile does).
pub fn pad(shape: ConvShape, images: &[f32], padded: &mut [f32], squares: bool) {
    let (channels, width) = (shape.channels_in, shape.width);
    let padded_image = (shape.height + 2) * (width + 2) * channels;
    let images = images.chunks(shape.image());
    for (image, padded) in images.zip(padded.chunks_mut(padded_image)) {
        for (c, map) in image.chunks(shape.height * width).enumerate() {
            for (h, row) in map.chunks(width).enumerate() {
                let start = ((h + 1) * (width + 2) + 1) * channels + c;
                let pixels = padded[start..].iter_mut().step_by(channels);
                for (p, &x) in pixels.zip(row) {
                    *p = if squares { x * x } else { x };
                }
            }
        }
    }
}

/// The inside of a padded channels-last tile, channels-first `[tile, C, H, W]`: the gradient of
/// the tile's images.
pub fn unpad(shape: ConvShape, padded: &[f32], images: &mut [f32]) {
    let (channels, width) = (shape.channels_in, shape.width);
    let padded_image = (shape.height + 2) * (width + 2) * channels;
    let images = images.chunks_mut(shape.image());
    for (image, padded) in images.zip(padded.chunks(padded_image)) {
        for (c, map) in image.chunks_mut(shape.height * width).enumerate() {
            for (h, row) in map.chunks_mut(width).enumerate() {
                let start = ((h + 1) * (width + 2) + 1) * channels + c;
                let pixels = padded[start..].iter().step_by(channels);
                row.iter_mut().zip(pixels).for_each(|(x, &p)| *x = p);
            }
        }
    }
}

/// Calls `visit(n, image, row, column)` for every block n = (g, i, j) of a tile of `n` blocks:
/// its image g and the output row 2i and column 2j of its top-left output.
fn each_block(shape: ConvShape, n: usize, mut visit: impl FnMut(usize, usize, usize, usize)) {
    let per_row = shape.width / 2;
    for block in 0..n {
        let (g, within) = (block / blocks(shape), block % blocks(shape));
        visit(block, g, 2 * (within / per_row), 2 * (within % per_row));
    }
}

/// `out[k] = f(a[k], b[k])` over the shortest of the three.
#[inline(always)]
fn each(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// `out[k] = f(a[k], b[k], c[k])` over the shortest of the four.
#[inline(always)]
fn each3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(a, b, c);
    }
}

/// Four slices of `len` values from `data[start + k·step..]`, k = 0..4.
#[inline(always)]
fn four(data: &[f32], start: usize, step: usize, len: usize) -> [&[f32]; 4] {
    [0, 1, 2, 3].map(|k| &data[start + k * step..][..len])
}

/// V = BᵀdB `[16, N, C]` of every 4×4 block d of the padded tile, block n = (g, i, j) of image
/// g with outputs at rows 2i, 2i + 1 and columns 2j, 2j + 1.
pub fn transform_input(shape: ConvShape, padded: &[f32], v: &mut [f32]) {
    let channels = shape.channels_in;
    let padded_width = shape.width + 2;
    let padded_image = (shape.height + 2) * padded_width * channels;
    let stride = v.len() / POINTS;
    // Bᵀ along the block's rows: t[r][b] for its four rows r.
    let mut t = vec![0.0; 16 * channels];
    with_simd(
        #[inline(always)]
        || {
            each_block(shape, stride / channels, |n, g, row, column| {
                for r in 0..4 {
                    let start = g * padded_image + ((row + r) * padded_width + column) * channels;
                    let [d0, d1, d2, d3] = four(padded, start, channels, channels);
                    let t = &mut t[4 * r * channels..][..4 * channels];
                    let (t01, t23) = t.split_at_mut(2 * channels);
                    let (t0, t1) = t01.split_at_mut(channels);
                    let (t2, t3) = t23.split_at_mut(channels);
                    each(t0, d0, d2, |a, b| a - b);
                    each(t1, d1, d2, |a, b| a + b);
                    each(t2, d2, d1, |a, b| a - b);
                    each(t3, d1, d3, |a, b| a - b);
                }
                // Bᵀ down the columns: point (a, b) from t[0..4][b].
                for b in 0..4 {
                    let [t0, t1, t2, t3] = four(&t, b * channels, 4 * channels, channels);
                    let at = |a: usize| (4 * a + b) * stride + n * channels;
                    each(&mut v[at(0)..][..channels], t0, t2, |x, y| x - y);
                    each(&mut v[at(1)..][..channels], t1, t2, |x, y| x + y);
                    each(&mut v[at(2)..][..channels], t2, t1, |x, y| x - y);
                    each(&mut v[at(3)..][..channels], t1, t3, |x, y| x - y);
                }
            });
        },
    );
}

/// M_ξ = V_ξ·U_ξ `[16, N, O]`.
pub fn products(shape: ConvShape, u: &[f32], v: &[f32], m: &mut [f32]) {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let n = v.len() / (POINTS * ins);
    for ((m, u), v) in m
        .chunks_mut(n * outs)
        .zip(u.chunks(ins * outs))
        .zip(v.chunks(n * ins))
    {
        let (v, u) = (Matrix::row_major(v, ins), Matrix::row_major(u, outs));
        gemm(m, false, v, u, n, Parallelism::None);
    }
}

/// ∂U_ξ += V_ξᵀ·∂M_ξ `[16, C, O]`.
pub fn add_weight_products(shape: ConvShape, dm: &[f32], v: &[f32], du: &mut [f32]) {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let n = v.len() / (POINTS * ins);
    for ((du, dm), v) in du
        .chunks_mut(ins * outs)
        .zip(dm.chunks(n * outs))
        .zip(v.chunks(n * ins))
    {
        let (v, dm) = (Matrix::row_major(v, ins).t(), Matrix::row_major(dm, outs));
        gemm(du, true, v, dm, ins, Parallelism::None);
    }
}

/// ∂V_ξ = ∂M_ξ·U_ξᵀ `[16, N, C]`.
pub fn input_products(shape: ConvShape, u: &[f32], dm: &[f32], dv: &mut [f32]) {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let n = dm.len() / (POINTS * outs);
    for ((dv, u), dm) in dv
        .chunks_mut(n * ins)
        .zip(u.chunks(ins * outs))
        .zip(dm.chunks(n * outs))
    {
        let (dm, u) = (Matrix::row_major(dm, outs), Matrix::row_major(u, outs).t());
        gemm(dv, false, dm, u, n, Parallelism::None);
    }
}

/// Where output (r, s) of block (g, row, column) is in the side-by-side output `[O, tile·H·W]`,
/// for channel 0 (channel o is o·tile·H·W further).
fn output_at(shape: ConvShape, g: usize, row: usize, column: usize, r: usize, s: usize) -> usize {
    g * shape.height * shape.width + (row + r) * shape.width + column + s
}

/// Y = AᵀMA of every block of M `[16, N, O]`, into the tile's outputs side by side
/// `[O, tile·H·W]` (row o, column g·H·W + position).
pub fn transform_output(shape: ConvShape, m: &[f32], out: &mut [f32]) {
    let outs = shape.channels_out;
    let (stride, columns) = (m.len() / POINTS, out.len() / outs);
    // Aᵀ down the columns, s[r][b], then along the rows, y[r][s].
    let mut sums = vec![0.0; 8 * outs];
    let mut y = vec![0.0; 4 * outs];
    with_simd(
        #[inline(always)]
        || {
            each_block(shape, stride / outs, |n, g, row, column| {
                for b in 0..4 {
                    let [m0, m1, m2, m3] = four(m, b * stride + n * outs, 4 * stride, outs);
                    let (s0, s1) = sums.split_at_mut(4 * outs);
                    each3(&mut s0[b * outs..][..outs], m0, m1, m2, |x, y, z| x + y + z);
                    each3(&mut s1[b * outs..][..outs], m1, m2, m3, |x, y, z| x - y - z);
                }
                for r in 0..2 {
                    let [s0, s1, s2, s3] = four(&sums, 4 * r * outs, outs, outs);
                    let (y0, y1) = y[2 * r * outs..][..2 * outs].split_at_mut(outs);
                    each3(y0, s0, s1, s2, |x, y, z| x + y + z);
                    each3(y1, s1, s2, s3, |x, y, z| x - y - z);
                }
                for (k, y) in y.chunks_exact(outs).enumerate() {
                    let at = output_at(shape, g, row, column, k / 2, k % 2);
                    let outputs = out[at..].iter_mut().step_by(columns);
                    outputs.zip(y).for_each(|(o, &y)| *o = y);
                }
            });
        },
    );
}

/// ∂M = A ∂Y Aᵀ `[16, N, O]` of every 2×2 block of the side-by-side ∂Y `[O, tile·H·W]`.
pub fn transform_output_gradient(shape: ConvShape, dy: &[f32], dm: &mut [f32]) {
    let outs = shape.channels_out;
    let (stride, columns) = (dm.len() / POINTS, dy.len() / outs);
    // The block's ∂Y channels-last, y[r][s]; A along the rows, u[r][b]; A down the columns.
    let mut y = vec![0.0; 4 * outs];
    let mut u = vec![0.0; 8 * outs];
    with_simd(
        #[inline(always)]
        || {
            each_block(shape, stride / outs, |n, g, row, column| {
                for (k, y) in y.chunks_exact_mut(outs).enumerate() {
                    let at = output_at(shape, g, row, column, k / 2, k % 2);
                    let grads = dy[at..].iter().step_by(columns);
                    y.iter_mut().zip(grads).for_each(|(y, &d)| *y = d);
                }
                for r in 0..2 {
                    let (y0, y1) = y[2 * r * outs..][..2 * outs].split_at(outs);
                    let u = &mut u[4 * r * outs..][..4 * outs];
                    let (u01, u23) = u.split_at_mut(2 * outs);
                    let (u0, u1) = u01.split_at_mut(outs);
                    let (u2, u3) = u23.split_at_mut(outs);
                    u0.copy_from_slice(y0);
                    each(u1, y0, y1, |a, b| a + b);
                    each(u2, y0, y1, |a, b| a - b);
                    each(u3, y0, y1, |_, b| -b);
                }
                for b in 0..4 {
                    let (u0, u1) = (&u[b * outs..][..outs], &u[(4 + b) * outs..][..outs]);
                    let at = |a: usize| (4 * a + b) * stride + n * outs;
                    dm[at(0)..][..outs].copy_from_slice(u0);
                    each(&mut dm[at(1)..][..outs], u0, u1, |x, y| x + y);
                    each(&mut dm[at(2)..][..outs], u0, u1, |x, y| x - y);
                    each(&mut dm[at(3)..][..outs], u0, u1, |_, y| -y);
                }
            });
        },
    );
}

/// Adds B ∂V Bᵀ of every block of ∂V `[16, N, C]` to the padded channels-last gradient of the
/// tile (zeroed first), where the blocks overlap.
pub fn scatter_input_gradient(shape: ConvShape, dv: &[f32], padded: &mut [f32]) {
    let channels = shape.channels_in;
    let padded_width = shape.width + 2;
    let padded_image = (shape.height + 2) * padded_width * channels;
    let stride = dv.len() / POINTS;
    // B down the columns, t[r][b]; then B along the rows, c[s], added to row r's pixels.
    let mut t = vec![0.0; 16 * channels];
    let mut c = vec![0.0; 4 * channels];
    padded.fill(0.0);
    with_simd(
        #[inline(always)]
        || {
            each_block(shape, stride / channels, |n, g, row, column| {
                for b in 0..4 {
                    let [p0, p1, p2, p3] =
                        four(dv, b * stride + n * channels, 4 * stride, channels);
                    let at = |r: usize| (4 * r + b) * channels;
                    t[at(0)..][..channels].copy_from_slice(p0);
                    each3(&mut t[at(1)..][..channels], p1, p2, p3, |x, y, z| x - y + z);
                    each3(&mut t[at(2)..][..channels], p1, p2, p0, |x, y, z| x + y - z);
                    each(&mut t[at(3)..][..channels], p3, p3, |x, _| -x);
                }
                for r in 0..4 {
                    let [t0, t1, t2, t3] = four(&t, 4 * r * channels, channels, channels);
                    let (c01, c23) = c.split_at_mut(2 * channels);
                    let (c0, c1) = c01.split_at_mut(channels);
                    let (c2, c3) = c23.split_at_mut(channels);
                    c0.copy_from_slice(t0);
                    each3(c1, t1, t2, t3, |x, y, z| x - y + z);
                    each3(c2, t1, t2, t0, |x, y, z| x + y - z);
                    each(c3, t3, t3, |x, _| -x);
                    let start = g * padded_image + ((row + r) * padded_width + column) * channels;
                    let pixels = &mut padded[start..][..4 * channels];
                    pixels.iter_mut().zip(&c).for_each(|(p, c)| *p += c);
                }
            });
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values spread over [−1, 1], different for each `offset`.
    fn values(len: usize, offset: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + offset) * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    /// Each gradient is the adjoint of its map, ⟨F x, y⟩ = ⟨x, Fᵀ y⟩: padding and unpadding,
    /// the input transform and the scatter of ∂V, the output transform and ∂M, the weight
    /// transform and ∂θ; so that a sign or a factor ½ wrong in one of the eight fails. Maps of
    /// 4×6 (several blocks per row and per column), two images, three and two channels.
    #[test]
    fn gradients_are_the_adjoints_of_the_transforms() {
        let shape = ConvShape {
            batch: 2,
            channels_in: 3,
            height: 4,
            width: 6,
            channels_out: 2,
            kernel: 3,
            padding: 1,
        };
        let tile = shape.batch;
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what}: {a} vs {b}"
            );
        };

        let images = values(tile * shape.image(), 0);
        let padded_y = values(padded_len(shape, tile), 1);
        let mut padded = vec![0.0; padded_len(shape, tile)];
        pad(shape, &images, &mut padded, false);
        let mut unpadded = vec![0.0; images.len()];
        unpad(shape, &padded_y, &mut unpadded);
        close(dot(&padded, &padded_y), dot(&images, &unpadded), "pad");

        let padded_x = values(padded_len(shape, tile), 2);
        let v_y = values(transformed_len(shape, tile), 3);
        let mut v = vec![0.0; v_y.len()];
        transform_input(shape, &padded_x, &mut v);
        let mut scattered = vec![0.0; padded_x.len()];
        scatter_input_gradient(shape, &v_y, &mut scattered);
        close(dot(&v, &v_y), dot(&padded_x, &scattered), "input transform");

        let m = values(products_len(shape, tile), 4);
        let out_y = values(shape.channels_out * tile * shape.height * shape.width, 5);
        let mut out = vec![0.0; out_y.len()];
        transform_output(shape, &m, &mut out);
        let mut dm = vec![0.0; m.len()];
        transform_output_gradient(shape, &out_y, &mut dm);
        close(dot(&out, &out_y), dot(&m, &dm), "output transform");

        let w = values(shape.channels_out * shape.channels_in * 9, 6);
        let u_y = values(transformed_weights_len(shape), 7);
        let u = transform_weights(shape, &w);
        close(
            dot(&u, &u_y),
            dot(&w, &weight_gradient(shape, &u_y)),
            "weights",
        );
    }

    /// One image of 2×2 (one block), one channel in and out: V·U transformed back is the 3×3
    /// correlation of the padded image with θ at its four outputs.
    #[test]
    fn a_block_is_the_correlation() {
        let shape = ConvShape {
            batch: 1,
            channels_in: 1,
            height: 2,
            width: 2,
            channels_out: 1,
            kernel: 3,
            padding: 1,
        };
        let image = [0.5, -1.25, 2.0, 0.75];
        let theta: Vec<f32> = (0..9).map(|i| (i as f32).sin()).collect();
        let mut padded = vec![0.0; padded_len(shape, 1)];
        pad(shape, &image, &mut padded, false);
        let mut v = vec![0.0; transformed_len(shape, 1)];
        transform_input(shape, &padded, &mut v);
        let mut m = vec![0.0; products_len(shape, 1)];
        products(shape, &transform_weights(shape, &theta), &v, &mut m);
        let mut y = vec![0.0; 4];
        transform_output(shape, &m, &mut y);
        for (at, &value) in y.iter().enumerate() {
            let (r, s) = (at / 2, at % 2);
            let direct: f32 = (0..9)
                .map(|k| padded[(r + k / 3) * 4 + s + k % 3] * theta[k])
                .sum();
            assert!(
                (value - direct).abs() < 1e-5,
                "({r}, {s}): {value} vs {direct}"
            );
        }
    }
}
