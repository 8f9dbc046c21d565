//! Row-major matrix products on one or more cores, through the `gemm` crate: the operands are
//! strided views ([`MatRef`], transposed without a copy), the destination a row-major slice that
//! the product replaces or adds to ([`Accum`]).

use super::Real;
use gemm::Parallelism;
use std::mem::MaybeUninit;

/// Whether a product replaces its destination or is added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accum {
    /// `dst = a * b`.
    Replace,
    /// `dst += a * b`.
    Add,
}

/// A read-only view of a `rows x cols` matrix whose element (i, j) is
/// `data[i * row_stride + j * col_stride]` (faer's style). Made row-major by
/// [`MatRef::row_major`] and transposed by [`MatRef::t`], so every element it names lies in
/// `data`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a, T> MatRef<'a, T> {
    /// The `rows x cols` matrix stored row-major at the start of `data` (which may hold more).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "gemm operand sizes");
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// The `rows x cols` matrix whose rows start `row_stride` elements apart from the start of
    /// `data` (row-major with gaps between rows).
    pub fn row_major_strided(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(cols <= row_stride, "gemm row stride");
        assert!(
            rows == 0 || cols == 0 || data.len() >= (rows - 1) * row_stride + cols,
            "gemm operand sizes"
        );
        MatRef {
            data,
            rows,
            cols,
            row_stride: row_stride as isize,
            col_stride: 1,
        }
    }

    /// The transpose, on the same elements.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `dst (m x n) = [dst +] a (m x k) * b (k x n)`, `dst` row-major (at least m * n elements).
pub fn gemm_rm<T: Real>(
    dst: &mut [T],
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    parallelism: Parallelism,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(b.rows == k && dst.len() >= m * n, "gemm operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if accum == Accum::Replace {
            dst[..m * n].iter_mut().for_each(|v| *v = T::zero());
        }
        return;
    }
    // SAFETY: dst holds at least m * n elements (asserted above), readable and writable through
    // the exclusive borrow; a is m x k and b is k x n (asserted), and m, n, k are positive.
    unsafe { gemm_ptr(dst.as_mut_ptr(), accum, a, b, parallelism) };
}

/// `dst (m x n) = a (m x k) * b (k x n)` on one core into the first m * n elements of
/// uninitialised memory, which it returns initialised.
pub(super) fn gemm_into_uninit<'d, T: Real>(
    dst: &'d mut [MaybeUninit<T>],
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
) -> &'d mut [T] {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(b.rows, k, "gemm operand sizes");
    let dst = &mut dst[..m * n];
    if k == 0 || m == 0 || n == 0 {
        dst.iter_mut().for_each(|v| {
            v.write(T::zero());
        });
    } else {
        // SAFETY: dst holds exactly m * n elements (sliced above) and is borrowed exclusively;
        // a is m x k and b is k x n (asserted), all positive. With Accum::Replace the gemm
        // writes every destination element without reading any, so uninitialised memory is a
        // valid destination; MaybeUninit<T> has T's layout, so the pointer cast is valid.
        unsafe {
            gemm_ptr(
                dst.as_mut_ptr().cast::<T>(),
                Accum::Replace,
                a,
                b,
                Parallelism::None,
            )
        };
    }
    // SAFETY: all m * n elements of dst were written just above (by the zero fill or by the
    // gemm, which writes every element); MaybeUninit<T> has T's layout, and the returned slice
    // takes over dst's exclusive borrow.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<T>(), m * n) }
}

/// The gemm call behind [`gemm_rm`] and [`gemm_into_uninit`]: `dst = [dst +] a * b`, `dst`
/// row-major with `b.cols()` columns.
///
/// # Safety
/// `dst` must be valid for `a.rows() * b.cols()` writes (and reads with [`Accum::Add`]) and not
/// overlap `a` or `b`; `a.cols() == b.rows()`, and all three dimensions must be positive.
unsafe fn gemm_ptr<T: Real>(
    dst: *mut T,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    parallelism: Parallelism,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // SAFETY: every element the views name lies in their slices (MatRef's constructors), the
    // destination is valid for the m x n row-major product (this function's contract), and the
    // dimensions are positive and agree (also the contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accum == Accum::Add,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The fewest rows `m` from which every row of an `(m x k) * (k x n)` product comes out the same,
/// bit for bit, whatever rows share the product (gemm 0.19). Below it the gemm takes kernels that
/// sum in another order: a gemv for one row or one column, its horizontal kernel when
/// `m * n <= 256`, and, past a depth of 512, a fixed depth block of 512 when `m` and `n` are both at
/// most 64 (where a larger product's block follows the caches). From it on every row sums its
/// terms in one order that depends on `k` alone. (The crate transposes our row-major product;
/// these conditions are symmetric in `m` and `n`, or name the one-row and one-column cases.)
pub fn row_invariant_rows(k: usize, n: usize) -> usize {
    let rows_past_horizontal = 256 / n.max(1) + 1;
    let rows_past_fixed_depth_block = if k > 512 && n <= 64 { 65 } else { 0 };
    rows_past_horizontal.max(rows_past_fixed_depth_block).max(2)
}

/// Multi-threaded gemm only when the product is large enough to pay for it.
pub(super) fn parallelism(flops: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if flops >= 1 << 18 && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product by definition, reading the views element by element.
    fn naive(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
        let at = |m: &MatRef<'_, f64>, i: usize, j: usize| {
            m.data[(i as isize * m.row_stride + j as isize * m.col_stride) as usize]
        };
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols).map(|l| at(&a, i, l) * at(&b, l, j)).sum();
            }
        }
        out
    }

    #[test]
    fn transposed_views_multiply_as_their_transposes() {
        let (m, n, k) = (5, 3, 4);
        let a: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.5 - 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i * 7 % 5) as f64 - 2.0).collect();
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            // a stored k x m when transposed, b stored n x k
            let av = if a_t {
                MatRef::row_major(&a, k, m).t()
            } else {
                MatRef::row_major(&a, m, k)
            };
            let bv = if b_t {
                MatRef::row_major(&b, n, k).t()
            } else {
                MatRef::row_major(&b, k, n)
            };
            let want = naive(av, bv);
            let mut dst = vec![f64::NAN; m * n];
            gemm_rm(&mut dst, Accum::Replace, av, bv, Parallelism::None);
            assert_eq!(dst, want, "a_t {a_t} b_t {b_t}");
            gemm_rm(&mut dst, Accum::Add, av, bv, Parallelism::None);
            let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
            assert_eq!(dst, twice);
            let mut uninit = vec![MaybeUninit::<f64>::uninit(); m * n + 3];
            assert_eq!(gemm_into_uninit(&mut uninit, av, bv), &want[..]);
        }
    }

    #[test]
    fn rows_are_invariant_from_row_invariant_rows_on() {
        // Every row of a product of m >= row_invariant_rows rows equals that row of a 300-row
        // product: the shapes of LeNet-5's and ResNet-18's dense layers, and the narrow extremes.
        let big = 300;
        for (k, n) in [
            (256, 512),
            (512, 512),
            (512, 128),
            (512, 16),
            (512, 2),
            (512, 1),
            (1024, 16),
        ] {
            let from = row_invariant_rows(k, n);
            let a: Vec<f32> = (0..big * k)
                .map(|i| ((i * 7919) % 1009) as f32 / 1009.0 - 0.5)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let product = |m: usize, par: Parallelism| {
                let mut d = vec![0f32; m * n];
                let (a, w) = (
                    MatRef::row_major(&a[..m * k], m, k),
                    MatRef::row_major(&w, n, k),
                );
                gemm_rm(&mut d, Accum::Replace, a, w.t(), par);
                d
            };
            let full = product(big, Parallelism::None);
            assert!(
                product(big, Parallelism::Rayon(2)) == full,
                "k {k} n {n}: two threads"
            );
            for m in (from..from + 20)
                .chain([200, 256])
                .filter(|&m| m >= from && m <= big)
            {
                assert!(
                    product(m, Parallelism::None) == full[..m * n],
                    "k {k} n {n}: {m} rows differ from {big}"
                );
            }
        }
        assert_eq!(row_invariant_rows(512, 16), 17);
        assert_eq!(row_invariant_rows(512, 512), 2);
    }

    #[test]
    #[should_panic(expected = "gemm operand sizes")]
    fn short_operands_are_refused() {
        MatRef::row_major(&[1.0f32; 5], 2, 3);
    }
}
