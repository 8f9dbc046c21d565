//! The per-image distances d0 and dp in AVX-512 lanes: eight rows of a trajectory side by side, one
//! to a 64-bit lane, gathered straight from the row-major embeddings. The generic blocks in
//! `terms` compile to gathers and shuffles that cost about four cycles per element; here each
//! element of eight rows is one gather, one conversion and a few vector operations.
//!
//! The arithmetic is the generic path's, lane by lane: every sum runs over the elements in index
//! order from zero, as `mul` then `add` (no fused multiply-add), square roots and the inverse norm
//! are correctly rounded in both; so the distances are equal bit for bit (tested against the
//! generic path).

use super::terms::Distances;
use std::arch::x86_64::{
    __m512d, __m512i, _CMP_GT_OQ, _mm256_mmask_i32gather_ps, _mm256_mullo_epi32, _mm256_set1_epi32,
    _mm256_setr_epi32, _mm256_setzero_ps, _mm512_add_pd, _mm512_alignr_epi64, _mm512_castpd_si512,
    _mm512_castsi512_pd, _mm512_cmp_pd_mask, _mm512_cvtps_pd, _mm512_div_pd, _mm512_loadu_pd,
    _mm512_maskz_mov_pd, _mm512_mul_pd, _mm512_set1_pd, _mm512_setzero_pd, _mm512_sqrt_pd,
    _mm512_storeu_pd, _mm512_sub_pd,
};

/// Rows measured side by side: f64 lanes of a register.
const LANES: usize = 8;

/// d0_j and dp_j (j = 0..n, both 0 at j = 0) of the `n = rows.len() / dim` rows.
pub(super) fn distances(rows: &[f32], dim: usize) -> Distances {
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "rows of dim values"
    );
    let n = rows.len() / dim;
    assert!(n >= 1, "at least one row");
    assert!(
        i32::try_from(LANES * dim).is_ok(),
        "row offsets fit a gather's 32-bit indices"
    );
    let mut d0 = Vec::with_capacity(n.div_ceil(LANES) * LANES);
    let mut dp = Vec::with_capacity(d0.capacity());
    // One block of normalised elements, the clean row, and the last row of the previous block.
    let mut block = vec![0.0; dim * LANES];
    let mut clean = vec![0.0; dim];
    let mut last_row = vec![0.0; dim];
    for first in (0..n).step_by(LANES) {
        let count = LANES.min(n - first);
        // SAFETY: rows first..first + count exist (count <= n - first) with dim values each;
        // block holds dim * LANES values, clean and last_row dim each (all allocated above);
        // AVX-512F and VL are enabled for the whole build wherever this module is compiled.
        let sums = unsafe {
            let inverse_norms = gather_block(&rows[first * dim..], dim, count, &mut block);
            if first == 0 {
                // The clean row is lane 0 of the first block.
                let scale = lane(inverse_norms, 0);
                for (c, element) in clean.iter_mut().zip(block.chunks_exact(LANES)) {
                    *c = element[0] * scale;
                }
            }
            measure_block(&mut block, dim, inverse_norms, &clean, &mut last_row)
        };
        d0.extend_from_slice(&sums.to_clean[..count]);
        dp.extend_from_slice(&sums.to_previous[..count]);
    }
    d0[0] = 0.0;
    dp[0] = 0.0;
    Distances { d0, dp }
}

/// Lane `k` of `v`.
fn lane(v: __m512d, k: usize) -> f64 {
    let mut out = [0.0; LANES];
    // SAFETY: out holds LANES f64, one register's worth; storeu has no alignment requirement.
    unsafe { _mm512_storeu_pd(out.as_mut_ptr(), v) };
    out[k]
}

/// Copies element i of rows 0..count (of `rows`, `dim` apart) into lanes 0..count of
/// `block[i * LANES..]` as f64 (zeros in the other lanes) and returns each lane's inverse norm
/// (0 for a zero row).
///
/// # Safety
/// `rows` holds `count * dim` values, `count <= LANES`, `block` holds `dim * LANES`; `LANES * dim`
/// fits an `i32`; the CPU has AVX-512F and AVX-512VL.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn gather_block(rows: &[f32], dim: usize, count: usize, block: &mut [f64]) -> __m512d {
    debug_assert!(count <= LANES && rows.len() >= count * dim && block.len() >= dim * LANES);
    let lanes_in_use: u8 = ((1u16 << count) - 1) as u8;
    // Lane k reads row k: offsets k * dim.
    let offsets = _mm256_mullo_epi32(
        _mm256_set1_epi32(dim as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let mut squares = _mm512_setzero_pd();
    let base = rows.as_ptr();
    let out = block.as_mut_ptr();
    for i in 0..dim {
        // SAFETY: lane k < count reads rows[k * dim + i], inside rows; masked lanes read nothing.
        let element = unsafe {
            _mm512_cvtps_pd(_mm256_mmask_i32gather_ps::<4>(
                _mm256_setzero_ps(),
                lanes_in_use,
                offsets,
                base.add(i),
            ))
        };
        squares = _mm512_add_pd(squares, _mm512_mul_pd(element, element));
        // SAFETY: block[i * LANES..(i + 1) * LANES] is inside block (i < dim).
        unsafe { _mm512_storeu_pd(out.add(i * LANES), element) };
    }
    let norms = _mm512_sqrt_pd(squares);
    let positive = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(norms, _mm512_setzero_pd());
    _mm512_maskz_mov_pd(positive, _mm512_div_pd(_mm512_set1_pd(1.0), norms))
}

/// Sums of squared differences of a block's rows to the clean row and to their predecessors.
struct BlockSums {
    /// Per lane, |e_j - e_0|.
    to_clean: [f64; LANES],
    /// Per lane, |e_j - e_(j-1)|.
    to_previous: [f64; LANES],
}

/// Normalises the gathered block in place (by `inverse_norms`) and measures its rows' distances
/// to `clean` and to their predecessors: lane k - 1 of the same element, and for lane 0
/// `last_row`, which it then overwrites with lane 7 (the predecessor of the next block's first).
///
/// # Safety
/// `block` holds `dim * LANES` values, `clean` and `last_row` `dim`; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn measure_block(
    block: &mut [f64],
    dim: usize,
    inverse_norms: __m512d,
    clean: &[f64],
    last_row: &mut [f64],
) -> BlockSums {
    debug_assert!(block.len() >= dim * LANES && clean.len() >= dim && last_row.len() >= dim);
    let mut to_clean = _mm512_setzero_pd();
    let mut to_previous = _mm512_setzero_pd();
    let out = block.as_mut_ptr();
    for i in 0..dim {
        // SAFETY: block[i * LANES..(i + 1) * LANES] is inside block (i < dim).
        let element = unsafe { _mm512_mul_pd(_mm512_loadu_pd(out.add(i * LANES)), inverse_norms) };
        // SAFETY: as above.
        unsafe { _mm512_storeu_pd(out.add(i * LANES), element) };
        let before: __m512i = _mm512_castpd_si512(_mm512_set1_pd(last_row[i]));
        // [last_row[i], lanes 0..7 of element]: each lane's predecessor.
        let previous = _mm512_castsi512_pd(_mm512_alignr_epi64::<7>(
            _mm512_castpd_si512(element),
            before,
        ));
        let from_clean = _mm512_sub_pd(_mm512_set1_pd(clean[i]), element);
        to_clean = _mm512_add_pd(to_clean, _mm512_mul_pd(from_clean, from_clean));
        let from_previous = _mm512_sub_pd(previous, element);
        to_previous = _mm512_add_pd(to_previous, _mm512_mul_pd(from_previous, from_previous));
    }
    for (i, last) in last_row.iter_mut().enumerate().take(dim) {
        *last = block[i * LANES + LANES - 1];
    }
    let mut sums = BlockSums {
        to_clean: [0.0; LANES],
        to_previous: [0.0; LANES],
    };
    // SAFETY: each array holds LANES f64, one register's worth.
    unsafe {
        _mm512_storeu_pd(sums.to_clean.as_mut_ptr(), _mm512_sqrt_pd(to_clean));
        _mm512_storeu_pd(sums.to_previous.as_mut_ptr(), _mm512_sqrt_pd(to_previous));
    }
    sums
}
