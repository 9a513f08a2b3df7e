//! A host kernel as one node of burn's autodiff graph on the CPU backend: the one place where the
//! fused operations (LRT dense and conv, 2×2 max pool, the slope of the KL terms) meet burn's
//! `Backward` machinery.

use crate::tensor::FlexTensor;
use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::ops::{Backward, NodeGuard, OpsKind};
use burn::backend::tensor::FloatTensor;

/// The output of `forward` as an autodiff node whose parents are `parents` and whose backward
/// step is `backward`, given the state `forward` returns beside the output when any parent is
/// tracked. `forward` runs on the host tensors, after the parents' nodes were taken.
pub(crate) fn host_op<B, C, const N: usize>(
    backward: B,
    parents: [NodeGuard; N],
    forward: impl FnOnce() -> (FlexTensor, B::State),
) -> FloatTensor<Autodiff<Flex, C>>
where
    B: Backward<Flex, N>,
    C: CheckpointStrategy,
{
    match backward.prepare::<C>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (output, state) = forward();
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward().0),
    }
}
