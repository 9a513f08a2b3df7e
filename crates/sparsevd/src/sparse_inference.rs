//! Inference with the removed weights actually gone. Dense layers keep their surviving weights
//! in compressed sparse rows (CSR) of Wᵀ, one row per output unit; convolutions keep, per output
//! channel, the list of surviving taps (each as its window's offset into the input). A forward
//! pass touches only the kept weights, and only the units whose values reach a logit. Pure host
//! code, no tensors, compiled a second time with AVX2 for CPUs that have it, and for groups of
//! images a third time with AVX-512, in wider tiles.
//!
//! Activations are stored image-innermost: `[f32; L]` holds one feature of `L` images, so that
//! each kept weight is applied to `L` images in one vector operation. Batch 1 is `L = 1`;
//! larger batches run in groups of [`LANES`] images, batches spread over rayon's threads.

use crate::mode::WeightLayerView;
#[cfg(target_arch = "x86_64")]
use crate::vector_math::{has_avx2_fma, has_avx512};
use rayon::prelude::*;

/// y = x·W + b for W of shape `[d_in, d_out]` with only the kept entries stored: output unit
/// `j` sums `values[k]·x[inputs[k]]` over `k` in `row_start[j]..row_start[j + 1]`, in a register.
#[derive(Debug, Clone)]
pub struct CsrDense {
    pub d_in: usize,
    pub d_out: usize,
    pub row_start: Vec<u32>,
    pub inputs: Vec<u32>,
    pub values: Vec<f32>,
    pub bias: Vec<f32>,
}

impl CsrDense {
    /// Keep the weights of `view` with log α < `threshold` (all non-zero θ for a plain layer).
    pub fn from_view(view: &WeightLayerView, threshold: f64) -> Result<Self, String> {
        let &[d_in, d_out] = view.shape.as_slice() else {
            return Err(format!(
                "{}: not a dense layer (shape {:?})",
                view.name, view.shape
            ));
        };
        let kept = view.kept(threshold);
        let mut row_start = Vec::with_capacity(d_out + 1);
        let (mut inputs, mut values) = (Vec::new(), Vec::new());
        row_start.push(0);
        for j in 0..d_out {
            for i in 0..d_in {
                let k = i * d_out + j;
                if kept[k] && view.theta[k] != 0.0 {
                    inputs.push(i as u32);
                    values.push(view.theta[k]);
                }
            }
            row_start.push(inputs.len() as u32);
        }
        Ok(Self {
            d_in,
            d_out,
            row_start,
            inputs,
            values,
            bias: view.bias.clone(),
        })
    }

    pub fn nonzeros(&self) -> usize {
        self.values.len()
    }

    /// The layer's entries as rows, one per output unit.
    fn rows(&self) -> Rows<'_> {
        Rows {
            start: &self.row_start,
            index: &self.inputs,
            values: &self.values,
            bias: &self.bias,
        }
    }

    /// Which of the input channels (`positions` inputs each) the `needed` output units read.
    fn inputs_read(&self, needed: &[bool], positions: usize) -> Vec<bool> {
        self.rows()
            .groups_read(needed, positions, self.d_in / positions)
    }

    /// The layer with only the output units in `kept_out`, on inputs that keep only the
    /// channels (`positions` inputs each) in `kept_in`, which must hold every channel read.
    fn restricted(&self, kept_in: &[bool], positions: usize, kept_out: &[bool]) -> Self {
        let rows = self.rows().kept(kept_in, positions, kept_out);
        Self {
            d_in: kept_in.iter().filter(|&&k| k).count() * positions,
            d_out: rows.bias.len(),
            row_start: rows.start,
            inputs: rows.index,
            values: rows.values,
            bias: rows.bias,
        }
    }

    /// Bytes of the stored layer (values, input indices, row starts, bias).
    pub fn bytes(&self) -> usize {
        4 * (self.values.len() + self.inputs.len() + self.row_start.len() + self.bias.len())
    }

    #[inline(always)]
    fn forward<const L: usize>(&self, x: &[[f32; L]], out: &mut [[f32; L]]) {
        let x = &x[..self.d_in];
        let rows = self.row_start.windows(2).zip(&self.bias);
        for ((range, &bias), y) in rows.zip(out.iter_mut()) {
            let (start, end) = (range[0] as usize, range[1] as usize);
            let (inputs, values) = (&self.inputs[start..end], &self.values[start..end]);
            // Partial sums, so that consecutive additions do not wait for each other.
            let mut sums = [[0.0; L]; PARTIAL_SUMS];
            sums[0] = [bias; L];
            let (whole_i, whole_v) = (
                inputs.chunks_exact(PARTIAL_SUMS),
                values.chunks_exact(PARTIAL_SUMS),
            );
            for (&i, &v) in whole_i.remainder().iter().zip(whole_v.remainder()) {
                axpy(&mut sums[0], v, &x[i as usize]);
            }
            for (i, v) in whole_i.zip(whole_v) {
                for (k, sum) in sums.iter_mut().enumerate() {
                    axpy(sum, v[k], &x[i[k] as usize]);
                }
            }
            *y = std::array::from_fn(|l| sums.iter().map(|s| s[l]).sum());
        }
    }
}

/// Independent accumulators per output unit in [`CsrDense`]: an addition's latency is several
/// times its issue interval.
const PARTIAL_SUMS: usize = 4;

/// A stride-1 "valid" convolution with only its kept weights, on inputs of shape `input`
/// (`[channels, height, width]`): output channel `o` adds `values[t]` × the input shifted by
/// `offset[t]` positions for `t` in `tap_start[o]..tap_start[o + 1]`. A tap of input channel
/// `c` at kernel row `dy` and column `dx` has offset `(c·height + dy)·width + dx`: where its
/// window starts, relative to the output position it contributes to.
#[derive(Debug, Clone)]
pub struct SparseConv {
    input: [usize; 3],
    channels_out: usize,
    kernel: usize,
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
    fn rows(&self) -> Rows<'_> {
        Rows {
            start: &self.tap_start,
            index: &self.offset,
            values: &self.values,
            bias: &self.bias,
        }
    }

    /// Which input channels the taps of the `needed` output channels read.
    fn inputs_read(&self, needed: &[bool]) -> Vec<bool> {
        self.rows().groups_read(needed, self.plane(), self.input[0])
    }

    /// The convolution with only the output channels in `kept_out`, on inputs that keep only
    /// the channels in `kept_in`, which must hold every channel read.
    fn restricted(&self, kept_in: &[bool], kept_out: &[bool]) -> Self {
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
    fn forward<const L: usize, const R: usize, const W: usize>(
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
const TILE: usize = 8;

/// Rows and floats per row of a [`SparseConv`] output tile in groups of images on CPUs with
/// AVX-512: two 512-bit registers per row (4 positions of 8 images). Four rows, not eight: the
/// eight row offsets of 8 × 16 tiles did not fit in the general registers and were reloaded
/// from the stack for every tap. LeNet-5 on the 10,000 test images at batch 100, alternated,
/// three runs each: 47–55 ms against 54–69 ms with 8 × 16 tiles and 73–104 ms with the AVX2
/// copy's 8 × 8 tiles.
const WIDE_ROWS: usize = 4;
const WIDE_TILE: usize = 32;

/// Entries grouped in rows, as both sparse layers store them: row `j` (an output unit or
/// channel) holds the entries `start[j]..start[j + 1]` of `index` and `values`, and has bias
/// `bias[j]`. An entry's index lies in input group `index / group_len` (an input channel).
struct Rows<'a> {
    start: &'a [u32],
    index: &'a [u32],
    values: &'a [f32],
    bias: &'a [f32],
}

impl Rows<'_> {
    fn entries(&self, j: usize) -> std::ops::Range<usize> {
        self.start[j] as usize..self.start[j + 1] as usize
    }

    /// Which of the `groups` input groups the entries of the `needed` rows read.
    fn groups_read(&self, needed: &[bool], group_len: usize, groups: usize) -> Vec<bool> {
        let mut read = vec![false; groups];
        for j in (0..self.bias.len()).filter(|&j| needed[j]) {
            for &i in &self.index[self.entries(j)] {
                read[i as usize / group_len] = true;
            }
        }
        read
    }

    /// Only the rows in `kept_out`, on inputs that keep only the groups in `kept_in` (which
    /// must hold every group read): each entry's group moves to its place among the kept ones.
    fn kept(&self, kept_in: &[bool], group_len: usize, kept_out: &[bool]) -> KeptRows {
        let mut next = 0..;
        let group: Vec<Option<usize>> = kept_in
            .iter()
            .map(|&k| k.then(|| next.next().expect("unbounded")))
            .collect();
        let mut rows = KeptRows {
            start: vec![0],
            index: Vec::new(),
            values: Vec::new(),
            bias: Vec::new(),
        };
        for j in (0..self.bias.len()).filter(|&j| kept_out[j]) {
            for k in self.entries(j) {
                let (g, within) = (
                    self.index[k] as usize / group_len,
                    self.index[k] as usize % group_len,
                );
                let g = group[g].expect("kept_in holds every group read");
                rows.index.push((g * group_len + within) as u32);
                rows.values.push(self.values[k]);
            }
            rows.start.push(rows.index.len() as u32);
            rows.bias.push(self.bias[j]);
        }
        rows
    }
}

/// The rows [`Rows::kept`] returns, in the same layout.
struct KeptRows {
    start: Vec<u32>,
    index: Vec<u32>,
    values: Vec<f32>,
    bias: Vec<f32>,
}

/// Starts of `length`-long tiles covering `0..n` (n ≥ `length`), the last shifted to end at `n`.
fn tile_starts(n: usize, length: usize) -> impl Iterator<Item = usize> {
    (0..n).step_by(length).map(move |s| s.min(n - length))
}

/// One step of a [`SparseNet`].
#[derive(Debug, Clone)]
pub enum SparseOp {
    Conv(SparseConv),
    Dense(CsrDense),
    Relu,
    /// ReLU then 2×2 max-pool with stride 2 (the same as pooling first).
    ReluMaxPool,
}

/// A network of sparse layers applied to images of shape `[channels, height, width]`.
#[derive(Debug, Clone)]
pub struct SparseNet {
    pub input: [usize; 3],
    pub ops: Vec<SparseOp>,
}

impl SparseNet {
    /// Dense layers with ReLU between them (LeNet-300-100), on flat inputs.
    pub fn mlp(views: &[WeightLayerView], threshold: f64) -> Result<Self, String> {
        let mut ops = Vec::new();
        for (i, view) in views.iter().enumerate() {
            if i > 0 {
                ops.push(SparseOp::Relu);
            }
            ops.push(SparseOp::Dense(CsrDense::from_view(view, threshold)?));
        }
        let first = views.first().ok_or("no layers")?;
        Self::checked([first.shape[0], 1, 1], ops)
    }

    /// LeNet-5-Caffe: conv → ReLU → pool → conv → ReLU → pool → dense → ReLU → dense, on 28×28.
    pub fn lenet5(views: &[WeightLayerView], threshold: f64) -> Result<Self, String> {
        let [conv1, conv2, dense1, dense2] = views else {
            return Err(format!("LeNet-5 has 4 weight layers, got {}", views.len()));
        };
        let conv1 = SparseConv::from_view(conv1, threshold, [28, 28])?;
        let pooled = (28 + 1 - conv1.kernel) / 2;
        let ops = vec![
            SparseOp::Conv(conv1),
            SparseOp::ReluMaxPool,
            SparseOp::Conv(SparseConv::from_view(conv2, threshold, [pooled, pooled])?),
            SparseOp::ReluMaxPool,
            SparseOp::Dense(CsrDense::from_view(dense1, threshold)?),
            SparseOp::Relu,
            SparseOp::Dense(CsrDense::from_view(dense2, threshold)?),
        ];
        Self::checked([1, 28, 28], ops)
    }

    /// The net, if every op accepts the shape the previous one produces, without its dead
    /// units.
    fn checked(input: [usize; 3], ops: Vec<SparseOp>) -> Result<Self, String> {
        let net = Self { input, ops };
        net.shapes()?;
        Ok(net.without_dead_units())
    }

    /// The net without the units whose values reach no logit: convolution channels and dense
    /// units that no kept weight of a later layer reads (Sparse VD removes whole units when it
    /// removes all their outgoing weights). A unit with no kept incoming weights but read later
    /// stays: it passes on its bias. What remains computes exactly what it computed before.
    fn without_dead_units(mut self) -> Self {
        let shapes = self.shapes().expect("checked before");
        // The channels of each op's output that later ops read, found from the logits back.
        let inputs: Vec<[usize; 3]> = std::iter::once(self.input).chain(shapes.clone()).collect();
        let mut needed = vec![Vec::new(); self.ops.len()];
        let mut read = vec![true; shapes.last().map_or(0, |s| s[0])];
        for (i, op) in self.ops.iter().enumerate().rev() {
            let [_, h, w] = inputs[i];
            needed[i] = read;
            read = match op {
                SparseOp::Conv(conv) => conv.inputs_read(&needed[i]),
                SparseOp::Dense(dense) => dense.inputs_read(&needed[i], h * w),
                SparseOp::Relu | SparseOp::ReluMaxPool => needed[i].clone(),
            };
        }
        // The image's channels are all given, read or not.
        let mut kept_in = vec![true; self.input[0]];
        for ((op, kept_out), [_, h, w]) in self.ops.iter_mut().zip(needed).zip(inputs) {
            match op {
                SparseOp::Conv(conv) => *conv = conv.restricted(&kept_in, &kept_out),
                SparseOp::Dense(dense) => *dense = dense.restricted(&kept_in, h * w, &kept_out),
                SparseOp::Relu | SparseOp::ReluMaxPool => {}
            }
            kept_in = kept_out;
        }
        self
    }

    /// The shape after each op.
    fn shapes(&self) -> Result<Vec<[usize; 3]>, String> {
        let mut shape = self.input;
        let mut shapes = Vec::new();
        for op in &self.ops {
            let [c, h, w] = shape;
            shape = match op {
                SparseOp::Conv(conv)
                    if conv.input == shape && h.min(w) >= conv.kernel + TILE - 1 =>
                {
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
            };
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

/// `len` zeroed positions of `L` floats from `storage`, starting at a cache line (64 bytes), so
/// that a 512-bit load of 16 floats at an even position of 8 images does not straddle two
/// lines: `vec!` gave 16-byte alignment, where every such load straddled. LeNet-5 at batch 112,
/// one thread, six alternated rounds of best of 10: 26–39 ms against 33–46 ms.
fn cache_aligned<const L: usize>(storage: &mut Vec<f32>, len: usize) -> &mut [[f32; L]] {
    const LINE: usize = 16;
    *storage = vec![0.0; len * L + LINE];
    // `align_offset` may decline (usize::MAX); the buffer then works unaligned.
    let skip = Some(storage.as_ptr().align_offset(4 * LINE)).filter(|&s| s < LINE);
    storage[skip.unwrap_or(0)..][..len * L]
        .as_chunks_mut::<L>()
        .0
}

/// `L` images (rows of `lanes.len()` floats in `images`) into `lanes`, image-innermost: a group
/// of 8 by [`interleave_8_with_avx`] on CPUs with AVX, otherwise pixel by pixel (for one image,
/// a copy).
#[inline(always)]
fn interleave<const L: usize>(images: &[f32], lanes: &mut [[f32; L]]) {
    #[cfg(target_arch = "x86_64")]
    if L == 8 && has_avx2_fma() {
        let lanes = lanes.as_flattened_mut().as_chunks_mut::<8>().0;
        // SAFETY: the CPU has AVX2, hence AVX (checked just above).
        return unsafe { interleave_8_with_avx(images, lanes) };
    }
    let n = lanes.len();
    for (p, pixel) in lanes.iter_mut().enumerate() {
        *pixel = std::array::from_fn(|l| images[l * n + p]);
    }
}

/// [`interleave`] of 8 images by 8 × 8 transposes in AVX registers (unpack, shuffle, swap of
/// 128-bit halves: 24 shuffles per block of 8 pixels). Written as plain array code, pixel by
/// pixel or in blocks, the transpose was compiled, in the AVX-512 copy, to 512-bit scatters: 45 %
/// of LeNet-300-100's inference time at batch 100 on an AMD EPYC (Zen 4), where scatters are
/// slow.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn interleave_8_with_avx(images: &[f32], lanes: &mut [[f32; 8]]) {
    use std::arch::x86_64::*;
    let n = lanes.len();
    let images: [&[f32]; 8] = std::array::from_fn(|l| &images[l * n..(l + 1) * n]);
    let (blocks, rest) = lanes.as_chunks_mut::<8>();
    for (b, block) in blocks.iter_mut().enumerate() {
        // SAFETY: each load reads the 8 floats of a (bounds-checked) 8-float slice.
        let r: [__m256; 8] =
            std::array::from_fn(|l| unsafe { _mm256_loadu_ps(images[l][8 * b..][..8].as_ptr()) });
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let pixels = [
            _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
            _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
        ];
        for (pixel, v) in block.iter_mut().zip(pixels) {
            // SAFETY: a pixel holds 8 floats.
            unsafe { _mm256_storeu_ps(pixel.as_mut_ptr(), v) };
        }
    }
    let done = 8 * blocks.len();
    for (p, pixel) in rest.iter_mut().enumerate() {
        *pixel = std::array::from_fn(|l| images[l][done + p]);
    }
}

/// Images per group in batched inference: one 256-bit vector of f32.
pub const LANES: usize = 8;

/// `acc += v · x`, element by element (flat, so that it compiles to vector operations), as one
/// fused multiply-add per element: half the instructions of a multiply and an add, and one
/// rounding, the same on every CPU (the copy compiled without FMA calls libm's `fmaf`).
#[inline(always)]
fn axpy(acc: &mut [f32], v: f32, x: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(x) {
        *a = v.mul_add(x, *a);
    }
}

/// ReLU and 2×2 max-pool (stride 2) of `x` of shape `[c, h, w]`.
///
/// The maximum is a plain comparison, not `f32::max`: the values are finite, and `f32::max`'s
/// NaN handling made each of the four maxima three instructions.
#[inline(always)]
fn relu_max_pool<const L: usize>(x: &[[f32; L]], [c, h, w]: [usize; 3], out: &mut [[f32; L]]) {
    let (oh, ow) = (h / 2, w / 2);
    for (plane_out, plane) in out
        .chunks_exact_mut(oh * ow)
        .zip(x.chunks_exact(h * w))
        .take(c)
    {
        for (row_out, pair) in plane_out
            .chunks_exact_mut(ow)
            .zip(plane.chunks_exact(2 * w))
        {
            let (top, bottom) = pair.split_at(w);
            if L == 1 {
                pool_image_row(
                    top.as_flattened(),
                    bottom.as_flattened(),
                    row_out.as_flattened_mut(),
                );
                continue;
            }
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            for (o, (t, b)) in row_out.iter_mut().zip(windows) {
                *o = std::array::from_fn(|l| {
                    let top = larger(t[0][l], t[1][l]);
                    larger(larger(top, larger(b[0][l], b[1][l])), 0.0)
                });
            }
        }
    }
}

/// One row of [`relu_max_pool`] for one image, whose neighbouring positions are neighbouring
/// floats: [`POOLED`] outputs at a time (the last step shifted to end at the row's end), so
/// that neighbours pair by shuffles in vector registers. Position by position, as for groups
/// of images, they were paired in scalar registers: pooling was a quarter of LeNet-5's sparse
/// inference time at batch 1.
#[inline(always)]
fn pool_image_row(top: &[f32], bottom: &[f32], out: &mut [f32]) {
    for start in tile_starts(out.len(), POOLED) {
        let [t, b]: [[f32; 2 * POOLED]; 2] =
            [top, bottom].map(|row| row[2 * start..][..2 * POOLED].try_into().expect("2·POOLED"));
        let step: &mut [f32; POOLED] = (&mut out[start..][..POOLED]).try_into().expect("POOLED");
        *step = std::array::from_fn(|p| {
            let top = larger(t[2 * p], t[2 * p + 1]);
            larger(larger(top, larger(b[2 * p], b[2 * p + 1])), 0.0)
        });
    }
}

/// Outputs per step of [`pool_image_row`]: 4 floats fill a 128-bit register. Pooled rows must
/// be at least this wide (checked when the net is built).
const POOLED: usize = 4;

/// The larger of two finite values.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Index of the largest value; the first on ties, as burn's argmax.
fn argmax(values: impl Iterator<Item = f32>) -> u8 {
    let (mut best, mut best_value) = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best_value {
            (best, best_value) = (i, v);
        }
    }
    best as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(
        theta: Vec<f32>,
        log_alpha: Vec<f32>,
        shape: &[usize],
        bias: Vec<f32>,
    ) -> WeightLayerView {
        WeightLayerView {
            name: "d".into(),
            shape: shape.to_vec(),
            log_sigma2: Some(vec![0.0; theta.len()]),
            theta,
            log_alpha: Some(log_alpha),
            bias,
        }
    }

    #[test]
    fn csr_layer_matches_the_masked_dense_product() {
        // W = [[1, 2], [3, 4], [5, 6]] with w₁₂ = 2 and w₃₁ = 5 removed (log α ≥ 3).
        let v = view(
            vec![1., 2., 3., 4., 5., 6.],
            vec![0., 5., 0., 0., 4., 0.],
            &[3, 2],
            vec![0.5, -0.5],
        );
        let layer = CsrDense::from_view(&v, 3.0).unwrap();
        assert_eq!(layer.nonzeros(), 4);
        assert_eq!(layer.row_start, vec![0, 2, 4]);
        assert_eq!(layer.inputs, vec![0, 1, 1, 2]);
        // x = (1, 0, 2): column 1 = 1·1 + 0·3 + 0.5, column 2 = 0·4 + 2·6 − 0.5.
        let mut out = [[0.0]; 2];
        layer.forward(&[[1.0], [0.0], [2.0]], &mut out);
        assert_eq!(out, [[1.5], [11.5]]);
        // Two images side by side: (1, 0, 2) and (0, 1, 0).
        let mut out = [[0.0; 2]; 2];
        layer.forward(&[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], &mut out);
        assert_eq!(out, [[1.5, 3.5], [11.5, 3.5]]);
    }

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

    #[test]
    fn interleave_puts_pixel_p_of_image_l_in_lane_l_of_position_p() {
        fn check<const L: usize>() {
            // 21 pixels: two blocks of 8 and a remainder.
            let n = 21;
            let images: Vec<f32> = (0..L * n).map(|i| i as f32).collect();
            let mut lanes = vec![[f32::NAN; L]; n];
            interleave(&images, &mut lanes);
            for (p, pixel) in lanes.iter().enumerate() {
                let expected: [f32; L] = std::array::from_fn(|l| (l * n + p) as f32);
                assert_eq!(*pixel, expected, "L = {L}, pixel {p}");
            }
        }
        check::<8>(); // by AVX transposes where the CPU has AVX
        check::<4>(); // pixel by pixel
    }

    #[test]
    fn relu_max_pool_takes_the_positive_maximum_of_each_window() {
        let x = [
            1.0, -2.0, 3.0, 4.0, -1.0, -5.0, -6.0, -7.0, 0.5, 9.0, 2.0, 0.0, -1.0, -2.0, -3.0, -4.0,
        ];
        let lanes = x.map(|v| [v, -v]);
        let mut out = [[0.0; 2]; 4];
        relu_max_pool(&lanes, [1, 4, 4], &mut out);
        assert_eq!(out, [[1.0, 5.0], [4.0, 7.0], [9.0, 2.0], [2.0, 4.0]]);

        // One image (L = 1), two channels of 3 × 10: pooled rows of 5, in two overlapping steps.
        let x: Vec<f32> = (0..60).map(|i| (i as f32 * 1.7).sin()).collect();
        let lanes: Vec<[f32; 1]> = x.iter().map(|&v| [v]).collect();
        let mut out = [[f32::NAN]; 10];
        relu_max_pool(&lanes, [2, 3, 10], &mut out);
        for (i, [got]) in out.into_iter().enumerate() {
            let (c, xo) = (i / 5, i % 5);
            let at = |dy: usize, dx: usize| x[c * 30 + dy * 10 + 2 * xo + dx];
            let want = [at(0, 0), at(0, 1), at(1, 0), at(1, 1), 0.0]
                .into_iter()
                .fold(0.0, f32::max);
            assert_eq!(got, want, "channel {c}, column {xo}");
        }
    }

    #[test]
    fn network_applies_relu_between_layers_only() {
        let first = view(vec![1., -1.], vec![0., 0.], &[1, 2], vec![0., 0.]);
        let mut second = view(vec![1., 0., 0., 1.], vec![0.; 4], &[2, 2], vec![0., 0.]);
        second.name = "e".into();
        let net = SparseNet::mlp(&[first, second], 3.0).unwrap();
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
    fn units_that_reach_no_logit_are_removed() {
        // Hidden units: h₀ = x₀ − x₁, h₁ = bias 1 only (no kept input, read by the output),
        // h₂ = x₁ (its outgoing weight removed: log α ≥ 3). Logits: (h₀ + 0.5·h₁, −h₀ + h₁).
        let first = view(
            vec![1., 0., 0., -1., 0., 1.],
            vec![0.; 6],
            &[2, 3],
            vec![0., 1., 0.],
        );
        let mut second = view(
            vec![1., -1., 0.5, 1., 7., 7.],
            vec![0., 0., 0., 0., 5., 5.],
            &[3, 2],
            vec![0., 0.],
        );
        second.name = "e".into();
        let net = SparseNet::mlp(&[first, second], 3.0).unwrap();
        let [
            SparseOp::Dense(hidden),
            SparseOp::Relu,
            SparseOp::Dense(output),
        ] = &net.ops[..]
        else {
            panic!("{:?}", net.ops);
        };
        assert_eq!((hidden.d_out, hidden.bias.clone()), (2, vec![0., 1.]));
        assert_eq!((output.d_in, output.inputs.clone()), (2, vec![0, 1, 0, 1]));
        // (x₀, x₁) = (1, 3): h = (0, 1) → logits (0.5, 1) → class 1; (3, 1): h = (2, 1) → (2.5, −1).
        assert_eq!(net.predict(&[1., 3., 3., 1.], 1), vec![1, 0]);
    }

    #[test]
    fn layers_that_do_not_chain_are_an_error() {
        let first = view(vec![1.; 6], vec![0.; 6], &[3, 2], vec![0.; 2]);
        let second = view(vec![1.; 6], vec![0.; 6], &[3, 2], vec![0.; 2]);
        assert!(SparseNet::mlp(&[first, second], 3.0).is_err());
        // A 5×5 convolution of a 10×10 image: its 6×6 output is smaller than one tile.
        let conv = view(vec![1.; 25], vec![0.; 25], &[1, 1, 5, 5], vec![0.]);
        let conv = SparseOp::Conv(SparseConv::from_view(&conv, 3.0, [10, 10]).unwrap());
        let error = SparseNet::checked([1, 10, 10], vec![conv]).unwrap_err();
        assert!(error.contains("at least 8×8"), "{error}");
    }
}
