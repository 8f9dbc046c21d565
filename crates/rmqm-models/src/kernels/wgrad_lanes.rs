//! The weight gradient of LeNet-5's second convolution (5 x 5 kernels, stride 1, no padding, at
//! most 16 output channels) in AVX-512 lanes, straight from the image. The general path unfolds
//! the image (`im2col`, 150 x 64 values per image there) and multiplies by the output gradient
//! with the `gemm` crate, which first packs the unfolded image again, transposed; here the 16
//! output channels are the lanes of a register, the 25 taps of one input channel are 25
//! accumulators, and each output position's image values are broadcast against its gradients.
//!
//! Each gradient element is the crate's sum: its products over the output positions in order,
//! one fused multiply-add each, from zero (the crate's microkernel, for the shapes [`takes`]
//! admits: at most 512 positions, more than 256 elements in the product), then added to the
//! gradient so far. Tested bit for bit against `im2col` + gemm.

use super::conv::ConvGeometry;
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// f32 lanes of a register: the most output channels handled.
const LANES: usize = 16;
/// Kernel side handled (5 x 5: 25 accumulators, plus two registers, of the 32).
const SIDE: usize = 5;
/// The deepest product the `gemm` crate sums in one block.
const MAX_POSITIONS: usize = 512;

/// Whether [`accumulate`] takes this geometry: 5 x 5 kernels, stride 1, no padding, 2 to 16
/// output channels, 3 to 512 output positions, and a product of more than 256 elements (where
/// the crate uses its microkernel rather than its horizontal one).
pub(super) fn takes(g: &ConvGeometry) -> bool {
    let positions = g.ho() * g.wo();
    g.kh == SIDE
        && g.kw == SIDE
        && g.stride == 1
        && g.padding == 0
        && (2..=LANES).contains(&g.c_out)
        && (3..=MAX_POSITIONS).contains(&positions)
        && g.ckk() * g.c_out > 256
}

/// `dw (c_out, c_in * 25) += dy (c_out, ho * wo) x im2col(x)^T` for one image `x` (c_in, h, w).
pub(super) fn accumulate(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(takes(g), "weight gradient geometry");
    let positions = g.ho() * g.wo();
    assert!(x.len() >= g.in_size(), "weight gradient image size");
    assert_eq!(dy.len(), g.c_out * positions, "weight gradient output size");
    assert_eq!(dw.len(), g.c_out * g.ckk(), "weight gradient size");
    // The output gradient position-major, 16 channels per position (zeros past c_out).
    let mut dy_t = vec![0.0f32; positions * LANES];
    for (co, plane) in dy.chunks_exact(positions).enumerate() {
        for (p, &v) in plane.iter().enumerate() {
            dy_t[p * LANES + co] = v;
        }
    }
    let taps = SIDE * SIDE;
    let mut sums = [0.0f32; SIDE * SIDE * LANES];
    for ci in 0..g.c_in {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        // SAFETY: the plane holds h x w values and every position's 5 x 5 window lies inside
        // it (no padding, stride 1, ho = h - 4, wo = w - 4); dy_t holds 16 values per
        // position; AVX-512F is enabled for the whole build wherever this module is compiled.
        unsafe { channel_sums(g, plane, &dy_t, &mut sums) };
        for co in 0..g.c_out {
            let row = &mut dw[co * g.ckk() + ci * taps..][..taps];
            for (t, v) in row.iter_mut().enumerate() {
                *v += sums[t * LANES + co];
            }
        }
    }
}

/// The 25 taps' sums over the output positions of one input channel, each a register of the 16
/// output channels, stored tap by tap into `sums`.
///
/// # Safety
/// `plane` must hold the channel's h x w values, `dy_t` 16 values per output position; the
/// geometry must satisfy [`takes`]; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn channel_sums(g: &ConvGeometry, plane: &[f32], dy_t: &[f32], sums: &mut [f32; 400]) {
    let (ho, wo, w) = (g.ho(), g.wo(), g.w);
    let mut acc = [_mm512_setzero_ps(); SIDE * SIDE];
    let (x, d) = (plane.as_ptr(), dy_t.as_ptr());
    for oi in 0..ho {
        for oj in 0..wo {
            // SAFETY: position oi * wo + oj < ho * wo, whose 16 values dy_t holds (contract).
            let grads: __m512 = unsafe { _mm512_loadu_ps(d.add((oi * wo + oj) * LANES)) };
            for ki in 0..SIDE {
                let row = x.wrapping_add((oi + ki) * w + oj);
                for kj in 0..SIDE {
                    // SAFETY: (oi + ki, oj + kj) lies in the h x w plane (contract).
                    let v = _mm512_set1_ps(unsafe { *row.add(kj) });
                    let t = ki * SIDE + kj;
                    acc[t] = _mm512_fmadd_ps(v, grads, acc[t]);
                }
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: sums holds 25 x 16 values.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(t * LANES), *a) };
    }
}
