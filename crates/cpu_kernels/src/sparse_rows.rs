//! Products with a matrix whose entries are mostly exact zeros: θ of a Sparse VD layer after the
//! train clip (θ set to 0 where log α ≥ t). LeNet-5's second convolution has 85 % of its θ
//! removed by epoch 11 and 94 % by epoch 21; a gemm multiplies every one of those zeros, in the
//! forward pass and again for ∂x. Here only the nonzero entries are visited, each an axpy over a
//! row of the other factor; and where only the entries of a product at θ's nonzeros are wanted
//! (∂θ, whose value at a removed weight the train clip discards), only those are computed, each a
//! dot product of two rows.
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

/// Running sums of a sampled product (see [`SparseRows::add_sampled_lanes`]): value i of a row
/// product goes to lane i mod 16, so that the products vectorise and the lanes are added up
/// once per group of row pairs, not once per pair. Added up per image, the 16 lanes took twice
/// as long as the products (LeNet-5's rows are 64 long).
pub type Lanes = [f32; LANES];

const LANES: usize = 16;

impl SparseRows {
    /// The nonzero entries of `matrix` (`columns` wide), or `None` when more than
    /// `MAX_DENSITY` (a quarter) of its entries are nonzero.
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

    /// Zeroed running sums, one per nonzero entry, for [`SparseRows::add_sampled_lanes`].
    pub fn lanes(&self) -> Vec<Lanes> {
        vec![[0.0; LANES]; self.value.len()]
    }

    /// dst `[rows, n]` = self·rhs for a row-major rhs `[columns, n]`. Inline it into a
    /// [`crate::simd::with_simd`] closure for wide vectors.
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
    /// [`crate::simd::with_simd`] closure for wide vectors.
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

    /// The sampled product a·bᵀ at this matrix's nonzero entries only, for row-major a
    /// `[rows, n]` and b `[columns, n]`, added to `lanes` (one per nonzero entry, in order):
    /// lanes\[k\] += a_r ⊙ b_c folded to 16 lanes for the k-th nonzero entry (r, c).
    /// [`SparseRows::add_lane_sums_transposed`] turns the lanes into the product. Inline it into a
    /// [`crate::simd::with_simd`] closure for wide vectors.
    #[inline(always)]
    pub fn add_sampled_lanes(&self, a: &[f32], b: &[f32], lanes: &mut [Lanes]) {
        let n = a.len() / self.rows();
        assert_eq!(
            a.len(),
            self.rows() * n,
            "sampled product: a is not [rows, n]"
        );
        assert_eq!(
            b.len(),
            self.columns * n,
            "sampled product: b is not [columns, n]"
        );
        assert_eq!(
            lanes.len(),
            self.value.len(),
            "sampled product: one lane set per entry"
        );
        let mut lanes = lanes.iter_mut();
        for (r, a) in a.chunks_exact(n).enumerate() {
            let (a_groups, a_rest) = a.as_chunks::<LANES>();
            for ((c, _), sums) in self.row(r).zip(&mut lanes) {
                let (b_groups, b_rest) = b[c * n..][..n].as_chunks::<LANES>();
                // Summed in a local copy: inlined into the caller, LLVM no longer knows that
                // the lanes do not overlap a or b, and kept them in memory, one value at a time.
                let mut local = *sums;
                for (x, y) in a_groups.iter().zip(b_groups) {
                    let (x, y) = (*x, *y);
                    for i in 0..LANES {
                        local[i] += x[i] * y[i];
                    }
                }
                for ((sum, x), y) in local.iter_mut().zip(a_rest).zip(b_rest) {
                    *sum += x * y;
                }
                *sums = local;
            }
        }
    }

    /// dstᵀ `[columns, rows]` (the transpose of this matrix's shape) += the sum of lanes\[k\] at
    /// the k-th nonzero entry, for lanes from [`SparseRows::add_sampled_lanes`], added by halves.
    pub fn add_lane_sums_transposed(&self, lanes: &[Lanes], dst_t: &mut [f32]) {
        assert_eq!(
            lanes.len(),
            self.value.len(),
            "lane sums: one lane set per entry"
        );
        let rows = self.rows();
        assert_eq!(
            dst_t.len(),
            rows * self.columns,
            "lane sums: dstᵀ is not [columns, rows]"
        );
        let mut lanes = lanes.iter();
        for r in 0..rows {
            for ((c, _), &(mut sums)) in self.row(r).zip(&mut lanes) {
                let mut width = LANES;
                while width > 1 {
                    width /= 2;
                    for i in 0..width {
                        sums[i] += sums[i + width];
                    }
                }
                dst_t[c * rows + r] += sums[0];
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
    fn sampled_product_adds_dot_products_at_the_nonzero_entries_only() {
        let sparse = SparseRows::of_sparse(&[0.0, 0.0, 0.0, 0.0, 7.0, 0.0, 0.0, -1.0], 4)
            .expect("2 of 8 entries are nonzero");
        // a [2, 17], b [4, 17]: long enough for one group of 16 and a remainder.
        let a: Vec<f32> = (0..34).map(|i| (i % 5) as f32 - 2.0).collect();
        let b: Vec<f32> = (0..68).map(|i| (i % 7) as f32 * 0.5).collect();
        let dense_dot =
            |r: usize, c: usize| -> f32 { (0..17).map(|i| a[r * 17 + i] * b[c * 17 + i]).sum() };
        let mut lanes = sparse.lanes();
        // Two rounds of lanes, as for two images summed before the lanes are added up.
        sparse.add_sampled_lanes(&a, &b, &mut lanes);
        sparse.add_sampled_lanes(&a, &b, &mut lanes);
        let mut dst = [1.0f32; 8];
        sparse.add_lane_sums_transposed(&lanes, &mut dst);
        // dstᵀ is [4, 2]: entry (1, 0) at 0·2 + 1, entry (1, 3) at 3·2 + 1.
        let mut want = [1.0f32; 8];
        want[1] += 2.0 * dense_dot(1, 0);
        want[7] += 2.0 * dense_dot(1, 3);
        assert_eq!(dst, want);
        assert_ne!(want[1], 1.0, "the test's entries are not trivially 0");
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
