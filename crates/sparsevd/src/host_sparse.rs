//! Products with a matrix whose entries are mostly exact zeros: θ of a Sparse VD layer after the
//! train clip (θ set to 0 where log α ≥ t). LeNet-5's second convolution has 85 % of its θ
//! removed by epoch 11 and 94 % by epoch 21; a gemm multiplies every one of those zeros, in the
//! forward pass and again for ∂x. Here only the nonzero entries are visited, each an axpy over a
//! row of the other factor.
//!
//! A skipped term is 0·x = ±0, which changes no sum but for the sign of a zero result, so the
//! products equal gemm's but for rounding (the terms are added in another order).

/// The nonzero entries of a row-major `[rows, columns]` matrix, row by row.
#[derive(Debug)]
pub struct SparseRows {
    columns: usize,
    row_start: Vec<usize>,
    column: Vec<u32>,
    value: Vec<f32>,
}

/// Above this fraction of nonzero entries the gemm is the faster product. An axpy per nonzero
/// entry runs at about a third of the gemm micro-kernel's multiply-adds per cycle on LeNet-5's
/// second convolution (64 output positions per row).
const MAX_DENSITY: f64 = 0.25;

impl SparseRows {
    /// The nonzero entries of `matrix` (`columns` wide), or `None` when more than
    /// [`MAX_DENSITY`] of its entries are nonzero.
    pub fn of_sparse(matrix: &[f32], columns: usize) -> Option<Self> {
        assert_eq!(matrix.len() % columns, 0, "SparseRows: not a matrix");
        let nonzero = matrix.iter().filter(|&&v| v != 0.0).count();
        if nonzero as f64 > MAX_DENSITY * matrix.len() as f64 {
            return None;
        }
        let mut row_start = Vec::with_capacity(matrix.len() / columns + 1);
        let (mut column, mut value) = (Vec::with_capacity(nonzero), Vec::with_capacity(nonzero));
        row_start.push(0);
        for row in matrix.chunks(columns) {
            for (c, &v) in row.iter().enumerate().filter(|&(_, &v)| v != 0.0) {
                column.push(c as u32);
                value.push(v);
            }
            row_start.push(value.len());
        }
        Some(Self {
            columns,
            row_start,
            column,
            value,
        })
    }

    /// The nonzero entries (column, value) of row `r`, by column.
    fn row(&self, r: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = self.row_start[r]..self.row_start[r + 1];
        let columns = self.column[range.clone()].iter().map(|&c| c as usize);
        columns.zip(self.value[range].iter().copied())
    }

    fn rows(&self) -> usize {
        self.row_start.len() - 1
    }

    /// dst `[rows, n]` = self·rhs for a row-major rhs `[columns, n]`. Inline it into a
    /// [`crate::vector_math::with_simd`] closure for wide vectors.
    #[inline(always)]
    pub fn times(&self, rhs: &[f32], dst: &mut [f32]) {
        let n = rhs.len() / self.columns;
        assert_eq!(
            rhs.len(),
            self.columns * n,
            "times: rhs is not [columns, n]"
        );
        assert_eq!(dst.len(), self.rows() * n, "times: dst is not [rows, n]");
        for (r, out) in dst.chunks_exact_mut(n).enumerate() {
            out.fill(0.0);
            for (c, v) in self.row(r) {
                axpy(out, v, &rhs[c * n..][..n]);
            }
        }
    }

    /// dst `[columns, n]` = selfᵀ·rhs for a row-major rhs `[rows, n]`. Inline it into a
    /// [`crate::vector_math::with_simd`] closure for wide vectors.
    #[inline(always)]
    pub fn transpose_times(&self, rhs: &[f32], dst: &mut [f32]) {
        let n = dst.len() / self.columns;
        assert_eq!(
            dst.len(),
            self.columns * n,
            "transpose_times: dst is not [columns, n]"
        );
        assert_eq!(
            rhs.len(),
            self.rows() * n,
            "transpose_times: rhs is not [rows, n]"
        );
        dst.fill(0.0);
        for (r, source) in rhs.chunks_exact(n).enumerate() {
            for (c, v) in self.row(r) {
                axpy(&mut dst[c * n..][..n], v, source);
            }
        }
    }
}

/// y ← y + a·x.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [2, 3] with three nonzeros; rhs [3, 2].
    const MATRIX: [f32; 6] = [0.0, 2.0, 0.0, -1.0, 0.0, 0.5];

    #[test]
    fn times_and_transpose_times_equal_the_dense_products() {
        let sparse = SparseRows {
            columns: 3,
            row_start: vec![0, 1, 3],
            column: vec![1, 0, 2],
            value: vec![2.0, -1.0, 0.5],
        };
        let rhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut product = [f32::NAN; 4];
        sparse.times(&rhs, &mut product);
        // Row 0: 2·[3, 4]; row 1: −[1, 2] + 0.5·[5, 6].
        assert_eq!(product, [6.0, 8.0, 1.5, 1.0]);
        let mut transposed = [f32::NAN; 6];
        sparse.transpose_times(&[1.0, 2.0, 3.0, 4.0], &mut transposed);
        // selfᵀ [3, 2] = [[0, −1], [2, 0], [0, 0.5]] times [[1, 2], [3, 4]].
        assert_eq!(transposed, [-3.0, -4.0, 2.0, 4.0, 1.5, 2.0]);
    }

    #[test]
    fn of_sparse_keeps_the_nonzeros_by_row_and_declines_dense_matrices() {
        let mut matrix = [0.0f32; 12];
        matrix[..6].copy_from_slice(&MATRIX);
        let sparse = SparseRows::of_sparse(&matrix, 3).expect("3 of 12 entries are nonzero");
        assert_eq!(sparse.row_start, [0, 1, 3, 3, 3]);
        assert_eq!(sparse.column, [1, 0, 2]);
        assert_eq!(sparse.value, [2.0, -1.0, 0.5]);
        assert!(
            SparseRows::of_sparse(&MATRIX, 3).is_none(),
            "half of the entries are nonzero"
        );
    }
}
