//! Convolutions with only their kept weights: per output channel, the list of surviving taps,
//! each as its window's offset into the input.

use crate::rows::Rows;
use crate::simd::{axpy, tile_starts};
use sparsevd::WeightLayerView;

/// A stride-1 "valid" convolution with only its kept weights, on inputs of shape `input`
/// (`[channels, height, width]`): output channel `o` adds `values[t]` × the input shifted by
/// `offset[t]` positions for `t` in `tap_start[o]..tap_start[o + 1]`. A tap of input channel
/// `c` at kernel row `dy` and column `dx` has offset `(c·height + dy)·width + dx`: where its
/// window starts, relative to the output position it contributes to.
#[derive(Debug, Clone)]
pub struct SparseConv {
    pub(crate) input: [usize; 3],
    pub(crate) channels_out: usize,
    pub(crate) kernel: usize,
    tap_start: Vec<u32>,
    offset: Vec<u32>,
    values: Vec<f32>,
    bias: Vec<f32>,
}

impl SparseConv {
    /// Keep the weights of `view` (θ `[out, in, k, k]`) with log α < `threshold`, for inputs
    /// of `height` × `width`.
    pub fn from_view(
        view: &WeightLayerView,
        threshold: f64,
        [height, width]: [usize; 2],
    ) -> Result<Self, String> {
        let &[channels_out, channels_in, kernel, kw] = view.shape.as_slice() else {
            return Err(format!(
                "{}: not a convolution (shape {:?})",
                view.name, view.shape
            ));
        };
        if kernel != kw
            || kernel > height.min(width)
            || channels_in * height * width > u32::MAX as usize
        {
            return Err(format!(
                "{}: kernel {:?} does not fit inputs of {height}×{width}",
                view.name, view.shape
            ));
        }
        let kept = view.kept(threshold);
        let mut conv = SparseConv {
            input: [channels_in, height, width],
            channels_out,
            kernel,
            tap_start: vec![0],
            offset: Vec::new(),
            values: Vec::new(),
            bias: view.bias.clone(),
        };
        for (k, (&theta, &keep)) in view.theta.iter().zip(&kept).enumerate() {
            if keep && theta != 0.0 {
                let (c, dy, dx) = (
                    k / (kernel * kernel) % channels_in,
                    k / kernel % kernel,
                    k % kernel,
                );
                conv.offset.push(((c * height + dy) * width + dx) as u32);
                conv.values.push(theta);
            }
            if (k + 1) % (channels_in * kernel * kernel) == 0 {
                conv.tap_start.push(conv.values.len() as u32);
            }
        }
        Ok(conv)
    }

    pub fn nonzeros(&self) -> usize {
        self.values.len()
    }

    /// Input positions per channel.
    fn plane(&self) -> usize {
        self.input[1] * self.input[2]
    }

    /// The convolution's taps as rows, one per output channel; a tap's offset lies in the plane
    /// of its input channel.
    pub(crate) fn rows(&self) -> Rows<'_> {
        Rows {
            start: &self.tap_start,
            index: &self.offset,
            values: &self.values,
            bias: &self.bias,
        }
    }

    /// Which input channels the taps of the `needed` output channels read.
    pub(crate) fn inputs_read(&self, needed: &[bool]) -> Vec<bool> {
        self.rows().groups_read(needed, self.plane(), self.input[0])
    }

    /// The convolution with only the output channels in `kept_out`, on inputs that keep only
    /// the channels in `kept_in`, which must hold every channel read.
    pub(crate) fn restricted(&self, kept_in: &[bool], kept_out: &[bool]) -> Self {
        let rows = self.rows().kept(kept_in, self.plane(), kept_out);
        let [_, height, width] = self.input;
        Self {
            input: [kept_in.iter().filter(|&&k| k).count(), height, width],
            channels_out: rows.bias.len(),
            kernel: self.kernel,
            tap_start: rows.start,
            offset: rows.index,
            values: rows.values,
            bias: rows.bias,
        }
    }

    /// Bytes of the stored layer (values, 4 bytes of position per tap, tap starts, bias).
    pub fn bytes(&self) -> usize {
        4 * (2 * self.values.len() + self.tap_start.len() + self.bias.len())
    }

    /// `x` is `[channels, h, w]` (`input`); `out` receives `[channels_out, h − k + 1, w − k + 1]`.
    ///
    /// The output is computed in tiles of `R` rows × `W` floats (`W` positions of one image, or
    /// `W / L` positions of `L` images), each tile summed over the channel's kept taps in
    /// registers and stored once. Tiles at the right and bottom edges are shifted inwards to fit,
    /// recomputing a few positions, so the output must be at least `R` rows and `W` floats wide
    /// (checked when the net is built for [`TILE`] × [`TILE`], the largest tile one image uses).
    #[inline(always)]
    pub(crate) fn forward<const L: usize, const R: usize, const W: usize>(
        &self,
        x: &[[f32; L]],
        out: &mut [[f32; L]],
    ) {
        let [channels, h, w] = self.input;
        let (oh, ow) = (h + 1 - self.kernel, w + 1 - self.kernel);
        let (x, out) = (x.as_flattened(), out.as_flattened_mut());
        let (row_in, row_out) = (w * L, ow * L);
        // With these, every window read below lies in `x`: the last row of the window of a tap
        // at (c, dy, dx) for the bottom-right tile ends at ((c·h + dy + oh − 1)·w + dx + ow)·L,
        // at most ((channels − 1)·h + h − 1)·w·L + w·L = x.len().
        assert!(x.len() == channels * h * w * L && oh >= R && row_out >= W);
        for (o, plane) in out.chunks_exact_mut(oh * row_out).enumerate() {
            let taps = self.tap_start[o] as usize..self.tap_start[o + 1] as usize;
            let (values, offsets) = (&self.values[taps.clone()], &self.offset[taps]);
            for y in tile_starts(oh, R) {
                for col in tile_starts(row_out, W) {
                    let mut tile = [[self.bias[o]; W]; R];
                    for (&v, &offset) in values.iter().zip(offsets) {
                        let corner = offset as usize * L + y * row_in + col;
                        for (r, acc) in tile.iter_mut().enumerate() {
                            // SAFETY: the offsets are those of taps of a `kernel`-wide kernel on
                            // `input` (made so by the constructors; the fields are private), y ≤
                            // oh − R, col ≤ row_out − W and r < R, so the W floats lie in `x`
                            // (asserted above). Checked reads kept the tile's row offsets out of
                            // registers and cost a third of the tap loop's instructions.
                            let src =
                                unsafe { &*x.as_ptr().add(corner + r * row_in).cast::<[f32; W]>() };
                            axpy(acc, v, src);
                        }
                    }
                    for (r, acc) in tile.iter().enumerate() {
                        plane[(y + r) * row_out + col..][..W].copy_from_slice(acc);
                    }
                }
            }
        }
    }
}

/// Rows and floats per row of a [`SparseConv`] output tile: 8 × 8 accumulators fill 8 of the
/// 16 AVX registers.
pub(crate) const TILE: usize = 8;

/// Rows and floats per row of a [`SparseConv`] output tile in groups of images on CPUs with
/// AVX-512: two 512-bit registers per row (4 positions of 8 images). Four rows, not eight: the
/// eight row offsets of 8 × 16 tiles did not fit in the general registers and were reloaded
/// from the stack for every tap. LeNet-5 on the 10,000 test images at batch 100, alternated,
/// three runs each: 47–55 ms against 54–69 ms with 8 × 16 tiles and 73–104 ms with the AVX2
/// copy's 8 × 8 tiles.
pub(crate) const WIDE_ROWS: usize = 4;
pub(crate) const WIDE_TILE: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_views::view;

    #[test]
    fn sparse_conv_matches_the_direct_convolution() {
        // 2 output channels, 2 input channels, 3×3 kernel on a 2-channel 10×11 image: an 8×9
        // output, so the second tile of each row is shifted to overlap the first.
        let (h, w, k) = (10, 11, 3);
        let (oh, ow) = (h - k + 1, w - k + 1);
        let theta: Vec<f32> = (0..36).map(|i| i as f32 - 7.0).collect();
        let log_alpha: Vec<f32> = (0..36)
            .map(|i| if i % 3 == 0 { 5.0 } else { 0.0 })
            .collect();
        let v = view(
            theta.clone(),
            log_alpha.clone(),
            &[2, 2, k, k],
            vec![0.25, -1.0],
        );
        let conv = SparseConv::from_view(&v, 3.0, [h, w]).unwrap();
        assert_eq!(
            conv.nonzeros(),
            23,
            "12 of 36 removed, and θ = 0 at index 7"
        );
        let x: Vec<f32> = (0..2 * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
        // Lane l holds the image times l + 1. One image in tiles of TILE floats, and four in
        // tiles of WIDE_TILE floats (rows of 36 floats: the second tile overlaps the first).
        let one = run_conv::<1, TILE, TILE>(&conv, &x);
        let four = run_conv::<4, WIDE_ROWS, WIDE_TILE>(&conv, &x);
        for o in 0..2 {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut sum = 0.0;
                    for c in 0..2 {
                        for dy in 0..k {
                            for dx in 0..k {
                                let i = ((o * 2 + c) * k + dy) * k + dx;
                                if log_alpha[i] < 3.0 {
                                    sum += theta[i] * x[(c * h + y + dy) * w + xo + dx];
                                }
                            }
                        }
                    }
                    let at = (o * oh + y) * ow + xo;
                    let got = [one[at][0], four[at][0], four[at][3]];
                    for (got, lane) in got.into_iter().zip([1.0, 1.0, 4.0]) {
                        let want = v.bias[o] + lane * sum;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "({o}, {y}, {xo}), lane × {lane}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `conv` on `L` copies of the image `x` (of shape `conv.input`), copy l times l + 1.
    fn run_conv<const L: usize, const R: usize, const W: usize>(
        conv: &SparseConv,
        x: &[f32],
    ) -> Vec<[f32; L]> {
        let [_, h, w] = conv.input;
        let lanes: Vec<[f32; L]> = x
            .iter()
            .map(|&v| std::array::from_fn(|l| v * (l + 1) as f32))
            .collect();
        let positions = (h + 1 - conv.kernel) * (w + 1 - conv.kernel);
        let mut out = vec![[f32::NAN; L]; conv.channels_out * positions];
        conv.forward::<L, R, W>(&lanes, &mut out);
        out
    }
}
