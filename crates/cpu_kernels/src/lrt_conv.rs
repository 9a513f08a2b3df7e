//! Convolutions as single operations with their own backward pass on the CPU backend (Flex),
//! stride 1, the symbols of the method crate's `VariationalWeights`:
//! - [`conv2d`]: γ = conv(x, θ) + b, the plain (point-posterior) layer and every evaluation
//!   pass;
//! - [`lrt_conv2d`]: the LRT sample γ + √(δ + 1e-8) ⊙ ζ with δ = conv(x ⊙ x, σ²).
//!
//! The bias b (one per output channel) is added in the same pass, and its gradient summed in the
//! backward pass: as a separate broadcast addition it cost a pass over the output each way.
//!
//! burn's convolution builds the image patches (im2col) for the forward pass and again for each
//! gradient; composed from it the LRT sample costs four convolutions forward and four backward,
//! about half of a LeNet-5 training step. Here the patches are built once per pass, shared by the
//! mean and the variance path and by all the gradients (the private `kernels` module). Other
//! backends keep burn's operations (the method's ops seam decides).

mod kernels;
mod winograd;

use crate::MeanGradient;
use crate::host_op::host_op;
use crate::tensor::{FlexTensor, contiguous, dims, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use kernels::{ConvShape, Inputs, Saved, VariancePath};
use std::sync::Arc;

/// Stride-1 convolutions with `padding` zeros on every side and a bias per output channel.
#[backend_extension(Flex, Autodiff)]
pub trait ConvBackend: Backend {
    /// conv(x, θ) + b for x `[B, C, H, W]`, θ `[O, C, k, k]` and b `[O]`.
    fn conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// γ + √(δ + 1e-8) ⊙ ζ + b for x `[B, C, H, W]`, mean θ and variance σ² `[O, C, k, k]`, ζ
    /// of the output's shape `[B, O, H', W']` and b `[O]`; the mean's gradient is 0 where
    /// `mean_gradient` says it is not used.
    fn lrt_conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        mean_gradient: MeanGradient,
    ) -> FloatTensor<Self>;
}

/// The plain convolution (see [`ConvBackend::conv2d`]); only for tensors on the CPU backend
/// (the method's ops seam decides).
pub fn conv2d(x: Tensor<4>, mean: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvBackend>::conv2d(
        x.into_dispatch(),
        mean.into_dispatch(),
        bias.into_dispatch(),
        padding,
    ))
}

/// The LRT sample (see [`ConvBackend::lrt_conv2d`]); only for tensors on the CPU backend
/// (the method's ops seam decides).
pub fn lrt_conv2d(
    x: Tensor<4>,
    mean: Tensor<4>,
    variance: Tensor<4>,
    zeta: Tensor<4>,
    bias: Tensor<1>,
    padding: usize,
    mean_gradient: MeanGradient,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvBackend>::lrt_conv2d(
        x.into_dispatch(),
        mean.into_dispatch(),
        variance.into_dispatch(),
        zeta.into_dispatch(),
        bias.into_dispatch(),
        padding,
        mean_gradient,
    ))
}

/// The output's shape for x `[B, C, H, W]` and weights `[O, C, k, k]`.
pub fn output_dims(x: [usize; 4], weights: [usize; 4], padding: usize) -> [usize; 4] {
    shape_of(x, weights, padding).output_dims()
}

fn shape_of(x: [usize; 4], weights: [usize; 4], padding: usize) -> ConvShape {
    assert_eq!(
        x[1], weights[1],
        "conv2d: channels of x and of the weights differ"
    );
    assert_eq!(weights[2], weights[3], "conv2d: the kernel must be square");
    assert!(
        weights[2] <= x[2].min(x[3]) + 2 * padding,
        "conv2d: the kernel is larger than the padded image"
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

/// Runs the forward kernel, with the variance path when `noise` = (σ², ζ) is given; returns
/// the output and what backward needs.
fn forward(
    x: &FlexTensor,
    mean: &FlexTensor,
    bias: &FlexTensor,
    noise: Option<(&FlexTensor, &FlexTensor)>,
    padding: usize,
) -> (FlexTensor, ConvShape, Saved) {
    let shape = shape_of(dims(x), dims(mean), padding);
    assert_eq!(
        dims(bias),
        [shape.channels_out],
        "conv2d: one bias per output channel"
    );
    let [x, mean, bias] = [x, mean, bias].map(contiguous);
    let noise = noise.map(|(variance, zeta)| {
        assert_eq!(
            dims(zeta),
            shape.output_dims(),
            "lrt_conv2d: ζ must have the output's shape"
        );
        [variance, zeta].map(contiguous)
    });
    let (output, saved) = kernels::forward(
        shape,
        values(&x),
        values(&mean),
        values(&bias),
        noise.as_ref().map(|[variance, zeta]| VariancePath {
            variance: values(variance),
            zeta: values(zeta),
        }),
    );
    (tensor(output, shape.output_dims()), shape, saved)
}

impl ConvBackend for Flex {
    fn conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        forward(&x, &mean, &bias, None, padding).0
    }

    fn lrt_conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        _mean_gradient: MeanGradient,
    ) -> FloatTensor<Self> {
        forward(&x, &mean, &bias, Some((&variance, &zeta)), padding).0
    }
}

/// The backward step of both operations: gradients for x, the mean, the bias and (with the
/// variance path, N = 4) the variance from the inputs and what the forward kernel saved; the
/// parents are (x, mean, bias[, variance]).
#[derive(Debug)]
struct ConvBackward;

/// What the backward step keeps: the geometry, the input and the weights, where the mean's
/// gradient is used and what the forward kernel saved (the ∂δ factors, θ's nonzero entries).
#[derive(Clone, Debug)]
struct State {
    shape: ConvShape,
    x: FlexTensor,
    mean: FlexTensor,
    variance: Option<FlexTensor>,
    mean_gradient: MeanGradient,
    saved: Arc<Saved>,
}

impl<const N: usize> Backward<Flex, N> for ConvBackward {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut parents = ops.parents.into_iter();
        let mut next = || parents.next().flatten();
        let (node_x, node_mean, node_bias, node_variance) = (next(), next(), next(), next());
        let grad = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let (shape, weight_dims): (_, [usize; 4]) = (state.shape, dims(&state.mean));
        let [x, mean, grad] = [&state.x, &state.mean, &grad].map(contiguous);
        let variance = state.variance.as_ref().map(contiguous);
        let inputs = Inputs {
            x: values(&x),
            mean: values(&mean),
            variance: variance.as_ref().map(values),
        };
        let result = kernels::backward(
            shape,
            inputs,
            &state.saved,
            values(&grad),
            node_x.is_some(),
            state.mean_gradient,
        );
        if let (Some(node), Some(x_grad)) = (node_x, result.x) {
            let x_dims = [shape.batch, shape.channels_in, shape.height, shape.width];
            grads.register::<Flex>(node.id, tensor(x_grad, x_dims));
        }
        if let Some(node) = node_mean {
            grads.register::<Flex>(node.id, tensor(result.mean, weight_dims));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, tensor(result.bias, [shape.channels_out]));
        }
        if let (Some(node), Some(variance)) = (node_variance, result.variance) {
            grads.register::<Flex>(node.id, tensor(variance, weight_dims));
        }
    }
}

impl<C: CheckpointStrategy> ConvBackend for Autodiff<Flex, C> {
    fn conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), mean.node(), bias.node()];
        host_op::<_, C, 3>(ConvBackward, parents, || {
            let (x, mean, bias) = (
                x.into_primitive(),
                mean.into_primitive(),
                bias.into_primitive(),
            );
            let (output, shape, saved) = forward(&x, &mean, &bias, None, padding);
            let state = State {
                shape,
                x,
                mean,
                variance: None,
                mean_gradient: MeanGradient::Everywhere,
                saved: Arc::new(saved),
            };
            (output, state)
        })
    }

    fn lrt_conv2d(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        zeta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        mean_gradient: MeanGradient,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), mean.node(), bias.node(), variance.node()];
        host_op::<_, C, 4>(ConvBackward, parents, || {
            let (x, zeta, bias) = (
                x.into_primitive(),
                zeta.into_primitive(),
                bias.into_primitive(),
            );
            let (mean, variance) = (mean.into_primitive(), variance.into_primitive());
            let (output, shape, saved) =
                forward(&x, &mean, &bias, Some((&variance, &zeta)), padding);
            let state = State {
                shape,
                x,
                mean,
                variance: Some(variance),
                mean_gradient,
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
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution, TensorData};

    /// The fused sample and its four gradients equal burn's composed operations (two
    /// convolutions, square root, product with ζ), with and without padding, for an input that
    /// is a strided view, and for a mean with seven eighths of its entries 0 (as after the train
    /// clip), which the fused operation multiplies as a sparse matrix; with
    /// [`MeanGradient::WhereNonzero`] ∂mean equals the composed one where the mean is nonzero
    /// and is 0 elsewhere.
    #[test]
    fn fused_sample_and_gradients_match_the_composed_operations() {
        let device = Device::flex().autodiff();
        assert!(crate::tensor::is_cpu(&device));
        let every_eighth = Tensor::<1>::from_data(
            TensorData::new((0..72).map(|i| u8::from(i % 8 == 0) as f32).collect(), [72]),
            &device,
        )
        .reshape([4, 2, 3, 3]);
        let (everywhere, where_nonzero) = (MeanGradient::Everywhere, MeanGradient::WhereNonzero);
        for (padding, sparse, mean_gradient) in [
            (0, false, everywhere),
            (1, false, everywhere),
            (2, false, everywhere),
            (0, true, everywhere),
            (2, true, everywhere),
            (1, false, where_nonzero),
            (0, true, where_nonzero),
            (2, true, where_nonzero),
        ] {
            let x = Tensor::<4>::random([3, 2, 6, 7], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(2, 3);
            let mut mean =
                Tensor::<4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            if sparse {
                mean = mean * every_eighth.clone();
            }
            let variance =
                Tensor::<4>::random([4, 2, 3, 3], Distribution::Uniform(0.01, 1.0), &device);
            let bias = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &device);
            let dims = output_dims(x.dims(), mean.dims(), padding);
            let zeta = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            // A loss with a different weight per output element, so every gradient is exercised.
            let weights = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let (x, mean, variance, bias) = (
                    x.clone().require_grad(),
                    mean.clone().require_grad(),
                    variance.clone().require_grad(),
                    bias.clone().require_grad(),
                );
                let out = if fused {
                    lrt_conv2d(
                        x.clone(),
                        mean.clone(),
                        variance.clone(),
                        zeta.clone(),
                        bias.clone(),
                        padding,
                        mean_gradient,
                    )
                } else {
                    let options = ConvOptions::new([1, 1], [padding; 2], [1, 1], 1);
                    let gamma =
                        conv2d(x.clone(), mean.clone(), Some(bias.clone()), options.clone());
                    let delta = conv2d(x.clone().square(), variance.clone(), None, options);
                    gamma + (delta + 1e-8).sqrt() * zeta.clone()
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let grad = |t: &Tensor<4>| host_vec(t.grad(&grads).expect("tracked"));
                let mut mean_grad = grad(&mean);
                if mean_gradient == MeanGradient::WhereNonzero {
                    for (g, m) in mean_grad.iter_mut().zip(host_vec(mean.clone())) {
                        *g = if m == 0.0 { 0.0 } else { *g };
                    }
                }
                [
                    host_vec(out),
                    grad(&x),
                    mean_grad,
                    grad(&variance),
                    host_vec(bias.grad(&grads).expect("tracked")),
                ]
            };
            let (fused, composed) = (run(true), run(false));
            for (name, (f, c)) in ["output", "∂x", "∂mean", "∂variance", "∂bias"]
                .iter()
                .zip(fused.iter().zip(&composed))
            {
                let case = format!("{name} (sparse mean: {sparse}, {mean_gradient:?})");
                assert_close(&case, padding, f, c);
            }
        }
    }

    /// The plain convolution and its three gradients equal burn's conv2d, with and without
    /// padding, for an input that is a strided view.
    #[test]
    fn plain_convolution_and_gradients_match_burn() {
        let device = Device::flex().autodiff();
        for padding in [0, 1, 2] {
            let x = Tensor::<4>::random([3, 2, 6, 7], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(2, 3);
            let mean = Tensor::<4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            let bias = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &device);
            let dims = output_dims(x.dims(), mean.dims(), padding);
            let weights = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let (x, mean, bias) = (
                    x.clone().require_grad(),
                    mean.clone().require_grad(),
                    bias.clone().require_grad(),
                );
                let out = if ours {
                    super::conv2d(x.clone(), mean.clone(), bias.clone(), padding)
                } else {
                    let options = ConvOptions::new([1, 1], [padding; 2], [1, 1], 1);
                    conv2d(x.clone(), mean.clone(), Some(bias.clone()), options)
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let grad = |t: &Tensor<4>| host_vec(t.grad(&grads).expect("tracked"));
                [
                    host_vec(out),
                    grad(&x),
                    grad(&mean),
                    host_vec(bias.grad(&grads).expect("tracked")),
                ]
            };
            let (ours, burns) = (run(true), run(false));
            for (name, (a, b)) in ["output", "∂x", "∂mean", "∂bias"]
                .iter()
                .zip(ours.iter().zip(&burns))
            {
                assert_close(name, padding, a, b);
            }
        }
    }

    fn assert_close(name: &str, padding: usize, ours: &[f32], reference: &[f32]) {
        assert_eq!(ours.len(), reference.len(), "{name}");
        for (a, b) in ours.iter().zip(reference) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{name}, padding {padding}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn without_autodiff_the_fused_sample_is_the_same() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let mean = Tensor::<4>::random([2, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let variance = Tensor::<4>::random([2, 3, 3, 3], Distribution::Uniform(0.01, 1.0), &device);
        let zeta = Tensor::<4>::random([2, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<1>::random([2], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([1, 1], [0; 2], [1, 1], 1);
        let composed = conv2d(x.clone(), mean.clone(), Some(bias.clone()), options.clone())
            + (conv2d(x.clone().square(), variance.clone(), None, options) + 1e-8).sqrt()
                * zeta.clone();
        let fused = lrt_conv2d(x, mean, variance, zeta, bias, 0, MeanGradient::Everywhere);
        for (a, b) in host_vec(fused).iter().zip(host_vec(composed)) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
