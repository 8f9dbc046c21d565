//! The probe's two products in AVX-512 lanes, without packing: `a b` and `a^T b` where `b` is
//! narrow (the classes of a linear probe: 10 for MNIST-like sets). matrixmultiply packs the
//! whole of `a` (thousands of embeddings) at every call, and at these shapes the packing cost
//! more than the multiply-adds (40% of a d512 probe's time against 36% in its kernel).
//!
//! The sums are matrixmultiply's, element by element: it splits the depth into blocks of
//! [`DEPTH_BLOCK`], sums each block's products in order from zero with one fused multiply-add
//! each, writes the first block's sum (alpha 1, beta 0) and adds each later block's sum to what it
//! wrote. Here `a b` keeps up to 16 classes of an output row in a register, `a^T b` 16 columns of
//! `a` (rows of the output) for one class, and each lane runs that chain, so the products equal
//! matrixmultiply's bit for bit (tested against it).

use std::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_set1_ps, _mm512_setzero_ps,
};

/// matrixmultiply's depth block for f32 (`S_KC`, 256 unless its build was configured otherwise).
pub(crate) const DEPTH_BLOCK: usize = 256;
/// f32 lanes of a register: the classes (columns of `b`) summed together.
const LANES: usize = 16;
/// Rows of `a` (and of the output) whose chains run side by side in [`product`].
const ROWS: usize = 8;

/// `c (m x n) = a (m x k) * b (k x n)`, row-major, as matrixmultiply's `sgemm` with alpha 1 and
/// beta 0 computes it.
pub(crate) fn product(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "product sizes"
    );
    if k == 0 {
        // No products: matrixmultiply writes beta * c = 0.
        c[..m * n].fill(0.0);
        return;
    }
    for first_class in (0..n).step_by(LANES) {
        let tile = Tile::new(first_class, n);
        let full = m / ROWS * ROWS;
        for first_row in (0..full).step_by(ROWS) {
            // SAFETY: rows first_row..first_row + ROWS of a and c exist (first_row + ROWS <= m),
            // the tile's classes lie in 0..n, the sizes are asserted above; AVX-512F is enabled
            // for the whole build wherever this module is compiled.
            unsafe { product_rows::<ROWS>(a, b, c, first_row, n, k, tile) };
        }
        for row in full..m {
            // SAFETY: as above, for one row (row < m).
            unsafe { product_rows::<1>(a, b, c, row, n, k, tile) };
        }
    }
}

/// `c (m x n) = a^T b` with `a` (k x m) and `b` (k x n), row-major, as matrixmultiply's `sgemm`
/// with alpha 1 and beta 0 computes it (reading `a` through strides as its transpose).
pub(crate) fn product_at_b(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    assert!(
        a.len() >= k * m && b.len() >= k * n && c.len() >= m * n,
        "product sizes"
    );
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // The sums by class, `a`'s columns in lanes (c transposed, n x m), so that each row of `a`
    // is read a register at a time; depth blocks outermost, so that a block's rows stay in cache
    // while every group of columns reads them.
    let mut by_class = vec![0.0f32; n * m];
    for (block, start) in (0..k).step_by(DEPTH_BLOCK).enumerate() {
        let depths = start..k.min(start + DEPTH_BLOCK);
        for first_column in (0..m).step_by(2 * LANES) {
            let columns = Columns::new(first_column, m, block);
            let mut first_class = 0;
            while first_class < n {
                let (out, depths) = (&mut by_class, depths.clone());
                // SAFETY: the columns' masked lanes lie in 0..m, the classes first_class..+CL in
                // 0..n (CL <= n - first_class), the depths in 0..k; by_class holds n x m values
                // and the sizes of a and b are asserted above; AVX-512F is enabled for the whole
                // build wherever this module is compiled.
                first_class += unsafe {
                    match n - first_class {
                        8.. => product_classes::<8>(a, b, out, columns, n, depths, first_class),
                        4..=7 => product_classes::<4>(a, b, out, columns, n, depths, first_class),
                        2..=3 => product_classes::<2>(a, b, out, columns, n, depths, first_class),
                        _ => product_classes::<1>(a, b, out, columns, n, depths, first_class),
                    }
                };
            }
        }
    }
    for (d, row) in c[..m * n].chunks_exact_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = by_class[j * m + d];
        }
    }
}

/// Two registers of `a`'s columns from `first` on (their lanes below `m`), summed over depth
/// block number `block`.
#[derive(Debug, Clone, Copy)]
struct Columns {
    first: usize,
    m: usize,
    block: usize,
    masks: [u16; 2],
}

impl Columns {
    fn new(first: usize, m: usize, block: usize) -> Self {
        let lanes = |from: usize| {
            let width = LANES.min(m.saturating_sub(from));
            if width == LANES {
                u16::MAX
            } else {
                (1u16 << width) - 1
            }
        };
        Columns {
            first,
            m,
            block,
            masks: [lanes(first), lanes(first + LANES)],
        }
    }
}

/// Sums classes `first_class..first_class + CL` of the columns' rows of `c = a^T b` over the
/// depth block `depths` into `by_class` (c transposed, n x m): stores them (block 0) or adds them
/// to what is there. Returns CL.
///
/// # Safety
/// `a` holds `k * m` values, `b` `k * n`, `by_class` `n * m`; the columns' masked lanes lie in
/// `0..m`, `first_class + CL <= n`, `depths` within `0..k`; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn product_classes<const CL: usize>(
    a: &[f32],
    b: &[f32],
    by_class: &mut [f32],
    columns: Columns,
    n: usize,
    depths: std::ops::Range<usize>,
    first_class: usize,
) -> usize {
    let Columns {
        first,
        m,
        block,
        masks,
    } = columns;
    let (a, b, out) = (a.as_ptr(), b.as_ptr(), by_class.as_mut_ptr());
    let mut sums: [[__m512; CL]; 2] = [[_mm512_setzero_ps(); CL]; 2];
    for depth in depths {
        // SAFETY: depth < k, so row depth of a holds the columns' masked lanes and row depth of
        // b the classes (the caller's contract).
        unsafe {
            let row = a.add(depth * m + first);
            let x = [
                _mm512_maskz_loadu_ps(masks[0], row),
                _mm512_maskz_loadu_ps(masks[1], row.add(LANES)),
            ];
            let classes = b.add(depth * n + first_class);
            for (x, sums) in x.iter().zip(sums.iter_mut()) {
                for (j, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_fmadd_ps(*x, _mm512_set1_ps(*classes.add(j)), *sum);
                }
            }
        }
    }
    for (g, (sums, &mask)) in sums.iter().zip(&masks).enumerate() {
        if mask == 0 {
            continue;
        }
        for (j, sum) in sums.iter().enumerate() {
            // SAFETY: row first_class + j of by_class holds the columns' masked lanes.
            unsafe {
                let at = out.add((first_class + j) * m + first + g * LANES);
                accumulate(at, mask, *sum, block);
            }
        }
    }
    CL
}

/// Up to [`LANES`] consecutive classes (columns of `b` and `c`) from `first` on.
#[derive(Debug, Clone, Copy)]
struct Tile {
    first: usize,
    mask: u16,
}

impl Tile {
    fn new(first: usize, n: usize) -> Self {
        let width = LANES.min(n - first);
        let mask = if width == LANES {
            u16::MAX
        } else {
            (1u16 << width) - 1
        };
        Tile { first, mask }
    }
}

/// Writes the tile's classes of rows `first_row..first_row + R` of `c = a b`.
///
/// # Safety
/// `a` holds `m * k` values, `b` `k * n`, `c` `m * n` with `first_row + R <= m`; the tile lies in
/// `0..n`; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn product_rows<const R: usize>(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    first_row: usize,
    n: usize,
    k: usize,
    tile: Tile,
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    for (block, start) in (0..k).step_by(DEPTH_BLOCK).enumerate() {
        let mut sums: [__m512; R] = [_mm512_setzero_ps(); R];
        for depth in start..k.min(start + DEPTH_BLOCK) {
            // SAFETY: depth < k and the tile's lanes lie in row depth of b; rows first_row..+R
            // of a exist (the caller's contract).
            unsafe {
                let classes = _mm512_maskz_loadu_ps(tile.mask, b.add(depth * n + tile.first));
                for (r, sum) in sums.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add((first_row + r) * k + depth));
                    *sum = _mm512_fmadd_ps(x, classes, *sum);
                }
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            // SAFETY: row first_row + r of c exists and the tile's lanes lie in it.
            unsafe {
                accumulate(
                    c.add((first_row + r) * n + tile.first),
                    tile.mask,
                    *sum,
                    block,
                )
            };
        }
    }
}

/// Stores a depth block's sums in the masked lanes at `dst` (the first block), or adds them to
/// what is there (every later block), as matrixmultiply does.
///
/// # Safety
/// The masked lanes at `dst` are writable (and readable after the first block); the CPU has
/// AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn accumulate(dst: *mut f32, mask: u16, sums: __m512, block: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let value = if block == 0 {
            sums
        } else {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), sums)
        };
        _mm512_mask_storeu_ps(dst, mask, value);
    }
}
