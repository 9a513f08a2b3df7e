//! Winograd's minimal filtering F(m×m, 3×3) (Lavin & Gray 2016) for the 3×3 convolutions with
//! padding 1 on maps of even side and at least [`MIN_CHANNELS`] input channels (ten of VGG-like's
//! thirteen convolutions at k = 0.25, twelve at k = 1). Each m×m block of outputs is computed
//! from the t×t block d of padded input around it (t = m + 2) as
//!
//!   Y = Aᵀ [(G θ Gᵀ) ⊙ (Bᵀ d B)] A,
//!
//! with Bᵀ `[t, t]`, G `[t, 3]` and Aᵀ `[m, t]` the matrices of F(2×2, 3×3) or F(4×4, 3×3)
//! ([`Minimal`]; maps whose sides are multiples of 4 take the larger blocks). Summed over the
//! input channels, the product at each of the t² points ξ of the transform is a matrix product,
//! M_ξ = V_ξ·U_ξ `[N, O]` with V = BᵀdB `[t², N, C]` over a tile's N blocks and U = GθGᵀ
//! `[t², C, O]`: t² multiplications per block and channel pair instead of the 9m² of its outputs'
//! patches, 16 instead of 36 with m = 2 and 36 instead of 144 with m = 4. The gradients are the
//! adjoints of the same three linear maps, with ∂M = A ∂Y Aᵀ: ∂U_ξ = V_ξᵀ·∂M_ξ and
//! ∂θ = Gᵀ ∂U G; ∂V_ξ = ∂M_ξ·U_ξᵀ and ∂d = B ∂V Bᵀ, added over the blocks that overlap. The LRT
//! variance path is the same convolution of x ⊙ x with σ².
//!
//! Used from [`MIN_CHANNELS`] input channels, where it pays. With F(2×2) only, a VGG-like
//! k = 0.25 step (criterion, 2 threads, alternated in one binary with and without it, two rounds)
//! took 298–308 ms against 319–330 ms with Sparse VD and 174–185 against 194–210 ms with binary
//! dropout; per layer (100 images, one thread, forward + backward) 31 against 43 ms at 64
//! channels on 8×8 maps, 12 against 19 ms at 128 channels on 2×2, even at 32 channels, and slower
//! below (27 against 24 ms at 16 channels on 16×16), where the transforms cost more than the
//! products save. F(4×4) on the maps whose sides are multiples of 4 (32×32 to 4×4; the 2×2 maps
//! keep F(2×2)) took, against F(2×2) everywhere (`harness bench`, 2 threads, alternated, every
//! other job paused), 153–154 against 193–201 ms per Sparse VD step and 88–89 against 107–110 ms
//! per binary-dropout step in two rounds, and 201–208 against 230–251 and 111–131 against
//! 129–143 ms in three rounds on the same machine later, when it was slower. It does not pay at
//! 16 input channels either: a Sparse VD step took 171–199 ms with the two 16-channel
//! convolutions on F(4×4), 160–181 ms without. The products round differently from the patches' (the larger blocks more: their
//! transforms have entries up to 8 and ⅙); the tests of [`super::kernels`] hold the two within
//! 1e-4.

use super::kernels::ConvShape;
use crate::gemm::{Matrix, Parallelism, gemm};
use crate::simd::with_simd;

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

/// One of Winograd's minimal algorithms F(m×m, 3×3), with t = m + 2.
trait Minimal<const M: usize, const T: usize> {
    /// Bᵀ `[t, t]`: the transform of an input block.
    const INPUT: [[f32; T]; T];
    /// G `[t, 3]`: the transform of a 3×3 kernel.
    const KERNEL: [[f32; 3]; T];
    /// Aᵀ `[m, t]`: from the products back to an output block.
    const OUTPUT: [[f32; T]; M];
}

/// F(m×m, 3×3) for blocks of m×m outputs.
struct F<const M: usize>;

impl Minimal<2, 4> for F<2> {
    const INPUT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const KERNEL: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const OUTPUT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
}

impl Minimal<4, 6> for F<4> {
    const INPUT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const KERNEL: [[f32; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    const OUTPUT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
}

/// Runs `$call` with the const parameters of the algorithm a shape takes: F(4×4) where both
/// sides of the maps are multiples of 4, else F(2×2).
macro_rules! with_minimal {
    ($shape:expr, $call:ident($($arg:expr),* $(,)?)) => {
        if side($shape) == 4 {
            $call::<4, 6, F<4>>($($arg),*)
        } else {
            $call::<2, 4, F<2>>($($arg),*)
        }
    };
}

/// The side m of the blocks of outputs.
fn side(shape: ConvShape) -> usize {
    if shape.height.is_multiple_of(4) && shape.width.is_multiple_of(4) {
        4
    } else {
        2
    }
}

/// The points of the transform, t².
fn points(shape: ConvShape) -> usize {
    (side(shape) + 2).pow(2)
}

/// Blocks of outputs per image.
pub fn blocks(shape: ConvShape) -> usize {
    shape.height / side(shape) * (shape.width / side(shape))
}

/// The length of V `[t², N, C]` for a tile of `tile` images.
pub fn transformed_len(shape: ConvShape, tile: usize) -> usize {
    points(shape) * shape.channels_in * tile * blocks(shape)
}

/// The length of U `[t², C, O]`.
pub fn transformed_weights_len(shape: ConvShape) -> usize {
    points(shape) * shape.channels_out * shape.channels_in
}

/// The length of M `[t², N, O]` for a tile of `tile` images.
pub fn products_len(shape: ConvShape, tile: usize) -> usize {
    points(shape) * shape.channels_out * tile * blocks(shape)
}

/// The length of a padded channels-last tile `[tile, H + 2, W + 2, C]`.
pub fn padded_len(shape: ConvShape, tile: usize) -> usize {
    tile * shape.channels_in * (shape.height + 2) * (shape.width + 2)
}

/// The transpose of a matrix, for the adjoints.
const fn transposed<const I: usize, const J: usize>(m: [[f32; I]; J]) -> [[f32; J]; I] {
    let mut t = [[0.0; J]; I];
    let mut j = 0;
    while j < J {
        let mut i = 0;
        while i < I {
            t[i][j] = m[j][i];
            i += 1;
        }
        j += 1;
    }
    t
}

/// U = GθGᵀ `[t², C, O]` for weights θ `[O, C, 3, 3]`.
pub fn transform_weights(shape: ConvShape, weights: &[f32]) -> Vec<f32> {
    with_minimal!(shape, transform_weights_with(shape, weights))
}

fn transform_weights_with<const M: usize, const T: usize, W: Minimal<M, T>>(
    shape: ConvShape,
    weights: &[f32],
) -> Vec<f32> {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let mut u = vec![0.0; T * T * ins * outs];
    // One input channel's kernels θ[i][j] and G along their rows, s[i][b], as vectors over O.
    let mut theta = vec![0.0; 9 * outs];
    let mut s = vec![0.0; 3 * T * outs];
    with_simd(
        #[inline(always)]
        || {
            for c in 0..ins {
                for (o, kernels) in weights.chunks_exact(9 * ins).enumerate() {
                    for (k, &w) in kernels[9 * c..][..9].iter().enumerate() {
                        theta[k * outs + o] = w;
                    }
                }
                for i in 0..3 {
                    let theta = rows::<3>(&theta, 3 * i * outs, outs, outs);
                    let s = rows_mut::<T>(&mut s, i * T * outs, outs, outs);
                    combine(&W::KERNEL, theta, s, outs);
                }
                for b in 0..T {
                    let s = rows::<3>(&s, b * outs, T * outs, outs);
                    let u = rows_mut::<T>(&mut u, (b * ins + c) * outs, T * ins * outs, outs);
                    combine(&W::KERNEL, s, u, outs);
                }
            }
        },
    );
    u
}

/// ∂θ = Gᵀ ∂U G `[O, C, 3, 3]` for ∂U `[t², C, O]`.
pub fn weight_gradient(shape: ConvShape, du: &[f32]) -> Vec<f32> {
    with_minimal!(shape, weight_gradient_with(shape, du))
}

fn weight_gradient_with<const M: usize, const T: usize, W: Minimal<M, T>>(
    shape: ConvShape,
    du: &[f32],
) -> Vec<f32> {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let g = const { transposed(W::KERNEL) };
    let mut gradient = vec![0.0; 9 * outs * ins];
    // For one input channel, Gᵀ down the columns of ∂U, s[i][b], then along the rows, ∂θ[i][j],
    // as vectors over O.
    let mut s = vec![0.0; 3 * T * outs];
    let mut theta = vec![0.0; 9 * outs];
    with_simd(
        #[inline(always)]
        || {
            for c in 0..ins {
                for b in 0..T {
                    let du = rows::<T>(du, (b * ins + c) * outs, T * ins * outs, outs);
                    let s = rows_mut::<3>(&mut s, b * outs, T * outs, outs);
                    combine(&g, du, s, outs);
                }
                for i in 0..3 {
                    let s = rows::<T>(&s, i * T * outs, outs, outs);
                    let theta = rows_mut::<3>(&mut theta, 3 * i * outs, outs, outs);
                    combine(&g, s, theta, outs);
                }
                for (o, kernels) in gradient.chunks_exact_mut(9 * ins).enumerate() {
                    for (k, g) in kernels[9 * c..][..9].iter_mut().enumerate() {
                        *g = theta[k * outs + o];
                    }
                }
            }
        },
    );
    gradient
}

// The transforms of the inputs and outputs below work on whole vectors of channels: the padded
// tile is channels-last, `[tile, H + 2, W + 2, C]`, the transforms `[t², N, C]` and `[t², N, O]`,
// and each line of their arithmetic runs over the C (or O) channels of one block, so that it
// vectorises whatever the size of the maps. Along the rows of blocks instead (channels-first),
// the rows of VGG-like's small maps are one to eight blocks long, and the transforms cost more
// than the products save.

/// Channels per step of [`combine`]: one AVX-512 register.
const LANES: usize = 16;

/// `outputs[j] = Σ_i m[j][i]·inputs[i]` for vectors of `len` channels and a constant matrix m.
/// Once inlined, m's zero entries cost nothing and its ±1 entries no multiplication (each sum
/// starts from −0, which added to a term is the term), and each step's I inputs and J sums stay
/// in registers.
#[inline(always)]
fn combine<const I: usize, const J: usize>(
    m: &[[f32; I]; J],
    inputs: [&[f32]; I],
    mut outputs: [&mut [f32]; J],
    len: usize,
) {
    let mut start = 0;
    while start + LANES <= len {
        combine_at::<I, J, LANES>(m, &inputs, &mut outputs, start);
        start += LANES;
    }
    while start < len {
        combine_at::<I, J, 1>(m, &inputs, &mut outputs, start);
        start += 1;
    }
}

/// [`combine`] on the `L` channels from `start`.
#[inline(always)]
fn combine_at<const I: usize, const J: usize, const L: usize>(
    m: &[[f32; I]; J],
    inputs: &[&[f32]; I],
    outputs: &mut [&mut [f32]; J],
    start: usize,
) {
    let mut x = [[0.0; L]; I];
    for (x, input) in x.iter_mut().zip(inputs) {
        x.copy_from_slice(&input[start..][..L]);
    }
    for (output, row) in outputs.iter_mut().zip(m) {
        let mut y = [-0.0; L];
        for (&c, x) in row.iter().zip(&x) {
            if c != 0.0 {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y += c * x;
                }
            }
        }
        output[start..][..L].copy_from_slice(&y);
    }
}

/// `K` slices of `len` values from `data[start + k·step..]`, k = 0..K.
#[inline(always)]
fn rows<const K: usize>(data: &[f32], start: usize, step: usize, len: usize) -> [&[f32]; K] {
    std::array::from_fn(|k| &data[start + k * step..][..len])
}

/// [`rows`], mutable (`step` ≥ `len`, so that they do not overlap).
#[inline(always)]
fn rows_mut<const K: usize>(
    data: &mut [f32],
    start: usize,
    step: usize,
    len: usize,
) -> [&mut [f32]; K] {
    let mut chunks = data[start..].chunks_mut(step);
    std::array::from_fn(|_| &mut chunks.next().expect("K rows inside the buffer")[..len])
}

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

/// Calls `visit(n, image, row, column)` for every block n = (g, i, j) of a tile of `n` blocks of
/// M×M outputs: its image g and the output row M·i and column M·j of its top-left output.
#[inline(always)]
fn each_block<const M: usize>(
    shape: ConvShape,
    n: usize,
    mut visit: impl FnMut(usize, usize, usize, usize),
) {
    let (per_image, per_row) = (blocks(shape), shape.width / M);
    for block in 0..n {
        let (g, within) = (block / per_image, block % per_image);
        visit(block, g, M * (within / per_row), M * (within % per_row));
    }
}

/// V = BᵀdB `[t², N, C]` of every t×t block d of the padded tile, block n = (g, i, j) of image
/// g with outputs at rows m·i … m·i + m − 1 and the same columns from m·j.
pub fn transform_input(shape: ConvShape, padded: &[f32], v: &mut [f32]) {
    with_minimal!(shape, transform_input_with(shape, padded, v))
}

fn transform_input_with<const M: usize, const T: usize, W: Minimal<M, T>>(
    shape: ConvShape,
    padded: &[f32],
    v: &mut [f32],
) {
    let channels = shape.channels_in;
    let padded_width = shape.width + 2;
    let padded_image = (shape.height + 2) * padded_width * channels;
    let stride = v.len() / (T * T);
    // Bᵀ along the block's rows: t[r][b] for its rows r; then Bᵀ down the columns.
    let mut t = vec![0.0; T * T * channels];
    with_simd(
        #[inline(always)]
        || {
            each_block::<M>(shape, stride / channels, |n, g, row, column| {
                for r in 0..T {
                    let start = g * padded_image + ((row + r) * padded_width + column) * channels;
                    let d = rows::<T>(padded, start, channels, channels);
                    let t = rows_mut::<T>(&mut t, r * T * channels, channels, channels);
                    combine(&W::INPUT, d, t, channels);
                }
                for b in 0..T {
                    let t = rows::<T>(&t, b * channels, T * channels, channels);
                    let v = rows_mut::<T>(v, b * stride + n * channels, T * stride, channels);
                    combine(&W::INPUT, t, v, channels);
                }
            });
        },
    );
}

/// M_ξ = V_ξ·U_ξ `[t², N, O]`.
pub fn products(shape: ConvShape, u: &[f32], v: &[f32], m: &mut [f32]) {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let n = v.len() / (points(shape) * ins);
    for ((m, u), v) in m
        .chunks_mut(n * outs)
        .zip(u.chunks(ins * outs))
        .zip(v.chunks(n * ins))
    {
        let (v, u) = (Matrix::row_major(v, ins), Matrix::row_major(u, outs));
        gemm(m, false, v, u, n, Parallelism::None);
    }
}

/// ∂U_ξ += V_ξᵀ·∂M_ξ `[t², C, O]`.
pub fn add_weight_products(shape: ConvShape, dm: &[f32], v: &[f32], du: &mut [f32]) {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let n = v.len() / (points(shape) * ins);
    for ((du, dm), v) in du
        .chunks_mut(ins * outs)
        .zip(dm.chunks(n * outs))
        .zip(v.chunks(n * ins))
    {
        let (v, dm) = (Matrix::row_major(v, ins).t(), Matrix::row_major(dm, outs));
        gemm(du, true, v, dm, ins, Parallelism::None);
    }
}

/// ∂V_ξ = ∂M_ξ·U_ξᵀ `[t², N, C]`.
pub fn input_products(shape: ConvShape, u: &[f32], dm: &[f32], dv: &mut [f32]) {
    let (outs, ins) = (shape.channels_out, shape.channels_in);
    let n = dm.len() / (points(shape) * outs);
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

/// Y = AᵀMA of every block of M `[t², N, O]`, into the tile's outputs side by side
/// `[O, tile·H·W]` (row o, column g·H·W + position).
pub fn transform_output(shape: ConvShape, m: &[f32], out: &mut [f32]) {
    with_minimal!(shape, transform_output_with(shape, m, out))
}

fn transform_output_with<const M: usize, const T: usize, W: Minimal<M, T>>(
    shape: ConvShape,
    m: &[f32],
    out: &mut [f32],
) {
    let outs = shape.channels_out;
    let (stride, columns) = (m.len() / (T * T), out.len() / outs);
    // Aᵀ down the columns, s[a][b], then along the rows, y[a][c].
    let mut sums = vec![0.0; M * T * outs];
    let mut y = vec![0.0; M * M * outs];
    with_simd(
        #[inline(always)]
        || {
            each_block::<M>(shape, stride / outs, |n, g, row, column| {
                for b in 0..T {
                    let m = rows::<T>(m, b * stride + n * outs, T * stride, outs);
                    let sums = rows_mut::<M>(&mut sums, b * outs, T * outs, outs);
                    combine(&W::OUTPUT, m, sums, outs);
                }
                for a in 0..M {
                    let sums = rows::<T>(&sums, a * T * outs, outs, outs);
                    let y = rows_mut::<M>(&mut y, a * M * outs, outs, outs);
                    combine(&W::OUTPUT, sums, y, outs);
                }
                for (k, y) in y.chunks_exact(outs).enumerate() {
                    let at = output_at(shape, g, row, column, k / M, k % M);
                    let outputs = out[at..].iter_mut().step_by(columns);
                    outputs.zip(y).for_each(|(o, &y)| *o = y);
                }
            });
        },
    );
}

/// ∂M = A ∂Y Aᵀ `[t², N, O]` of every block of the side-by-side ∂Y `[O, tile·H·W]`.
pub fn transform_output_gradient(shape: ConvShape, dy: &[f32], dm: &mut [f32]) {
    with_minimal!(shape, transform_output_gradient_with(shape, dy, dm))
}

fn transform_output_gradient_with<const M: usize, const T: usize, W: Minimal<M, T>>(
    shape: ConvShape,
    dy: &[f32],
    dm: &mut [f32],
) {
    let outs = shape.channels_out;
    let (stride, columns) = (dm.len() / (T * T), dy.len() / outs);
    let a = const { transposed(W::OUTPUT) };
    // The block's ∂Y channels-last, y[r][c]; A along the rows, u[r][b]; A down the columns.
    let mut y = vec![0.0; M * M * outs];
    let mut u = vec![0.0; M * T * outs];
    with_simd(
        #[inline(always)]
        || {
            each_block::<M>(shape, stride / outs, |n, g, row, column| {
                for (k, y) in y.chunks_exact_mut(outs).enumerate() {
                    let at = output_at(shape, g, row, column, k / M, k % M);
                    let grads = dy[at..].iter().step_by(columns);
                    y.iter_mut().zip(grads).for_each(|(y, &d)| *y = d);
                }
                for r in 0..M {
                    let y = rows::<M>(&y, r * M * outs, outs, outs);
                    let u = rows_mut::<T>(&mut u, r * T * outs, outs, outs);
                    combine(&a, y, u, outs);
                }
                for b in 0..T {
                    let u = rows::<M>(&u, b * outs, T * outs, outs);
                    let dm = rows_mut::<T>(dm, b * stride + n * outs, T * stride, outs);
                    combine(&a, u, dm, outs);
                }
            });
        },
    );
}

/// Adds B ∂V Bᵀ of every block of ∂V `[t², N, C]` to the padded channels-last gradient of the
/// tile (zeroed first), where the blocks overlap.
pub fn scatter_input_gradient(shape: ConvShape, dv: &[f32], padded: &mut [f32]) {
    with_minimal!(shape, scatter_input_gradient_with(shape, dv, padded))
}

fn scatter_input_gradient_with<const M: usize, const T: usize, W: Minimal<M, T>>(
    shape: ConvShape,
    dv: &[f32],
    padded: &mut [f32],
) {
    let channels = shape.channels_in;
    let padded_width = shape.width + 2;
    let padded_image = (shape.height + 2) * padded_width * channels;
    let stride = dv.len() / (T * T);
    let b_matrix = const { transposed(W::INPUT) };
    // B down the columns, t[r][b]; then B along the rows, c[s], added to row r's pixels.
    let mut t = vec![0.0; T * T * channels];
    let mut c = vec![0.0; T * channels];
    padded.fill(0.0);
    with_simd(
        #[inline(always)]
        || {
            each_block::<M>(shape, stride / channels, |n, g, row, column| {
                for b in 0..T {
                    let dv = rows::<T>(dv, b * stride + n * channels, T * stride, channels);
                    let t = rows_mut::<T>(&mut t, b * channels, T * channels, channels);
                    combine(&b_matrix, dv, t, channels);
                }
                for r in 0..T {
                    let t = rows::<T>(&t, r * T * channels, channels, channels);
                    combine(
                        &b_matrix,
                        t,
                        rows_mut::<T>(&mut c, 0, channels, channels),
                        channels,
                    );
                    let start = g * padded_image + ((row + r) * padded_width + column) * channels;
                    let pixels = &mut padded[start..][..T * channels];
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
    /// transform and ∂θ; so that a sign or a factor wrong in one of the eight fails. Maps of 4×6
    /// (F(2×2)) and 8×12 (F(4×4)), several blocks per row and per column, two images, three and
    /// two channels.
    #[test]
    fn gradients_are_the_adjoints_of_the_transforms() {
        for (height, width) in [(4, 6), (8, 12)] {
            let shape = ConvShape {
                batch: 2,
                channels_in: 3,
                height,
                width,
                channels_out: 2,
                kernel: 3,
                padding: 1,
            };
            adjoints_hold(shape);
        }
    }

    fn adjoints_hold(shape: ConvShape) {
        let tile = shape.batch;
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what} of {shape:?}: {a} vs {b}"
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

    /// One image of one block (2×2 for F(2×2), 4×4 for F(4×4)), one channel in and out: V·U
    /// transformed back is the 3×3 correlation of the padded image with θ at each output.
    #[test]
    fn a_block_is_the_correlation() {
        for side in [2, 4] {
            let shape = ConvShape {
                batch: 1,
                channels_in: 1,
                height: side,
                width: side,
                channels_out: 1,
                kernel: 3,
                padding: 1,
            };
            let image: Vec<f32> = (0..side * side).map(|i| (i as f32 * 0.7).cos()).collect();
            let theta: Vec<f32> = (0..9).map(|i| (i as f32).sin()).collect();
            let mut padded = vec![0.0; padded_len(shape, 1)];
            pad(shape, &image, &mut padded, false);
            let mut v = vec![0.0; transformed_len(shape, 1)];
            transform_input(shape, &padded, &mut v);
            assert_eq!(v.len(), (side + 2).pow(2), "one block of (m + 2)² points");
            let mut m = vec![0.0; products_len(shape, 1)];
            products(shape, &transform_weights(shape, &theta), &v, &mut m);
            let mut y = vec![0.0; side * side];
            transform_output(shape, &m, &mut y);
            for (at, &value) in y.iter().enumerate() {
                let (r, s) = (at / side, at % side);
                let direct: f32 = (0..9)
                    .map(|k| padded[(r + k / 3) * (side + 2) + s + k % 3] * theta[k])
                    .sum();
                assert!(
                    (value - direct).abs() < 1e-5,
                    "F({side}×{side}) at ({r}, {s}): {value} vs {direct}"
                );
            }
        }
    }
}
