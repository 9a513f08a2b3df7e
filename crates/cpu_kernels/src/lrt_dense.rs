//! The dense LRT sample as one operation with its own backward pass on the CPU backend (Flex),
//! the symbols of the method crate's `VariationalWeights`: for x `[B, I]`, θ and σ² `[I, O]`,
//! ζ `[B, O]` and b `[O]`,
//!
//! - forward: γ = x·θ, δ = (x ⊙ x)·σ², output (γ + √(δ + ε) ⊙ ζ) + b;
//! - backward, with g = ∂loss/∂output and g_δ = g ⊙ ζ / (2√(δ + ε)): ∂θ = xᵀ·g,
//!   ∂σ² = (x ⊙ x)ᵀ·g_δ, ∂b = Σ_rows g, ∂x = g·θᵀ + 2x ⊙ (g_δ·σ²ᵀ).
//!
//! Composed from burn's operations the sample is a dozen elementwise operations on the output
//! (square, the square root and its hand-made gradient, the product with ζ, two sums) and as many
//! backward steps, each allocating and passing over `[B, O]`: a quarter of a LeNet-300-100 step.
//! Other backends keep the composed form.

use crate::gemm::{Matrix, Parallelism, gemm};
use crate::host_op::host_op;
use crate::simd::zeros;
use crate::tensor::{FlexTensor, contiguous, dims, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use std::sync::Arc;

const VARIANCE_EPS: f32 = crate::VARIANCE_EPS as f32;

#[backend_extension(Flex, Autodiff)]
pub trait LrtDenseBackend: Backend {
    /// (x·θ + √((x ⊙ x)·σ² + 1e-8) ⊙ ζ) + b; see the module documentation.
    fn lrt_dense(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The dense LRT sample (see [`LrtDenseBackend::lrt_dense`]); only for tensors on the CPU
/// backend (the method's ops seam decides).
pub fn lrt_dense(
    x: Tensor<2>,
    mean: Tensor<2>,
    variance: Tensor<2>,
    zeta: Tensor<2>,
    bias: Tensor<1>,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as LrtDenseBackend>::lrt_dense(
        x.into_dispatch(),
        mean.into_dispatch(),
        variance.into_dispatch(),
        zeta.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// What the backward pass needs besides θ and σ²: x, x ⊙ x and ζ / (2√(δ + ε)).
#[derive(Debug)]
struct Saved {
    x: FlexTensor,
    squares: Vec<f32>,
    delta_factor: Vec<f32>,
}

/// The output and what backward needs.
fn forward(
    x: &FlexTensor,
    mean: &FlexTensor,
    variance: &FlexTensor,
    zeta: &FlexTensor,
    bias: &FlexTensor,
) -> (FlexTensor, Saved) {
    let ([batch, inputs], [rows, units]) = (dims(x), dims(mean));
    assert_eq!(inputs, rows, "lrt_dense: x is [B, I], θ must be [I, O]");
    assert_eq!(
        dims(variance),
        [inputs, units],
        "lrt_dense: σ² must have θ's shape"
    );
    assert_eq!(dims(zeta), [batch, units], "lrt_dense: ζ must be [B, O]");
    assert_eq!(dims(bias), [units], "lrt_dense: one bias per unit");
    let [x, mean, variance, zeta, bias] = [x, mean, variance, zeta, bias].map(contiguous);
    let x_values = values(&x);
    let squares: Vec<f32> = x_values.iter().map(|v| v * v).collect();
    let by_input = |data| Matrix::row_major(data, inputs);
    let by_unit = |data| Matrix::row_major(data, units);
    let mut output = zeros(batch * units);
    // δ, turned into ζ / (2√(δ + ε)) in place below.
    let mut delta_factor = zeros(batch * units);
    let threads = Parallelism::Rayon(0);
    gemm(
        &mut output,
        false,
        by_input(x_values),
        by_unit(values(&mean)),
        batch,
        threads,
    );
    let variance = by_unit(values(&variance));
    gemm(
        &mut delta_factor,
        false,
        by_input(&squares),
        variance,
        batch,
        threads,
    );
    let rows = output.chunks_mut(units).zip(delta_factor.chunks_mut(units));
    for ((out, factor), zeta) in rows.zip(values(&zeta).chunks(units)) {
        let terms = out.iter_mut().zip(factor.iter_mut()).zip(zeta);
        for (((o, f), &z), &b) in terms.zip(values(&bias)) {
            let std = (*f + VARIANCE_EPS).sqrt();
            *o = (*o + std * z) + b;
            *f = z / (2.0 * std);
        }
    }
    let saved = Saved {
        x,
        squares,
        delta_factor,
    };
    (tensor(output, [batch, units]), saved)
}

impl LrtDenseBackend for Flex {
    fn lrt_dense(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        forward(&x, &mean, &variance, &zeta, &bias).0
    }
}

/// The backward step; the parents are (x, θ, σ², b).
#[derive(Debug)]
struct DenseBackward;

/// θ, σ² and the forward pass's saved values.
#[derive(Clone, Debug)]
struct State {
    mean: FlexTensor,
    variance: FlexTensor,
    saved: Arc<Saved>,
}

impl Backward<Flex, 4> for DenseBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_mean, node_variance, node_bias] = ops.parents;
        let grad = contiguous(&grads.consume::<Flex>(&ops.node));
        let State {
            mean,
            variance,
            saved,
        } = ops.state;
        let ([batch, inputs], [_, units]) = (dims(&saved.x), dims(&mean));
        let g = values(&grad);
        let g_delta: Vec<f32> = g
            .iter()
            .zip(&saved.delta_factor)
            .map(|(g, f)| g * f)
            .collect();
        let by_unit = |data| Matrix::row_major(data, units);
        let threads = Parallelism::Rayon(0);
        // leftᵀ·right for left `[B, I]` and right `[B, O]`.
        let weight_grad = |left: &[f32], right: &[f32]| {
            let (left, right) = (
                Matrix::row_major(left, inputs),
                Matrix::row_major(right, units),
            );
            let mut out = zeros(inputs * units);
            gemm(&mut out, false, left.t(), right, inputs, threads);
            tensor(out, [inputs, units])
        };
        if let Some(node) = node_mean {
            grads.register::<Flex>(node.id, weight_grad(values(&saved.x), g));
        }
        if let Some(node) = node_variance {
            grads.register::<Flex>(node.id, weight_grad(&saved.squares, &g_delta));
        }
        if let Some(node) = node_bias {
            let mut bias_grad = vec![0f32; units];
            for row in g.chunks(units) {
                bias_grad.iter_mut().zip(row).for_each(|(b, g)| *b += g);
            }
            grads.register::<Flex>(node.id, tensor(bias_grad, [units]));
        }
        if let Some(node) = node_x {
            let [mean, variance] = [&mean, &variance].map(contiguous);
            let mut x_grad = zeros(batch * inputs);
            let mut variance_part = zeros(batch * inputs);
            let (mean, variance) = (by_unit(values(&mean)).t(), by_unit(values(&variance)).t());
            gemm(&mut x_grad, false, by_unit(g), mean, batch, threads);
            gemm(
                &mut variance_part,
                false,
                by_unit(&g_delta),
                variance,
                batch,
                threads,
            );
            for ((dx, v), &x) in x_grad.iter_mut().zip(&variance_part).zip(values(&saved.x)) {
                *dx += 2.0 * x * v;
            }
            grads.register::<Flex>(node.id, tensor(x_grad, [batch, inputs]));
        }
    }
}

impl<C: CheckpointStrategy> LrtDenseBackend for Autodiff<Flex, C> {
    fn lrt_dense(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), mean.node(), variance.node(), bias.node()];
        host_op::<_, C, 4>(DenseBackward, parents, || {
            let (x, zeta, bias) = (
                x.into_primitive(),
                zeta.into_primitive(),
                bias.into_primitive(),
            );
            let (mean, variance) = (mean.into_primitive(), variance.into_primitive());
            let (output, saved) = forward(&x, &mean, &variance, &zeta, &bias);
            let state = State {
                mean,
                variance,
                saved: Arc::new(saved),
            };
            (output, state)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::host_vec;
    use burn::tensor::{Device, Distribution};

    /// The fused sample and its four gradients equal burn's composed operations.
    #[test]
    fn fused_sample_and_gradients_match_the_composed_operations() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 1.0), &device);
        let mean = Tensor::<2>::random([7, 3], Distribution::Normal(0.0, 1.0), &device);
        let variance = Tensor::<2>::random([7, 3], Distribution::Uniform(0.01, 1.0), &device);
        let zeta = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<1>::random([3], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let (x, mean, variance, bias) = (
                x.clone().require_grad(),
                mean.clone().require_grad(),
                variance.clone().require_grad(),
                bias.clone().require_grad(),
            );
            let out = if fused {
                lrt_dense(
                    x.clone(),
                    mean.clone(),
                    variance.clone(),
                    zeta.clone(),
                    bias.clone(),
                )
            } else {
                let gamma = x.clone().matmul(mean.clone());
                let delta = x.clone().square().matmul(variance.clone());
                gamma + (delta + 1e-8).sqrt() * zeta.clone() + bias.clone().reshape([1, 3])
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |t: &Tensor<2>| host_vec(t.grad(&grads).expect("tracked"));
            [
                host_vec(out),
                grad(&x),
                grad(&mean),
                grad(&variance),
                host_vec(bias.grad(&grads).expect("tracked")),
            ]
        };
        let (fused, composed) = (run(true), run(false));
        for (name, (f, c)) in ["output", "∂x", "∂mean", "∂variance", "∂bias"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            assert_eq!(f.len(), c.len(), "{name}");
            for (a, b) in f.iter().zip(c) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{name}: {a} vs {b}"
                );
            }
        }
    }
}
