//! f32 tensors of the CPU backend (Flex) as host slices, for the operations this crate runs on
//! the host ([`crate::cpu_conv`], [`crate::max_pool`], the runner's Adam).

use burn::backend::{BackendTypes, DispatchDevice, Flex};
use burn::tensor::{DType, Device, Shape, TensorData};

pub type FlexTensor = <Flex as BackendTypes>::FloatTensorPrimitive;

/// Whether tensors on `device` are the CPU backend's (with or without autodiff), so that the
/// host kernels apply.
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// The tensor in row-major order (a copy only when it is a strided view).
pub fn contiguous(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "host kernels work on f32 tensors");
    t.to_contiguous()
}

/// The values of a tensor returned by [`contiguous`], borrowed.
pub fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor (see `contiguous`)")
}

pub fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    let shape = t.layout().shape();
    assert_eq!(shape.num_dims(), D, "expected a tensor of rank {D}");
    std::array::from_fn(|i| shape[i])
}

pub fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
