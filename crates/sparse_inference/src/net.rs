//! A sparse network: its ops built from a network's evaluation layer list and its saved weight
//! layers, and its forward pass on groups of images, compiled for AVX2 and AVX-512.

use crate::conv::{SparseConv, TILE, WIDE_ROWS, WIDE_TILE};
use crate::dense::CsrDense;
use crate::simd::{POOLED, argmax, cache_aligned, interleave, relu_max_pool};
#[cfg(target_arch = "x86_64")]
use cpu_kernels::simd::{has_avx2_fma, has_avx512};
use rayon::prelude::*;
use sparsevd::{EvalLayer, EvalLayers, WeightLayerView};

/// Images per group in batched inference: one 256-bit vector of f32.
pub const LANES: usize = 8;

/// One step of a [`SparseNet`].
#[derive(Debug, Clone)]
pub enum SparseOp {
    Conv(SparseConv),
    Dense(CsrDense),
    Relu,
    /// ReLU then 2×2 max-pool with stride 2 (the same as pooling first).
    ReluMaxPool,
}

impl SparseOp {
    /// The shape of this op's output for input of `shape` (`[channels, height, width]`), or why
    /// it does not accept that input.
    fn output_shape(&self, shape: [usize; 3]) -> Result<[usize; 3], String> {
        let [c, h, w] = shape;
        Ok(match self {
            SparseOp::Conv(conv) if conv.input == shape && h.min(w) >= conv.kernel + TILE - 1 => {
                [conv.channels_out, h + 1 - conv.kernel, w + 1 - conv.kernel]
            }
            SparseOp::Dense(dense) if dense.d_in == c * h * w => [dense.d_out, 1, 1],
            SparseOp::Relu => shape,
            SparseOp::ReluMaxPool if w / 2 >= POOLED => [c, h / 2, w / 2],
            _ => {
                return Err(format!(
                    "a layer does not accept input of shape {shape:?} (a convolution's output \
                     must be at least {TILE}×{TILE}, a pooled output at least {POOLED} wide)"
                ));
            }
        })
    }
}

/// A network of sparse layers applied to images of shape `[channels, height, width]`.
#[derive(Debug, Clone)]
pub struct SparseNet {
    pub input: [usize; 3],
    pub ops: Vec<SparseOp>,
}

impl SparseNet {
    /// The network that `eval` describes, with the weights of `views` (found by name) kept
    /// where log α < `threshold`, without its dead units. A ReLU next to a 2×2 max pooling (in
    /// either order: they commute) runs as one op; a pooling without one is not supported.
    pub fn new(
        eval: &EvalLayers,
        views: &[WeightLayerView],
        threshold: f64,
    ) -> Result<Self, String> {
        let mut ops = Vec::new();
        let mut shape = eval.input;
        let mut layers = eval.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            let op = match layer {
                EvalLayer::Weights(name) => {
                    let view = views
                        .iter()
                        .find(|v| &v.name == name)
                        .ok_or_else(|| format!("layer {name} missing from the saved model"))?;
                    if view.shape.len() == 4 {
                        let [_, height, width] = shape;
                        SparseOp::Conv(SparseConv::from_view(view, threshold, [height, width])?)
                    } else {
                        SparseOp::Dense(CsrDense::from_view(view, threshold)?)
                    }
                }
                EvalLayer::Relu if layers.next_if_eq(&&EvalLayer::MaxPool2x2).is_some() => {
                    SparseOp::ReluMaxPool
                }
                EvalLayer::MaxPool2x2 if layers.next_if_eq(&&EvalLayer::Relu).is_some() => {
                    SparseOp::ReluMaxPool
                }
                EvalLayer::Relu => SparseOp::Relu,
                EvalLayer::MaxPool2x2 => {
                    return Err("2×2 max pooling is supported only next to a ReLU".into());
                }
            };
            shape = op.output_shape(shape)?;
            ops.push(op);
        }
        Self::checked(eval.input, ops)
    }

    /// The net, if every op accepts the shape the previous one produces, without its dead
    /// units.
    fn checked(input: [usize; 3], ops: Vec<SparseOp>) -> Result<Self, String> {
        let net = Self { input, ops };
        net.shapes()?;
        Ok(net.without_dead_units())
    }

    /// The shape after each op.
    pub(crate) fn shapes(&self) -> Result<Vec<[usize; 3]>, String> {
        let mut shape = self.input;
        let mut shapes = Vec::new();
        for op in &self.ops {
            shape = op.output_shape(shape)?;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                SparseOp::Conv(c) => c.bytes(),
                SparseOp::Dense(d) => d.bytes(),
                _ => 0,
            })
            .sum()
    }

    /// Predicted class of each image of `images` (rows of `c·h·w` floats). With `batch = 1`
    /// the images are classified one after another on one thread (a latency measure); larger
    /// batches are spread over rayon's threads, each in groups of [`LANES`] images.
    pub fn predict(&self, images: &[f32], batch: usize) -> Vec<u8> {
        let shapes = self.shapes().expect("checked when built");
        if batch == 1 {
            return self.classify_all::<1>(images, &shapes);
        }
        let image_len: usize = self.input.iter().product();
        images
            .par_chunks(batch * image_len)
            .flat_map_iter(|chunk| self.classify_all::<LANES>(chunk, &shapes))
            .collect()
    }

    /// [`Self::classify_group_by_group`] compiled with AVX-512 (groups of images, in tiles of
    /// [`WIDE_TILE`] floats) or AVX2 (in tiles of [`TILE`] floats) where the CPU has them.
    fn classify_all<const L: usize>(&self, images: &[f32], shapes: &[[usize; 3]]) -> Vec<u8> {
        #[cfg(target_arch = "x86_64")]
        {
            // Output rows are at least TILE positions wide (checked when the net is built), so
            // L·TILE floats: one image's rows (LeNet-5's second convolution: 8 floats) are too
            // short for the wide tiles, a group of LANES images' are not.
            if L * TILE >= WIDE_TILE && has_avx512() {
                // SAFETY: the CPU has the features the function was compiled for (checked here).
                return unsafe { self.classify_with_avx512::<L>(images, shapes) };
            }
            if has_avx2_fma() {
                // SAFETY: the CPU has the features the function was compiled for (checked here).
                return unsafe { self.classify_with_avx2::<L>(images, shapes) };
            }
        }
        self.classify_group_by_group::<L, TILE, TILE>(images, shapes)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    fn classify_with_avx512<const L: usize>(
        &self,
        images: &[f32],
        shapes: &[[usize; 3]],
    ) -> Vec<u8> {
        self.classify_group_by_group::<L, WIDE_ROWS, WIDE_TILE>(images, shapes)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn classify_with_avx2<const L: usize>(&self, images: &[f32], shapes: &[[usize; 3]]) -> Vec<u8> {
        self.classify_group_by_group::<L, TILE, TILE>(images, shapes)
    }

    /// Classes of `images`, `L` at a time (the last group padded with zero images); `shapes`
    /// are the shapes after each op.
    #[inline(always)]
    fn classify_group_by_group<const L: usize, const R: usize, const W: usize>(
        &self,
        images: &[f32],
        shapes: &[[usize; 3]],
    ) -> Vec<u8> {
        let image_len: usize = self.input.iter().product();
        let widest = shapes
            .iter()
            .map(|s| s.iter().product())
            .fold(image_len, usize::max);
        let (mut a_storage, mut b_storage) = (Vec::new(), Vec::new());
        let a = cache_aligned::<L>(&mut a_storage, widest);
        let b = cache_aligned::<L>(&mut b_storage, widest);
        let mut classes = Vec::with_capacity(images.len() / image_len);
        let mut padded = Vec::new();
        for group in images.chunks(L * image_len) {
            let count = group.len() / image_len;
            let group = if count == L {
                group
            } else {
                // Filled with zero images, so that one interleave serves every group: filled
                // pixel by pixel, the lanes of a partial group were written by 512-bit scatters.
                padded.resize(L * image_len, 0.0);
                padded[..group.len()].copy_from_slice(group);
                &padded[..]
            };
            interleave(group, &mut a[..image_len]);
            let logits = self.forward::<L, R, W>(shapes, a, b);
            classes.extend((0..count).map(|l| argmax(logits.iter().map(|x| x[l]))));
        }
        classes
    }

    /// The ops applied to the `L` images in `a` (image-innermost), using `a` and `b` as
    /// alternating buffers; returns the logits.
    #[inline(always)]
    fn forward<'a, const L: usize, const R: usize, const W: usize>(
        &self,
        shapes: &[[usize; 3]],
        mut a: &'a mut [[f32; L]],
        mut b: &'a mut [[f32; L]],
    ) -> &'a [[f32; L]] {
        let mut shape = self.input;
        let mut len = shape.iter().product();
        for (op, &next) in self.ops.iter().zip(shapes) {
            let next_len = next.iter().product();
            let (x, out) = (&a[..len], &mut b[..next_len]);
            match op {
                SparseOp::Conv(conv) => conv.forward::<L, R, W>(x, out),
                SparseOp::Dense(dense) => dense.forward(x, out),
                SparseOp::Relu => {
                    for (o, v) in out.iter_mut().zip(x) {
                        *o = v.map(|v| v.max(0.0));
                    }
                }
                SparseOp::ReluMaxPool => relu_max_pool(x, shape, out),
            }
            std::mem::swap(&mut a, &mut b);
            (shape, len) = (next, next_len);
        }
        &a[..len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_views::{mlp, view};

    #[test]
    fn network_applies_relu_between_layers_only() {
        let first = view(vec![1., -1.], vec![0., 0.], &[1, 2], vec![0., 0.]);
        let mut second = view(vec![1., 0., 0., 1.], vec![0.; 4], &[2, 2], vec![0., 0.]);
        second.name = "e".into();
        let net = mlp(&[first, second], 3.0).unwrap();
        // x = 2: hidden (2, −2) → ReLU (2, 0) → logits (2, 0) → class 0; x = −2 → class 1.
        assert_eq!(net.predict(&[2.0, -2.0], 1), vec![0, 1]);
        assert_eq!(net.predict(&[2.0, -2.0], 2), vec![0, 1]);
    }

    /// Image-innermost groups (with a padded last group) classify as one image at a time.
    #[test]
    fn batches_classify_as_single_images() {
        let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        let conv = view(
            wave(2 * 25, 0.7),
            vec![0.0; 50],
            &[2, 1, 5, 5],
            vec![0.1, -0.1],
        );
        let mut dense = view(
            wave(2 * 5 * 5 * 4, 1.3),
            vec![0.0; 200],
            &[50, 4],
            vec![0.0; 4],
        );
        dense.name = "e".into();
        let net = SparseNet::checked(
            [1, 14, 14],
            vec![
                SparseOp::Conv(SparseConv::from_view(&conv, 3.0, [14, 14]).unwrap()),
                SparseOp::ReluMaxPool,
                SparseOp::Relu,
                SparseOp::Dense(CsrDense::from_view(&dense, 3.0).unwrap()),
            ],
        )
        .unwrap();
        let images = wave(21 * 196, 0.113);
        let one_by_one = net.predict(&images, 1);
        assert_eq!(one_by_one.len(), 21);
        assert!(
            one_by_one.iter().any(|&c| c != one_by_one[0]),
            "{one_by_one:?}"
        );
        for batch in [2, 8, 9, 100] {
            assert_eq!(net.predict(&images, batch), one_by_one, "batch {batch}");
        }
    }

    #[test]
    fn layers_that_do_not_chain_are_an_error() {
        let first = view(vec![1.; 6], vec![0.; 6], &[3, 2], vec![0.; 2]);
        let second = view(vec![1.; 6], vec![0.; 6], &[3, 2], vec![0.; 2]);
        assert!(mlp(&[first, second], 3.0).is_err());
        // A 5×5 convolution of a 10×10 image: its 6×6 output is smaller than one tile.
        let conv = view(vec![1.; 25], vec![0.; 25], &[1, 1, 5, 5], vec![0.]);
        let conv = SparseOp::Conv(SparseConv::from_view(&conv, 3.0, [10, 10]).unwrap());
        let error = SparseNet::checked([1, 10, 10], vec![conv]).unwrap_err();
        assert!(error.contains("at least 8×8"), "{error}");
    }
}
