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
                            for j in 0..qo {
                                let (m, k) =
                                    window_max(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
                                yr[j].write(m);
                                // after ReLU, m <= 0 means 0: no gradient (NaN keeps its path)
                                cr[j] = if m <= T::zero() { NO_GRADIENT } else { k };
                            }
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
                // the convolution output's gradient: each pooled gradient back at its code
                conv_grad.fill(T::zero());
                let (cb, gb) = (&codes[b * pooled..][..pooled], &dy[b * pooled..][..pooled]);
                for (c, plane) in conv_grad.chunks_exact_mut(hw).enumerate() {
                    for i in 0..po {
                        for j in 0..qo {
                            let at = (c * po + i) * qo + j;
                            let code = cb[at];
                            if code < NO_GRADIENT {
                                let (di, dj) = ((code / 2) as usize, (code % 2) as usize);
                                plane[(2 * i + di) * wo + 2 * j + dj] = gb[at];
                            }
                        }
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
