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

/// The values of `t` in row-major order, for writing in place: `t`'s own buffer when it holds
/// exactly these values and no other tensor shares it (the usual case for an optimizer's state),
/// else `t` is first replaced by a copy of its own, as burn's copy-on-write does.
pub fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    let n = t.layout().num_elements();
    let exact = t.is_contiguous() && t.layout().start_offset() == 0 && t.bytes().len() == 4 * n;
    if !exact {
        *t = tensor(values(&contiguous(t)).to_vec(), t.layout().shape().clone());
    }
    t.storage_mut::<f32>()
}

pub fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    let shape = t.layout().shape();
    assert_eq!(shape.num_dims(), D, "expected a tensor of rank {D}");
    std::array::from_fn(|i| shape[i])
}

pub fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
