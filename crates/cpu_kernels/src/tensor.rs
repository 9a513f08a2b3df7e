//! f32 tensors of the CPU backend (Flex) as host slices, for the operations this crate runs on
//! the host, and [`is_cpu`]: whether a device's tensors are such tensors.

use burn::backend::{BackendTypes, DispatchDevice, Flex};
use burn::tensor::{DType, Device, Shape, TensorData};

pub type FlexTensor = <Flex as BackendTypes>::FloatTensorPrimitive;

/// Whether tensors on `device` are the CPU backend's (with or without autodiff), so that the
/// host kernels apply. The method's ops seam is the one caller outside this crate's tests.
pub fn is_cpu(device: &Device) -> bool {
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

/// The values of `tensor` as host f32 (for tests).
#[cfg(test)]
pub(crate) fn host_vec<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32 just above")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor that owns its buffer alone is written in place; a tensor that shares its buffer,
    /// or is a strided view of one, is first copied, so the other tensor keeps its values.
    #[test]
    fn values_mut_writes_in_place_only_what_no_other_tensor_sees() {
        let values_of = |t: &FlexTensor| values(&contiguous(t)).to_vec();
        let mut owned = tensor(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let buffer = owned.bytes().as_ptr();
        values_mut(&mut owned)[0] = 10.0;
        assert_eq!(owned.bytes().as_ptr(), buffer, "written in place");
        assert_eq!(values_of(&owned), [10.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        let original = tensor(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let mut shared = original.clone();
        values_mut(&mut shared)[0] = 10.0;
        assert_eq!(values_of(&shared)[0], 10.0);
        let layout = original.layout().transpose(0, 1);
        let mut transposed = original.clone().with_layout(layout);
        let view = values_mut(&mut transposed);
        assert_eq!(
            view,
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0],
            "row-major values of the view"
        );
        view[0] = 10.0;
        assert_eq!(values_of(&original), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
