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
    let (patch, positions, image_out) = (shape.patch(), shape.positions(), shape.image_out());
    let noisy = noise.is_some();
    let sparse_mean = SparseRows::of_sparse(mean, patch);
    let mut output = crate::simd::zeros(shape.batch * image_out);
    let mut delta_factor = zeros_if(noisy, shape.batch * image_out);
    let factors = per_image(&mut delta_factor, shape.batch);
    output
        .par_chunks_mut(image_out)
        .zip(factors)
        .enumerate()
        .for_each_init(
            || {
                (
                    crate::simd::zeros(patch * positions),
                    zeros_if(noisy, patch * positions),
                    zeros_if(noisy, image_out),
                )
            },
            |(p, squares, delta), (b, (out, factor))| {
                im2col(shape, &x[b * shape.image()..][..shape.image()], p);
                let rows = |data| Matrix::row_major(data, patch);
                let cols = |data| Matrix::row_major(data, positions);
                match &sparse_mean {
                    Some(sparse) => with_simd(
                        #[inline(always)]
                        || sparse.times(p, out),
                    ),
                    None => gemm(
                        out,
                        false,
                        rows(mean),
                        cols(p),
                        shape.channels_out,
                        Parallelism::None,
                    ),
                }
                let out_rows = out.chunks_mut(positions).zip(bias);
                if let (Some(noise), Some(factor)) = (noise, factor) {
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
                    let zeta = &noise.zeta[b * image_out..][..image_out];
                    let noise_rows = factor.chunks_mut(positions).zip(delta.chunks(positions));
                    for (((out, &bias), (factor, delta)), zeta) in
                        out_rows.zip(noise_rows).zip(zeta.chunks(positions))
                    {
                        with_simd(
                            #[inline(always)]
                            || {
                                for (((o, f), &d), &z) in
                                    out.iter_mut().zip(factor).zip(delta).zip(zeta)
                                {
                                    let std = (d + VARIANCE_EPS).sqrt();
                                    *o = (*o + std * z) + bias;
                                    *f = z / (2.0 * std);
                                }
                            },
                        );
                    }
                } else {
                    for (out, &bias) in out_rows {
                        out.iter_mut().for_each(|o| *o += bias);
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
    let (patch, positions, image_out) = (shape.patch(), shape.positions(), shape.image_out());
    let mut x_grad = zeros_if(need_x, shape.batch * shape.image());
    let images = per_image(&mut x_grad, shape.batch);
    let Inputs { x, mean, variance } = inputs;
    let noisy = variance.is_some();
    let sampled_mean = match mean_gradient {
        MeanGradient::WhereNonzero => saved.sparse_mean.as_ref(),
        MeanGradient::Everywhere => None,
    };
    // Adds image b's terms to `sums` and, when `dx` is given, writes its ∂x there.
    let add_image = |sums: &mut WeightGrads, s: &mut Scratch, b: usize, dx: Option<&mut [f32]>| {
        im2col(
            shape,
            &x[b * shape.image()..][..shape.image()],
            &mut s.patches,
        );
        let p = &s.patches;
        let g = &grad[b * image_out..][..image_out];
        for (db, g) in sums.bias.iter_mut().zip(g.chunks(positions)) {
            *db += crate::simd::sum(g);
        }
        let by_position = |data| Matrix::row_major(data, positions);
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
            let factor = &saved.delta_factor[b * image_out..][..image_out];
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
        col2im(shape, &s.mean_part, dx);
    };
    // Fixed groups of images, each summed in order and the groups' sums added in order, so that
    // the gradients do not depend on how rayon's threads split the work (a `fold`'s splits do).
    // The scratch holds nothing between images, so each split of the work keeps its own.
    let group_sums: Vec<WeightGrads> = images
        .into_par_iter()
        .enumerate()
        .chunks(IMAGES_PER_GROUP)
        .map_init(
            || Scratch::new(shape, noisy, need_x),
            |scratch, group| {
                let mut sums = WeightGrads::zeros(shape, noisy, sampled_mean);
                for (b, dx) in group {
                    add_image(&mut sums, scratch, b, dx);
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

/// `buffer` as one mutable chunk per image, or `None` for every image when it is empty (a
/// buffer the call does not need).
fn per_image(buffer: &mut [f32], batch: usize) -> Vec<Option<&mut [f32]>> {
    if buffer.is_empty() {
        return (0..batch).map(|_| None).collect();
    }
    buffer.chunks_mut(buffer.len() / batch).map(Some).collect()
}

/// Buffers one image's backward step writes into; empty where the call does not need them.
struct Scratch {
    patches: Vec<f32>,
    squares: Vec<f32>,
    delta_grad: Vec<f32>,
    mean_part: Vec<f32>,
    variance_part: Vec<f32>,
}

impl Scratch {
    fn new(shape: ConvShape, noisy: bool, need_x: bool) -> Self {
        let patches = shape.patch() * shape.positions();
        Self {
            patches: crate::simd::zeros(patches),
            squares: zeros_if(noisy, patches),
            delta_grad: zeros_if(noisy, shape.image_out()),
            mean_part: zeros_if(need_x, patches),
            variance_part: zeros_if(noisy && need_x, patches),
        }
    }
}

/// Writes the patches of one image `[C, H, W]` as rows `[C·k², L]` into `patches`: row (c, i,
/// j), column (h, w) holds x[c, h + i − pad, w + j − pad], zero outside the image. Only the
/// entries inside the image are written: those outside are the same for every image, so
/// `patches` must hold zeros there (as a buffer of zeros reused for one shape does).
fn im2col(shape: ConvShape, image: &[f32], patches: &mut [f32]) {
    let (out_width, width) = (shape.out_width(), shape.width);
    for_each_tap(shape, |tap| {
        let n = tap.columns.len();
        let patch_rows = &mut patches[tap.patch_start + tap.columns.start..];
        let image_rows = &image[tap.image_start + tap.image_column..];
        for r in 0..tap.rows {
            copy_row(
                &mut patch_rows[r * out_width..][..n],
                &image_rows[r * width..][..n],
            );
        }
    });
}

/// The adjoint of [`im2col`]: every patch entry added back to the pixel it was copied from.
fn col2im(shape: ConvShape, patches: &[f32], image: &mut [f32]) {
    let (out_width, width) = (shape.out_width(), shape.width);
    for_each_tap(shape, |tap| {
        let n = tap.columns.len();
        let patch_rows = &patches[tap.patch_start + tap.columns.start..];
        let image_rows = &mut image[tap.image_start + tap.image_column..];
        for r in 0..tap.rows {
            let segment = &mut image_rows[r * width..][..n];
            add_row(segment, &patch_rows[r * out_width..]);
        }
    });
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
    /// The offset of output row h₀ in the patches: ((c·k + i)·k + j)·L + h₀·W'.
    patch_start: usize,
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
                    patch_start: ((c * k + i) * k + j) * shape.positions() + rows.start * out_width,
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
            im2col(shape, &image, &mut patches);
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
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let x: Vec<f32> = (0..shape.batch * shape.image()).map(value).collect();
        let weights = shape.channels_out * shape.patch();
        let mean: Vec<f32> = (0..weights).map(|i| value(i + 3)).collect();
        let variance: Vec<f32> = (0..weights).map(|i| value(i + 5).abs()).collect();
        let bias = vec![0.1; shape.channels_out];
        let outputs = shape.batch * shape.image_out();
        let zeta: Vec<f32> = (0..outputs).map(|i| value(i + 11)).collect();
        let grad: Vec<f32> = (0..outputs).map(|i| value(i + 13)).collect();
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
