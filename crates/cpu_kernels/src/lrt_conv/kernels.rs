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
//!
//! When θ is dense and the convolution is 3×3 with padding 1 on enough channels, Winograd's
//! transforms replace the patches ([`winograd`]): the same products, 16 per 2×2 block of outputs
//! instead of 36 and 36 per 4×4 block instead of 144, in the transformed domain ([`Weights`] says
//! which way a pass multiplies).

use super::winograd;
use crate::MeanGradient;
use crate::gemm::{Matrix, Parallelism, gemm};
use crate::simd::with_simd;
use crate::sparse_rows::{Lanes, SparseRows};
use rayon::prelude::*;

const VARIANCE_EPS: f32 = crate::VARIANCE_EPS as f32;

/// Images per group of the backward pass's weight-gradient sums (see [`backward`]).
const IMAGES_PER_GROUP: usize = 10;

/// The fewest columns a tile's products should have: output positions of its images, or blocks
/// of them for Winograd's products.
const MIN_COLUMNS: usize = 64;

/// Images per tile: one, unless an image has fewer than [`MIN_COLUMNS`] columns; then the
/// largest divisor of the batch up to the count that reaches it, so that every tile has the same
/// shape. VGG-like's last six convolutions have 16 and 4 positions per image: a product with 4
/// columns runs the gemm at a small fraction of its speed, and θ is packed again for each one.
/// LeNet-5's convolutions (576 and 64 positions) run one image per tile.
fn images_per_tile(shape: ConvShape, winograd: bool) -> usize {
    let columns = if winograd {
        winograd::blocks(shape)
    } else {
        shape.positions()
    };
    let wanted = MIN_COLUMNS.div_ceil(columns).min(shape.batch.max(1));
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

    pub fn image(&self) -> usize {
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
/// path, the factor ζ / (2√(δ + ε)) that turns ∂output into ∂δ (empty without it), and how the
/// weights multiplied.
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
    pub weights: Weights,
}

/// How a pass multiplies by the weights, chosen once per forward pass from θ and the shape.
#[derive(Debug)]
pub enum Weights {
    /// The gemm on the patches.
    Dense,
    /// θ's nonzero entries on the patches, when at most a quarter of θ is nonzero.
    Sparse(SparseRows),
    /// Winograd's transforms of the 3×3 convolutions with padding 1 ([`winograd`]): U of θ and
    /// (with the variance path, else empty) of σ².
    Winograd { mean: Vec<f32>, variance: Vec<f32> },
}

impl Weights {
    fn of(shape: ConvShape, mean: &[f32], variance: Option<&[f32]>) -> Self {
        if let Some(sparse) = SparseRows::of_sparse(mean, shape.patch()) {
            return Self::Sparse(sparse);
        }
        if !winograd::applies(shape) {
            return Self::Dense;
        }
        Self::Winograd {
            mean: winograd::transform_weights(shape, mean),
            variance: variance
                .map(|v| winograd::transform_weights(shape, v))
                .unwrap_or_default(),
        }
    }

    fn is_winograd(&self) -> bool {
        matches!(self, Self::Winograd { .. })
    }
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
    let weights = Weights::of(shape, mean, noise.map(|n| n.variance));
    let tile = images_per_tile(shape, weights.is_winograd());
    forward_in_tiles(shape, tile, x, mean, bias, noise, weights)
}

/// Buffers of one tile's forward step: the patches (and their squares) or Winograd's padded
/// images, transformed inputs (and squares) and products; the products γ and δ `[O, tile·L]`.
struct ForwardScratch {
    patches: Vec<f32>,
    squares: Vec<f32>,
    padded: Vec<f32>,
    transformed: Vec<f32>,
    transformed_squares: Vec<f32>,
    winograd_products: Vec<f32>,
    gamma: Vec<f32>,
    delta: Vec<f32>,
}

impl ForwardScratch {
    fn new(shape: ConvShape, tile: usize, noisy: bool, winograd: bool) -> Self {
        let patches = zeros_if(!winograd, shape.patch() * tile * shape.positions());
        let products = shape.channels_out * tile * shape.positions();
        let transformed = zeros_if(winograd, winograd::transformed_len(shape, tile));
        Self {
            squares: zeros_if(noisy, patches.len()),
            patches,
            padded: zeros_if(winograd, winograd::padded_len(shape, tile)),
            transformed_squares: zeros_if(noisy, transformed.len()),
            transformed,
            winograd_products: zeros_if(winograd, winograd::products_len(shape, tile)),
            gamma: crate::simd::zeros(products),
            delta: zeros_if(noisy, products),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_in_tiles(
    shape: ConvShape,
    tile: usize,
    x: &[f32],
    mean: &[f32],
    bias: &[f32],
    noise: Option<VariancePath>,
    weights: Weights,
) -> (Vec<f32>, Saved) {
    let (patch, positions, image_out) = (shape.patch(), shape.positions(), shape.image_out());
    let columns = tile * positions;
    let noisy = noise.is_some();
    let mut output = crate::simd::zeros(shape.batch * image_out);
    let mut delta_factor = zeros_if(noisy, shape.batch * image_out);
    let factors = per_tile(&mut delta_factor, shape.batch / tile);
    output
        .par_chunks_mut(tile * image_out)
        .zip(factors)
        .enumerate()
        .for_each_init(
            || ForwardScratch::new(shape, tile, noisy, weights.is_winograd()),
            |s, (t, (out, mut factor))| {
                let first = t * tile;
                let images = &x[first * shape.image()..][..tile * shape.image()];
                let rows = |data| Matrix::row_major(data, patch);
                let cols = |data| Matrix::row_major(data, columns);
                if let Weights::Winograd { mean, variance } = &weights {
                    winograd::pad(shape, images, &mut s.padded, false);
                    winograd::transform_input(shape, &s.padded, &mut s.transformed);
                    if noisy {
                        winograd::pad(shape, images, &mut s.padded, true);
                        let squares = &mut s.transformed_squares;
                        winograd::transform_input(shape, &s.padded, squares);
                    }
                    let products = &mut s.winograd_products;
                    winograd::products(shape, mean, &s.transformed, products);
                    winograd::transform_output(shape, products, &mut s.gamma);
                    if noisy {
                        winograd::products(shape, variance, &s.transformed_squares, products);
                        winograd::transform_output(shape, products, &mut s.delta);
                    }
                } else {
                    let p = &mut s.patches;
                    im2col(shape, tile, images, p);
                    match &weights {
                        Weights::Sparse(sparse) => with_simd(
                            #[inline(always)]
                            || sparse.times(p, &mut s.gamma),
                        ),
                        _ => gemm(
                            &mut s.gamma,
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
                                s.squares
                                    .iter_mut()
                                    .zip(p.iter())
                                    .for_each(|(q, v)| *q = v * v)
                            },
                        );
                        gemm(
                            &mut s.delta,
                            false,
                            rows(noise.variance),
                            cols(&s.squares),
                            shape.channels_out,
                            Parallelism::None,
                        );
                    }
                }
                let (gamma, delta) = (&s.gamma, &s.delta);
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
            weights,
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
    let tile = images_per_tile(shape, saved.weights.is_winograd());
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
    let image_out = shape.image_out();
    let mut x_grad = zeros_if(need_x, shape.batch * shape.image());
    let tiles = per_tile(&mut x_grad, shape.batch / tile);
    let noisy = inputs.variance.is_some();
    let sampled_mean = match (&saved.weights, mean_gradient) {
        (Weights::Sparse(sparse), MeanGradient::WhereNonzero) => Some(sparse),
        _ => None,
    };
    let winograd = saved.weights.is_winograd();
    // Adds tile t's terms to `sums` and, when `dx` is given, writes its ∂x there.
    let add_tile = |sums: &mut WeightGrads, s: &mut Scratch, t: usize, dx: Option<&mut [f32]>| {
        let first = t * tile;
        let images = &inputs.x[first * shape.image()..][..tile * shape.image()];
        let outputs = first * image_out..(first + tile) * image_out;
        let g = side_by_side(shape, &grad[outputs.clone()], &mut s.grad);
        for (db, g) in sums.bias.iter_mut().zip(g.chunks(tile * shape.positions())) {
            *db += crate::simd::sum(g);
        }
        if noisy {
            let factor = side_by_side(shape, &saved.delta_factor[outputs], &mut s.factor);
            with_simd(
                #[inline(always)]
                || {
                    s.delta_grad
                        .iter_mut()
                        .zip(g.iter().zip(factor))
                        .for_each(|(d, (g, f))| *d = g * f)
                },
            );
        }
        let products = TileProducts {
            shape,
            tile,
            inputs,
            images,
            grad: g,
            delta_grad: &s.delta_grad,
        };
        match &saved.weights {
            Weights::Winograd { mean, variance } => {
                products.winograd(mean, variance, sums, &mut s.winograd, dx)
            }
            Weights::Sparse(sparse) => {
                products.patches(Some(sparse), sampled_mean, sums, &mut s.patches, dx)
            }
            Weights::Dense => products.patches(None, None, sums, &mut s.patches, dx),
        }
    };
    // Fixed groups of tiles, each summed in order and the groups' sums added in order, so that
    // the gradients do not depend on how rayon's threads split the work (a `fold`'s splits do).
    // The scratch holds nothing between tiles, so each split of the work keeps its own.
    let group_sums: Vec<WeightGrads> = tiles
        .into_par_iter()
        .enumerate()
        .chunks((IMAGES_PER_GROUP / tile).max(1))
        .map_init(
            || Scratch::new(shape, tile, noisy, need_x, winograd),
            |scratch, group| {
                let mut sums = WeightGrads::zeros(shape, noisy, sampled_mean, winograd);
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
        .unwrap_or_else(|| WeightGrads::zeros(shape, noisy, None, winograd));
    group_sums.for_each(|sums| total.add(&sums));
    let by_output = |sums: &[f32]| {
        if winograd {
            winograd::weight_gradient(shape, sums)
        } else {
            transpose(sums, shape.channels_out)
        }
    };
    Grads {
        x: need_x.then_some(x_grad),
        mean: by_output(&total.mean),
        bias: total.bias,
        variance: noisy.then(|| by_output(&total.variance)),
    }
}

/// One tile's products of the backward pass, given ∂output g and (with the variance path) g_δ,
/// both side by side `[O, tile·L]`.
struct TileProducts<'a> {
    shape: ConvShape,
    tile: usize,
    inputs: Inputs<'a>,
    images: &'a [f32],
    grad: &'a [f32],
    delta_grad: &'a [f32],
}

impl TileProducts<'_> {
    /// The products on the patches: ∂θ += P·gᵀ (or, `sampled` from θ's nonzero entries, one dot
    /// product per kept weight), ∂σ² += (P ⊙ P)·g_δᵀ, and ∂x = col2im(θᵀ·g + 2P ⊙ (σ²ᵀ·g_δ)),
    /// with θᵀ·g from `sparse` θ when given.
    fn patches(
        &self,
        sparse: Option<&SparseRows>,
        sampled: Option<&SparseRows>,
        sums: &mut WeightGrads,
        s: &mut PatchScratch,
        dx: Option<&mut [f32]>,
    ) {
        let (shape, tile, g) = (self.shape, self.tile, self.grad);
        let (patch, columns) = (shape.patch(), tile * shape.positions());
        im2col(shape, tile, self.images, &mut s.patches);
        let p = &s.patches;
        let by_position = |data| Matrix::row_major(data, columns);
        let by_patch = |data| Matrix::row_major(data, patch);
        match sampled {
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
        if let Some(variance) = self.inputs.variance {
            with_simd(
                #[inline(always)]
                || s.squares.iter_mut().zip(p).for_each(|(q, v)| *q = v * v),
            );
            let (delta_grad, squares) = (by_position(self.delta_grad), by_position(&s.squares));
            gemm(
                &mut sums.variance,
                true,
                squares,
                delta_grad.t(),
                patch,
                Parallelism::None,
            );
            if dx.is_some() {
                gemm(
                    &mut s.variance_part,
                    false,
                    by_patch(variance).t(),
                    delta_grad,
                    patch,
                    Parallelism::None,
                );
            }
        }
        let Some(dx) = dx else { return };
        match sparse {
            Some(sparse) => with_simd(
                #[inline(always)]
                || sparse.transpose_times(g, &mut s.mean_part),
            ),
            None => gemm(
                &mut s.mean_part,
                false,
                by_patch(self.inputs.mean).t(),
                by_position(g),
                patch,
                Parallelism::None,
            ),
        }
        if self.inputs.variance.is_some() {
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
    }

    /// Winograd's products ([`winograd`]) with U of θ `mean` and of σ² `variance`: ∂U += ∂M·Vᵀ
    /// for both paths (V of x and of x ⊙ x, ∂M of g and of g_δ), and ∂x = B(Uᵀ∂M)Bᵀ of the mean
    /// path plus 2x ⊙ the same of the variance path.
    fn winograd(
        &self,
        mean: &[f32],
        variance: &[f32],
        sums: &mut WeightGrads,
        s: &mut WinogradScratch,
        dx: Option<&mut [f32]>,
    ) {
        let shape = self.shape;
        let noisy = self.inputs.variance.is_some();
        if noisy {
            winograd::pad(shape, self.images, &mut s.padded, true);
            winograd::transform_input(shape, &s.padded, &mut s.transformed_squares);
        }
        winograd::pad(shape, self.images, &mut s.padded, false);
        winograd::transform_input(shape, &s.padded, &mut s.transformed);
        winograd::transform_output_gradient(shape, self.grad, &mut s.grad);
        winograd::add_weight_products(shape, &s.grad, &s.transformed, &mut sums.mean);
        if noisy {
            winograd::transform_output_gradient(shape, self.delta_grad, &mut s.delta_grad);
            let (delta_grad, squares) = (&s.delta_grad, &s.transformed_squares);
            winograd::add_weight_products(shape, delta_grad, squares, &mut sums.variance);
        }
        let Some(dx) = dx else { return };
        winograd::input_products(shape, mean, &s.grad, &mut s.input_grad);
        winograd::scatter_input_gradient(shape, &s.input_grad, &mut s.padded_grad);
        if noisy {
            winograd::input_products(shape, variance, &s.delta_grad, &mut s.input_grad);
            winograd::scatter_input_gradient(shape, &s.input_grad, &mut s.padded_squares_grad);
            with_simd(
                #[inline(always)]
                || {
                    let terms = s.padded_squares_grad.iter().zip(&s.padded);
                    for (d, (q, x)) in s.padded_grad.iter_mut().zip(terms) {
                        *d += 2.0 * x * q;
                    }
                },
            );
        }
        winograd::unpad(shape, &s.padded_grad, dx);
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
    /// Sums in the layout of the products: `[C·k², O]`, or `[16, C, O]` with Winograd's.
    fn zeros(
        shape: ConvShape,
        noisy: bool,
        sampled_mean: Option<&SparseRows>,
        winograd: bool,
    ) -> Self {
        let weights = if winograd {
            winograd::transformed_weights_len(shape)
        } else {
            shape.channels_out * shape.patch()
        };
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
    grad: Vec<f32>,
    factor: Vec<f32>,
    delta_grad: Vec<f32>,
    patches: PatchScratch,
    winograd: WinogradScratch,
}

/// The products on the patches: the patches, their squares and the two parts of θᵀ·g.
struct PatchScratch {
    patches: Vec<f32>,
    squares: Vec<f32>,
    mean_part: Vec<f32>,
    variance_part: Vec<f32>,
}

/// Winograd's products: the padded images, their transforms V (and of the squares), ∂M of g and
/// g_δ, ∂V, and the padded gradients of x and of x ⊙ x.
struct WinogradScratch {
    padded: Vec<f32>,
    transformed: Vec<f32>,
    transformed_squares: Vec<f32>,
    grad: Vec<f32>,
    delta_grad: Vec<f32>,
    input_grad: Vec<f32>,
    padded_grad: Vec<f32>,
    padded_squares_grad: Vec<f32>,
}

impl Scratch {
    fn new(shape: ConvShape, tile: usize, noisy: bool, need_x: bool, winograd: bool) -> Self {
        let outputs = shape.image_out() * tile;
        // The lengths of the buffers of the way the products run, 0 for the other way's.
        let only = |used: bool, len: usize| if used { len } else { 0 };
        let patches = only(!winograd, shape.patch() * shape.positions() * tile);
        let transformed = only(winograd, winograd::transformed_len(shape, tile));
        let padded = only(winograd, winograd::padded_len(shape, tile));
        let products = only(winograd, winograd::products_len(shape, tile));
        Self {
            grad: zeros_if(tile > 1, outputs),
            factor: zeros_if(noisy && tile > 1, outputs),
            delta_grad: zeros_if(noisy, outputs),
            patches: PatchScratch {
                patches: crate::simd::zeros(patches),
                squares: zeros_if(noisy, patches),
                mean_part: zeros_if(need_x, patches),
                variance_part: zeros_if(noisy && need_x, patches),
            },
            winograd: WinogradScratch {
                padded: crate::simd::zeros(padded),
                transformed: crate::simd::zeros(transformed),
                transformed_squares: zeros_if(noisy, transformed),
                grad: crate::simd::zeros(products),
                delta_grad: zeros_if(noisy, products),
                input_grad: zeros_if(need_x, transformed),
                padded_grad: zeros_if(need_x, padded),
                padded_squares_grad: zeros_if(noisy && need_x, padded),
            },
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
        assert_eq!(images_per_tile(shape(32, 100), false), 1);
        assert_eq!(images_per_tile(shape(8, 100), false), 1);
        assert_eq!(images_per_tile(shape(4, 100), false), 4);
        assert_eq!(images_per_tile(shape(2, 100), false), 10);
        assert_eq!(images_per_tile(shape(2, 97), false), 1);
        assert_eq!(images_per_tile(shape(2, 3), false), 3);
        // Winograd's products have a column per block: 4×4 outputs where the sides are
        // multiples of 4 (a sixteenth of the positions), else 2×2 (a quarter).
        assert_eq!(images_per_tile(shape(32, 100), true), 1);
        assert_eq!(images_per_tile(shape(16, 100), true), 4);
        assert_eq!(images_per_tile(shape(8, 100), true), 10);
        assert_eq!(images_per_tile(shape(4, 100), true), 50);
        assert_eq!(images_per_tile(shape(2, 100), true), 50);
        assert_eq!(images_per_tile(shape(6, 100), true), 5);
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
                    let weights = Weights::of(shape, mean, Some(&variance));
                    let (out, saved) =
                        forward_in_tiles(shape, tile, &x, mean, &bias, noise, weights);
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

    /// Winograd's products give the numbers of the patches' up to float rounding, one image and
    /// several per tile, for outputs, ∂δ factors and every gradient: with 2×2 blocks on maps of
    /// 2×2 (one block per image), 6×8 and 4×18 (several runs of blocks per row), with 4×4 blocks
    /// on maps of 4×4 (one block) and 8×12 (several rows and columns of blocks).
    #[test]
    fn winograd_gives_the_numbers_of_the_patches() {
        for (height, width, batch) in [(2, 2, 6), (6, 8, 3), (4, 18, 2), (4, 4, 5), (8, 12, 2)] {
            let shape = ConvShape {
                batch,
                channels_in: 33,
                height,
                width,
                channels_out: 7,
                kernel: 3,
                padding: 1,
            };
            assert!(winograd::applies(shape));
            let case = Case::of(shape);
            for noisy in [false, true] {
                let run = |weights: Weights, tile| {
                    let noise = noisy.then_some(VariancePath {
                        variance: &case.variance,
                        zeta: &case.zeta,
                    });
                    let (out, saved) = forward_in_tiles(
                        shape, tile, &case.x, &case.mean, &case.bias, noise, weights,
                    );
                    let inputs = Inputs {
                        x: &case.x,
                        mean: &case.mean,
                        variance: noisy.then_some(&case.variance[..]),
                    };
                    let everywhere = MeanGradient::Everywhere;
                    let g = backward_in_tiles(
                        shape, tile, inputs, &saved, &case.grad, true, everywhere,
                    );
                    let mut values = vec![out, saved.delta_factor];
                    values.extend([g.x.unwrap(), g.mean, g.bias]);
                    values.extend(g.variance);
                    values
                };
                let patches = run(Weights::Dense, 1);
                let variance = noisy.then_some(&case.variance[..]);
                for tile in [1, batch] {
                    let transformed = run(Weights::of(shape, &case.mean, variance), tile);
                    assert_eq!(transformed.len(), patches.len());
                    let names = ["output", "∂δ factor", "∂x", "∂mean", "∂bias", "∂variance"];
                    for ((a, b), name) in transformed.iter().zip(&patches).zip(names) {
                        assert_eq!(a.len(), b.len(), "{name}");
                        for (i, (a, b)) in a.iter().zip(b).enumerate() {
                            assert!(
                                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                                "{name}[{i}] of {shape:?}, tile {tile}, noisy {noisy}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The weight gradients are summed in fixed groups of images, so a run is bit-identical
    /// whatever the number of threads (and however rayon's threads share the work), with the
    /// patches and with Winograd's products.
    #[test]
    fn backward_does_not_depend_on_the_thread_count() {
        for (channels_in, side) in [(3, 9), (32, 4)] {
            let shape = ConvShape {
                batch: 23,
                channels_in,
                height: side,
                width: side,
                channels_out: 4,
                kernel: 3,
                padding: 1,
            };
            assert_eq!(winograd::applies(shape), channels_in == 32);
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
                    let everywhere = MeanGradient::Everywhere;
                    let g = backward(shape, inputs, &saved, &grad, true, everywhere);
                    (g.x, g.mean, g.bias, g.variance)
                })
            };
            assert_eq!(run(1), run(3), "{shape:?}");
        }
    }
}
