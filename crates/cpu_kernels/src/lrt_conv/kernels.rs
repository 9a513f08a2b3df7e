//! Host kernels of the CPU convolutions: one im2col per image in the forward pass and one in
//! the backward pass, each into a buffer of the thread that runs the image. With the LRT
//! variance path the same patches serve the mean path (patches of x) and the variance path
//! (patches of x ⊙ x, squared on the fly). Images run in parallel (rayon); each image's products
//! are single-threaded gemm calls on row-major matrices:
//!
//! - forward, per image: P = im2col(x) `[C·k², L]`, γ = θ·P `[O, L]`; with the variance path
//!   also δ = σ²·(P ⊙ P) and the output γ + √(δ + ε) ⊙ ζ + b, without it the output γ + b;
//! - backward, with g = ∂loss/∂output: ∂θ = Σ_images g·Pᵀ, ∂b = Σ_images Σ_positions g and
//!   ∂x = col2im(θᵀ·g); the variance
//!   path adds, with g_δ = g ⊙ ζ / (2√(δ + ε)), ∂σ² = Σ_images g_δ·(P ⊙ P)ᵀ and 2P ⊙ (σ²ᵀ·g_δ)
//!   inside the col2im.
//!
//! A convolution with small maps runs on tiles of images instead (see [`images_per_tile`]): the
//! patches of a tile's images side by side, P `[C·k², tile·L]`, so that every product above is
//! wide enough for the gemm's kernels.
//!
//! When at most a quarter of θ is nonzero (θ after the train clip), θ·P and θᵀ·g visit only the
//! nonzero weights ([`SparseRows`]) instead of running the gemm, and so does ∂θ when the caller
//! uses it only there ([`MeanGradient::WhereNonzero`]): one dot product g_o·P_j per kept weight,
//! summed over a group of images in 16 lanes ([`SparseRows::add_sampled_lanes`]).

use crate::MeanGradient;
use crate::gemm::{Matrix, Parallelism, gemm};
use crate::simd::with_simd;
use crate::sparse_rows::{Lanes, SparseRows};
use rayon::prelude::*;

const VARIANCE_EPS: f32 = crate::VARIANCE_EPS as f32;

/// Images per group of the backward pass's weight-gradient sums (see [`backward`]).
const IMAGES_PER_GROUP: usize = 10;

/// The fewest columns (output positions of a tile's images) a tile's products should have.
const MIN_COLUMNS: usize = 64;

/// Images per tile: one, unless an image has fewer than [`MIN_COLUMNS`] output positions; then
/// the largest divisor of the batch up to the count that reaches it, so that every tile has the
/// same shape. VGG-like's last six convolutions have 16 and 4 positions per image: a product
/// with 4 columns runs the gemm at a small fraction of its speed, and θ is packed again for each
/// one. LeNet-5's convolutions (576 and 64 positions) run one image per tile.
fn images_per_tile(shape: ConvShape) -> usize {
    let wanted = MIN_COLUMNS
        .div_ceil(shape.positions())
        .min(shape.batch.max(1));
    (1..=wanted)
        .rev()
        .find(|t| shape.batch.is_multiple_of(*t))
        .unwrap_or(1)
}

/// The geometry of one convolution with stride 1 and the same zero padding on every side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvShape {
    pub batch: usize,
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    pub channels_out: usize,
    pub kernel: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding + 1 - self.kernel
    }

    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding + 1 - self.kernel
    }

    /// L: output positions per image and channel.
    fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// C·k²: the length of one patch.
    fn patch(&self) -> usize {
        self.channels_in * self.kernel * self.kernel
    }

    fn image(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    /// Output elements per image: O·L.
    fn image_out(&self) -> usize {
        self.channels_out * self.positions()
    }

    pub fn output_dims(&self) -> [usize; 4] {
        [
            self.batch,
            self.channels_out,
            self.out_height(),
            self.out_width(),
        ]
    }
}

/// The LRT variance path's inputs: σ² `[O, C, k, k]` and ζ of the output's shape.
#[derive(Clone, Copy)]
pub struct VariancePath<'a> {
    pub variance: &'a [f32],
    pub zeta: &'a [f32],
}

/// The forward pass's inputs that its gradients use: x `[B, C, H, W]`, θ and, with the variance
/// path, σ² (`[O, C, k, k]`).
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub x: &'a [f32],
    pub mean: &'a [f32],
    pub variance: Option<&'a [f32]>,
}

/// What the backward pass needs from the forward pass besides its [`Inputs`]: with the variance
/// path, the factor ζ / (2√(δ + ε)) that turns ∂output into ∂δ (empty without it), and θ's
/// nonzero entries when θ is sparse enough to multiply that way.
///
/// The patches P are not kept: the backward pass builds them again from x. Kept, they were one
/// new buffer per image, 11 times x at LeNet-5's second convolution (12.8 MB per batch of 100,
/// 128 MB per evaluation batch of 1,000); rebuilt, they go to a buffer per thread that stays in
/// its L2 cache. `harness eval` of LeNet-5 (alternated, three runs each) took 1.45–1.57 s
/// against 1.62–1.76 s, with 299 against 384 MB peak memory; a training epoch showed no
/// difference beyond the machine's noise.
#[derive(Debug)]
pub struct Saved {
    pub delta_factor: Vec<f32>,
    pub sparse_mean: Option<SparseRows>,
}

/// The convolution plus bias in NCHW order, with the LRT noise when `noise` is given, and what
/// backward needs. `mean` is `[O, C, k, k]`, `bias` `[O]`, `x` `[B, C, H, W]`.
pub fn forward(
    shape: ConvShape,
    x: &[f32],
    mean: &[f32],
    bias: &[f32],
    noise: Option<VariancePath>,
) -> (Vec<f32>, Saved) {
    forward_in_tiles(shape, images_per_tile(shape), x, mean, bias, noise)
}

fn forward_in_tiles(
    shape: ConvShape,
    tile: usize,
    x: &[f32],
    mean: &[f32],
    bias: &[f32],
    noise: Option<VariancePath>,
) -> (Vec<f32>, Saved) {
    let (patch, positions, image_out) = (shape.patch(), shape.positions(), shape.image_out());
    let columns = tile * positions;
    let noisy = noise.is_some();
    let sparse_mean = SparseRows::of_sparse(mean, patch);
    let mut output = crate::simd::zeros(shape.batch * image_out);
    let mut delta_factor = zeros_if(noisy, shape.batch * image_out);
    let factors = per_tile(&mut delta_factor, shape.batch / tile);
    output
        .par_chunks_mut(tile * image_out)
        .zip(factors)
        .enumerate()
        .for_each_init(
            || {
                let products = shape.channels_out * columns;
                (
                    crate::simd::zeros(patch * columns),
                    zeros_if(noisy, patch * columns),
                    crate::simd::zeros(products),
                    zeros_if(noisy, products),
                )
            },
            |(p, squares, gamma, delta), (t, (out, mut factor))| {
                let first = t * tile;
                im2col(shape, tile, &x[first * shape.image()..], p);
                let rows = |data| Matrix::row_major(data, patch);
                let cols = |data| Matrix::row_major(data, columns);
                match &sparse_mean {
                    Some(sparse) => with_simd(
                        #[inline(always)]
                        || sparse.times(p, gamma),
                    ),
                    None => gemm(
                        gamma,
                        false,
                        rows(mean),
                        cols(p),
                        shape.channels_out,
                        Parallelism::None,
                    ),
                }
                if let Some(noise) = noise {
                    with_simd(
                        #[inline(always)]
                        || {
                            squares
                                .iter_mut()
                                .zip(p.iter())
                                .for_each(|(s, v)| *s = v * v)
                        },
                    );
                    gemm(
                        delta,
                        false,
                        rows(noise.variance),
                        cols(squares),
                        shape.channels_out,
                        Parallelism::None,
                    );
                }
                // Output row (image g, channel o) is the product's columns of image g in row o.
                for (g, out) in out.chunks_mut(image_out).enumerate() {
                    let image_rows = out.chunks_mut(positions).zip(bias).enumerate();
                    for (o, (out, &bias)) in image_rows {
                        let at = o * columns + g * positions;
                        let gamma = &gamma[at..][..positions];
                        let (Some(noise), Some(factor)) = (noise, factor.as_deref_mut()) else {
                            out.iter_mut().zip(gamma).for_each(|(o, &m)| *o = m + bias);
                            continue;
                        };
                        let row = g * image_out + o * positions;
                        let factor = &mut factor[row..][..positions];
                        let zeta = &noise.zeta[first * image_out + row..][..positions];
                        let delta = &delta[at..][..positions];
                        with_simd(
                            #[inline(always)]
                            || {
                                for ((((o, f), &m), &d), &z) in
                                    out.iter_mut().zip(factor).zip(gamma).zip(delta).zip(zeta)
                                {
                                    let std = (d + VARIANCE_EPS).sqrt();
                                    *o = (m + std * z) + bias;
                                    *f = z / (2.0 * std);
                                }
                            },
                        );
                    }
                }
            },
        );
    (
        output,
        Saved {
            delta_factor,
            sparse_mean,
        },
    )
}

/// Gradients of the forward pass for ∂loss/∂output `grad`: ∂x (only when `need_x`), ∂mean,
/// ∂bias, and ∂variance with the variance path.
pub struct Grads {
    pub x: Option<Vec<f32>>,
    pub mean: Vec<f32>,
    pub bias: Vec<f32>,
    pub variance: Option<Vec<f32>>,
}

/// `inputs.variance` is σ² when the forward pass had the variance path, `None` otherwise; ∂mean
/// is left 0 where `mean_gradient` says it is not used.
pub fn backward(
    shape: ConvShape,
    inputs: Inputs,
    saved: &Saved,
    grad: &[f32],
    need_x: bool,
    mean_gradient: MeanGradient,
) -> Grads {
    let tile = images_per_tile(shape);
    backward_in_tiles(shape, tile, inputs, saved, grad, need_x, mean_gradient)
}

fn backward_in_tiles(
    shape: ConvShape,
    tile: usize,
    inputs: Inputs,
    saved: &Saved,
    grad: &[f32],
    need_x: bool,
    mean_gradient: MeanGradient,
) -> Grads {
    let (patch, image_out) = (shape.patch(), shape.image_out());
    let columns = tile * shape.positions();
    let mut x_grad = zeros_if(need_x, shape.batch * shape.image());
    let tiles = per_tile(&mut x_grad, shape.batch / tile);
    let Inputs { x, mean, variance } = inputs;
    let noisy = variance.is_some();
    let sampled_mean = match mean_gradient {
        MeanGradient::WhereNonzero => saved.sparse_mean.as_ref(),
        MeanGradient::Everywhere => None,
    };
    // Adds tile t's terms to `sums` and, when `dx` is given, writes its ∂x there.
    let add_tile = |sums: &mut WeightGrads, s: &mut Scratch, t: usize, dx: Option<&mut [f32]>| {
        let first = t * tile;
        im2col(shape, tile, &x[first * shape.image()..], &mut s.patches);
        let p = &s.patches;
        let outputs = first * image_out..(first + tile) * image_out;
        let g = side_by_side(shape, &grad[outputs.clone()], &mut s.grad);
        for (db, g) in sums.bias.iter_mut().zip(g.chunks(columns)) {
            *db += crate::simd::sum(g);
        }
        let by_position = |data| Matrix::row_major(data, columns);
        let by_patch = |data| Matrix::row_major(data, patch);
        match sampled_mean {
            Some(sparse) => with_simd(
                #[inline(always)]
                || sparse.add_sampled_lanes(g, p, &mut sums.mean_lanes),
            ),
            None => gemm(
                &mut sums.mean,
                true,
                by_position(p),
                by_position(g).t(),
                patch,
                Parallelism::None,
            ),
        }
        if noisy {
            let factor = side_by_side(shape, &saved.delta_factor[outputs], &mut s.factor);
            with_simd(
                #[inline(always)]
                || {
                    s.squares.iter_mut().zip(p).for_each(|(q, v)| *q = v * v);
                    s.delta_grad
                        .iter_mut()
                        .zip(g.iter().zip(factor))
                        .for_each(|(d, (g, f))| *d = g * f);
                },
            );
            let (delta_grad, squares) = (by_position(&s.delta_grad), by_position(&s.squares));
            gemm(
                &mut sums.variance,
                true,
                squares,
                delta_grad.t(),
                patch,
                Parallelism::None,
            );
        }
        let Some(dx) = dx else { return };
        match &saved.sparse_mean {
            Some(sparse) => with_simd(
                #[inline(always)]
                || sparse.transpose_times(g, &mut s.mean_part),
            ),
            None => gemm(
                &mut s.mean_part,
                false,
                by_patch(mean).t(),
                by_position(g),
                patch,
                Parallelism::None,
            ),
        }
        if let Some(variance) = variance {
            let delta_grad = by_position(&s.delta_grad);
            let variance = by_patch(variance).t();
            gemm(
                &mut s.variance_part,
                false,
                variance,
                delta_grad,
                patch,
                Parallelism::None,
            );
            with_simd(
                #[inline(always)]
                || {
                    for ((m, v), &pv) in s.mean_part.iter_mut().zip(&s.variance_part).zip(p) {
                        *m += 2.0 * pv * v;
                    }
                },
            );
        }
        col2im(shape, tile, &s.mean_part, dx);
    };
    // Fixed groups of tiles, each summed in order and the groups' sums added in order, so that
    // the gradients do not depend on how rayon's threads split the work (a `fold`'s splits do).
    // The scratch holds nothing between tiles, so each split of the work keeps its own.
    let group_sums: Vec<WeightGrads> = tiles
        .into_par_iter()
        .enumerate()
        .chunks((IMAGES_PER_GROUP / tile).max(1))
        .map_init(
            || Scratch::new(shape, tile, noisy, need_x),
            |scratch, group| {
                let mut sums = WeightGrads::zeros(shape, noisy, sampled_mean);
                for (t, dx) in group {
                    add_tile(&mut sums, scratch, t, dx);
                }
                if let Some(sparse) = sampled_mean {
                    sparse.add_lane_sums_transposed(&sums.mean_lanes, &mut sums.mean);
                }
                sums
            },
        )
        .collect();
    let mut group_sums = group_sums.into_iter();
    let mut total = group_sums
        .next()
        .unwrap_or_else(|| WeightGrads::zeros(shape, noisy, None));
    group_sums.for_each(|sums| total.add(&sums));
    let by_output = |sums_t: &[f32]| transpose(sums_t, shape.channels_out);
    Grads {
        x: need_x.then_some(x_grad),
        mean: by_output(&total.mean),
        bias: total.bias,
        variance: noisy.then(|| by_output(&total.variance)),
    }
}

/// A tile's per-image outputs `[tile, O, L]` as one matrix `[O, tile·L]`, the images' columns
/// side by side in row o as in the tile's patches; a one-image tile's are already that matrix.
fn side_by_side<'a>(shape: ConvShape, images: &'a [f32], buffer: &'a mut [f32]) -> &'a [f32] {
    let (positions, image_out) = (shape.positions(), shape.image_out());
    let tile = images.len() / image_out;
    if tile == 1 {
        return images;
    }
    for (g, image) in images.chunks(image_out).enumerate() {
        for (o, row) in image.chunks(positions).enumerate() {
            buffer[(o * tile + g) * positions..][..positions].copy_from_slice(row);
        }
    }
    buffer
}

/// The transpose `[columns, rows]` of a row-major `[rows, columns]` matrix.
fn transpose(matrix: &[f32], columns: usize) -> Vec<f32> {
    let rows = matrix.len() / columns;
    (0..columns)
        .flat_map(|c| (0..rows).map(move |r| matrix[r * columns + c]))
        .collect()
}

/// Sums of ∂mean, ∂bias and (with the variance path, else empty) ∂variance over some images,
/// the weight gradients transposed (`[C·k², O]`): the gemm packs P·gᵀ faster than g·Pᵀ (per 100
/// images on one thread, 8.6–8.9 against 9.4 ms at LeNet-5's second convolution, 2.75 against
/// 3.2 ms at its first). When ∂mean is sampled at θ's nonzero entries, its running sums for those
/// entries (else empty).
struct WeightGrads {
    mean: Vec<f32>,
    mean_lanes: Vec<Lanes>,
    bias: Vec<f32>,
    variance: Vec<f32>,
}

impl WeightGrads {
    fn zeros(shape: ConvShape, noisy: bool, sampled_mean: Option<&SparseRows>) -> Self {
        let weights = shape.channels_out * shape.patch();
        Self {
            mean: vec![0.0; weights],
            mean_lanes: sampled_mean.map(SparseRows::lanes).unwrap_or_default(),
            bias: vec![0.0; shape.channels_out],
            variance: zeros_if(noisy, weights),
        }
    }

    fn add(&mut self, other: &Self) {
        for (sum, part) in [
            (&mut self.mean, &other.mean),
            (&mut self.bias, &other.bias),
            (&mut self.variance, &other.variance),
        ] {
            sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    }
}

/// `len` zeros where a call needs the buffer, an empty one where it does not.
fn zeros_if(needed: bool, len: usize) -> Vec<f32> {
    crate::simd::zeros(if needed { len } else { 0 })
}

/// `buffer` as one mutable chunk per tile, or `None` for every tile when it is empty (a
/// buffer the call does not need).
fn per_tile(buffer: &mut [f32], tiles: usize) -> Vec<Option<&mut [f32]>> {
    if buffer.is_empty() {
        return (0..tiles).map(|_| None).collect();
    }
    buffer.chunks_mut(buffer.len() / tiles).map(Some).collect()
}

/// Buffers one tile's backward step writes into; empty where the call does not need them (the
/// side-by-side copies of ∂output and of the ∂δ factors only for tiles of several images).
struct Scratch {
    patches: Vec<f32>,
    squares: Vec<f32>,
    grad: Vec<f32>,
    factor: Vec<f32>,
    delta_grad: Vec<f32>,
    mean_part: Vec<f32>,
    variance_part: Vec<f32>,
}

impl Scratch {
    fn new(shape: ConvShape, tile: usize, noisy: bool, need_x: bool) -> Self {
        let patches = shape.patch() * shape.positions() * tile;
        let outputs = shape.image_out() * tile;
        Self {
            patches: crate::simd::zeros(patches),
            squares: zeros_if(noisy, patches),
            grad: zeros_if(tile > 1, outputs),
            factor: zeros_if(noisy && tile > 1, outputs),
            delta_grad: zeros_if(noisy, outputs),
            mean_part: zeros_if(need_x, patches),
            variance_part: zeros_if(noisy && need_x, patches),
        }
    }
}

/// Writes the patches of a tile's `tile` images `[C, H, W]` (from the start of `images`) side by
/// side as rows `[C·k², tile·L]` into `patches`: row (c, i, j), column (g, h, w) holds image g's
/// x[c, h + i − pad, w + j − pad], zero outside the image. Only the entries inside the image are
/// written: those outside are the same for every tile, so `patches` must hold zeros there (as a
/// buffer of zeros reused for one shape and tile does).
fn im2col(shape: ConvShape, tile: usize, images: &[f32], patches: &mut [f32]) {
    let (out_width, width) = (shape.out_width(), shape.width);
    let columns = tile * shape.positions();
    for (g, image) in images.chunks(shape.image()).take(tile).enumerate() {
        let image_columns = g * shape.positions();
        for_each_tap(shape, |tap| {
            let n = tap.columns.len();
            let start = tap.patch_row * columns + image_columns + tap.position + tap.columns.start;
            let patch_rows = &mut patches[start..];
            let image_rows = &image[tap.image_start + tap.image_column..];
            for r in 0..tap.rows {
                copy_row(
                    &mut patch_rows[r * out_width..][..n],
                    &image_rows[r * width..][..n],
                );
            }
        });
    }
}

/// The adjoint of [`im2col`]: every patch entry added back to the pixel of the tile's image it
/// was copied from.
fn col2im(shape: ConvShape, tile: usize, patches: &[f32], images: &mut [f32]) {
    let (out_width, width) = (shape.out_width(), shape.width);
    let columns = tile * shape.positions();
    for (g, image) in images.chunks_mut(shape.image()).enumerate() {
        let image_columns = g * shape.positions();
        for_each_tap(shape, |tap| {
            let n = tap.columns.len();
            let start = tap.patch_row * columns + image_columns + tap.position + tap.columns.start;
            let patch_rows = &patches[start..];
            let image_rows = &mut image[tap.image_start + tap.image_column..];
            for r in 0..tap.rows {
                let segment = &mut image_rows[r * width..][..n];
                add_row(segment, &patch_rows[r * out_width..]);
            }
        });
    }
}

/// `dst` ← `src` for two slices of one length. The row segments of [`im2col`] are a few values
/// long (8 for LeNet-5's second convolution), so the copy is made of whole groups of 8 values,
/// one 8-value load and store each, with the last group overlapping the one before when the
/// length is not a multiple of 8. A copy of run-time length is a call to `memmove` (5 % of a
/// LeNet-5 Sparse VD step, one call per segment), and a copy in groups of 8 with the rest one
/// value at a time spends about as long on the loop's bookkeeping as on the copy. im2col of 100
/// images (release build, alternated in one process, best of 200, in each of three runs) took
/// 1.43–1.47 ms against 2.25–2.37 ms that way at LeNet-5's second convolution (rows of 8),
/// 0.30–0.33 against 0.36–0.38 ms at its first (rows of 24), and 0.76–0.77 against 0.75–0.78 ms
/// at a 3×3 convolution with padding 1 on 3×32×32 images (rows of 31 and 32).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    if n < 8 {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
        return;
    }
    let mut copy_group = |start: usize| {
        let group: [f32; 8] = src[start..start + 8].try_into().expect("8 values");
        dst[start..start + 8].copy_from_slice(&group);
    };
    let mut start = 0;
    while start + 8 < n {
        copy_group(start);
        start += 8;
    }
    copy_group(n - 8);
}

/// `dst` += `src` element-wise over `dst`'s length, in groups of 8. The row segments of
/// [`col2im`] are short (see [`copy_row`]), and an element-wise loop over two slices stays scalar
/// once inlined into the per-image step, where LLVM no longer knows that they do not overlap.
/// Each group is read into registers whole before its sum is written, which vectorises without
/// that knowledge. (Groups cannot overlap here as in [`copy_row`]: the overlap would be added
/// twice.)
#[inline(always)]
fn add_row(dst: &mut [f32], src: &[f32]) {
    let (src_groups, src_rest) = src[..dst.len()].as_chunks::<8>();
    let (dst_groups, dst_rest) = dst.as_chunks_mut::<8>();
    for (d, s) in dst_groups.iter_mut().zip(src_groups) {
        let (a, b) = (*d, *s);
        *d = std::array::from_fn(|i| a[i] + b[i]);
    }
    for (d, &s) in dst_rest.iter_mut().zip(src_rest) {
        *d += s;
    }
}

/// The part of the patch row of one tap (c, i, j) that lies in the image: `rows` output rows
/// from h₀, each with the output columns `columns`, read from image rows h₀ + i − pad onwards and
/// image columns `image_column` onwards.
struct Tap {
    /// The patch row (c·k + i)·k + j.
    patch_row: usize,
    /// The offset of output row h₀ in an image's L positions: h₀·W'.
    position: usize,
    /// The offset of image row h₀ + i − pad of channel c in the image: (c·H + h₀ + i − pad)·W.
    image_start: usize,
    rows: usize,
    columns: std::ops::Range<usize>,
    image_column: usize,
}

/// Calls `visit` for every tap (c, i, j) whose patch row holds any pixel of the image. Taps are
/// visited whole, not one output row at a time: the rows are a few values long (8 at LeNet-5's
/// second convolution), and working out each one's place in the image is a good part of copying
/// it (im2col of 100 images there, release build, alternated in one process, best of 30 in each
/// of two runs: 1.30 and 2.11 ms against 1.37 and 2.39 ms one row at a time; a memcpy of the same
/// size took 0.3 ms).
fn for_each_tap(shape: ConvShape, mut visit: impl FnMut(Tap)) {
    let (k, pad) = (shape.kernel, shape.padding);
    let (out_height, out_width) = (shape.out_height(), shape.out_width());
    // The outputs o (rows or columns) with 0 ≤ o + offset − pad < size.
    let in_image = |offset: usize, size: usize, outputs: usize| {
        pad.saturating_sub(offset)..(size + pad).saturating_sub(offset).min(outputs)
    };
    for c in 0..shape.channels_in {
        for i in 0..k {
            let rows = in_image(i, shape.height, out_height);
            for j in 0..k {
                let columns = in_image(j, shape.width, out_width);
                if rows.is_empty() || columns.is_empty() {
                    continue;
                }
                visit(Tap {
                    patch_row: (c * k + i) * k + j,
                    position: rows.start * out_width,
                    image_start: (c * shape.height + rows.start + i - pad) * shape.width,
                    rows: rows.len(),
                    image_column: columns.start + j - pad,
                    columns,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col against its definition, for row segments shorter than, as long as and longer than
    /// [`copy_row`]'s groups of 8 values, with and without a last group that overlaps.
    #[test]
    fn patches_hold_the_pixels_of_their_definition() {
        for (width, padding) in [(5, 0), (10, 0), (12, 0), (28, 0), (13, 2), (7, 1)] {
            let shape = ConvShape {
                batch: 1,
                channels_in: 2,
                height: 6,
                width,
                channels_out: 1,
                kernel: 3,
                padding,
            };
            let image: Vec<f32> = (0..shape.image()).map(|i| i as f32 + 1.0).collect();
            let mut patches = vec![0.0; shape.patch() * shape.positions()];
            im2col(shape, 1, &image, &mut patches);
            let (k, out_width) = (shape.kernel, shape.out_width());
            for (row, patch_row) in patches.chunks(shape.positions()).enumerate() {
                let (c, i, j) = (row / (k * k), row / k % k, row % k);
                for (column, &value) in patch_row.iter().enumerate() {
                    let h = (column / out_width + i).checked_sub(padding);
                    let w = (column % out_width + j).checked_sub(padding);
                    let pixel = match (h, w) {
                        (Some(h), Some(w)) if h < shape.height && w < width => {
                            image[(c * shape.height + h) * width + w]
                        }
                        _ => 0.0,
                    };
                    assert_eq!(value, pixel, "{shape:?}, row {row}, column {column}");
                }
            }
        }
    }

    /// Inputs of one forward and backward pass of `shape`: fixed values spread over [−1, 1]
    /// (σ² non-negative), different for each tensor.
    struct Case {
        x: Vec<f32>,
        mean: Vec<f32>,
        variance: Vec<f32>,
        bias: Vec<f32>,
        zeta: Vec<f32>,
        grad: Vec<f32>,
    }

    impl Case {
        fn of(shape: ConvShape) -> Self {
            let values = |len: usize, offset: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| (((i + offset) * 7919) % 101) as f32 / 50.0 - 1.0)
                    .collect()
            };
            let weights = shape.channels_out * shape.patch();
            let outputs = shape.batch * shape.image_out();
            Self {
                x: values(shape.batch * shape.image(), 0),
                mean: values(weights, 3),
                variance: values(weights, 5).iter().map(|v| v.abs()).collect(),
                bias: values(shape.channels_out, 7),
                zeta: values(outputs, 11),
                grad: values(outputs, 13),
            }
        }
    }

    /// Tiles of several images only where an image has fewer than 64 output positions, each
    /// tile the same size.
    #[test]
    fn tiles_widen_only_small_maps() {
        let shape = |side: usize, batch: usize| ConvShape {
            batch,
            channels_in: 8,
            height: side,
            width: side,
            channels_out: 8,
            kernel: 3,
            padding: 1,
        };
        assert_eq!(images_per_tile(shape(32, 100)), 1);
        assert_eq!(images_per_tile(shape(8, 100)), 1);
        assert_eq!(images_per_tile(shape(4, 100)), 4);
        assert_eq!(images_per_tile(shape(2, 100)), 10);
        assert_eq!(images_per_tile(shape(2, 97)), 1);
        assert_eq!(images_per_tile(shape(2, 3)), 3);
    }

    /// Products over tiles of images side by side give the numbers of one image at a time, up
    /// to float rounding (the weight-gradient sums run in another order): outputs, ∂δ factors
    /// and every gradient, with θ dense and with θ sparse enough for the sparse products.
    #[test]
    fn tiles_give_the_numbers_of_single_images() {
        let shape = ConvShape {
            batch: 12,
            channels_in: 5,
            height: 4,
            width: 4,
            channels_out: 6,
            kernel: 3,
            padding: 1,
        };
        let Case {
            x,
            mean: dense,
            variance,
            bias,
            zeta,
            grad,
        } = Case::of(shape);
        // Every fifth weight kept: sparse enough for the sparse products.
        let sparse: Vec<f32> = (0..dense.len())
            .map(|i| if i % 5 == 0 { dense[i] } else { 0.0 })
            .collect();
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}[{i}]: {a} vs {b}"
                );
            }
        };
        for (mean, gradient) in [
            (&dense, MeanGradient::Everywhere),
            (&sparse, MeanGradient::WhereNonzero),
        ] {
            for noisy in [false, true] {
                let run = |tile| {
                    let noise = noisy.then_some(VariancePath {
                        variance: &variance,
                        zeta: &zeta,
                    });
                    let (out, saved) = forward_in_tiles(shape, tile, &x, mean, &bias, noise);
                    let inputs = Inputs {
                        x: &x,
                        mean,
                        variance: noisy.then_some(&variance[..]),
                    };
                    let g = backward_in_tiles(shape, tile, inputs, &saved, &grad, true, gradient);
                    (out, saved.delta_factor, g)
                };
                let (one, tiled) = (run(1), run(4));
                close(&tiled.0, &one.0, "output");
                close(&tiled.1, &one.1, "∂δ factor");
                close(
                    tiled.2.x.as_deref().unwrap(),
                    one.2.x.as_deref().unwrap(),
                    "∂x",
                );
                close(&tiled.2.mean, &one.2.mean, "∂mean");
                close(&tiled.2.bias, &one.2.bias, "∂bias");
                if noisy {
                    let variance = |g: &Grads| g.variance.clone().unwrap();
                    close(&variance(&tiled.2), &variance(&one.2), "∂variance");
                }
            }
        }
    }

    /// The weight gradients are summed in fixed groups of images, so a run is bit-identical
    /// whatever the number of threads (and however rayon's threads share the work).
    #[test]
    fn backward_does_not_depend_on_the_thread_count() {
        let shape = ConvShape {
            batch: 23,
            channels_in: 3,
            height: 9,
            width: 9,
            channels_out: 4,
            kernel: 3,
            padding: 1,
        };
        let Case {
            x,
            mean,
            variance,
            bias,
            zeta,
            grad,
        } = Case::of(shape);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| {
                let noise = VariancePath {
                    variance: &variance,
                    zeta: &zeta,
                };
                let (_, saved) = forward(shape, &x, &mean, &bias, Some(noise));
                let inputs = Inputs {
                    x: &x,
                    mean: &mean,
                    variance: Some(&variance),
                };
                let g = backward(shape, inputs, &saved, &grad, true, MeanGradient::Everywhere);
                (g.x, g.mean, g.bias, g.variance)
            })
        };
        assert_eq!(run(1), run(3));
    }
}
