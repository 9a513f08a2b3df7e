//! Inference with the removed weights actually gone: each dense layer's kept weights stored in
//! compressed sparse rows (CSR) of Wᵀ, one row per output unit (the `[d_out, d_in]` layout), so
//! that a forward pass touches only the kept weights. Pure host code, no tensors.

use crate::mode::WeightLayerView;
use rayon::prelude::*;

/// y = x·W + b for W of shape `[d_in, d_out]` with only the kept entries stored: output unit
/// `j` sums `values[k]·x[inputs[k]]` over `k` in `row_start[j]..row_start[j + 1]`.
///
/// Rows over outputs rather than inputs: at batch 1 each output accumulates in a register
/// instead of being loaded and stored once per weight, and at larger batches each output row
/// stays in cache while its inputs stream past.
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

    /// Bytes of the stored layer (values, input indices, row starts, bias).
    pub fn bytes(&self) -> usize {
        4 * (self.values.len() + self.inputs.len() + self.row_start.len() + self.bias.len())
    }

    /// `out = x·W + b` for a batch of `batch` examples, written input-major:
    /// `out[j * batch + b]` is output `j` of example `b`.
    fn forward_batch(&self, x: Batch<'_>, batch: usize, out: &mut [f32]) {
        // One example is in both layouts; the register path is the faster one for it.
        let x = match x {
            Batch::InputMajor(x) if batch == 1 => Batch::ExampleMajor(x),
            x => x,
        };
        for (j, row) in out.chunks_exact_mut(batch).enumerate() {
            let (start, end) = (self.row_start[j] as usize, self.row_start[j + 1] as usize);
            let entries = || self.inputs[start..end].iter().zip(&self.values[start..end]);
            match x {
                Batch::ExampleMajor(x) => {
                    // Each output of each example is a short dot product kept in a register.
                    for (y, example) in row.iter_mut().zip(x.chunks_exact(self.d_in)) {
                        *y = self.bias[j]
                            + entries()
                                .map(|(&i, &v)| example[i as usize] * v)
                                .sum::<f32>();
                    }
                }
                Batch::InputMajor(x) => {
                    // Each kept weight is one vectorised multiply-add over the batch.
                    row.fill(self.bias[j]);
                    for (&i, &v) in entries() {
                        let xi = &x[i as usize * batch..(i as usize + 1) * batch];
                        for (o, &xv) in row.iter_mut().zip(xi) {
                            *o += xv * v;
                        }
                    }
                }
            }
        }
    }
}

/// A batch of layer inputs in one of two layouts.
#[derive(Debug, Clone, Copy)]
enum Batch<'a> {
    /// `x[b * d_in + i]`: the images as they come (input `i` of example `b`).
    ExampleMajor(&'a [f32]),
    /// `x[i * batch + b]`: what a layer writes for the next one.
    InputMajor(&'a [f32]),
}

/// A fully connected network of [`CsrDense`] layers with ReLU between them.
#[derive(Debug, Clone)]
pub struct SparseMlp {
    pub layers: Vec<CsrDense>,
}

impl SparseMlp {
    pub fn from_views(views: &[WeightLayerView], threshold: f64) -> Result<Self, String> {
        let layers = views
            .iter()
            .map(|v| CsrDense::from_view(v, threshold))
            .collect::<Result<Vec<_>, _>>()?;
        for pair in layers.windows(2) {
            if pair[0].d_out != pair[1].d_in {
                return Err(format!(
                    "layer widths do not chain: {} then {}",
                    pair[0].d_out, pair[1].d_in
                ));
            }
        }
        Ok(Self { layers })
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().map(CsrDense::bytes).sum()
    }

    /// Predicted class of each example of `images` (rows of `d_in` floats), `batch` at a time.
    /// Batches of more than one image are spread over rayon's threads (as the dense backend's
    /// matmuls are); single images are processed one after another, as a latency measure.
    pub fn predict(&self, images: &[f32], batch: usize) -> Vec<u8> {
        let chunk = batch * self.layers[0].d_in;
        if batch == 1 {
            return self.predict_chunks(images.chunks(chunk), batch);
        }
        images
            .par_chunks(chunk)
            .map(|c| self.predict_chunks(std::iter::once(c), batch))
            .collect::<Vec<_>>()
            .concat()
    }

    fn predict_chunks<'a>(&self, chunks: impl Iterator<Item = &'a [f32]>, batch: usize) -> Vec<u8> {
        let d_in = self.layers[0].d_in;
        let widest = self
            .layers
            .iter()
            .map(|l| l.d_out)
            .max()
            .unwrap_or(0)
            .max(d_in);
        // Two input-major buffers that take turns as a layer's output and the next one's input.
        let (mut a, mut b) = (vec![0f32; widest * batch], vec![0f32; widest * batch]);
        let last = self.layers.len() - 1;
        let mut predictions = Vec::new();
        for chunk in chunks {
            let m = chunk.len() / d_in;
            let mut width = d_in;
            for (l, layer) in self.layers.iter().enumerate() {
                let out = &mut b[..layer.d_out * m];
                // The images are read where they are: transposing them cost more than the first
                // layer's few kept weights.
                let input = match l {
                    0 => Batch::ExampleMajor(chunk),
                    _ => Batch::InputMajor(&a[..width * m]),
                };
                layer.forward_batch(input, m, out);
                if l != last {
                    out.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                std::mem::swap(&mut a, &mut b);
                width = layer.d_out;
            }
            predictions.extend((0..m).map(|e| argmax((0..width).map(|j| a[j * m + e]))));
        }
        predictions
    }
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
        shape: [usize; 2],
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
            [3, 2],
            vec![0.5, -0.5],
        );
        let layer = CsrDense::from_view(&v, 3.0).unwrap();
        assert_eq!(layer.nonzeros(), 4);
        assert_eq!(layer.row_start, vec![0, 2, 4]);
        assert_eq!(layer.inputs, vec![0, 1, 1, 2]);
        // Two examples x₁ = (1, 0, 2), x₂ = (0, 1, 0), in both layouts.
        // x₁: column 1 = 1·1 + 2·0 + 0.5, column 2 = 2·6 − 0.5; x₂: 3 + 0.5 and 4 − 0.5.
        let want = [1.5, 3.5, 11.5, 3.5];
        let mut out = [0.0; 4];
        let input_major = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0];
        layer.forward_batch(Batch::InputMajor(&input_major), 2, &mut out);
        assert_eq!(out, want);
        let example_major = [1.0, 0.0, 2.0, 0.0, 1.0, 0.0];
        layer.forward_batch(Batch::ExampleMajor(&example_major), 2, &mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn network_applies_relu_between_layers_only() {
        let first = view(vec![1., -1.], vec![0., 0.], [1, 2], vec![0., 0.]);
        let mut second = view(vec![1., 0., 0., 1.], vec![0.; 4], [2, 2], vec![0., 0.]);
        second.name = "e".into();
        let net = SparseMlp::from_views(&[first, second], 3.0).unwrap();
        // x = 2: hidden (2, −2) → ReLU (2, 0) → logits (2, 0) → class 0; x = −2 → class 1.
        assert_eq!(net.predict(&[2.0, -2.0], 1), vec![0, 1]);
        assert_eq!(net.predict(&[2.0, -2.0], 2), vec![0, 1]);
    }
}
