//! Inference with the removed weights actually gone: each dense layer's kept weights stored in
//! compressed sparse rows (CSR) over its inputs, so that a forward pass touches only the kept
//! weights and skips inputs that are zero (after ReLU, most are). Pure host code, no tensors.

use crate::mode::WeightLayerView;
use rayon::prelude::*;

/// y = x·W + b for W of shape `[d_in, d_out]` with only the kept entries stored: row `i` (one
/// input) holds `cols[row_start[i]..row_start[i + 1]]` and the matching `values`.
#[derive(Debug, Clone)]
pub struct CsrDense {
    pub d_in: usize,
    pub d_out: usize,
    pub row_start: Vec<u32>,
    pub cols: Vec<u32>,
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
        let mut row_start = Vec::with_capacity(d_in + 1);
        let (mut cols, mut values) = (Vec::new(), Vec::new());
        row_start.push(0);
        for i in 0..d_in {
            for j in 0..d_out {
                let k = i * d_out + j;
                if kept[k] && view.theta[k] != 0.0 {
                    cols.push(j as u32);
                    values.push(view.theta[k]);
                }
            }
            row_start.push(cols.len() as u32);
        }
        Ok(Self {
            d_in,
            d_out,
            row_start,
            cols,
            values,
            bias: view.bias.clone(),
        })
    }

    pub fn nonzeros(&self) -> usize {
        self.values.len()
    }

    /// Bytes of the stored layer (values, column indices, row starts, bias).
    pub fn bytes(&self) -> usize {
        4 * (self.values.len() + self.cols.len() + self.row_start.len() + self.bias.len())
    }

    /// `out = x·W + b` for a batch stored input-major: `x[i * batch + b]` is input `i` of
    /// example `b`, and likewise `out[j * batch + b]`. Each kept weight costs one pass over the
    /// batch (a vectorised multiply-add); inputs that are zero for the whole batch are skipped.
    fn forward_batch(&self, x: &[f32], batch: usize, out: &mut [f32]) {
        for (j, &b) in self.bias.iter().enumerate() {
            out[j * batch..(j + 1) * batch].fill(b);
        }
        for i in 0..self.d_in {
            let (start, end) = (self.row_start[i] as usize, self.row_start[i + 1] as usize);
            let xi = &x[i * batch..(i + 1) * batch];
            if start == end || xi.iter().all(|&v| v == 0.0) {
                continue;
            }
            let entries = self.cols[start..end].iter().zip(&self.values[start..end]);
            if let [x] = xi {
                // One example: a scalar update, without the per-weight slice of the batch loop.
                for (&c, &v) in entries {
                    out[c as usize] += x * v;
                }
                continue;
            }
            for (&c, &v) in entries {
                let row = &mut out[c as usize * batch..(c as usize + 1) * batch];
                for (o, &xv) in row.iter_mut().zip(xi) {
                    *o += xv * v;
                }
            }
        }
    }
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
        // Two input-major buffers that take turns as a layer's input and output.
        let (mut a, mut b) = (vec![0f32; widest * batch], vec![0f32; widest * batch]);
        let last = self.layers.len() - 1;
        let mut predictions = Vec::new();
        for chunk in chunks {
            let m = chunk.len() / d_in;
            for (e, image) in chunk.chunks_exact(d_in).enumerate() {
                for (i, &v) in image.iter().enumerate() {
                    a[i * m + e] = v;
                }
            }
            let mut width = d_in;
            for (l, layer) in self.layers.iter().enumerate() {
                let out = &mut b[..layer.d_out * m];
                layer.forward_batch(&a[..width * m], m, out);
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
        assert_eq!(layer.row_start, vec![0, 1, 3, 4]);
        // Two examples, input-major: x₁ = (1, 0, 2), x₂ = (0, 1, 0).
        let mut out = [0.0; 4];
        layer.forward_batch(&[1.0, 0.0, 0.0, 1.0, 2.0, 0.0], 2, &mut out);
        // x₁: column 1 = 1·1 + 2·0 + 0.5, column 2 = 2·6 − 0.5; x₂: 3 + 0.5 and 4 − 0.5.
        assert_eq!(out, [1.5, 3.5, 11.5, 3.5]);
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
