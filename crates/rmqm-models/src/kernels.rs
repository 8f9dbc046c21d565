//! Plain CPU kernels behind the custom ops: convolution as im2col + gemm (forward, input gradient,
//! weight gradient), 2x2 max pooling with a first-maximum gradient, and dense layers. Generic over
//! f32 (training, inference) and f64 (gradient checks). Work is split over images across cores;
//! each gemm inside runs on one core.

use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Element types the kernels run on.
pub trait Real:
    candle_core::WithDType
    + Default
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Mul<Output = Self>
    + Send
    + Sync
{
    /// `if take_a { a } else { b }` computed with bit masks, so that the compiler emits no branch
    /// (for choices as unpredictable as the winner of a pooling window).
    fn select(take_a: bool, a: Self, b: Self) -> Self;
}
impl Real for f32 {
    #[inline(always)]
    fn select(take_a: bool, a: f32, b: f32) -> f32 {
        let mask = (take_a as u32).wrapping_neg();
        f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
}
impl Real for f64 {
    #[inline(always)]
    fn select(take_a: bool, a: f64, b: f64) -> f64 {
        let mask = (take_a as u64).wrapping_neg();
        f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
}

/// A vector of `n` elements that `write` fills completely before anything reads them; skips
/// zeroing memory that is about to be overwritten (a measurable share of small-model time).
pub(crate) fn vec_written_by<T: Real>(
    n: usize,
    write: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    vec_written_by_reserving(n, 0, write)
}

/// [`vec_written_by`] with room for `extra` more elements (appended later without a reallocation).
pub(crate) fn vec_written_by_reserving<T: Real>(
    n: usize,
    extra: usize,
    write: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    let mut v = Vec::with_capacity(n + extra);
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `write` initialises all n elements (each kernel is tested against a
    // plain implementation on odd shapes).
    unsafe { v.set_len(n) };
    v
}

/// `dst (m x n) = op(a) (m x k) * op(b) (k x n)` into uninitialised memory, returned initialised;
/// arguments as [`gemm_rm`], one core.
#[allow(clippy::too_many_arguments)]
fn gemm_rm_uninit<'a, T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &'a mut [MaybeUninit<T>],
    a: &[T],
    a_t: bool,
    b: &[T],
    b_t: bool,
) -> &'a mut [T] {
    let dst = &mut dst[..m * n];
    if k == 0 || m == 0 || n == 0 {
        dst.iter_mut().for_each(|v| {
            v.write(T::zero());
        });
    } else {
        assert!(a.len() >= m * k && b.len() >= k * n, "gemm operand sizes");
        // SAFETY: dst holds m * n elements (sliced above), a and b were checked; with
        // accumulate = false the gemm writes every destination element without reading it.
        unsafe {
            gemm_ptr(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<T>(),
                false,
                a,
                a_t,
                b,
                b_t,
                Parallelism::None,
            )
        };
    }
    // SAFETY: every element was written above; MaybeUninit<T> has T's layout.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<T>(), m * n) }
}

/// `dst (m x n) = [dst +] op(a) (m x k) * op(b) (k x n)`, row-major; `a_t` means `a` is stored k x m,
/// `b_t` means `b` is stored n x k.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    a: &[T],
    a_t: bool,
    b: &[T],
    b_t: bool,
    parallelism: Parallelism,
) {
    assert!(
        dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "gemm operand sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|v| *v = T::zero());
        }
        return;
    }
    // SAFETY: sizes checked above.
    unsafe {
        gemm_ptr(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            accumulate,
            a,
            a_t,
            b,
            b_t,
            parallelism,
        )
    };
}

/// The gemm call behind [`gemm_rm`].
///
/// # Safety
/// `dst` must be valid for m * n writes (and reads when `accumulate`), `a` hold m * k and `b`
/// k * n elements, and m, n, k be positive.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_ptr<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    accumulate: bool,
    a: &[T],
    a_t: bool,
    b: &[T],
    b_t: bool,
    parallelism: Parallelism,
) {
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the strides describe in-bounds views of the operands (the caller's contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Geometry of a 2-D convolution (NCHW input, OIHW weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub padding: usize,
}

impl ConvGeometry {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.padding - self.kh) / self.stride + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.padding - self.kw) / self.stride + 1
    }
    /// Rows of the im2col matrix: c_in * kh * kw.
    pub fn ckk(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    pub(crate) fn in_size(&self) -> usize {
        self.c_in * self.h * self.w
    }
    pub(crate) fn out_size(&self) -> usize {
        self.c_out * self.ho() * self.wo()
    }
}

/// The output columns `lo..hi` of a row whose input column `oj * stride + kj - padding` lies inside
/// `0..w`; the others read zero padding.
fn valid_columns(g: &ConvGeometry, kj: usize, wo: usize) -> (usize, usize) {
    let s = g.stride;
    // first oj with oj * s + kj >= p, and first oj with oj * s + kj >= w + p
    let lo = g.padding.saturating_sub(kj).div_ceil(s).min(wo);
    let hi = (g.w + g.padding)
        .saturating_sub(kj)
        .div_ceil(s)
        .clamp(lo, wo);
    (lo, hi)
}

/// Elements `im2col` may write past the end of `cols`: give it `ckk * ho * wo + IM2COL_SLACK`.
pub const IM2COL_SLACK: usize = 16;

/// Unfolds one image (c_in, h, w) at the start of `x` into `cols` (c_in*kh*kw, ho*wo). Elements
/// after the image (the batch's next images) may be read but are not used: fixed-size copies run
/// past the end of a row segment and need something readable there.
pub fn im2col<T: Real>(g: &ConvGeometry, x: &[T], cols: &mut [T]) {
    let (ho, wo) = (g.ho(), g.wo());
    let hw = ho * wo;
    assert!(
        x.len() >= g.in_size() && cols.len() >= g.ckk() * hw,
        "im2col operand sizes"
    );
    let (s, p) = (g.stride, g.padding);
    let plane_size = g.h * g.w;
    for ci in 0..g.c_in {
        for ki in 0..g.kh {
            // output rows whose input row oi * s + ki - p lies inside the image
            let oi_lo = p.saturating_sub(ki).div_ceil(s).min(ho);
            let oi_hi = (g.h + p).saturating_sub(ki).div_ceil(s).clamp(oi_lo, ho);
            for kj in 0..g.kw {
                let row_start = ((ci * g.kh + ki) * g.kw + kj) * hw;
                let row = row_start..row_start + hw;
                let (lo, hi) = valid_columns(g, kj, wo);
                if lo == hi || oi_lo == oi_hi {
                    cols[row].fill(T::zero());
                    continue;
                }
                let src0 = ci * plane_size + (oi_lo * s + ki - p) * g.w + lo * s + kj - p;
                let dst0 = row_start + oi_lo * wo + lo;
                let (rows, len) = (oi_hi - oi_lo, hi - lo);
                // one zmm register of f32 per chunk: most LeNet segments are one or two chunks
                const CHUNK: usize = 16;
                let chunks = len.div_ceil(CHUNK);
                // Segments whose fixed-size chunks stay inside x and cols (all but the last
                // one or two, near the end of the image).
                let fits = |end: usize, len: usize, stride: usize| {
                    if end > len {
                        0
                    } else {
                        ((len - end) / stride + 1).min(rows)
                    }
                };
                // Padding columns of fast segments are zeroed by one chunk store at each end
                // when they are at most a chunk wide.
                let pad_by_chunks = lo <= CHUNK && wo - hi <= CHUNK;
                let dst_end = if pad_by_chunks {
                    (chunks * CHUNK).max(len + CHUNK)
                } else {
                    chunks * CHUNK
                };
                let fast = if s == 1 {
                    fits(src0 + chunks * CHUNK, x.len(), g.w).min(fits(
                        dst0 + dst_end,
                        cols.len(),
                        wo,
                    ))
                } else {
                    0
                };
                if fast > 0 {
                    // Fixed chunks may run past a segment into later positions, all written
                    // afterwards in order: the segment's own right padding, then the next
                    // segments, rows and the fills below.
                    // SAFETY: segment r < fast reads src0 + r * w .. + chunks * CHUNK <= x.len()
                    // and writes from dst0 + r * wo - lo (>= row_start) to
                    // dst0 + r * wo + dst_end <= cols.len() (checked by `fits`); x and cols do
                    // not overlap (one is borrowed shared, the other exclusively).
                    unsafe {
                        let (src, dst) = (x.as_ptr().add(src0), cols.as_mut_ptr().add(dst0));
                        let zeros = [T::zero(); CHUNK];
                        // One or two chunks written out (a loop of them becomes a memcpy call
                        // per segment, which costs more than the copy).
                        let copy =
                            |sr: *const T, dr: *mut T| std::ptr::copy_nonoverlapping(sr, dr, CHUNK);
                        for r in 0..fast {
                            let (sr, dr) = (src.add(r * g.w), dst.add(r * wo));
                            if pad_by_chunks && lo > 0 {
                                copy(zeros.as_ptr(), dr.sub(lo));
                            }
                            match chunks {
                                1 => copy(sr, dr),
                                2 => {
                                    copy(sr, dr);
                                    copy(sr.add(CHUNK), dr.add(CHUNK));
                                }
                                _ => std::ptr::copy_nonoverlapping(sr, dr, chunks * CHUNK),
                            }
                            if pad_by_chunks && hi < wo {
                                copy(zeros.as_ptr(), dr.add(len));
                            }
                        }
                    }
                }
                for r in fast..rows {
                    let (sr, dr) = (src0 + r * s * g.w, dst0 + r * wo);
                    if s == 1 {
                        cols[dr..dr + len].copy_from_slice(&x[sr..sr + len]);
                    } else {
                        for (o, &v) in cols[dr..dr + len].iter_mut().zip(x[sr..].iter().step_by(s))
                        {
                            *o = v;
                        }
                    }
                }
                cols[row_start..row_start + oi_lo * wo].fill(T::zero());
                if lo > 0 || hi < wo {
                    // the padding columns of the segments not padded by chunk stores above
                    let first_unpadded = if pad_by_chunks { oi_lo + fast } else { oi_lo };
                    for oi in first_unpadded..oi_hi {
                        let seg = row_start + oi * wo;
                        cols[seg..seg + lo].fill(T::zero());
                        cols[seg + hi..seg + wo].fill(T::zero());
                    }
                }
                cols[row_start + oi_hi * wo..row_start + hw].fill(T::zero());
            }
        }
    }
}

/// Folds `cols` (c_in*kh*kw, ho*wo) back onto one image, adding into `x` (c_in, h, w).
pub fn col2im_add<T: Real>(g: &ConvGeometry, cols: &[T], x: &mut [T]) {
    let (ho, wo) = (g.ho(), g.wo());
    let hw = ho * wo;
    let (s, p) = (g.stride, g.padding);
    for ci in 0..g.c_in {
        let plane = &mut x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &cols[((ci * g.kh + ki) * g.kw + kj) * hw..][..hw];
                let (lo, hi) = valid_columns(g, kj, wo);
                for (oi, src) in row.chunks_exact(wo).enumerate() {
                    let ii = (oi * s + ki).wrapping_sub(p);
                    if ii >= g.h || lo == hi {
                        continue;
                    }
                    let dst = &mut plane[ii * g.w..(ii + 1) * g.w];
                    let first = lo * s + kj - p;
                    if s == 1 {
                        for (d, &v) in dst[first..first + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (d, &v) in dst[first..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// Convolution forward: `y (n, c_out, ho, wo) = conv(x, weight) [+ bias]`, then ReLU if `relu`.
pub fn conv2d_forward<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
    vec_written_by(g.n * g.out_size(), |y| {
        y.par_chunks_mut(g.out_size()).enumerate().for_each_init(
            || {
                if direct {
                    Vec::new()
                } else {
                    vec![T::zero(); ckk * hw + IM2COL_SLACK]
                }
            },
            |cols, (b, yb)| {
                // the image and everything after it (im2col may read past the image)
                let xb = &x[b * g.in_size()..];
                let src: &[T] = if direct {
                    xb
                } else {
                    im2col(g, xb, cols);
                    cols
                };
                let yb = gemm_rm_uninit(g.c_out, hw, ckk, yb, weight, false, src, false);
                epilogue(yb, hw, bias, relu);
            },
        );
    })
}

/// Adds the per-channel bias and applies ReLU, in place on (channels, hw).
pub(crate) fn epilogue<T: Real>(y: &mut [T], hw: usize, bias: Option<&[T]>, relu: bool) {
    if bias.is_none() && !relu {
        return;
    }
    for (c, plane) in y.chunks_exact_mut(hw).enumerate() {
        let b = bias.map_or(T::zero(), |b| b[c]);
        for v in plane.iter_mut() {
            let z = *v + b;
            *v = if relu && z <= T::zero() { T::zero() } else { z };
        }
    }
}

/// Gradient of the convolution with respect to its input: `dx (n, c_in, h, w)` from `dy`.
pub fn conv2d_input_grad<T: Real>(g: &ConvGeometry, dy: &[T], weight: &[T]) -> Vec<T> {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let mut dx = vec![T::zero(); g.n * g.in_size()];
    let direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
    dx.par_chunks_mut(g.in_size())
        .zip(dy.par_chunks(g.out_size()))
        .for_each_init(
            || {
                if direct {
                    Vec::new()
                } else {
                    vec![T::zero(); ckk * hw + IM2COL_SLACK]
                }
            },
            |cols, (dxb, dyb)| {
                if direct {
                    gemm_rm(
                        ckk,
                        hw,
                        g.c_out,
                        dxb,
                        false,
                        weight,
                        true,
                        dyb,
                        false,
                        Parallelism::None,
                    );
                } else {
                    gemm_rm(
                        ckk,
                        hw,
                        g.c_out,
                        cols,
                        false,
                        weight,
                        true,
                        dyb,
                        false,
                        Parallelism::None,
                    );
                    col2im_add(g, cols, dxb);
                }
            },
        );
    dx
}

/// Gradient of the convolution with respect to its weight (c_out, c_in, kh, kw) and bias (c_out).
pub fn conv2d_weight_grad<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    want_bias: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let parts = rayon::current_num_threads().clamp(1, g.n.max(1));
    let per = g.n.div_ceil(parts);
    let direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
    let partials: Vec<(Vec<T>, Vec<T>)> = (0..g.n.div_ceil(per.max(1)))
        .into_par_iter()
        .map(|p| {
            let mut dw = vec![T::zero(); g.c_out * ckk];
            let mut db = vec![T::zero(); if want_bias { g.c_out } else { 0 }];
            let mut cols = if direct {
                Vec::new()
            } else {
                vec![T::zero(); ckk * hw + IM2COL_SLACK]
            };
            for b in p * per..((p + 1) * per).min(g.n) {
                let dyb = &dy[b * g.out_size()..(b + 1) * g.out_size()];
                let db = if want_bias { Some(&mut db[..]) } else { None };
                accumulate_weight_grad(g, &x[b * g.in_size()..], dyb, &mut cols, &mut dw, db);
            }
            (dw, db)
        })
        .collect();
    let mut iter = partials.into_iter();
    let (mut dw, mut db) = iter
        .next()
        .unwrap_or_else(|| (vec![T::zero(); g.c_out * ckk], vec![T::zero(); g.c_out]));
    for (w2, b2) in iter {
        dw.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
    }
    (dw, if want_bias { Some(db) } else { None })
}

/// Adds one image's weight gradient `dy (c_out, hw) x im2col(x)^T` into `dw` and, if given, the
/// per-channel sums of `dy` into `db`; `x` starts with the image (see [`im2col`]), `cols` is the
/// im2col buffer (unused for a direct 1x1 convolution).
pub fn accumulate_weight_grad<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    cols: &mut [T],
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
    let src: &[T] = if direct {
        x
    } else {
        im2col(g, x, cols);
        cols
    };
    gemm_rm(
        g.c_out,
        ckk,
        hw,
        dw,
        true,
        dy,
        false,
        src,
        true,
        Parallelism::None,
    );
    if let Some(db) = db {
        for (s, plane) in db.iter_mut().zip(dy.chunks_exact(hw)) {
            for &v in plane {
                *s += v;
            }
        }
    }
}

/// 2x2 max pooling with stride 2 (floor) on (planes, h, w); returns (planes, h/2, w/2).
pub fn max_pool2x2_forward<T: Real>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (ho, wo) = (h / 2, w / 2);
    if ho == 0 || wo == 0 {
        return Vec::new();
    }
    vec_written_by(planes * ho * wo, |y| {
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(yp, xp)| {
                for (i, yr) in yp.chunks_exact_mut(wo).enumerate() {
                    let r0 = &xp[2 * i * w..][..2 * wo];
                    let r1 = &xp[(2 * i + 1) * w..][..2 * wo];
                    for ((o, a), b) in yr
                        .iter_mut()
                        .zip(r0.chunks_exact(2))
                        .zip(r1.chunks_exact(2))
                    {
                        let mut m = a[0];
                        for v in [a[1], b[0], b[1]] {
                            if v > m {
                                m = v;
                            }
                        }
                        o.write(m);
                    }
                }
            });
    })
}

/// Gradient of 2x2 max pooling: each output's gradient goes to the first maximum of its window
/// (row-major order), as PyTorch's CPU kernel does. The window's winner is found with selects
/// rather than branches (random data mispredicts every other branch).
pub fn max_pool2x2_backward<T: Real>(
    x: &[T],
    dy: &[T],
    planes: usize,
    h: usize,
    w: usize,
) -> Vec<T> {
    let (ho, wo) = (h / 2, w / 2);
    if ho == 0 || wo == 0 {
        return vec![T::zero(); planes * h * w];
    }
    let zero = T::zero();
    vec_written_by(planes * h * w, |dx| {
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(dy.par_chunks(ho * wo))
            .for_each(|((dxp, xp), dyp)| {
                for i in 0..ho {
                    let gr = &dyp[i * wo..(i + 1) * wo];
                    let r0 = &xp[2 * i * w..][..2 * wo];
                    let r1 = &xp[(2 * i + 1) * w..][..2 * wo];
                    let (top, bottom) = dxp[2 * i * w..].split_at_mut(w);
                    let bottom = &mut bottom[..w];
                    if w % 2 == 1 {
                        top[w - 1].write(zero);
                        bottom[w - 1].write(zero);
                    }
                    let (top, bottom) = (&mut top[..2 * wo], &mut bottom[..2 * wo]);
                    for j in 0..wo {
                        let g = gr[j];
                        let (a, b) = (r0[2 * j], r0[2 * j + 1]);
                        let (c, d) = (r1[2 * j], r1[2 * j + 1]);
                        // the running maximum and its position, as the forward compares
                        let up = b > a;
                        let (m, k) = (T::select(up, b, a), up as u8);
                        let up = c > m;
                        let (m, k) = (T::select(up, c, m), k + up as u8 * (2 - k));
                        let up = d > m;
                        let k = k + up as u8 * (3 - k);
                        top[2 * j].write(T::select(k == 0, g, zero));
                        top[2 * j + 1].write(T::select(k == 1, g, zero));
                        bottom[2 * j].write(T::select(k == 2, g, zero));
                        bottom[2 * j + 1].write(T::select(k == 3, g, zero));
                    }
                }
                // a last row that no window covers (odd height)
                dxp[2 * ho * w..].iter_mut().for_each(|v| {
                    v.write(zero);
                });
            });
    })
}

/// Dense layer forward: `y (n, out) = x (n, in) * w^T + b`, ReLU if `relu`.
pub fn linear_forward<T: Real>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    n: usize,
    d_in: usize,
    d_out: usize,
    relu: bool,
) -> Vec<T> {
    let mut y = vec![T::zero(); n * d_out];
    gemm_rm(
        n,
        d_out,
        d_in,
        &mut y,
        false,
        x,
        false,
        w,
        true,
        parallelism(n * d_in * d_out),
    );
    if b.is_some() || relu {
        y.par_chunks_mut(d_out).for_each(|row| {
            for (k, v) in row.iter_mut().enumerate() {
                let z = *v + b.map_or(T::zero(), |b| b[k]);
                *v = if relu && z <= T::zero() { T::zero() } else { z };
            }
        });
    }
    y
}

/// Dense layer gradients as one flat vector [dx = dy w | dw = dy^T x | db = column sums of dy],
/// each part only if asked in `want`.
pub fn linear_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    n: usize,
    d_in: usize,
    d_out: usize,
    want: (bool, bool, bool),
) -> Vec<T> {
    let par = parallelism(n * d_in * d_out);
    let sizes = [
        if want.0 { n * d_in } else { 0 },
        if want.1 { d_out * d_in } else { 0 },
        if want.2 { d_out } else { 0 },
    ];
    let mut flat = vec![T::zero(); sizes.iter().sum()];
    let (dx, rest) = flat.split_at_mut(sizes[0]);
    let (dw, db) = rest.split_at_mut(sizes[1]);
    if want.0 {
        gemm_rm(n, d_in, d_out, dx, false, dy, false, w, false, par);
    }
    if want.1 {
        gemm_rm(d_out, d_in, n, dw, false, dy, true, x, false, par);
    }
    if want.2 {
        for row in dy.chunks_exact(d_out) {
            for (a, &b) in db.iter_mut().zip(row) {
                *a += b;
            }
        }
    }
    flat
}

/// Multi-threaded gemm only when the product is large enough to pay for it.
fn parallelism(flops: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if flops >= 1 << 18 && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Multiplies `dy` by the ReLU mask of the forward result `y` (1 where y > 0); a NaN in `y` passes
/// its gradient on, so a NaN reaches the parameters and the loss check instead of hiding as zero.
pub fn relu_mask<T: Real>(dy: &[T], y: &[T]) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    vec_written_by(dy.len(), |out| {
        out.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(oc, (gc, yc))| {
                for ((o, &g), &v) in oc.iter_mut().zip(gc).zip(yc) {
                    o.write(if v <= T::zero() { T::zero() } else { g });
                }
            });
    })
}

/// `relu(a + b)` elementwise (ResNet's residual join), split over cores.
pub fn add_relu<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "add_relu operand sizes");
    const CHUNK: usize = 1 << 14;
    vec_written_by(a.len(), |y| {
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(yc, (ac, bc))| {
                for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                    let z = u + v;
                    o.write(if z <= T::zero() { T::zero() } else { z });
                }
            });
    })
}

/// Per-channel mean and biased variance of an NCHW tensor (as f64), channels in parallel.
pub fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0.0f64, 0.0f64);
            for b in 0..n {
                for &v in &x[(b * c + ch) * hw..][..hw] {
                    let v = v.to_f64();
                    s += v;
                    s2 += v * v;
                }
            }
            let mean = s / m;
            (mean, (s2 / m - mean * mean).max(0.0))
        })
        .unzip()
}

/// What a training-mode batch-norm forward used: kept for its backward (no second pass for the
/// statistics) and for the layer's running statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormState {
    /// Per-channel batch mean.
    pub mean: Vec<f64>,
    /// Per-channel biased batch variance.
    pub var: Vec<f64>,
    /// 1 / sqrt(var + eps).
    pub inv_sigma: Vec<f64>,
    /// gamma / sqrt(var + eps), before rounding to the element type.
    pub scale: Vec<f64>,
    /// beta - mean * scale (scale rounded to the element type), before rounding.
    pub shift: Vec<f64>,
}

impl BatchNormState {
    /// The per-channel scale and shift in the element type, exactly as the forward applied them.
    fn affine<T: Real>(&self) -> (Vec<T>, Vec<T>) {
        (
            self.scale.iter().map(|&v| T::from_f64(v)).collect(),
            self.shift.iter().map(|&v| T::from_f64(v)).collect(),
        )
    }
}

/// Batch-norm forward in training mode: y = gamma (x - mean) / sqrt(var + eps) + beta with the
/// batch's per-channel statistics, then ReLU if `relu`; returns y and what it used.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
    relu: bool,
) -> (Vec<T>, BatchNormState) {
    let (mean, var) = channel_stats(x, n, c, hw);
    let inv_sigma: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f64> = (0..c)
        .map(|k| gamma[k].to_f64() / (var[k] + eps).sqrt())
        .collect();
    let shift: Vec<f64> = (0..c)
        .map(|k| beta[k].to_f64() - mean[k] * T::from_f64(scale[k]).to_f64())
        .collect();
    let state = BatchNormState {
        mean,
        var,
        inv_sigma,
        scale,
        shift,
    };
    let (scale_t, shift_t) = state.affine::<T>();
    (channel_affine(x, &scale_t, &shift_t, c, hw, relu), state)
}

/// y = x * scale[c] + shift[c] per channel of an NCHW tensor, then ReLU if `relu`.
pub fn channel_affine<T: Real>(
    x: &[T],
    scale: &[T],
    shift: &[T],
    c: usize,
    hw: usize,
    relu: bool,
) -> Vec<T> {
    if hw == 0 || c == 0 {
        return x.to_vec();
    }
    vec_written_by(x.len(), |y| {
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let (a, b) = (scale[i % c], shift[i % c]);
                for (o, &v) in yp.iter_mut().zip(xp) {
                    let z = v * a + b;
                    o.write(if relu && z <= T::zero() { T::zero() } else { z });
                }
            });
    })
}

/// Per-channel sums of `g` and of `g * x` over an NCHW tensor; with `mask` = (scale, shift),
/// `g` counts only where `x * scale + shift` (the pre-ReLU output) is not <= 0.
pub fn channel_sums<T: Real>(
    g: &[T],
    x: &[T],
    n: usize,
    c: usize,
    hw: usize,
    mask: Option<(&[T], &[T])>,
) -> (Vec<f64>, Vec<f64>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            let (a, b) = mask.map_or((T::zero(), T::zero()), |(s, t)| (s[ch], t[ch]));
            for i in 0..n {
                let off = (i * c + ch) * hw;
                for (&gv, &xv) in g[off..off + hw].iter().zip(&x[off..off + hw]) {
                    let gv = if mask.is_some() && xv * a + b <= T::zero() {
                        0.0
                    } else {
                        gv.to_f64()
                    };
                    sg += gv;
                    sgx += gv * xv.to_f64();
                }
            }
            (sg, sgx)
        })
        .unzip()
}

/// Batch-norm backward in training mode from the forward's `state`: one flat vector
/// [dx | dgamma | dbeta] holding the parts asked for in `want`; with `relu`, the gradient first
/// passes ReLU's mask (recomputed from x exactly as the forward computed it).
/// dx = gamma / sigma * (g - mean(g) - xhat * mean(g * xhat)); dgamma = sum(g * xhat); dbeta = sum(g).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Real>(
    x: &[T],
    g: &[T],
    state: &BatchNormState,
    n: usize,
    c: usize,
    hw: usize,
    relu: bool,
    want: (bool, bool, bool),
) -> Vec<T> {
    let (scale_t, shift_t) = state.affine::<T>();
    let mask = relu.then_some((scale_t.as_slice(), shift_t.as_slice()));
    let (sg, sgx) = channel_sums(g, x, n, c, hw, mask);
    let (mean, inv_sigma) = (&state.mean, &state.inv_sigma);
    let m = (n * hw) as f64;
    // sum(g * xhat) = (sum(g x) - mean sum(g)) / sigma
    let sgxhat: Vec<f64> = (0..c)
        .map(|k| (sgx[k] - mean[k] * sg[k]) * inv_sigma[k])
        .collect();
    let params = if want.1 { c } else { 0 } + if want.2 { c } else { 0 };
    let mut flat = if !want.0 {
        Vec::with_capacity(params)
    } else if hw == 0 || c == 0 {
        vec![T::zero(); x.len()]
    } else {
        vec_written_by_reserving(x.len(), params, |dx| {
            dx.par_chunks_mut(hw)
                .zip(x.par_chunks(hw))
                .zip(g.par_chunks(hw))
                .enumerate()
                .for_each(|(i, ((dp, xp), gp))| {
                    let k = i % c;
                    let a = state.scale[k];
                    let (mg, mgx) = (sg[k] / m, sgxhat[k] / m);
                    let (sa, sb) = (scale_t[k], shift_t[k]);
                    for ((d, &xv), &gv) in dp.iter_mut().zip(xp).zip(gp) {
                        let gv = if relu && xv * sa + sb <= T::zero() {
                            0.0
                        } else {
                            gv.to_f64()
                        };
                        let xhat = (xv.to_f64() - mean[k]) * inv_sigma[k];
                        d.write(T::from_f64(a * (gv - mg - xhat * mgx)));
                    }
                });
        })
    };
    if want.1 {
        flat.extend(sgxhat.iter().map(|&v| T::from_f64(v)));
    }
    if want.2 {
        flat.extend(sg.iter().map(|&v| T::from_f64(v)));
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution by definition.
    fn naive(g: &ConvGeometry, x: &[f64], w: &[f64]) -> Vec<f64> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut y = vec![0.0; g.n * g.c_out * ho * wo];
        for b in 0..g.n {
            for o in 0..g.c_out {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut s = 0.0;
                        for c in 0..g.c_in {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let ii = (i * g.stride + ki) as isize - g.padding as isize;
                                    let jj = (j * g.stride + kj) as isize - g.padding as isize;
                                    if ii >= 0
                                        && jj >= 0
                                        && (ii as usize) < g.h
                                        && (jj as usize) < g.w
                                    {
                                        s += x[((b * g.c_in + c) * g.h + ii as usize) * g.w
                                            + jj as usize]
                                            * w[((o * g.c_in + c) * g.kh + ki) * g.kw + kj];
                                    }
                                }
                            }
                        }
                        y[((b * g.c_out + o) * ho + i) * wo + j] = s;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn gradients_match_the_forward_by_linearity() {
        // <dy, conv(x, w)> = <dW, w> = <dX, x>: checks both gradients on 40 images at once.
        let g = ConvGeometry {
            n: 40,
            c_in: 16,
            h: 20,
            w: 20,
            c_out: 5,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let x: Vec<f64> = (0..g.n * g.in_size())
            .map(|i| ((i * 37 % 17) as f64 - 8.0) / 7.0)
            .collect();
        let w: Vec<f64> = (0..g.c_out * g.ckk())
            .map(|i| ((i * 11 % 13) as f64 - 6.0) / 5.0)
            .collect();
        let dy: Vec<f64> = (0..g.n * g.out_size())
            .map(|i| ((i * 5 % 19) as f64 - 9.0) / 4.0)
            .collect();
        let y = conv2d_forward(&g, &x, &w, None, false);
        assert!(
            y.iter()
                .zip(&naive(&g, &x, &w))
                .all(|(a, b)| (a - b).abs() < 1e-9)
        );
        let (dw, db) = conv2d_weight_grad(&g, &x, &dy, true);
        let dx = conv2d_input_grad(&g, &dy, &w);
        let inner = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let total = inner(&dy, &y);
        assert!((inner(&dw, &w) - total).abs() < 1e-6 * total.abs().max(1.0));
        assert!((inner(&dx, &x) - total).abs() < 1e-6 * total.abs().max(1.0));
        let hw = g.ho() * g.wo();
        let db0: f64 = (0..g.n)
            .map(|b| dy[b * g.out_size()..][..hw].iter().sum::<f64>())
            .sum();
        assert!((db.unwrap()[0] - db0).abs() < 1e-9);
    }

    #[test]
    fn relu_keeps_nan_visible() {
        let y = linear_forward(&[f32::NAN, 1.0], &[1.0, 1.0], None, 1, 2, 1, true);
        assert!(y[0].is_nan());
        assert!(relu_mask(&[2.0f32, 3.0], &[f32::NAN, 0.0])[0] == 2.0);
    }

    #[test]
    fn im2col_overwrites_every_element_and_col2im_is_its_adjoint() {
        // cols starts as NaN (a reused buffer): every element must be written, padding as 0
        for &(c_in, h, w, k, stride, padding) in &[
            (1, 28, 28, 5, 1, 2),
            (6, 14, 14, 5, 1, 0),
            (2, 9, 7, 3, 1, 1),
            (3, 5, 40, 3, 1, 3),
            (2, 9, 7, 3, 2, 1),
            (1, 4, 5, 3, 3, 2),
            (2, 6, 6, 1, 1, 0),
        ] {
            let g = ConvGeometry {
                n: 2,
                c_in,
                h,
                w,
                c_out: 1,
                kh: k,
                kw: k,
                stride,
                padding,
            };
            let (ho, wo) = (g.ho(), g.wo());
            // two images back to back: the first may be read past its end, the second not
            let x: Vec<f64> = (0..2 * g.in_size())
                .map(|i| (i as f64 * 0.37).sin())
                .collect();
            for image in 0..2 {
                let xb = &x[image * g.in_size()..];
                let mut cols = vec![f64::NAN; g.ckk() * ho * wo + IM2COL_SLACK];
                im2col(&g, xb, &mut cols);
                for ci in 0..c_in {
                    for ki in 0..k {
                        for kj in 0..k {
                            for oi in 0..ho {
                                for oj in 0..wo {
                                    let ii = (oi * stride + ki) as isize - padding as isize;
                                    let jj = (oj * stride + kj) as isize - padding as isize;
                                    let inside = ii >= 0
                                        && jj >= 0
                                        && (ii as usize) < h
                                        && (jj as usize) < w;
                                    let want = if inside {
                                        xb[(ci * h + ii as usize) * w + jj as usize]
                                    } else {
                                        0.0
                                    };
                                    let row = (ci * k + ki) * k + kj;
                                    let got = cols[row * ho * wo + oi * wo + oj];
                                    assert_eq!(
                                        got, want,
                                        "{c_in} {h}x{w} k{k} s{stride} p{padding}"
                                    );
                                }
                            }
                        }
                    }
                }
                // <im2col(x), c> = <x, col2im(c)> for a random c
                let c: Vec<f64> = (0..g.ckk() * ho * wo)
                    .map(|i| (i as f64 * 0.11).cos())
                    .collect();
                let mut back = vec![0.0; g.in_size()];
                col2im_add(&g, &c, &mut back);
                let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
                let rhs: f64 = xb[..g.in_size()]
                    .iter()
                    .zip(&back)
                    .map(|(a, b)| a * b)
                    .sum();
                assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0));
            }
        }
    }

    #[test]
    fn pool_gradient_goes_to_the_first_maximum_with_ties_and_nan() {
        // windows (row-major a b / c d): tie between b and d; NaN first; NaN second; all equal
        let nan = f32::NAN;
        let x = [
            1.0, 5.0, nan, 2.0, 3.0, nan, 1.0, 1.0, //
            0.0, 5.0, 7.0, 9.0, 4.0, 2.0, 1.0, 1.0,
        ];
        let y = max_pool2x2_forward(&x, 1, 2, 8);
        assert_eq!(y[0], 5.0);
        assert!(y[1].is_nan());
        assert_eq!((y[2], y[3]), (4.0, 1.0));
        let dx = max_pool2x2_backward(&x, &[1.0, 2.0, 3.0, 4.0], 1, 2, 8);
        assert_eq!(
            dx,
            vec![
                0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 4.0, 0.0, //
                0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0
            ]
        );
    }

    #[test]
    fn conv_forward_matches_definition_on_odd_shapes() {
        for &(stride, padding, kh, kw) in &[
            (1, 0, 5, 5),
            (2, 1, 3, 3),
            (1, 2, 3, 2),
            (2, 0, 1, 1),
            (1, 0, 1, 1),
        ] {
            let g = ConvGeometry {
                n: 3,
                c_in: 2,
                h: 9,
                w: 7,
                c_out: 3,
                kh,
                kw,
                stride,
                padding,
            };
            let x: Vec<f64> = (0..g.n * g.in_size())
                .map(|i| ((i * 37 % 17) as f64 - 8.0) / 7.0)
                .collect();
            let w: Vec<f64> = (0..g.c_out * g.ckk())
                .map(|i| ((i * 11 % 13) as f64 - 6.0) / 5.0)
                .collect();
            let y = conv2d_forward(&g, &x, &w, None, false);
            let want = naive(&g, &x, &w);
            assert!(
                y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
                "{g:?}"
            );
        }
    }
}
