//! 2×2 max pooling with stride 2 (LeNet-5's and VGG-like's pooling): y[h, w] = max over the
//! window x[2h..2h+2, 2w..2w+2] of each plane; the gradient goes to the window's first maximum.
//!
//! One host operation that keeps the winner of each window as a byte; burn's general pooling
//! (`max_pool2d`, the composed form) kept an i64 index per output and scattered the gradient back
//! one element at a time, about a tenth of a LeNet-5 training step.

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
use rayon::prelude::*;
use std::sync::Arc;

/// 2×2 max pooling with stride 2 of x `[B, C, H, W]` (H and W even) to `[B, C, H/2, W/2]`;
/// only for tensors on the CPU backend.
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as MaxPoolBackend>::max_pool_2x2(
        x.into_dispatch(),
    ))
}

#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolBackend: Backend {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The pooled planes and, per output, which of the window's four inputs won (row-major 0…3).
fn forward(x: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let [b, c, h, w] = dims(x);
    assert!(
        h % 2 == 0 && w % 2 == 0,
        "max_pool_2x2 needs even height and width, got {h}×{w}"
    );
    let (ho, wo) = (h / 2, w / 2);
    let x = contiguous(x);
    let x = values(&x);
    let mut out = zeros(b * c * ho * wo);
    let mut winner = vec![0u8; out.len()];
    out.par_chunks_mut(ho * wo)
        .zip(winner.par_chunks_mut(ho * wo))
        .zip(x.par_chunks(h * w))
        .for_each(|((out, winner), plane)| {
            for (i, (out_row, winner_row)) in
                out.chunks_mut(wo).zip(winner.chunks_mut(wo)).enumerate()
            {
                let (top, bottom) = (&plane[2 * i * w..][..w], &plane[(2 * i + 1) * w..][..w]);
                let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
                for ((o, win), (t, b)) in out_row.iter_mut().zip(winner_row).zip(windows) {
                    (*o, *win) = first_maximum([t[0], t[1], b[0], b[1]]);
                }
            }
        });
    (tensor(out, [b, c, ho, wo]), winner)
}

/// The largest of a window's four values and its position, the first on ties, without
/// branches: which value wins is data-dependent and unpredictable, and mispredicted branches
/// made up most of the pooling's time.
#[inline(always)]
fn first_maximum([a, b, c, d]: [f32; 4]) -> (f32, u8) {
    let pick = |later_wins: bool, (v0, i0): (f32, u8), (v1, i1): (f32, u8)| {
        let i = u8::from(later_wins);
        ([v0, v1][usize::from(i)], [i0, i1][usize::from(i)])
    };
    let top = pick(b > a, (a, 0), (b, 1));
    let bottom = pick(d > c, (c, 2), (d, 3));
    pick(bottom.0 > top.0, top, bottom)
}

/// ∂x: each output's gradient at its window's winner, zero elsewhere.
fn backward(grad: &FlexTensor, winner: &[u8], x_dims: [usize; 4]) -> FlexTensor {
    let [b, c, h, w] = x_dims;
    let (ho, wo) = (h / 2, w / 2);
    let grad = contiguous(grad);
    let grad = values(&grad);
    let mut dx = zeros(b * c * h * w);
    dx.par_chunks_mut(h * w)
        .zip(grad.par_chunks(ho * wo).zip(winner.par_chunks(ho * wo)))
        .for_each(|(plane, (grad, winner))| {
            for (i, (g_row, win_row)) in grad.chunks(wo).zip(winner.chunks(wo)).enumerate() {
                for (j, (&g, &win)) in g_row.iter().zip(win_row).enumerate() {
                    let (di, dj) = (usize::from(win / 2), usize::from(win % 2));
                    plane[(2 * i + di) * w + 2 * j + dj] = g;
                }
            }
        });
    tensor(dx, x_dims)
}

impl MaxPoolBackend for Flex {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        forward(&x).0
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// The input's shape and each window's winner.
    type State = ([usize; 4], Arc<Vec<u8>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let (x_dims, winner) = ops.state;
            grads.register::<Flex>(node.id, backward(&grad, &winner, x_dims));
        }
    }
}

impl<C: CheckpointStrategy> MaxPoolBackend for Autodiff<Flex, C> {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let parents = [x.node()];
        host_op::<_, C, 1>(MaxPoolBackward, parents, || {
            let x = x.into_primitive();
            let (output, winner) = forward(&x);
            (output, (dims(&x), Arc::new(winner)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::host_vec;
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    use burn::tensor::{Device, Distribution, TensorData};

    /// Output and gradient equal burn's max_pool2d, ties included (both take the first maximum).
    #[test]
    fn matches_burn_max_pool_with_its_gradient() {
        let device = Device::flex().autodiff();
        let random = Tensor::<4>::random([3, 4, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        // Ties: values rounded to halves, so many windows have equal maxima.
        let tied = (random.clone() * 2.0).round() / 2.0;
        for x in [random, tied] {
            let weights =
                Tensor::<4>::random([3, 4, 3, 4], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let out = if ours {
                    max_pool_2x2(x.clone())
                } else {
                    max_pool2d(x.clone(), MaxPoolOptions::new([2, 2]))
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let dx = x.grad(&grads).expect("tracked");
                (host_vec(out), host_vec(dx))
            };
            assert_eq!(run(true), run(false));
        }
    }

    /// ReLU after pooling (LeNet-5's order) gives the output and gradient of ReLU before it,
    /// with ties, zeros and all-negative windows.
    #[test]
    fn relu_commutes_with_pooling_gradients_included() {
        use burn::tensor::activation::relu;
        let device = Device::flex().autodiff();
        let random = Tensor::<4>::random([2, 3, 6, 8], Distribution::Normal(-0.3, 1.0), &device);
        let tied = (random.clone() * 2.0).round() / 2.0;
        for x in [random, tied] {
            let weights =
                Tensor::<4>::random([2, 3, 3, 4], Distribution::Normal(0.0, 1.0), &device);
            let run = |pool_first: bool| {
                let x = x.clone().require_grad();
                let out = if pool_first {
                    relu(max_pool_2x2(x.clone()))
                } else {
                    max_pool_2x2(relu(x.clone()))
                };
                let grads = (out.clone() * weights.clone()).sum().backward();
                let dx = x.grad(&grads).expect("tracked");
                (host_vec(out), host_vec(dx))
            };
            assert_eq!(run(true), run(false));
        }
    }

    #[test]
    fn the_first_maximum_wins_ties() {
        assert_eq!(first_maximum([1.0, 1.0, 1.0, 1.0]), (1.0, 0));
        assert_eq!(first_maximum([0.0, 2.0, 2.0, 1.0]), (2.0, 1));
        assert_eq!(first_maximum([0.0, 1.0, 3.0, 3.0]), (3.0, 2));
        assert_eq!(first_maximum([5.0, 1.0, 5.0, 0.0]), (5.0, 0));
        assert_eq!(first_maximum([-4.0, -3.0, -2.0, -1.0]), (-1.0, 3));
    }

    #[test]
    fn known_values() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(
                vec![1.0f32, 5.0, 2.0, 0.0, 3.0, -1.0, 7.0, 7.0],
                [1, 1, 2, 4],
            ),
            &device,
        );
        assert_eq!(host_vec(max_pool_2x2(x)), vec![5.0, 7.0]);
    }
}
