//! Row-major matrix products on host slices through the `gemm` crate (the one burn's CPU backend
//! uses), for the fused CPU operations ([`crate::lrt_conv`], [`crate::lrt_dense`]).

pub use ::gemm::Parallelism;

/// A matrix view: element (r, c) at `data[r * row + c * column]`.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    data: &'a [f32],
    row: usize,
    column: usize,
}

impl<'a> Matrix<'a> {
    pub fn row_major(data: &'a [f32], columns: usize) -> Self {
        Self {
            data,
            row: columns,
            column: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self {
            row: self.column,
            column: self.row,
            ..self
        }
    }
}

/// dst `[m, n]` (row-major) = lhs·rhs, or += lhs·rhs when `accumulate`; lhs is `[m, k]`, and
/// k and n follow from the lengths. `parallelism`: `None` inside work that is already spread
/// over threads (per image), rayon's threads for one large product.
pub fn gemm(
    dst: &mut [f32],
    accumulate: bool,
    lhs: Matrix,
    rhs: Matrix,
    m: usize,
    parallelism: Parallelism,
) {
    let k = lhs.data.len() / m;
    let n = dst.len() / m;
    assert_eq!(m * k, lhs.data.len(), "gemm: lhs is not [m, k]");
    assert_eq!(k * n, rhs.data.len(), "gemm: rhs is not [k, n]");
    assert_eq!(m * n, dst.len(), "gemm: dst is not [m, n]");
    // SAFETY: the asserts above bound every index the strides reach inside the three slices,
    // and dst does not alias the inputs (it is borrowed mutably).
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.column as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.column as isize,
            rhs.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
