//! Direct 2-D convolution of one image with the output channels in SIMD lanes, for LeNet-5's
//! small images: each output position of a short run keeps a block of [`LANES`] channels in
//! registers while the kernel's taps stream past. No im2col copy, no operand packing, no gemm call
//! per image. The taps are summed in im2col's row order with one fused multiply-add each, from
//! zero, as the gemm microkernel does, so the result equals im2col + gemm bit for bit.

use super::Real;
use super::conv::ConvGeometry;

/// Output channels computed together (one 512-bit register of f32).
pub const LANES: usize = 16;
/// Output positions of a row computed together (their accumulators stay in registers): LeNet-5's
/// 10-wide rows in one run (8 ran 1.5x slower, 12 1.2x).
const RUN: usize = 10;

/// True when [`conv_image`] should compute `g`: stride 1, and output channels that fill at least
/// three quarters of each block of lanes. LeNet-5's second convolution (16 channels) runs 1.9x
/// faster than im2col + gemm; its first (6 channels, 6 of 16 lanes) ran 1.4x slower, so it
/// stays with the gemm.
pub fn suits(g: &ConvGeometry) -> bool {
    let partial = g.c_out % LANES;
    g.stride == 1 && g.c_out > 0 && g.ckk() > 0 && (partial == 0 || partial * 4 >= LANES * 3)
}

/// The weights (OIHW) laid out for [`conv_image`]: per block of [`LANES`] output channels, tap
/// by tap (im2col's row order), the block's channels side by side, zero past the last channel.
pub struct LaneWeights<T> {
    data: Vec<T>,
    taps: usize,
}

impl<T: Real> LaneWeights<T> {
    /// Lays out `weight` (c_out x c_in*kh*kw) of `g`.
    pub fn new(g: &ConvGeometry, weight: &[T]) -> Self {
        let taps = g.ckk();
        assert_eq!(weight.len(), g.c_out * taps, "convolution weight size");
        let blocks = g.c_out.div_ceil(LANES);
        let mut data = vec![T::zero(); blocks * taps * LANES];
        for (co, row) in weight.chunks_exact(taps).enumerate() {
            let (block, lane) = (co / LANES, co % LANES);
            for (t, &v) in row.iter().enumerate() {
                data[(block * taps + t) * LANES + lane] = v;
            }
        }
        LaneWeights { data, taps }
    }
}

/// Elements of the padded-image scratch [`conv_image`] needs for `g`.
pub fn scratch_len(g: &ConvGeometry) -> usize {
    let (hp, wp) = padded_dims(g);
    g.c_in * hp * wp + RUN + g.kw
}

/// Rows and columns of one zero-padded input plane.
fn padded_dims(g: &ConvGeometry) -> (usize, usize) {
    (g.h + 2 * g.padding, g.w + 2 * g.padding)
}

/// Convolves the image (c_in, h, w) at the start of `x` with `weights` into `out` (c_out planes
/// of ho * wo, no bias), using `scratch` ([`scratch_len`] elements) for the padded image.
pub fn conv_image<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weights: &LaneWeights<T>,
    scratch: &mut [T],
    out: &mut [T],
) {
    assert!(suits(g), "direct convolution needs stride 1");
    let (ho, wo) = (g.ho(), g.wo());
    let hw = ho * wo;
    let (hp, wp) = padded_dims(g);
    assert!(
        x.len() >= g.in_size()
            && scratch.len() >= scratch_len(g)
            && out.len() >= g.c_out * hw
            && weights.taps == g.ckk(),
        "direct convolution operand sizes"
    );
    // Zero-padded copy of the image; the slack after it is read by the last run of a row.
    scratch.fill(T::zero());
    let p = g.padding;
    for ci in 0..g.c_in {
        for i in 0..g.h {
            let src = &x[(ci * g.h + i) * g.w..][..g.w];
            scratch[(ci * hp + i + p) * wp + p..][..g.w].copy_from_slice(src);
        }
    }
    let taps = weights.taps;
    for (block, block_weights) in weights.data.chunks_exact(taps * LANES).enumerate() {
        let lanes = LANES.min(g.c_out - block * LANES);
        for oi in 0..ho {
            for oj in (0..wo).step_by(RUN) {
                // The run's input rows, one per (input channel, kernel row), in tap order.
                let rows = (0..g.c_in * g.kh).map(|r| {
                    let (ci, ki) = (r / g.kh, r % g.kh);
                    &scratch[(ci * hp + oi + ki) * wp + oj..][..RUN + g.kw]
                });
                let acc = run_sums(rows, g.kw, block_weights);
                let valid = RUN.min(wo - oj);
                for lane in 0..lanes {
                    let dst = &mut out[(block * LANES + lane) * hw + oi * wo + oj..][..valid];
                    for (d, a) in dst.iter_mut().zip(&acc) {
                        *d = a[lane];
                    }
                }
            }
        }
    }
}

/// The sums of one run: for each of its [`RUN`] positions q and each lane l, the taps summed in
/// order, `acc = x[q + kj] * w[tap][l] + acc` from zero, over `kw` taps of each input row in turn
/// (`rows` hold RUN + kw - 1 or more values each; `weights` hold LANES values per tap).
fn run_sums<'a, T: Real>(
    rows: impl Iterator<Item = &'a [T]>,
    kw: usize,
    weights: &[T],
) -> [[T; LANES]; RUN] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if T::DTYPE == candle_core::DType::F32 {
        // SAFETY: T is f32 (checked through its dtype), so the slices reinterpret in place.
        let rows = rows.map(|r| unsafe { &*(r as *const [T] as *const [f32]) });
        // SAFETY: as for the rows.
        let weights = unsafe { &*(weights as *const [T] as *const [f32]) };
        let acc = avx512::run_sums_f32(rows, kw, weights);
        // SAFETY: the same type, as above.
        return unsafe { std::mem::transmute_copy::<[[f32; LANES]; RUN], [[T; LANES]; RUN]>(&acc) };
    }
    let mut acc = [[T::zero(); LANES]; RUN];
    let mut taps = weights.chunks_exact(LANES);
    for row in rows {
        for kj in 0..kw {
            let w = taps.next().expect("a block of weights per tap");
            for (a, &xv) in acc.iter_mut().zip(&row[kj..kj + RUN]) {
                for (al, &wl) in a.iter_mut().zip(w) {
                    *al = xv.mul_add(wl, *al);
                }
            }
        }
    }
    acc
}

/// [`run_sums`] for f32 in AVX-512 registers: one register per position, the tap's weights
/// loaded once and each input value broadcast (the compiler does not vectorise the generic loop).
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512 {
    use super::{LANES, RUN};
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    /// See [`super::run_sums`].
    pub(super) fn run_sums_f32<'a>(
        rows: impl Iterator<Item = &'a [f32]>,
        kw: usize,
        weights: &[f32],
    ) -> [[f32; LANES]; RUN] {
        // SAFETY: this module is compiled only where the build enables AVX-512F for the whole
        // program (the cfg above), so the instructions exist; the same holds for each call below.
        let zero = unsafe { _mm512_setzero_ps() };
        let mut acc = [zero; RUN];
        let mut taps = weights.chunks_exact(LANES);
        for row in rows {
            assert!(row.len() >= RUN + kw - 1, "a run's input row");
            for kj in 0..kw {
                let w = taps.next().expect("a block of weights per tap");
                // SAFETY: w holds LANES = 16 floats (chunks_exact); AVX-512F as above.
                let w = unsafe { _mm512_loadu_ps(w.as_ptr()) };
                let xs: &[f32; RUN] = row[kj..kj + RUN].try_into().expect("a run of inputs");
                for (a, &xv) in acc.iter_mut().zip(xs) {
                    // SAFETY: AVX-512F as above.
                    *a = unsafe { _mm512_fmadd_ps(_mm512_set1_ps(xv), w, *a) };
                }
            }
        }
        let mut out = [[0.0f32; LANES]; RUN];
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: o holds LANES = 16 floats; AVX-512F as above.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
        out
    }
}
