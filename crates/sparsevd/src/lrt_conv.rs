//! The LRT convolution as one operation with its own backward pass, on the CPU backend (Flex):
//! γ + √(δ + 1e-8) ⊙ ζ with γ = conv(x, θ), δ = conv(x ⊙ x, σ²), the symbols of
//! [`crate::weights::VariationalWeights`].
//!
//! Composed from burn's operations the same sample costs four convolutions forward (two of them
//! im2col passes over the same patches) and four backward (weight and input gradients of each),
//! about half of a LeNet-5 training step. Fused, the patches are built once and kept for the
//! backward pass ([`kernels`]). Other backends keep the composed form
//! ([`crate::flex_host::is_flex`] decides).

mod kernels;

use crate::flex_host::{FlexTensor, contiguous, dims, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use kernels::{ConvShape, Saved};

/// The LRT sample of a stride-1 convolution with `padding` zeros on every side.
#[backend_extension(Flex, Autodiff)]
pub trait LrtConvBackend: Backend {
    /// γ + √(δ + 1e-8) ⊙ ζ for x `[B, C, H, W]`, mean θ and variance σ² `[O, C, k, k]`, and ζ
    /// of the output's shape `[B, O, H', W']`; no bias.
    fn lrt_conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;
}

/// The fused LRT sample (see [`LrtConvBackend::lrt_conv2d`]); only for tensors on the CPU
/// backend ([`crate::flex_host::is_flex`]).
pub fn lrt_conv2d(
    x: Tensor<4>,
    mean: Tensor<4>,
    variance: Tensor<4>,
    zeta: Tensor<4>,
    padding: usize,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as LrtConvBackend>::lrt_conv2d(
        x.into_dispatch(),
        mean.into_dispatch(),
        variance.into_dispatch(),
        zeta.into_dispatch(),
        padding,
    ))
}

/// The output's shape for x `[B, C, H, W]` and weights `[O, C, k, k]`.
pub fn output_dims(x: [usize; 4], weights: [usize; 4], padding: usize) -> [usize; 4] {
    shape_of(x, weights, padding).output_dims()
}

fn shape_of(x: [usize; 4], weights: [usize; 4], padding: usize) -> ConvShape {
    assert_eq!(
        x[1], weights[1],
        "lrt_conv2d: channels of x and of the weights differ"
    );
    assert_eq!(
        weights[2], weights[3],
        "lrt_conv2d: the kernel must be square"
    );
    assert!(
        weights[2] <= x[2].min(x[3]) + 2 * padding,
        "lrt_conv2d: the kernel is larger than the padded image"
    );
    ConvShape {
        batch: x[0],
        channels_in: x[1],
        height: x[2],
        width: x[3],
        channels_out: weights[0],
        kernel: weights[2],
        padding,
    }
}

/// Runs the forward kernel; returns the output and what backward needs.
fn forward(
    x: &FlexTensor,
    mean: &FlexTensor,
    variance: &FlexTensor,
    zeta: &FlexTensor,
    padding: usize,
) -> (FlexTensor, ConvShape, Saved) {
    let shape = shape_of(dims(x), dims(mean), padding);
    assert_eq!(
        dims(zeta),
        shape.output_dims(),
        "lrt_conv2d: ζ must have the output's shape"
    );
    let [x, mean, variance, zeta] = [x, mean, variance, zeta].map(contiguous);
    let (output, saved) = kernels::forward(
        shape,
        values(&x),
        values(&mean),
        values(&variance),
        values(&zeta),
    );
    (tensor(output, shape.output_dims()), shape, saved)
}

impl LrtConvBackend for Flex {
    fn lrt_conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        forward(&x, &mean, &variance, &zeta, padding).0
    }
}

/// The backward step: gradients for x, mean and variance from the saved patches.
#[derive(Debug)]
struct LrtConvBackward;

/// What the backward step keeps: the geometry, the weights and the forward kernel's saved
/// patches and ∂δ factors.
#[derive(Clone, Debug)]
struct State {
    shape: ConvShape,
    mean: FlexTensor,
    variance: FlexTensor,
    saved: std::sync::Arc<Saved>,
}

impl Backward<Flex, 3> for LrtConvBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_mean, node_variance] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let (shape, weight_dims): (_, [usize; 4]) = (state.shape, dims(&state.mean));
        let [mean, variance, grad] = [&state.mean, &state.variance, &grad].map(contiguous);
        let result = kernels::backward(
            shape,
            &state.saved,
            values(&mean),
            values(&variance),
            values(&grad),
            node_x.is_some(),
        );
        if let (Some(node), Some(x)) = (node_x, result.x) {
            let x_dims = [shape.batch, shape.channels_in, shape.height, shape.width];
            grads.register::<Flex>(node.id, tensor(x, x_dims));
        }
        if let Some(node) = node_mean {
            grads.register::<Flex>(node.id, tensor(result.mean, weight_dims));
        }
        if let Some(node) = node_variance {
            grads.register::<Flex>(node.id, tensor(result.variance, weight_dims));
        }
    }
}

impl<C: CheckpointStrategy> LrtConvBackend for Autodiff<Flex, C> {
    fn lrt_conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        let prepared = LrtConvBackward
            .prepare::<C>([x.node(), mean.node(), variance.node()])
            .compute_bound()
            .stateful();
        let (x, zeta) = (x.into_primitive(), zeta.into_primitive());
        let (mean, variance) = (mean.into_primitive(), variance.into_primitive());
        let (output, shape, saved) = forward(&x, &mean, &variance, &zeta, padding);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish(
                State {
                    shape,
                    mean,
                    variance,
                    saved: std::sync::Arc::new(saved),
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::host_vec;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution};

    /// The fused sample and its three gradients equal burn's composed operations (two
    /// convolutions, square root, product with ζ), with and without padding, for an input that
    /// is a strided view.
    #[test]
    fn fused_sample_and_gradients_match_the_composed_operations() {
        let device = Device::flex().autodiff();
        assert!(crate::flex_host::is_flex(&device));
        for padding in [0, 1, 2] {
            let x = Tensor::<4>::random([3, 2, 6, 7], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(2, 3);
            let mean = Tensor::<4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            let variance =
                Tensor::<4>::random([4, 2, 3, 3], Distribution::Uniform(0.01, 1.0), &device);
            let dims = output_dims(x.dims(), mean.dims(), padding);
            let zeta = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            // A loss with a different weight per output element, so every gradient is exercised.
            let weights = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let (x, mean, variance) = (
                    x.clone().require_grad(),
                    mean.clone().require_grad(),
                    variance.clone().require_grad(),
                );
                let out = if fused {
                    lrt_conv2d(
                        x.clone(),
                        mean.clone(),
                        variance.clone(),
                        zeta.clone(),
                        padding,
                    )
                } else {
                    let options = ConvOptions::new([1, 1], [padding; 2], [1, 1], 1);
                    let gamma = conv2d(x.clone(), mean.clone(), None, options.clone());
                    let delta = conv2d(x.clone().square(), variance.clone(), None, options);
                    gamma + (delta + 1e-8).sqrt() * zeta.clone()
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let grad = |t: &Tensor<4>| host_vec(t.grad(&grads).expect("tracked").into_data());
                [
                    host_vec(out.into_data()),
                    grad(&x),
                    grad(&mean),
                    grad(&variance),
                ]
            };
            let (fused, composed) = (run(true), run(false));
            for (name, (f, c)) in ["output", "∂x", "∂mean", "∂variance"]
                .iter()
                .zip(fused.iter().zip(&composed))
            {
                assert_eq!(f.len(), c.len(), "{name}");
                for (a, b) in f.iter().zip(c) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{name}, padding {padding}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn without_autodiff_the_fused_sample_is_the_same() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let mean = Tensor::<4>::random([2, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let variance = Tensor::<4>::random([2, 3, 3, 3], Distribution::Uniform(0.01, 1.0), &device);
        let zeta = Tensor::<4>::random([2, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([1, 1], [0; 2], [1, 1], 1);
        let composed = conv2d(x.clone(), mean.clone(), None, options.clone())
            + (conv2d(x.clone().square(), variance.clone(), None, options) + 1e-8).sqrt()
                * zeta.clone();
        let fused = lrt_conv2d(x, mean, variance, zeta, 0);
        for (a, b) in host_vec(fused.into_data())
            .iter()
            .zip(host_vec(composed.into_data()))
        {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
