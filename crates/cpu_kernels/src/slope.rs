//! Values computed on the host, given their gradient by hand: [`plus_zero_with_slope`] is
//! `value + (x − x̄) ⊙ slope` with x̄ a detached copy of x — equal to `value`, with gradient
//! `slope` with respect to x (summed to a scalar when `value` is one number).
//!
//! [`crate::kl::KlTerms`] gives σ² and Σ KL, computed in one host pass, their gradients this way,
//! three times per Sparse VD layer. Composed from burn's operations each is a subtraction, a
//! product (and a sum) forward and as many backward steps, every one a pass over the layer's
//! weights. On the CPU backend it is one operation here: the forward pass returns `value`
//! itself, the backward pass is one product.

use crate::host_op::host_op;
use crate::simd::{with_simd, zeros};
use crate::tensor::{FlexTensor, contiguous, tensor, values};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

#[backend_extension(Flex, Autodiff)]
pub trait SlopeBackend: Backend {
    /// `value`, differentiated as the identity with respect to `value` and as `slope` (x's
    /// shape) with respect to `x`; see [`plus_zero_with_slope`].
    fn plus_zero_with_slope(
        value: FloatTensor<Self>,
        x: FloatTensor<Self>,
        slope: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `value + (x − x̄) ⊙ slope`, x̄ detached: `value` with ∂/∂x = `slope`. `value` has either x's
/// number of elements (an elementwise slope) or one (the slope of a sum over x). Only for
/// tensors on the CPU backend.
pub fn plus_zero_with_slope<const E: usize, const D: usize>(
    value: Tensor<E>,
    x: Tensor<D>,
    slope: Tensor<D>,
) -> Tensor<E> {
    let (count, x_count) = (value.shape().num_elements(), x.shape().num_elements());
    assert!(
        count == x_count || count == 1,
        "plus_zero_with_slope: value has {count} elements, x has {x_count}"
    );
    Tensor::from_dispatch(<Dispatch as SlopeBackend>::plus_zero_with_slope(
        value.into_dispatch(),
        x.into_dispatch(),
        slope.into_dispatch(),
    ))
}

impl SlopeBackend for Flex {
    fn plus_zero_with_slope(
        value: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _slope: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        value
    }
}

/// Values per parallel chunk of the backward product.
const CHUNK: usize = 1 << 14;

/// Passes ∂output to `value` and ∂output ⊙ slope (or ∂output · slope for a scalar output) to x.
#[derive(Debug)]
struct SlopeBackward;

impl Backward<Flex, 2> for SlopeBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_value, node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let [slope, grad] = [&ops.state, &grad].map(contiguous);
            let (slope_values, grad_values) = (values(&slope), values(&grad));
            let mut x_grad = zeros(slope_values.len());
            x_grad
                .par_chunks_mut(CHUNK)
                .zip(slope_values.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (x_grad, slope))| {
                    with_simd(
                        #[inline(always)]
                        || match grad_values {
                            [g] => x_grad.iter_mut().zip(slope).for_each(|(x, s)| *x = g * s),
                            _ => {
                                let grad = &grad_values[c * CHUNK..][..slope.len()];
                                let terms = x_grad.iter_mut().zip(slope).zip(grad);
                                terms.for_each(|((x, s), g)| *x = g * s);
                            }
                        },
                    );
                });
            let shape = slope.layout().shape().clone();
            grads.register::<Flex>(node.id, tensor(x_grad, shape));
        }
        if let Some(node) = node_value {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl<C: CheckpointStrategy> SlopeBackend for Autodiff<Flex, C> {
    fn plus_zero_with_slope(
        value: FloatTensor<Self>,
        x: FloatTensor<Self>,
        slope: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let parents = [value.node(), x.node()];
        host_op::<_, C, 2>(SlopeBackward, parents, || {
            (value.into_primitive(), slope.into_primitive())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::host_vec;
    use burn::tensor::{Device, Distribution, TensorData};

    /// Output and gradients equal the composed form's, for an elementwise slope and for the
    /// slope of a sum, with `value` tracked too.
    #[test]
    fn matches_the_composed_form() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        let slope = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        let base = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        for scalar in [false, true] {
            let run = |ours: bool| {
                let (x, base) = (x.clone().require_grad(), base.clone().require_grad());
                let value = base.clone().exp();
                let loss = if scalar {
                    let value = value.sum();
                    let out = if ours {
                        plus_zero_with_slope(value, x.clone(), slope.clone())
                    } else {
                        value + ((x.clone() - x.clone().detach()) * slope.clone()).sum()
                    };
                    out * 3.0
                } else {
                    let out = if ours {
                        plus_zero_with_slope(value, x.clone(), slope.clone())
                    } else {
                        value + (x.clone() - x.clone().detach()) * slope.clone()
                    };
                    (out * weights.clone()).sum()
                };
                let grads = loss.clone().backward();
                let grad = |t: &Tensor<2>| host_vec(t.grad(&grads).expect("tracked"));
                [host_vec(loss), grad(&x), grad(&base)]
            };
            let (ours, composed) = (run(true), run(false));
            for (name, (a, b)) in ["loss", "∂x", "∂value"]
                .iter()
                .zip(ours.iter().zip(&composed))
            {
                assert_eq!(a.len(), b.len(), "{name}");
                for (a, b) in a.iter().zip(b) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{name} (scalar {scalar}): {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn without_autodiff_it_is_the_value() {
        let device = Device::flex();
        let value = Tensor::<1>::from_data(TensorData::from([1.5f32, -2.0]), &device);
        let x = Tensor::<1>::from_data(TensorData::from([3.0f32, 4.0]), &device);
        let out = plus_zero_with_slope(value, x.clone(), x);
        assert_eq!(host_vec(out), vec![1.5, -2.0]);
    }
}
