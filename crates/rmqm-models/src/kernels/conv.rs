//! 2-D convolution as im2col + gemm: forward (with fused bias and ReLU), input gradient and weight
//! gradient, each split over images across cores.

use super::gemm::{Accum, MatRef, gemm_into_uninit, gemm_rm};
use super::winograd;
use super::{GradLayout, Real, Want, vec_written_by};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
    /// Where the input, weight and bias gradients asked for in `want` sit in one flat vector:
    /// sizes n * c_in * h * w, c_out * c_in * kh * kw and c_out.
    pub fn grad_layout(&self, want: Want) -> GradLayout {
        GradLayout::new(
            want,
            [self.n * self.in_size(), self.c_out * self.ckk(), self.c_out],
        )
    }
    /// True for a 1x1 convolution with stride 1 and no padding: a plain product, no im2col.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
    /// Panics unless `x` holds the batch's images and `weight` the kernel (and a bias of length
    /// `bias`, one value per output channel).
    pub(super) fn check<T>(&self, x: &[T], weight: &[T], bias: Option<usize>) {
        assert_eq!(x.len(), self.n * self.in_size(), "convolution input size");
        assert_eq!(
            weight.len(),
            self.c_out * self.ckk(),
            "convolution weight size"
        );
        if let Some(b) = bias {
            assert_eq!(b, self.c_out, "convolution bias size");
        }
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
    col2im_add_strided(g, cols, g.ho() * g.wo(), 0, x);
}

/// [`col2im_add`] of the image whose columns start at `offset` in each row of `cols`, rows
/// `row_len` apart (several images' columns side by side).
fn col2im_add_strided<T: Real>(
    g: &ConvGeometry,
    cols: &[T],
    row_len: usize,
    offset: usize,
    x: &mut [T],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if super::fold_lanes::takes(g)
        && let (Some(cols), Some(x)) = (super::as_f32(cols), super::as_f32_mut(x))
    {
        super::fold_lanes::fold_add(g, cols, row_len, offset, x);
        return;
    }
    col2im_add_segments(g, cols, row_len, offset, x);
}

/// [`col2im_add_strided`] tap by tap, a row segment at a time (any geometry, any float).
fn col2im_add_segments<T: Real>(
    g: &ConvGeometry,
    cols: &[T],
    row_len: usize,
    offset: usize,
    x: &mut [T],
) {
    let (ho, wo) = (g.ho(), g.wo());
    let hw = ho * wo;
    let (s, p) = (g.stride, g.padding);
    for ci in 0..g.c_in {
        let plane = &mut x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &cols[((ci * g.kh + ki) * g.kw + kj) * row_len + offset..][..hw];
                let (lo, hi) = valid_columns(g, kj, wo);
                for (oi, src) in row.chunks_exact(wo).enumerate() {
                    let ii = (oi * s + ki).wrapping_sub(p);
                    if ii >= g.h || lo == hi {
                        continue;
                    }
                    let dst = &mut plane[ii * g.w..(ii + 1) * g.w];
                    let first = lo * s + kj - p;
                    if s == 1 {
                        add_assign(&mut dst[first..first + (hi - lo)], &src[lo..hi]);
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

/// `dst[i] += src[i]` for every i (equal lengths), eight at a time: LeNet's rows of 8 and 24 are
/// too short for the compiler's vectorised loop, which left them to its scalar remainder.
#[inline(always)]
fn add_assign<T: Real>(dst: &mut [T], src: &[T]) {
    const BLOCK: usize = 8;
    let mut d = dst.chunks_exact_mut(BLOCK);
    let mut s = src.chunks_exact(BLOCK);
    for (d, s) in d.by_ref().zip(s.by_ref()) {
        let d: &mut [T; BLOCK] = d.try_into().expect("a block");
        let s: &[T; BLOCK] = s.try_into().expect("a block");
        for (a, &b) in d.iter_mut().zip(s) {
            *a += b;
        }
    }
    for (a, &b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a += b;
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
    g.check(x, weight, bias.map(<[T]>::len));
    if winograd::applies(g) {
        return winograd::forward(g, x, weight, bias, relu);
    }
    let per = images_per_gemm(g);
    if per > 1 {
        return conv2d_forward_grouped(g, x, weight, bias, relu, per);
    }
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let direct = g.direct();
    let write = |y: &mut [MaybeUninit<T>]| {
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
                let yb = gemm_into_uninit(
                    yb,
                    MatRef::row_major(weight, g.c_out, ckk),
                    MatRef::row_major(src, ckk, hw),
                );
                epilogue(yb, hw, bias, relu);
            },
        );
    };
    // SAFETY: `write` initialises every element: it cuts y into chunks of out_size =
    // c_out * hw elements (n of them, the last one whole because y holds n * out_size), and
    // gemm_into_uninit fills each chunk's c_out x hw product completely.
    unsafe { vec_written_by(g.n * g.out_size(), write) }
}

/// Adds the per-channel bias and applies ReLU, in place on (channels, hw).
pub(super) fn epilogue<T: Real>(y: &mut [T], hw: usize, bias: Option<&[T]>, relu: bool) {
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
    assert_eq!(
        dy.len(),
        g.n * g.out_size(),
        "convolution output gradient size"
    );
    assert_eq!(weight.len(), g.c_out * g.ckk(), "convolution weight size");
    if winograd::applies(g) {
        return winograd::input_grad(g, dy, weight);
    }
    let per = images_per_gemm(g);
    if per > 1 {
        return conv2d_input_grad_grouped(g, dy, weight, per);
    }
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let mut dx = vec![T::zero(); g.n * g.in_size()];
    let direct = g.direct();
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
                // dx = weight^T (ckk x c_out) * dy (c_out x hw), folded back unless direct
                let w_t = MatRef::row_major(weight, g.c_out, ckk).t();
                let dyb = MatRef::row_major(dyb, g.c_out, hw);
                if direct {
                    gemm_rm(dxb, Accum::Replace, w_t, dyb, Parallelism::None);
                } else {
                    gemm_rm(cols, Accum::Replace, w_t, dyb, Parallelism::None);
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
    assert_eq!(x.len(), g.n * g.in_size(), "convolution input size");
    assert_eq!(
        dy.len(),
        g.n * g.out_size(),
        "convolution output gradient size"
    );
    if winograd::applies(g) {
        return winograd::weight_grad(g, x, dy, want_bias);
    }
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let parts = rayon::current_num_threads().clamp(1, g.n.max(1));
    let per = g.n.div_ceil(parts);
    let direct = g.direct();
    let group = images_per_gemm(g);
    let partials: Vec<(Vec<T>, Vec<T>)> = (0..g.n.div_ceil(per.max(1)))
        .into_par_iter()
        .map(|p| {
            let mut dw = vec![T::zero(); g.c_out * ckk];
            let mut db = vec![T::zero(); if want_bias { g.c_out } else { 0 }];
            let mut cols = if direct || group > 1 {
                Vec::new()
            } else {
                vec![T::zero(); ckk * hw + IM2COL_SLACK]
            };
            let end = ((p + 1) * per).min(g.n);
            let images = p * per..end;
            if group > 1 {
                let mut buf = GroupBuffers::new(g, group);
                for first in images.step_by(group) {
                    let count = group.min(end - first);
                    let db = if want_bias { Some(&mut db[..]) } else { None };
                    accumulate_weight_grad_grouped(
                        g,
                        &x[first * g.in_size()..],
                        &dy[first * g.out_size()..],
                        count,
                        &mut buf,
                        &mut dw,
                        db,
                    );
                }
            } else {
                for b in images {
                    let dyb = &dy[b * g.out_size()..(b + 1) * g.out_size()];
                    let db = if want_bias { Some(&mut db[..]) } else { None };
                    accumulate_weight_grad(g, &x[b * g.in_size()..], dyb, &mut cols, &mut dw, db);
                }
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
    let hw = g.ho() * g.wo();
    assert_eq!(dy.len(), g.c_out * hw, "convolution output gradient size");
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    let in_lanes = super::wgrad_lanes::takes(g)
        && match (super::as_f32(x), super::as_f32(dy), super::as_f32_mut(dw)) {
            (Some(x), Some(dy), Some(dw)) => {
                super::wgrad_lanes::accumulate(g, x, dy, dw);
                true
            }
            _ => false,
        };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    let in_lanes = false;
    if !in_lanes {
        weight_grad_by_gemm(g, x, dy, cols, dw);
    }
    if let Some(db) = db {
        for (s, plane) in db.iter_mut().zip(dy.chunks_exact(hw)) {
            for &v in plane {
                *s += v;
            }
        }
    }
}

/// `dw (c_out x ckk) += dy (c_out x hw) * im2col(x)^T` through `cols` and the gemm (any
/// geometry, any float).
fn weight_grad_by_gemm<T: Real>(g: &ConvGeometry, x: &[T], dy: &[T], cols: &mut [T], dw: &mut [T]) {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let src: &[T] = if g.direct() {
        x
    } else {
        im2col(g, x, cols);
        cols
    };
    gemm_rm(
        dw,
        Accum::Add,
        MatRef::row_major(dy, g.c_out, hw),
        MatRef::row_major(src, ckk, hw).t(),
        Parallelism::None,
    );
}

/// Output positions below which an image's product is too narrow for the gemm to run at speed:
/// images are then grouped so that one product has at least this many columns (ResNet-18 on
/// CIFAR: layer4's 4x4 outputs and layer3's 8x8). LeNet's layers have 100 positions or more and
/// keep one product per image.
const MIN_GEMM_COLUMNS: usize = 128;

/// Images that share one gemm: 1 unless an image has fewer than [`MIN_GEMM_COLUMNS`] output
/// positions; never so many that the cores run out of groups.
pub fn images_per_gemm(g: &ConvGeometry) -> usize {
    let hw = g.ho() * g.wo();
    if hw == 0 || hw >= MIN_GEMM_COLUMNS {
        return 1;
    }
    let per_core = g.n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    MIN_GEMM_COLUMNS.div_ceil(hw).min(per_core)
}

/// Buffers of one grouped product: one image's im2col columns, the group's columns side by side
/// (ckk, images * hw), and the group's (c_out, images * hw) product or output gradient.
struct GroupBuffers<T> {
    image_cols: Vec<T>,
    group_cols: Vec<T>,
    channels: Vec<T>,
}

impl<T: Real> GroupBuffers<T> {
    fn new(g: &ConvGeometry, images: usize) -> Self {
        let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
        GroupBuffers {
            image_cols: vec![T::zero(); ckk * hw + IM2COL_SLACK],
            group_cols: vec![T::zero(); ckk * images * hw],
            channels: vec![T::zero(); g.c_out * images * hw],
        }
    }

    /// Unfolds the images of `x` (whole images, the group's) side by side into `group_cols`:
    /// image j's columns at `j * hw` of each row, rows `images * hw` long.
    fn gather_columns(&mut self, g: &ConvGeometry, x: &[T], images: usize) {
        let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
        let ld = images * hw;
        for j in 0..images {
            let xj = &x[j * g.in_size()..];
            let src: &[T] = if g.direct() {
                xj
            } else {
                im2col(g, xj, &mut self.image_cols);
                &self.image_cols
            };
            for r in 0..ckk {
                self.group_cols[r * ld + j * hw..][..hw].copy_from_slice(&src[r * hw..][..hw]);
            }
        }
    }
}

/// Copies `images` blocks of (channels, hw) from image-major `src` to channel-major `dst`
/// (channels, images * hw): image j's plane c at `c * images * hw + j * hw`.
fn images_to_channels<T: Real>(
    src: &[T],
    dst: &mut [T],
    channels: usize,
    hw: usize,
    images: usize,
) {
    let ld = images * hw;
    for j in 0..images {
        for c in 0..channels {
            dst[c * ld + j * hw..][..hw].copy_from_slice(&src[(j * channels + c) * hw..][..hw]);
        }
    }
}

/// The inverse of [`images_to_channels`].
fn channels_to_images<T: Real>(
    src: &[T],
    dst: &mut [T],
    channels: usize,
    hw: usize,
    images: usize,
) {
    let ld = images * hw;
    for j in 0..images {
        for c in 0..channels {
            dst[(j * channels + c) * hw..][..hw].copy_from_slice(&src[c * ld + j * hw..][..hw]);
        }
    }
}

/// [`conv2d_forward`] with `per` images to a gemm.
fn conv2d_forward_grouped<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    relu: bool,
    per: usize,
) -> Vec<T> {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let mut y = vec![T::zero(); g.n * g.out_size()];
    y.par_chunks_mut(per * g.out_size())
        .zip(x.par_chunks(per * g.in_size()))
        .for_each_init(
            || GroupBuffers::new(g, per),
            |buf, (yg, xg)| {
                let images = yg.len() / g.out_size();
                let ld = images * hw;
                buf.gather_columns(g, xg, images);
                gemm_rm(
                    &mut buf.channels,
                    Accum::Replace,
                    MatRef::row_major(weight, g.c_out, ckk),
                    MatRef::row_major(&buf.group_cols, ckk, ld),
                    Parallelism::None,
                );
                channels_to_images(&buf.channels, yg, g.c_out, hw, images);
                for yb in yg.chunks_exact_mut(g.out_size()) {
                    epilogue(yb, hw, bias, relu);
                }
            },
        );
    y
}

/// [`conv2d_input_grad`] with `per` images to a gemm.
fn conv2d_input_grad_grouped<T: Real>(
    g: &ConvGeometry,
    dy: &[T],
    weight: &[T],
    per: usize,
) -> Vec<T> {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let mut dx = vec![T::zero(); g.n * g.in_size()];
    dx.par_chunks_mut(per * g.in_size())
        .zip(dy.par_chunks(per * g.out_size()))
        .for_each_init(
            || GroupBuffers::new(g, per),
            |buf, (dxg, dyg)| {
                let images = dyg.len() / g.out_size();
                let ld = images * hw;
                images_to_channels(dyg, &mut buf.channels, g.c_out, hw, images);
                // cols (ckk x ld) = weight^T (ckk x c_out) * dy (c_out x ld)
                gemm_rm(
                    &mut buf.group_cols,
                    Accum::Replace,
                    MatRef::row_major(weight, g.c_out, ckk).t(),
                    MatRef::row_major(&buf.channels, g.c_out, ld),
                    Parallelism::None,
                );
                for (j, dxb) in dxg.chunks_exact_mut(g.in_size()).enumerate() {
                    if g.direct() {
                        for r in 0..ckk {
                            dxb[r * hw..][..hw]
                                .copy_from_slice(&buf.group_cols[r * ld + j * hw..][..hw]);
                        }
                    } else {
                        col2im_add_strided(g, &buf.group_cols, ld, j * hw, dxb);
                    }
                }
            },
        );
    dx
}

/// The weight and bias gradients of `images` whole images (x and dy start with them), added into
/// `dw` and `db` by one product.
fn accumulate_weight_grad_grouped<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    images: usize,
    buf: &mut GroupBuffers<T>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let (hw, ckk) = (g.ho() * g.wo(), g.ckk());
    let ld = images * hw;
    buf.gather_columns(g, x, images);
    images_to_channels(dy, &mut buf.channels, g.c_out, hw, images);
    // dw (c_out x ckk) += dy (c_out x ld) * cols^T (ld x ckk)
    gemm_rm(
        dw,
        Accum::Add,
        MatRef::row_major(&buf.channels, g.c_out, ld),
        MatRef::row_major(&buf.group_cols, ckk, ld).t(),
        Parallelism::None,
    );
    if let Some(db) = db {
        for (s, row) in db.iter_mut().zip(buf.channels.chunks_exact(ld)) {
            for &v in row {
                *s += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{naive_conv as naive, operands};
    use super::*;

    /// A hashed test value for index `i`: zeros of both signs one time in `period` each, else
    /// values of either sign at five scales, up to 50 in size.
    fn scattered_value(i: usize, salt: usize, period: usize) -> f32 {
        let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(97_531)) % 10_007;
        match h % period {
            0 => 0.0,
            1 => -0.0,
            _ => (h as f32 / 10_007.0 - 0.5) * 10f32.powi((h % 5) as i32 - 2),
        }
    }

    /// The weight gradient in lanes (where the build has AVX-512F and the geometry allows: 5 x 5,
    /// stride 1, no padding, 2 to 16 output channels) against im2col + gemm: LeNet-5's second
    /// layer, 16 and 6 output channels, one input channel, the most positions the lanes take,
    /// a starting gradient that is not zero, values with zeros of both signs: equal bit for bit.
    #[test]
    fn weight_grads_equal_im2col_and_gemm_bit_for_bit() {
        let value = |i: usize, salt: usize| scattered_value(i, salt, 13);
        // (c_in, h, w, c_out): positions (h - 4) x (w - 4)
        let geometries = [
            (6, 12, 12, 16),
            (6, 12, 12, 6),
            (1, 12, 12, 16),
            (3, 20, 20, 11),
            (2, 26, 26, 16),
            (6, 14, 9, 16),
        ];
        for (case, &(c_in, h, w, c_out)) in geometries.iter().enumerate() {
            let g = ConvGeometry {
                n: 1,
                c_in,
                h,
                w,
                c_out,
                kh: 5,
                kw: 5,
                stride: 1,
                padding: 0,
            };
            #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
            assert!(
                super::super::wgrad_lanes::takes(&g),
                "case {case} runs in lanes"
            );
            let hw = g.ho() * g.wo();
            let x: Vec<f32> = (0..g.in_size()).map(|i| value(i, case)).collect();
            let dy: Vec<f32> = (0..c_out * hw).map(|i| value(i, case + 30)).collect();
            let start: Vec<f32> = (0..c_out * g.ckk()).map(|i| value(i, case + 60)).collect();
            let mut cols = vec![0.0f32; g.ckk() * hw + IM2COL_SLACK];
            let mut want = start.clone();
            weight_grad_by_gemm(&g, &x, &dy, &mut cols, &mut want);
            let mut got = start.clone();
            accumulate_weight_grad(&g, &x, &dy, &mut cols, &mut got, None);
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "case {case}, element {k}");
            }
            assert!(got != start, "case {case}: the gradient changed");
        }
    }

    /// The fold in lanes (where the build has AVX-512F and the geometry allows: stride 1, rows
    /// at most 32 wide) against the segment-by-segment fold: LeNet-5's layers (both variants),
    /// odd shapes, paddings up to the kernel's, images side by side in the columns, a starting
    /// image that is not zero, and values with zeros of both signs: equal bit for bit.
    #[test]
    fn folds_equal_the_segment_fold_bit_for_bit() {
        let value = |i: usize, salt: usize| scattered_value(i, salt, 11);
        let geometries = [
            (1, 28, 28, 5, 5, 0),
            (6, 12, 12, 5, 5, 0),
            (1, 28, 28, 5, 5, 2),
            (6, 14, 14, 5, 5, 0),
            (3, 32, 32, 3, 3, 1),
            (2, 7, 9, 3, 4, 1),
            (2, 16, 17, 3, 3, 2),
            (1, 6, 16, 1, 1, 0),
            // 33 wide: the segment fold on both sides (checks the dispatch).
            (1, 5, 33, 3, 3, 1),
        ];
        for (case, &(c_in, h, w, kh, kw, padding)) in geometries.iter().enumerate() {
            let g = ConvGeometry {
                n: 1,
                c_in,
                h,
                w,
                c_out: 1,
                kh,
                kw,
                stride: 1,
                padding,
            };
            let hw = g.ho() * g.wo();
            for (row_len, offset) in [(hw, 0), (3 * hw, hw)] {
                let cols: Vec<f32> = (0..g.ckk() * row_len).map(|i| value(i, case)).collect();
                let start: Vec<f32> = (0..c_in * h * w).map(|i| value(i, case + 50)).collect();
                let mut want = start.clone();
                col2im_add_segments(&g, &cols, row_len, offset, &mut want);
                let mut got = start.clone();
                col2im_add_strided(&g, &cols, row_len, offset, &mut got);
                for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "case {case}, element {k}");
                }
                assert!(got != start, "case {case}: the fold added something");
            }
        }
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
        let (x, w, dy) = operands(&g);
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

    /// im2col's layout as the definition gives it, in the order (ci, ki, kj, oi, oj): each column
    /// element's index and the input pixel it holds (None where it falls in the padding).
    fn unfolded_taps(g: &ConvGeometry) -> Vec<(usize, Option<usize>)> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut taps = Vec::with_capacity(g.ckk() * ho * wo);
        for ci in 0..g.c_in {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let row = (ci * g.kh + ki) * g.kw + kj;
                    for oi in 0..ho {
                        for oj in 0..wo {
                            let ii = (oi * g.stride + ki) as isize - g.padding as isize;
                            let jj = (oj * g.stride + kj) as isize - g.padding as isize;
                            let inside =
                                ii >= 0 && jj >= 0 && (ii as usize) < g.h && (jj as usize) < g.w;
                            let pixel =
                                inside.then(|| (ci * g.h + ii as usize) * g.w + jj as usize);
                            taps.push((row * ho * wo + oi * wo + oj, pixel));
                        }
                    }
                }
            }
        }
        taps
    }

    /// col2im adds each column value into its pixel in the order (ci, ki, kj, oi, oj), so f32
    /// sums round the same whatever the inner loop's width: checked bit for bit against that
    /// loop written out, on LeNet's two input gradients and on odd, padded and strided shapes.
    #[test]
    fn col2im_adds_in_the_definitions_order_bit_for_bit() {
        for &(c_in, h, w, k, stride, padding) in &[
            (1, 28, 28, 5, 1, 0),
            (6, 12, 12, 5, 1, 0),
            (1, 28, 28, 5, 1, 2),
            (3, 5, 40, 3, 1, 3),
            (2, 9, 7, 3, 2, 1),
        ] {
            let g = ConvGeometry {
                n: 1,
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
            let cols: Vec<f32> = (0..g.ckk() * ho * wo)
                .map(|i| (i as f32 * 0.37).sin() * 1e3_f32.powi((i % 3) as i32))
                .collect();
            let start: Vec<f32> = (0..g.in_size()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut want = start.clone();
            for (col, pixel) in unfolded_taps(&g) {
                if let Some(pixel) = pixel {
                    want[pixel] += cols[col];
                }
            }
            let mut got = start;
            col2im_add(&g, &cols, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{c_in} {h}x{w} k{k} s{stride} p{padding}"
            );
        }
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
                for (col, pixel) in unfolded_taps(&g) {
                    let want = pixel.map_or(0.0, |p| xb[p]);
                    assert_eq!(cols[col], want, "{c_in} {h}x{w} k{k} s{stride} p{padding}");
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
            let (x, w, _) = operands(&g);
            let y = conv2d_forward(&g, &x, &w, None, false);
            let want = naive(&g, &x, &w);
            assert!(
                y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
                "{g:?}"
            );
        }
    }

    #[test]
    fn grouped_products_match_the_definition_and_the_adjoint() {
        // Small outputs (ResNet's layer3/layer4 shapes, scaled down): several images to a gemm,
        // including a last group with fewer images.
        for &(h, k, stride, padding, per) in &[
            (4, 3, 1, 1, 3),
            (4, 1, 2, 0, 4),
            (8, 3, 2, 1, 2),
            (5, 3, 1, 0, 5),
        ] {
            let g = ConvGeometry {
                n: 7,
                c_in: 6,
                h,
                w: h,
                c_out: 5,
                kh: k,
                kw: k,
                stride,
                padding,
            };
            let (x, w, dy) = operands(&g);
            let y = conv2d_forward_grouped(&g, &x, &w, None, false, per);
            let want = naive(&g, &x, &w);
            assert!(
                y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
                "{g:?}"
            );
            let dx = conv2d_input_grad_grouped(&g, &dy, &w, per);
            let mut dw = vec![0.0; g.c_out * g.ckk()];
            let mut db = vec![0.0; g.c_out];
            let mut buf = GroupBuffers::new(&g, per);
            for first in (0..g.n).step_by(per) {
                let images = per.min(g.n - first);
                accumulate_weight_grad_grouped(
                    &g,
                    &x[first * g.in_size()..],
                    &dy[first * g.out_size()..],
                    images,
                    &mut buf,
                    &mut dw,
                    Some(&mut db),
                );
            }
            let inner = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            let total = inner(&dy, &y);
            assert!((inner(&dw, &w) - total).abs() < 1e-9 * total.abs().max(1.0));
            assert!((inner(&dx, &x) - total).abs() < 1e-9 * total.abs().max(1.0));
            let hw = g.ho() * g.wo();
            let db0: f64 = (0..g.n)
                .map(|b| dy[b * g.out_size()..][..hw].iter().sum::<f64>())
                .sum();
            assert!((db[0] - db0).abs() < 1e-9);
            // The dispatching kernels agree with the grouped ones, whatever group they choose.
            let (dw2, db2) = conv2d_weight_grad(&g, &x, &dy, true);
            assert!(dw.iter().zip(&dw2).all(|(a, b)| (a - b).abs() < 1e-9));
            assert!(
                db.iter()
                    .zip(db2.unwrap())
                    .all(|(a, b)| (a - b).abs() < 1e-9)
            );
            let dx2 = conv2d_input_grad(&g, &dy, &w);
            assert!(dx.iter().zip(&dx2).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }
}
