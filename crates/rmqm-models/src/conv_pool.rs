//! Convolution + bias + ReLU + 2x2 max pooling as one op, LeNet's building block. Each image is
//! convolved, rectified and pooled while it sits in cache, so the full-size convolution output
//! never becomes a tensor: no 4.8 MB activation per LeNet batch to write, read back, mask and
//! accumulate gradients into. The forward records, per pooled output, where its gradient goes
//! (the window's first maximum, or nowhere when ReLU zeroed it); the backward rebuilds each
//! image's convolution-output gradient from those codes and computes only the gradients the graph
//! needs. Results equal `max_pool2x2(conv2d(x, w, b, relu))` exactly.

use crate::kernels::{
    ConvGeometry, IM2COL_SLACK, Real, accumulate_weight_grad, col2im_add, epilogue, gemm_rm,
    im2col, vec_written_by,
};
use crate::ops::slice;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

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
    let (ho, wo) = (g.ho(), g.wo());
    let (hw, ckk) = (ho * wo, g.ckk());
    let (po, qo) = (ho / 2, wo / 2);
    let pooled = g.c_out * po * qo;
    let mut codes = vec![0u8; g.n * pooled];
    if pooled == 0 {
        return (Vec::new(), codes);
    }
    let y = vec_written_by(g.n * pooled, |y| {
        y.par_chunks_mut(pooled)
            .zip(codes.par_chunks_mut(pooled))
            .enumerate()
            .for_each_init(
                || {
                    (
                        vec![T::zero(); ckk * hw + IM2COL_SLACK],
                        vec![T::zero(); g.c_out * hw],
                    )
                },
                |(cols, conv), (b, (yb, cb))| {
                    im2col(g, &x[b * g.in_size()..], cols);
                    gemm_rm(
                        g.c_out,
                        hw,
                        ckk,
                        conv,
                        false,
                        weight,
                        false,
                        cols,
                        false,
                        Parallelism::None,
                    );
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
    });
    (y, codes)
}

/// Backward: from the pooled gradient `dy` and the forward's codes, one flat vector holding the
/// input gradient (when `want_input`), then the weight and bias gradients (when `want_params`).
pub fn conv_relu_pool_backward<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    codes: &[u8],
    dy: &[T],
    want_input: bool,
    want_params: bool,
) -> Vec<T> {
    let (ho, wo) = (g.ho(), g.wo());
    let (hw, ckk) = (ho * wo, g.ckk());
    let (po, qo) = (ho / 2, wo / 2);
    let pooled = g.c_out * po * qo;
    let parts = rayon::current_num_threads().clamp(1, g.n.max(1));
    let per = g.n.div_ceil(parts).max(1);
    let inputs = if want_input { g.n * g.in_size() } else { 0 };
    let params = if want_params { g.c_out * ckk } else { 0 };
    let biases = if want_params { g.c_out } else { 0 };
    let mut flat = vec![T::zero(); inputs + params + biases];
    let (dx, tail) = flat.split_at_mut(inputs);
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
                    gemm_rm(
                        ckk,
                        hw,
                        g.c_out,
                        &mut cols,
                        false,
                        weight,
                        true,
                        &conv_grad,
                        false,
                        Parallelism::None,
                    );
                    let local = b - p * per;
                    col2im_add(g, &cols, &mut dxp[local * g.in_size()..][..g.in_size()]);
                }
            }
            (dw, db)
        })
        .collect();
    let (dw, db) = tail.split_at_mut(params);
    for (w2, b2) in partials {
        dw.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
    }
    flat
}

/// Convolution (with bias) + ReLU + 2x2 max pooling as one candle op: applied as
/// `x.apply_op3(weight, bias, op)`.
#[derive(Debug)]
pub struct ConvReluPoolOp {
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on both axes.
    pub padding: usize,
    codes: Mutex<Option<Arc<Vec<u8>>>>,
}

impl ConvReluPoolOp {
    /// The op for one application (it keeps that application's gradient codes).
    pub fn new(stride: usize, padding: usize) -> Self {
        ConvReluPoolOp {
            stride,
            padding,
            codes: Mutex::new(None),
        }
    }

    fn geometry(&self, x: &Layout, w: &Layout) -> Result<ConvGeometry> {
        crate::ops::conv_geometry(x, w, self.stride, self.padding)
    }
}

impl CustomOp3 for ConvReluPoolOp {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-relu-pool"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        fn run<T: Real>(
            g: &ConvGeometry,
            s: [(&CpuStorage, &Layout); 3],
        ) -> Result<(CpuStorage, Vec<u8>)> {
            let (y, codes) = conv_relu_pool_forward(
                g,
                slice::<T>(s[0].0, s[0].1, "conv-relu-pool input")?,
                slice::<T>(s[1].0, s[1].1, "conv-relu-pool weight")?,
                slice::<T>(s[2].0, s[2].1, "conv-relu-pool bias")?,
            );
            Ok((T::to_cpu_storage_owned(y), codes))
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        if l3.shape().elem_count() != g.c_out {
            bail!(
                "conv-relu-pool: bias has {} elements for {} channels",
                l3.shape().elem_count(),
                g.c_out
            );
        }
        let (out, codes) = match s1.dtype() {
            DType::F32 => run::<f32>(&g, s)?,
            DType::F64 => run::<f64>(&g, s)?,
            d => bail!("conv-relu-pool: unsupported dtype {d:?}"),
        };
        *self.codes.lock().expect("codes lock") = Some(Arc::new(codes));
        Ok((out, Shape::from((g.n, g.c_out, g.ho() / 2, g.wo() / 2))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.layout(), w.layout())?;
        let codes = match self.codes.lock().expect("codes lock").clone() {
            Some(c) => c,
            None => bail!("conv-relu-pool: backward before forward"),
        };
        let want_input = x.track_op();
        let want_params = w.track_op() || b.track_op();
        if !want_input && !want_params {
            return Ok((None, None, None));
        }
        let op = ConvReluPoolGrad {
            g,
            codes,
            want_input,
            want_params,
        };
        let flat = x
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &grad.contiguous()?, &op)?;
        let (inputs, weights) = (
            if want_input { g.n * g.in_size() } else { 0 },
            g.c_out * g.ckk(),
        );
        let dx = if want_input {
            Some(flat.narrow(0, 0, inputs)?.reshape(x.shape())?)
        } else {
            None
        };
        let (dw, db) = if want_params {
            (
                w.track_op()
                    .then(|| flat.narrow(0, inputs, weights)?.reshape(w.shape()))
                    .transpose()?,
                b.track_op()
                    .then(|| flat.narrow(0, inputs + weights, g.c_out))
                    .transpose()?,
            )
        } else {
            (None, None)
        };
        Ok((dx, dw, db))
    }
}

/// Gradients of [`ConvReluPoolOp`] as one flat tensor [input | weight | bias] (the parts asked
/// for): applied as `x.apply_op3_no_bwd(weight, pooled_grad)`.
struct ConvReluPoolGrad {
    g: ConvGeometry,
    codes: Arc<Vec<u8>>,
    want_input: bool,
    want_params: bool,
}

impl CustomOp3 for ConvReluPoolGrad {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-relu-pool-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(op: &ConvReluPoolGrad, s: [(&CpuStorage, &Layout); 3]) -> Result<Vec<T>> {
            Ok(conv_relu_pool_backward(
                &op.g,
                slice::<T>(s[0].0, s[0].1, "conv-relu-pool input")?,
                slice::<T>(s[1].0, s[1].1, "conv-relu-pool weight")?,
                &op.codes,
                slice::<T>(s[2].0, s[2].1, "conv-relu-pool gradient")?,
                op.want_input,
                op.want_params,
            ))
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(run::<f32>(self, s)?),
            DType::F64 => f64::to_cpu_storage_owned(run::<f64>(self, s)?),
            d => bail!("conv-relu-pool: unsupported dtype {d:?}"),
        };
        let g = &self.g;
        let len = if self.want_input {
            g.n * g.in_size()
        } else {
            0
        } + if self.want_params {
            g.c_out * (g.ckk() + 1)
        } else {
            0
        };
        Ok((out, Shape::from(len)))
    }
}
