//! The projective warp in AVX-512 lanes: eight output pixels of a row at a time, their source
//! coordinates in f64 lanes (two divisions each, eight at once) and their four bilinear taps
//! gathered from the zero-bordered planes.
//!
//! Each lane does the scalar warp's arithmetic in its order and precision: z = (m6 x + m7 y) + m8,
//! u = ((m0 x + m1 y) + m2) / z, v likewise, floor, the f32 fractions, and in f32
//! top = p00 (1 - fx) + p01 fx, bottom likewise, top (1 - fy) + bottom fy, as multiplies then adds
//! (no fused multiply-add). A lane whose point is invalid or outside writes 0, as the scalar warp
//! leaves it. So the images are equal bit for bit (tested against the pixel-by-pixel warp).

use super::augment::Mat3;
use std::arch::x86_64::{
    _CMP_GE_OQ, _CMP_GT_OQ, _CMP_LT_OQ, _MM_FROUND_NO_EXC, _MM_FROUND_TO_NEG_INF, _mm256_add_epi32,
    _mm256_add_ps, _mm256_mask_storeu_ps, _mm256_maskz_mov_ps, _mm256_mmask_i32gather_ps,
    _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps, _mm256_sub_ps,
    _mm512_abs_pd, _mm512_add_pd, _mm512_cmp_pd_mask, _mm512_cvtpd_ps, _mm512_cvttpd_epi32,
    _mm512_div_pd, _mm512_maskz_mov_pd, _mm512_mul_pd, _mm512_roundscale_pd, _mm512_set1_pd,
    _mm512_setr_pd, _mm512_sub_pd,
};

/// Output pixels of a row computed together: the f64 lanes of a register.
const LANES: usize = 8;

/// Writes the warp of the `c` planes of `bordered` (each `h + 2` rows of `w + 2`, the image with
/// a one-pixel border of zeros) into `out` (`c * h * w`, zeros), as the scalar warp does.
pub(super) fn warp_bordered(
    bordered: &[f32],
    c: usize,
    h: usize,
    w: usize,
    m: &Mat3,
    out: &mut [f32],
) {
    let (bh, bw) = (h + 2, w + 2);
    assert!(
        bordered.len() >= c * bh * bw && out.len() >= c * h * w,
        "warp sizes"
    );
    assert!(
        i32::try_from(bh * bw).is_ok(),
        "plane offsets fit 32-bit indices"
    );
    for y in 0..h {
        for first in (0..w).step_by(LANES) {
            // SAFETY: the sizes are checked above; first < w and y < h; AVX-512F and VL are
            // enabled for the whole build wherever this module is compiled.
            unsafe { warp_lanes(bordered, c, h, w, m, y, first, out) };
        }
    }
}

/// Output pixels `first..first + 8` (those below `w`) of row `y`, in every plane.
///
/// # Safety
/// `bordered` holds `c * (h + 2) * (w + 2)` values and `out` `c * h * w`, with `(h + 2) * (w + 2)`
/// within `i32`; `y < h`, `first < w`; the CPU has AVX-512F and AVX-512VL.
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn warp_lanes(
    bordered: &[f32],
    c: usize,
    h: usize,
    w: usize,
    m: &Mat3,
    y: usize,
    first: usize,
    out: &mut [f32],
) {
    let (bh, bw) = (h + 2, w + 2);
    let yf = y as f64;
    let (uy, vy, zy) = (m[1] * yf, m[4] * yf, m[7] * yf);
    let f = first as f64;
    let x = _mm512_setr_pd(
        f,
        f + 1.0,
        f + 2.0,
        f + 3.0,
        f + 4.0,
        f + 5.0,
        f + 6.0,
        f + 7.0,
    );
    // (a x + b) + k in every lane.
    macro_rules! term {
        ($a:expr, $b:expr, $k:expr) => {
            _mm512_add_pd(
                _mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd($a), x), _mm512_set1_pd($b)),
                _mm512_set1_pd($k),
            )
        };
    }
    let z = term!(m[6], zy, m[8]);
    let u = _mm512_div_pd(term!(m[0], uy, m[2]), z);
    let v = _mm512_div_pd(term!(m[3], vy, m[5]), z);
    let limit = _mm512_set1_pd(1e6);
    let finite = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(z, _mm512_set1_pd(1e-9))
        & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(u), limit)
        & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(v), limit);
    const FLOOR: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    let (x0, y0) = (
        _mm512_roundscale_pd::<FLOOR>(u),
        _mm512_roundscale_pd::<FLOOR>(v),
    );
    let minus_one = _mm512_set1_pd(-1.0);
    let inside = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(x0, minus_one)
        & _mm512_cmp_pd_mask::<_CMP_GE_OQ>(y0, minus_one)
        & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x0, _mm512_set1_pd(w as f64))
        & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(y0, _mm512_set1_pd(h as f64));
    let valid = finite & inside;
    let fx = _mm512_cvtpd_ps(_mm512_sub_pd(u, x0));
    let fy = _mm512_cvtpd_ps(_mm512_sub_pd(v, y0));
    // The top-left tap in the bordered plane: (y0 + 1) * bw + (x0 + 1), exact in f64 (and 0 in
    // the lanes that read nothing).
    let one = _mm512_set1_pd(1.0);
    let tap = _mm512_add_pd(
        _mm512_mul_pd(_mm512_add_pd(y0, one), _mm512_set1_pd(bw as f64)),
        _mm512_add_pd(x0, one),
    );
    let top_left = _mm512_cvttpd_epi32(_mm512_maskz_mov_pd(valid, tap));
    let right = _mm256_add_epi32(top_left, _mm256_set1_epi32(1));
    let below = _mm256_add_epi32(top_left, _mm256_set1_epi32(bw as i32));
    let below_right = _mm256_add_epi32(below, _mm256_set1_epi32(1));
    let one_f = _mm256_set1_ps(1.0);
    let (not_fx, not_fy) = (_mm256_sub_ps(one_f, fx), _mm256_sub_ps(one_f, fy));
    let row_mask = if w - first >= LANES {
        0xff
    } else {
        (1u8 << (w - first)) - 1
    };
    for ch in 0..c {
        // SAFETY: plane ch starts inside bordered; every gathered index of a valid lane is a
        // top-left tap with x0 in -1..w and y0 in -1..h, so it and its right, lower and
        // lower-right neighbours lie in the plane's (h + 2) x (w + 2) values; invalid lanes
        // gather nothing. The store writes lanes first.. below w of row y of plane ch.
        unsafe {
            let plane = bordered.as_ptr().add(ch * bh * bw);
            // The taps at `at` of the valid lanes, 0 in the others.
            macro_rules! gather {
                ($at:expr) => {
                    _mm256_mmask_i32gather_ps::<4>(_mm256_setzero_ps(), valid, $at, plane)
                };
            }
            let top = _mm256_add_ps(
                _mm256_mul_ps(gather!(top_left), not_fx),
                _mm256_mul_ps(gather!(right), fx),
            );
            let bottom = _mm256_add_ps(
                _mm256_mul_ps(gather!(below), not_fx),
                _mm256_mul_ps(gather!(below_right), fx),
            );
            let value = _mm256_add_ps(_mm256_mul_ps(top, not_fy), _mm256_mul_ps(bottom, fy));
            let at = out.as_mut_ptr().add(ch * h * w + y * w + first);
            _mm256_mask_storeu_ps(at, row_mask, _mm256_maskz_mov_ps(valid, value));
        }
    }
}
