//! Convolution + bias + ReLU + 2x2 max pooling as one op, LeNet's building block. Each image is
//! convolved, rectified and pooled while it sits in cache, so the full-size convolution output
//! never becomes a tensor: no 4.8 MB activation per LeNet batch to write, read back, mask and
//! accumulate gradients into. The forward records, per pooled output, where its gradient goes
//! (the window's first maximum, or nowhere when ReLU zeroed it); the backward rebuilds each
//! image's convolution-output gradient from those codes and computes only the gradients the graph
//! needs. Results equal `max_pool2x2(conv2d(x, w, b, relu))` exactly.

use super::conv::{
    ConvGeometry, IM2COL_SLACK, accumulate_weight_grad, col2im_add, epilogue, im2col,
};
use super::conv_lanes::{self, DirectConv};
use super::gemm::{Accum, MatRef, gemm_rm};
use super::{GradLayout, Real, Want, vec_written_by};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::{as_f32, as_f32_mut, as_f32_uninit};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Code of a pooled output whose gradient goes nowhere (its window's maximum is ReLU's zero).
pub const NO_GRADIENT: u8 = 4;

/// The first maximum of a 2x2 window (a b / c d, compared in that order with `>`, as the
/// unfused pooling does) and its position 0-3; computed with selects, not branches.
#[inline(always)]
fn window_max<T: Real>(a: T, b: T, c: T, d: T) -> (T, u8) {
    let up = b > a;
    let (m, k) = (T::select(up, b, a), up as u8);
    let up = c > m;
    let (m, k) = (T::select(up, c, m), k + up as u8 * (2 - k));
    let up = d > m;
    (T::select(up, d, m), k + up as u8 * (3 - k))
}

/// Pools a pair of rectified rows into `yr.len()` outputs: window j is `r0[2j], r0[2j + 1] /
/// r1[2j], r1[2j + 1]`, its first maximum goes to `yr[j]` and its gradient code to `cr[j]`
/// ([`NO_GRADIENT`] when the maximum is <= 0; NaN keeps its path). Four windows at a time in
/// SSE registers for f32 where AVX2 is there (the compiler left most windows of LeNet's rows of
/// 12 and 4 to scalar code), the same comparisons and selects, so the same bits.
#[inline]
fn pool_rows<T: Real>(r0: &[T], r1: &[T], yr: &mut [MaybeUninit<T>], cr: &mut [u8]) {
    let windows = yr.len();
    assert!(
        r0.len() >= 2 * windows && r1.len() >= 2 * windows && cr.len() >= windows,
        "pooled row sizes"
    );
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if let (Some(r0), Some(r1), Some(yr)) = (as_f32(r0), as_f32(r1), as_f32_uninit(yr)) {
        done = sse::pool_rows_f32(r0, r1, yr, cr);
    }
    for j in done..windows {
        let (m, k) = window_max(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
        yr[j].write(m);
        // after ReLU, m <= 0 means 0: no gradient (NaN keeps its path)
        cr[j] = if m <= T::zero() { NO_GRADIENT } else { k };
    }
}

/// The gradient of a pair of rows from their pooled outputs' `codes` and `grads`: window j's
/// four positions (`top[2j], top[2j + 1] / bottom[2j], bottom[2j + 1]`) get `grads[j]` at its
/// code and zero elsewhere (zero at all four for [`NO_GRADIENT`]). Four windows at a time for f32
/// where AVX2 is there, as masks, which write the same bits.
#[inline]
fn unpool_rows<T: Real>(codes: &[u8], grads: &[T], top: &mut [T], bottom: &mut [T]) {
    let windows = codes.len();
    assert!(
        grads.len() == windows && top.len() >= 2 * windows && bottom.len() >= 2 * windows,
        "unpooled row sizes"
    );
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if let (Some(grads), Some(top), Some(bottom)) =
        (as_f32(grads), as_f32_mut(top), as_f32_mut(bottom))
    {
        done = sse::unpool_rows_f32(codes, grads, top, bottom);
    }
    for j in done..windows {
        let (code, g) = (codes[j], grads[j]);
        let at = |k: u8| T::select(code == k, g, T::zero());
        top[2 * j] = at(0);
        top[2 * j + 1] = at(1);
        bottom[2 * j] = at(2);
        bottom[2 * j + 1] = at(3);
    }
}

/// [`pool_rows`] for f32, four windows a step: the rows' pairs split into even and odd lanes
/// (one AVX2 permute), compared and selected as [`window_max`] does.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod sse {
    use super::NO_GRADIENT;
    use std::arch::x86_64::{
        __m128, __m128i, _CMP_GT_OQ, _CMP_LE_OQ, _mm_and_ps, _mm_and_si128, _mm_blendv_epi8,
        _mm_blendv_ps, _mm_castps_si128, _mm_castsi128_ps, _mm_cmp_ps, _mm_cmpeq_epi32,
        _mm_cvtepu8_epi32, _mm_cvtsi32_si128, _mm_cvtsi128_si32, _mm_loadu_ps, _mm_packs_epi32,
        _mm_packus_epi16, _mm_set1_epi32, _mm_setzero_ps, _mm_storeu_ps, _mm_unpackhi_ps,
        _mm_unpacklo_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_loadu_ps,
        _mm256_permutevar8x32_ps, _mm256_setr_epi32,
    };
    use std::mem::MaybeUninit;

    /// Windows per step.
    const STEP: usize = 4;

    /// The first maximum of each window and its code, four windows at a time while four remain;
    /// returns the windows done (a multiple of four, at most `yr.len()`).
    pub(super) fn pool_rows_f32(
        r0: &[f32],
        r1: &[f32],
        yr: &mut [MaybeUninit<f32>],
        cr: &mut [u8],
    ) -> usize {
        let steps = yr.len() / STEP;
        for s in 0..steps {
            let (a0, a1) = (
                &r0[2 * STEP * s..][..2 * STEP],
                &r1[2 * STEP * s..][..2 * STEP],
            );
            let (y, c) = (&mut yr[STEP * s..][..STEP], &mut cr[STEP * s..][..STEP]);
            // SAFETY: AVX2 is enabled for the whole program wherever this module is compiled
            // (the cfg above), so every instruction exists; the loads read 8 floats from a0 and
            // a1, which hold 8 (sliced above), and the store writes 4 floats to y, which holds 4.
            unsafe {
                let evens_then_odds = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
                let top = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a0.as_ptr()), evens_then_odds);
                let bottom =
                    _mm256_permutevar8x32_ps(_mm256_loadu_ps(a1.as_ptr()), evens_then_odds);
                let (a, b) = (_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
                let (cc, d) = (
                    _mm256_castps256_ps128(bottom),
                    _mm256_extractf128_ps(bottom, 1),
                );
                let (m, k) = first_max(a, b, cc, d);
                let none = _mm_castps_si128(_mm_cmp_ps(m, _mm_setzero_ps(), _CMP_LE_OQ));
                let code = _mm_blendv_epi8(k, _mm_set1_epi32(NO_GRADIENT as i32), none);
                _mm_storeu_ps(y.as_mut_ptr().cast::<f32>(), m);
                let words = _mm_packs_epi32(code, code);
                let bytes = _mm_packus_epi16(words, words);
                c.copy_from_slice(&_mm_cvtsi128_si32(bytes).to_le_bytes());
            }
        }
        steps * STEP
    }

    /// [`super::unpool_rows`] four windows a step while four remain; returns the windows done.
    pub(super) fn unpool_rows_f32(
        codes: &[u8],
        grads: &[f32],
        top: &mut [f32],
        bottom: &mut [f32],
    ) -> usize {
        let steps = codes.len() / STEP;
        for s in 0..steps {
            let code: [u8; STEP] = codes[STEP * s..][..STEP].try_into().expect("four codes");
            let g = &grads[STEP * s..][..STEP];
            let (t, b) = (
                &mut top[2 * STEP * s..][..2 * STEP],
                &mut bottom[2 * STEP * s..][..2 * STEP],
            );
            // SAFETY: AVX2 as in `pool_rows_f32`; the load reads 4 floats from g, which holds 4,
            // and the stores write 8 floats to each of t and b, which hold 8.
            unsafe {
                let code = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(i32::from_le_bytes(code)));
                let g = _mm_loadu_ps(g.as_ptr());
                let at = |k: i32| {
                    _mm_and_ps(
                        g,
                        _mm_castsi128_ps(_mm_cmpeq_epi32(code, _mm_set1_epi32(k))),
                    )
                };
                let (p0, p1, p2, p3) = (at(0), at(1), at(2), at(3));
                _mm_storeu_ps(t.as_mut_ptr(), _mm_unpacklo_ps(p0, p1));
                _mm_storeu_ps(t.as_mut_ptr().add(STEP), _mm_unpackhi_ps(p0, p1));
                _mm_storeu_ps(b.as_mut_ptr(), _mm_unpacklo_ps(p2, p3));
                _mm_storeu_ps(b.as_mut_ptr().add(STEP), _mm_unpackhi_ps(p2, p3));
            }
        }
        steps * STEP
    }

    /// [`super::window_max`] in four lanes: `b > a`, then `c >` and `d >` the maximum so far
    /// (ordered comparisons, false for NaN, as Rust's `>`), each taking the larger and its
    /// position.
    ///
    /// # Safety
    /// AVX2 must be available (it is wherever this module is compiled).
    #[inline(always)]
    unsafe fn first_max(a: __m128, b: __m128, c: __m128, d: __m128) -> (__m128, __m128i) {
        // SAFETY: AVX2 (which includes SSE4.1 and AVX) is there, the caller's contract.
        unsafe {
            let up = _mm_cmp_ps(b, a, _CMP_GT_OQ);
            let m = _mm_blendv_ps(a, b, up);
            let k = _mm_and_si128(_mm_castps_si128(up), _mm_set1_epi32(1));
            let up = _mm_cmp_ps(c, m, _CMP_GT_OQ);
            let m = _mm_blendv_ps(m, c, up);
            let k = _mm_blendv_epi8(k, _mm_set1_epi32(2), _mm_castps_si128(up));
            let up = _mm_cmp_ps(d, m, _CMP_GT_OQ);
            let m = _mm_blendv_ps(m, d, up);
            let k = _mm_blendv_epi8(k, _mm_set1_epi32(3), _mm_castps_si128(up));
            (m, k)
        }
    }
}

/// Forward: pooled (n, c_out, ho/2, wo/2) of ReLU(conv(x, w) + b), and each pooled output's
/// gradient code (0-3: position of the window's first maximum; [`NO_GRADIENT`]: maximum <= 0).
pub fn conv_relu_pool_forward<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    bias: &[T],
) -> (Vec<T>, Vec<u8>) {
    g.check(x, weight, Some(bias.len()));
    let (ho, wo) = (g.ho(), g.wo());
    let (hw, ckk) = (ho * wo, g.ckk());
    let (po, qo) = (ho / 2, wo / 2);
    let pooled = g.c_out * po * qo;
    let mut codes = vec![0u8; g.n * pooled];
    if pooled == 0 {
        return (Vec::new(), codes);
    }
    // Stride 1 (LeNet-5): a direct kernel, equal to im2col + gemm bit for bit.
    let direct = DirectConv::plan(g, weight);
    let scratch_len = if direct.is_some() {
        conv_lanes::scratch_len(g)
    } else {
        ckk * hw + IM2COL_SLACK
    };
    let write = |y: &mut [MaybeUninit<T>]| {
        y.par_chunks_mut(pooled)
            .zip(codes.par_chunks_mut(pooled))
            .enumerate()
            .for_each_init(
                || (vec![T::zero(); scratch_len], vec![T::zero(); g.c_out * hw]),
                |(scratch, conv), (b, (yb, cb))| {
                    let image = &x[b * g.in_size()..];
                    if let Some(plan) = &direct {
                        conv_lanes::conv_image(g, image, plan, scratch, conv);
                    } else {
                        im2col(g, image, scratch);
                        gemm_rm(
                            conv,
                            Accum::Replace,
                            MatRef::row_major(weight, g.c_out, ckk),
                            MatRef::row_major(scratch, ckk, hw),
                            Parallelism::None,
                        );
                    }
                    epilogue(conv, hw, Some(bias), true);
                    for ((plane, yp), cp) in conv
                        .chunks_exact(hw)
                        .zip(yb.chunks_exact_mut(po * qo))
                        .zip(cb.chunks_exact_mut(po * qo))
                    {
                        for i in 0..po {
                            let r0 = &plane[2 * i * wo..][..2 * qo];
                            let r1 = &plane[(2 * i + 1) * wo..][..2 * qo];
                            let (yr, cr) = (&mut yp[i * qo..][..qo], &mut cp[i * qo..][..qo]);
                            pool_rows(r0, r1, yr, cr);
                        }
                    }
                },
            );
    };
    // SAFETY: `write` initialises every element: y is cut into n chunks of pooled = c_out * po * qo
    // (zipped with codes' chunks of the same size), each cut into c_out planes of po * qo (zipped
    // with the c_out planes of the image's convolution output), and each plane's po rows of qo
    // outputs are all written.
    let y = unsafe { vec_written_by(g.n * pooled, write) };
    (y, codes)
}

/// Where [`conv_relu_pool_backward`]'s gradients sit in its flat vector: the input gradient when
/// `want_input`, then the weight and bias gradients when `want_params`.
pub fn conv_relu_pool_grad_layout(
    g: &ConvGeometry,
    want_input: bool,
    want_params: bool,
) -> GradLayout {
    g.grad_layout(Want {
        input: want_input,
        weight: want_params,
        bias: want_params,
    })
}

/// Backward: from the pooled gradient `dy` and the forward's codes, one flat vector holding the
/// input gradient (when `want_input`), then the weight and bias gradients (when `want_params`),
/// laid out by [`conv_relu_pool_grad_layout`].
pub fn conv_relu_pool_backward<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    codes: &[u8],
    dy: &[T],
    want_input: bool,
    want_params: bool,
) -> Vec<T> {
    g.check(x, weight, None);
    let (ho, wo) = (g.ho(), g.wo());
    let (hw, ckk) = (ho * wo, g.ckk());
    let (po, qo) = (ho / 2, wo / 2);
    let pooled = g.c_out * po * qo;
    assert!(
        codes.len() == g.n * pooled && dy.len() == codes.len(),
        "conv-relu-pool gradient sizes"
    );
    let parts = rayon::current_num_threads().clamp(1, g.n.max(1));
    let per = g.n.div_ceil(parts).max(1);
    let layout = conv_relu_pool_grad_layout(g, want_input, want_params);
    let [inputs, params, _] = layout.lens();
    let mut flat = vec![T::zero(); layout.total()];
    let [dx, dw_sum, db_sum] = layout.split_mut(&mut flat);
    let dx_parts: Vec<Option<&mut [T]>> = if inputs > 0 {
        dx.chunks_mut(per * g.in_size()).map(Some).collect()
    } else {
        (0..g.n.div_ceil(per)).map(|_| None).collect()
    };
    let partials: Vec<(Vec<T>, Vec<T>)> = dx_parts
        .into_par_iter()
        .enumerate()
        .map(|(p, mut dxp)| {
            let mut dw = vec![T::zero(); params];
            let mut db = vec![T::zero(); if want_params { g.c_out } else { 0 }];
            let mut cols = vec![T::zero(); ckk * hw + IM2COL_SLACK];
            let mut conv_grad = vec![T::zero(); g.c_out * hw];
            for b in p * per..((p + 1) * per).min(g.n) {
                // the convolution output's gradient: each pooled gradient back at its code, zero
                // elsewhere (the windows' other positions are written as zeros; a last odd row
                // or column, outside every window, by the fill)
                if 2 * po != ho || 2 * qo != wo {
                    conv_grad.fill(T::zero());
                }
                let (cb, gb) = (&codes[b * pooled..][..pooled], &dy[b * pooled..][..pooled]);
                for (c, plane) in conv_grad.chunks_exact_mut(hw).enumerate() {
                    for i in 0..po {
                        let at = (c * po + i) * qo;
                        let (top, bottom) = plane[2 * i * wo..][..2 * wo].split_at_mut(wo);
                        unpool_rows(&cb[at..][..qo], &gb[at..][..qo], top, bottom);
                    }
                }
                if want_params {
                    accumulate_weight_grad(
                        g,
                        &x[b * g.in_size()..],
                        &conv_grad,
                        &mut cols,
                        &mut dw,
                        Some(&mut db),
                    );
                }
                if let Some(dxp) = dxp.as_deref_mut() {
                    // cols = weight^T (ckk x c_out) * conv_grad (c_out x hw)
                    gemm_rm(
                        &mut cols,
                        Accum::Replace,
                        MatRef::row_major(weight, g.c_out, ckk).t(),
                        MatRef::row_major(&conv_grad, g.c_out, hw),
                        Parallelism::None,
                    );
                    let local = b - p * per;
                    col2im_add(g, &cols, &mut dxp[local * g.in_size()..][..g.in_size()]);
                }
            }
            (dw, db)
        })
        .collect();
    for (w2, b2) in partials {
        dw_sum.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
        db_sum.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of rectified values with ties, zeros of both signs, negatives (a NaN-free ReLU gives
    /// none, a NaN input does) and NaNs in every window position.
    fn awkward_rows(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                match (state >> 33) % 8 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::NAN,
                    3 => 0.5,
                    4 => -1.0,
                    _ => ((state >> 40) % 1000) as f32 / 997.0,
                }
            })
            .collect()
    }

    #[test]
    fn pooled_rows_equal_the_window_by_window_pooling_bit_for_bit() {
        for windows in [0, 1, 3, 4, 5, 8, 12, 13] {
            for seed in 0..200 {
                let r0 = awkward_rows(2 * windows, 2 * seed);
                let r1 = awkward_rows(2 * windows, 2 * seed + 1);
                let mut y = vec![MaybeUninit::new(7.0f32); windows];
                let mut codes = vec![9u8; windows];
                pool_rows(&r0, &r1, &mut y, &mut codes);
                for j in 0..windows {
                    let (m, k) = window_max(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
                    let code = if m <= 0.0 { NO_GRADIENT } else { k };
                    // SAFETY: every element was initialised (to 7.0) before the call.
                    let got = unsafe { y[j].assume_init() };
                    assert_eq!(
                        got.to_bits(),
                        m.to_bits(),
                        "{windows} windows, seed {seed}, j {j}"
                    );
                    assert_eq!(codes[j], code, "{windows} windows, seed {seed}, j {j}");
                }
            }
        }
    }

    #[test]
    fn unpooled_rows_hold_each_gradient_at_its_code_and_zeros_bit_for_bit() {
        for windows in [0, 1, 3, 4, 5, 8, 12, 13] {
            for seed in 0..50 {
                let grads = awkward_rows(windows, seed);
                let codes: Vec<u8> = (0..windows)
                    .map(|j| ((j as u64 * 7 + seed) % 5) as u8)
                    .collect();
                let (mut top, mut bottom) = (
                    vec![f32::NAN; 2 * windows + 3],
                    vec![7.0f32; 2 * windows + 3],
                );
                unpool_rows(&codes, &grads, &mut top, &mut bottom);
                for j in 0..windows {
                    for (k, got) in [top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]]
                        .into_iter()
                        .enumerate()
                    {
                        let want = if codes[j] == k as u8 { grads[j] } else { 0.0 };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{windows} windows, seed {seed}, j {j}, k {k}"
                        );
                    }
                }
                // past the windows: untouched
                assert!(top[2 * windows..].iter().all(|v| v.is_nan()));
                assert!(bottom[2 * windows..].iter().all(|&v| v == 7.0));
            }
        }
    }
}
