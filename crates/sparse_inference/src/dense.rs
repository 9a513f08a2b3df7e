//! Dense layers with only their kept weights: compressed sparse rows (CSR) of Wᵀ, one row per
//! output unit.

use crate::rows::Rows;
use crate::simd::axpy;
use sparsevd::WeightLayerView;

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
    pub(crate) fn rows(&self) -> Rows<'_> {
        Rows {
            start: &self.row_start,
            index: &self.inputs,
            values: &self.values,
            bias: &self.bias,
        }
    }

    /// Which of the input channels (`positions` inputs each) the `needed` output units read.
    pub(crate) fn inputs_read(&self, needed: &[bool], positions: usize) -> Vec<bool> {
        self.rows()
            .groups_read(needed, positions, self.d_in / positions)
    }

    /// The layer with only the output units in `kept_out`, on inputs that keep only the
    /// channels (`positions` inputs each) in `kept_in`, which must hold every channel read.
    pub(crate) fn restricted(&self, kept_in: &[bool], positions: usize, kept_out: &[bool]) -> Self {
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
    pub(crate) fn forward<const L: usize>(&self, x: &[[f32; L]], out: &mut [[f32; L]]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_views::view;

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
}
