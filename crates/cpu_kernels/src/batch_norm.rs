//! Batch normalisation in training followed by ReLU (VGG-like's block after every convolution
//! and after its first dense layer), for x `[B, C, …]` with per-channel statistics over the
//! batch and the positions, N values per channel:
//!
//! - [`batch_statistics`]: μ_c = mean of x over channel c, σ²_c = mean of (x − μ_c)² (biased,
//!   as burn's `batch_norm_train` returns it for the running statistics);
//! - [`batch_norm_relu`]: z = max(0, γ_c (x − μ_c) / √(σ²_c + ε) + β_c), differentiated as a
//!   function of x through μ and σ² too: with x̂ = (x − μ) / √(σ² + ε) and g = ∂z masked by z > 0,
//!   ∂β = Σ g, ∂γ = Σ g x̂ and ∂x = γ / (N √(σ² + ε)) · (N g − ∂β − x̂ ∂γ).
//!
//! burn's batch norm is composed from general operations: each mean over a channel first swaps
//! the batch and channel axes into a contiguous copy, and forward and backward make about a dozen
//! passes over the activation (a tenth of a VGG-like training step, with the ReLU); here the
//! forward pass reads x twice and writes z once, the backward pass masks ∂z once and reads that
//! and x twice (sums, then ∂x).

use crate::host_op::host_op;
use crate::simd::{with_simd, zeros};
use crate::tensor::{FlexTensor, contiguous, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

#[backend_extension(Flex, Autodiff)]
pub trait BatchNormBackend: Backend {
    /// `[2, C]`: the rows μ and σ² of x `[B, C, …]`; never tracked.
    fn batch_statistics(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// z for x `[B, C, …]`, γ and β `[C]` and `statistics` = [`batch_statistics`] of x.
    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        statistics: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// The batch's μ and σ² per channel, `[2, C]` (see the module's doc); only for tensors on the
/// CPU backend.
pub fn batch_statistics<const D: usize>(x: Tensor<D>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as BatchNormBackend>::batch_statistics(
        x.into_dispatch(),
    ))
}

/// Batch norm with the batch's `statistics` (from [`batch_statistics`] of the same x), then
/// ReLU (see the module's doc); only for tensors on the CPU backend.
pub fn batch_norm_relu<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    statistics: Tensor<2>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as BatchNormBackend>::batch_norm_relu(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        statistics.into_dispatch(),
        epsilon,
    ))
}

/// Channels C and positions S (the product of the dimensions after the channel's) of x.
fn channels_and_positions(shape: &Shape) -> (usize, usize) {
    assert!(shape.num_dims() >= 2, "batch norm needs x [B, C, …]");
    (
        shape[1],
        shape.num_elements() / (shape[0] * shape[1]).max(1),
    )
}

/// Σ over channel c's planes of `f(plane's values, c, plane)`, per channel, in f64: the planes
/// (b, c) of a channel are summed in the order of b, so the sums do not depend on the thread
/// count.
fn per_channel_sums(
    values: &[f32],
    channels: usize,
    positions: usize,
    f: impl Fn(&[f32], usize, usize) -> f64 + Sync,
) -> Vec<f64> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            with_simd(
                #[inline(always)]
                || {
                    values
                        .chunks(positions)
                        .enumerate()
                        .skip(c)
                        .step_by(channels)
                        .map(|(plane, values)| f(values, c, plane))
                        .sum()
                },
            )
        })
        .collect()
}

/// Σ `term(aᵢ, bᵢ)` over two slices of one length in f64 (pass one slice twice for a sum over
/// one), as eight interleaved partial sums in a fixed order. One running sum is a chain of
/// dependent additions that the compiler may not reorder (four cycles a value); eight chains run
/// side by side and vectorise.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let (a, b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = (a.remainder().iter().zip(b.remainder()))
        .map(|(&a, &b)| term(a, b))
        .sum();
    let mut lanes = [0.0; 8];
    for (a, b) in a.zip(b) {
        for (lane, (&a, &b)) in lanes.iter_mut().zip(a.iter().zip(b)) {
            *lane += term(a, b);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

fn statistics(x: &FlexTensor) -> FlexTensor {
    let (channels, positions) = channels_and_positions(x.layout().shape());
    let x = contiguous(x);
    let x = values(&x);
    let count = (x.len() / channels.max(1)) as f64;
    let mean: Vec<f64> = per_channel_sums(x, channels, positions, |v, _, _| {
        lane_sum(v, v, |v, _| f64::from(v))
    })
    .into_iter()
    .map(|s| s / count)
    .collect();
    let variance = per_channel_sums(x, channels, positions, |v, c, _| {
        let mean = mean[c];
        lane_sum(v, v, |v, _| (f64::from(v) - mean).powi(2))
    });
    let rows = mean
        .iter()
        .map(|&m| m as f32)
        .chain(variance.iter().map(|&s| (s / count) as f32))
        .collect();
    tensor(rows, [2, channels])
}

/// Per channel: the scale γ / √(σ² + ε), 1 / √(σ² + ε) and μ.
struct Normalisation {
    scale: Vec<f32>,
    inverse_std: Vec<f32>,
    mean: Vec<f32>,
}

impl Normalisation {
    fn new(gamma: &[f32], statistics: &[f32], epsilon: f64) -> Self {
        let (mean, variance) = statistics.split_at(gamma.len());
        let inverse_std: Vec<f32> = variance
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
            .collect();
        Self {
            scale: gamma.iter().zip(&inverse_std).map(|(g, s)| g * s).collect(),
            inverse_std,
            mean: mean.to_vec(),
        }
    }
}

fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    statistics: &FlexTensor,
    epsilon: f64,
) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let (channels, positions) = channels_and_positions(&shape);
    let [x, gamma, beta, statistics] = [x, gamma, beta, statistics].map(contiguous);
    let norm = Normalisation::new(values(&gamma), values(&statistics), epsilon);
    let beta = values(&beta);
    let mut z = zeros(shape.num_elements());
    z.par_chunks_mut(positions)
        .zip(values(&x).par_chunks(positions))
        .enumerate()
        .for_each(|(plane, (z, x))| {
            let c = plane % channels;
            let (scale, mean, beta) = (norm.scale[c], norm.mean[c], beta[c]);
            for (z, &x) in z.iter_mut().zip(x) {
                *z = ((x - mean) * scale + beta).max(0.0);
            }
        });
    tensor(z, shape)
}

/// ∂x, ∂γ and ∂β for ∂z `grad` (see the module's doc).
fn backward(state: &State, grad: &FlexTensor) -> [FlexTensor; 3] {
    let shape = state.x.layout().shape().clone();
    let (channels, positions) = channels_and_positions(&shape);
    let grad = contiguous(grad);
    let (x, z, grad) = (values(&state.x), values(&state.z), values(&grad));
    let norm = Normalisation::new(&state.gamma, &state.statistics, state.epsilon);
    let count = (x.len() / channels.max(1)) as f32;
    let planes = |plane: usize| plane * positions..(plane + 1) * positions;
    // g = ∂z where z > 0.
    let masked: Vec<f32> = (grad.par_iter().zip(z))
        .map(|(&g, &z)| if z > 0.0 { g } else { 0.0 })
        .collect();
    let beta_grad = per_channel_sums(&masked, channels, positions, |g, _, _| {
        lane_sum(g, g, |g, _| f64::from(g))
    });
    let gamma_grad = per_channel_sums(x, channels, positions, |x, c, plane| {
        let (mean, inverse_std) = (norm.mean[c], norm.inverse_std[c]);
        lane_sum(&masked[planes(plane)], x, |g, x| {
            f64::from(g * (x - mean) * inverse_std)
        })
    });
    let (beta_grad, gamma_grad): (Vec<f32>, Vec<f32>) = (
        beta_grad.iter().map(|&v| v as f32).collect(),
        gamma_grad.iter().map(|&v| v as f32).collect(),
    );
    let mut x_grad = zeros(x.len());
    x_grad
        .par_chunks_mut(positions)
        .enumerate()
        .for_each(|(plane, dx)| {
            let c = plane % channels;
            let (mean, inverse_std) = (norm.mean[c], norm.inverse_std[c]);
            let factor = norm.scale[c] / count;
            let (db, dg) = (beta_grad[c], gamma_grad[c]);
            for ((dx, &g), &x) in dx
                .iter_mut()
                .zip(&masked[planes(plane)])
                .zip(&x[planes(plane)])
            {
                let normalised = (x - mean) * inverse_std;
                *dx = factor * (count * g - db - normalised * dg);
            }
        });
    [
        tensor(x_grad, shape),
        tensor(gamma_grad, [channels]),
        tensor(beta_grad, [channels]),
    ]
}

impl BatchNormBackend for Flex {
    fn batch_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        statistics(&x)
    }

    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        statistics: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        forward(&x, &gamma, &beta, &statistics, epsilon)
    }
}

#[derive(Debug)]
struct BatchNormBackward;

/// What the backward step needs: the input and output, γ, the batch's statistics and ε.
#[derive(Clone, Debug)]
struct State {
    x: FlexTensor,
    z: FlexTensor,
    gamma: Arc<Vec<f32>>,
    statistics: Arc<Vec<f32>>,
    epsilon: f64,
}

impl Backward<Flex, 3> for BatchNormBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let partials = backward(&ops.state, &grad);
        for (node, partial) in ops.parents.into_iter().zip(partials) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, partial);
            }
        }
    }
}

impl<C: CheckpointStrategy> BatchNormBackend for Autodiff<Flex, C> {
    fn batch_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(statistics(&x.into_primitive()))
    }

    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        statistics: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), gamma.node(), beta.node()];
        host_op::<_, C, 3>(BatchNormBackward, parents, || {
            let [x, gamma, beta, statistics] =
                [x, gamma, beta, statistics].map(|t| contiguous(&t.into_primitive()));
            let z = forward(&x, &gamma, &beta, &statistics, epsilon);
            let state = State {
                x,
                z: z.clone(),
                gamma: Arc::new(values(&gamma).to_vec()),
                statistics: Arc::new(values(&statistics).to_vec()),
                epsilon,
            };
            (z, state)
        })
    }
}
