//! How the method's operations execute on a device, decided in one place.
//!
//! Every operation of a training step has a composed form: burn's tensor operations, written
//! from the formulas of `docs/method.md`, differentiated by burn's autodiff, and run on any
//! backend without leaving the device. On the CPU backend (Flex) most also have a host kernel:
//! one pass over host memory that fuses what the composed form does in many (the fused LRT
//! dense and convolution, the KL pass, pooling, noise, Adam). [`execution`] says which of the
//! two runs; nothing else asks which backend a tensor lives on.
//!
//! [`compose_on_this_thread`] makes the composed forms run on the CPU too, so that the generic
//! path (the GPU's) is tested and timed on a machine without a GPU. Reading a tensor back to
//! the host goes through [`read_back`], which counts, so that a test can state that a
//! composed training step reads nothing back (`clippy.toml` keeps burn's own read methods out
//! of the library code).

use crate::flex_host::is_flex;
use burn::tensor::kind::Basic;
use burn::tensor::{Device, Tensor, TensorData};
use std::cell::Cell;

/// Which form of the operations runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// The CPU backend's host kernels.
    HostKernels,
    /// burn's tensor operations: every backend, and the CPU under [`compose_on_this_thread`].
    Composed,
}

thread_local! {
    static COMPOSED_FORCED: Cell<bool> = const { Cell::new(false) };
    static READ_BACKS: Cell<u64> = const { Cell::new(0) };
}

/// The form that runs for tensors on `device`.
pub fn execution(device: &Device) -> Execution {
    if is_flex(device) && !composed_on_this_thread() {
        Execution::HostKernels
    } else {
        Execution::Composed
    }
}

/// Whether the host kernels run for tensors on `device`.
pub fn host_kernels(device: &Device) -> bool {
    execution(device) == Execution::HostKernels
}

/// While the returned guard lives, operations called from this thread run composed on every
/// backend, the CPU's included.
#[must_use = "the composed forms run only while the guard lives"]
pub fn compose_on_this_thread() -> ComposedScope {
    ComposedScope {
        before: COMPOSED_FORCED.with(|f| f.replace(true)),
    }
}

/// Whether this thread is under [`compose_on_this_thread`] (to carry the choice to a thread
/// that works for it).
pub fn composed_on_this_thread() -> bool {
    COMPOSED_FORCED.with(Cell::get)
}

/// See [`compose_on_this_thread`].
pub struct ComposedScope {
    before: bool,
}

impl Drop for ComposedScope {
    fn drop(&mut self) {
        COMPOSED_FORCED.with(|f| f.set(self.before));
    }
}

/// The values of `tensor` on the host. On a GPU this waits for the device: the one door from
/// device to host in the library code, counted per thread (see [`read_backs`]).
#[allow(clippy::disallowed_methods)] // this is the door
pub fn read_back<const D: usize, K: Basic>(tensor: Tensor<D, K>) -> TensorData {
    READ_BACKS.with(|n| n.set(n.get() + 1));
    tensor.into_data()
}

/// How many tensors this thread has read back through [`read_back`].
pub fn read_backs() -> u64 {
    READ_BACKS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_runs_host_kernels_unless_composition_is_asked_for() {
        let device = Device::flex();
        assert_eq!(execution(&device), Execution::HostKernels);
        assert_eq!(
            execution(&device.clone().autodiff()),
            Execution::HostKernels
        );
        {
            let _outer = compose_on_this_thread();
            {
                let _inner = compose_on_this_thread();
                assert_eq!(execution(&device), Execution::Composed);
            }
            assert_eq!(
                execution(&device),
                Execution::Composed,
                "the outer guard holds"
            );
        }
        assert_eq!(execution(&device), Execution::HostKernels);
    }

    #[test]
    fn read_back_counts() {
        let device = Device::flex();
        let before = read_backs();
        let data = read_back(Tensor::<1>::ones([3], &device));
        assert_eq!(data.try_to_vec::<f32>().ok(), Some(vec![1.0; 3]));
        assert_eq!(read_backs(), before + 1);
    }
}
