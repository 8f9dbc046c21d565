//! Direct 2-D convolution of one image in SIMD lanes, for LeNet-5's small images, in two layouts:
//! the output **channels** in lanes when there are many (its second convolution, 16 channels of
//! 10 x 10: each position of a short run keeps its channels in registers while the taps stream
//! past), the output **positions** of a row in lanes when there are few channels (its first, 6
//! channels of 28 x 28: each channel keeps a row's 32 positions in registers). No im2col copy, no
//! operand packing, no gemm call per image. Every output sums its taps in im2col's row order with
//! one fused multiply-add each, from zero, as the gemm microkernel does, so the result equals
//! im2col + gemm bit for bit.

use super::Real;
#[cfg(all(
    target_arch = "x86_64",
    any(
        target_feature = "avx512f",
        all(target_feature = "avx2", target_feature = "fma")
    )
))]
use super::as_f32;
use super::conv::ConvGeometry;

/// Lanes of the channel layout's weight blocks and of the position layout's half rows: one
/// AVX-512 register of f32, two AVX2 registers.
pub const LANES: usize = 16;
/// Whether f32 has hand-vectorised kernels in this build: AVX-512F, or AVX2 with FMA (the target
/// features the build enables, `target-cpu=native`).
const SIMD_F32: bool = cfg!(all(
    target_arch = "x86_64",
    any(
        target_feature = "avx512f",
        all(target_feature = "avx2", target_feature = "fma")
    )
));
/// Channel layout: output positions of a row computed together (their accumulators stay in
/// registers), 8 or 10, whichever covers a row with fewer wasted positions: LeNet-5's 8-wide rows
/// ran 1.15x faster in runs of 8 than of 10, lenet5-classic's 10-wide ones 1.5x faster in runs
/// of 10 than of 8 (and 1.2x than of 12).
const RUNS: [usize; 2] = [8, 10];
/// Position layout: output positions of a row computed together, two registers.
const ROW: usize = 2 * LANES;
/// Position layout: at most this many output channels (two registers each).
const MAX_ROW_CHANNELS: usize = 8;

/// A convolution's weights laid out for one of the two direct kernels.
pub enum DirectConv<'w, T> {
    /// Output channels in lanes: per block of [`LANES`] channels, tap by tap (im2col's row
    /// order), the block's channels side by side, zero past the last channel.
    Channels {
        /// The laid-out weights.
        data: Vec<T>,
    },
    /// Output positions in lanes: the OIHW weights as they are (borrowed).
    Positions {
        /// The weights (c_out x taps).
        data: &'w [T],
    },
}

impl<'w, T: Real> DirectConv<'w, T> {
    /// The direct kernel for `g` with `weight` (c_out x c_in*kh*kw), or `None` when im2col + gemm
    /// is the better choice. Stride 1 only; for f32, only with AVX-512 or AVX2 + FMA. Channels in lanes when they fill at least three
    /// quarters of each block (LeNet-5's 16: 1.9x faster than im2col + gemm at batch 256; its 6
    /// ran 1.4x slower that way); positions in lanes for at most 8 channels.
    pub fn plan(g: &ConvGeometry, weight: &'w [T]) -> Option<Self> {
        let taps = g.ckk();
        assert_eq!(weight.len(), g.c_out * taps, "convolution weight size");
        // f32 only where the AVX-512 or AVX2 code is compiled in: the generic loops below do not
        // vectorise (the first version ran 10x slower than im2col + gemm), so f32 without them
        // stays with the gemm. f64 (the gradient checks) takes the generic loops, which share the
        // indexing with the SIMD code.
        if (T::DTYPE == candle_core::DType::F32 && !SIMD_F32)
            || g.stride != 1
            || g.c_out == 0
            || taps == 0
        {
            return None;
        }
        let partial = g.c_out % LANES;
        if partial == 0 || partial * 4 >= LANES * 3 {
            let blocks = g.c_out.div_ceil(LANES);
            let mut data = vec![T::zero(); blocks * taps * LANES];
            for (co, row) in weight.chunks_exact(taps).enumerate() {
                let (block, lane) = (co / LANES, co % LANES);
                for (t, &v) in row.iter().enumerate() {
                    data[(block * taps + t) * LANES + lane] = v;
                }
            }
            Some(DirectConv::Channels { data })
        } else if g.c_out <= MAX_ROW_CHANNELS {
            Some(DirectConv::Positions { data: weight })
        } else {
            None
        }
    }
}

/// Elements of the padded-image scratch [`conv_image`] needs for `g`.
pub fn scratch_len(g: &ConvGeometry) -> usize {
    let (hp, wp) = padded_dims(g);
    g.c_in * hp * wp + ROW.max(RUNS[1]) + g.kw
}

/// Rows and columns of one zero-padded input plane.
fn padded_dims(g: &ConvGeometry) -> (usize, usize) {
    (g.h + 2 * g.padding, g.w + 2 * g.padding)
}

/// Convolves the image (c_in, h, w) at the start of `x` with `plan` (made for `g`) into `out`
/// (c_out planes of ho * wo, no bias), using `scratch` ([`scratch_len`] elements) for the padded
/// image.
pub fn conv_image<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    plan: &DirectConv<'_, T>,
    scratch: &mut [T],
    out: &mut [T],
) {
    let (hw, taps) = (g.ho() * g.wo(), g.ckk());
    assert!(g.stride == 1, "direct convolution needs stride 1");
    assert!(
        x.len() >= g.in_size() && scratch.len() >= scratch_len(g) && out.len() >= g.c_out * hw,
        "direct convolution operand sizes"
    );
    // Zero-padded copy of the image; the slack after it is read by the last run of a row.
    let (hp, wp) = padded_dims(g);
    scratch.fill(T::zero());
    let p = g.padding;
    for ci in 0..g.c_in {
        for i in 0..g.h {
            let src = &x[(ci * g.h + i) * g.w..][..g.w];
            scratch[(ci * hp + i + p) * wp + p..][..g.w].copy_from_slice(src);
        }
    }
    match plan {
        DirectConv::Channels { data } => {
            assert_eq!(
                data.len(),
                g.c_out.div_ceil(LANES) * taps * LANES,
                "plan for g"
            );
            channels_in_lanes(g, data, scratch, out);
        }
        DirectConv::Positions { data } => {
            assert!(
                data.len() == g.c_out * taps && g.c_out <= MAX_ROW_CHANNELS,
                "plan for g"
            );
            positions_in_lanes(g, data, scratch, out);
        }
    }
}

/// The input rows one output row (and run) reads, in tap order: (input channel, kernel row),
/// each from column `oj` on, `len` values.
fn tap_rows<'a, T>(
    g: &'a ConvGeometry,
    scratch: &'a [T],
    oi: usize,
    oj: usize,
    len: usize,
) -> impl Iterator<Item = &'a [T]> + Clone + 'a {
    let (hp, wp) = padded_dims(g);
    (0..g.c_in * g.kh).map(move |r| {
        let (ci, ki) = (r / g.kh, r % g.kh);
        &scratch[(ci * hp + oi + ki) * wp + oj..][..len]
    })
}

/// The channel layout's loop in runs of 8 or 10 positions ([`RUNS`]).
fn channels_in_lanes<T: Real>(g: &ConvGeometry, weights: &[T], scratch: &[T], out: &mut [T]) {
    let covered = |run: usize| g.wo().div_ceil(run) * run;
    if covered(RUNS[0]) <= covered(RUNS[1]) {
        channels_in_lanes_by::<T, { RUNS[0] }>(g, weights, scratch, out)
    } else {
        channels_in_lanes_by::<T, { RUNS[1] }>(g, weights, scratch, out)
    }
}

/// The channel layout's loop: blocks of channels, rows, runs of `R` positions.
fn channels_in_lanes_by<T: Real, const R: usize>(
    g: &ConvGeometry,
    weights: &[T],
    scratch: &[T],
    out: &mut [T],
) {
    let (ho, wo) = (g.ho(), g.wo());
    let (hw, taps) = (ho * wo, g.ckk());
    for (block, block_weights) in weights.chunks_exact(taps * LANES).enumerate() {
        let lanes = LANES.min(g.c_out - block * LANES);
        for oi in 0..ho {
            for oj in (0..wo).step_by(R) {
                let rows = tap_rows(g, scratch, oi, oj, R + g.kw);
                let acc = run_sums::<T, R>(rows, g.kw, block_weights);
                let valid = R.min(wo - oj);
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

/// The position layout's loop: rows, runs of [`ROW`] positions, all channels at once.
fn positions_in_lanes<T: Real>(g: &ConvGeometry, weights: &[T], scratch: &[T], out: &mut [T]) {
    let (ho, wo) = (g.ho(), g.wo());
    let hw = ho * wo;
    for oi in 0..ho {
        for oj in (0..wo).step_by(ROW) {
            let rows = tap_rows(g, scratch, oi, oj, ROW + g.kw);
            let valid = ROW.min(wo - oj);
            let acc = row_sums(rows, g.kw, weights, g.c_out, valid);
            for (c, a) in acc.iter().take(g.c_out).enumerate() {
                out[c * hw + oi * wo + oj..][..valid].copy_from_slice(&a[..valid]);
            }
        }
    }
}

/// The channel layout's sums of one run: for each of its `R` positions q and each lane l,
/// `acc = x[q + kj] * w[tap][l] + acc` from zero, over `kw` taps of each input row in turn
/// (`rows` hold R + kw - 1 or more values each; `weights` hold LANES values per tap).
fn run_sums<'a, T: Real, const R: usize>(
    rows: impl Iterator<Item = &'a [T]> + Clone,
    kw: usize,
    weights: &[T],
) -> [[T; LANES]; R] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if let Some(weights) = as_f32(weights) {
        let rows = rows.map(|r| as_f32(r).expect("f32 rows"));
        let acc = avx512::run_sums_f32::<R>(rows, kw, weights);
        // SAFETY: T is f32 (as_f32 returned the weights), so the arrays have the same type.
        return unsafe { std::mem::transmute_copy::<[[f32; LANES]; R], [[T; LANES]; R]>(&acc) };
    }
    #[cfg(all(
        target_arch = "x86_64",
        not(target_feature = "avx512f"),
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if let Some(weights) = as_f32(weights) {
        let rows = rows.map(|r| as_f32(r).expect("f32 rows"));
        let acc = avx2::run_sums_f32::<R>(rows, kw, weights);
        // SAFETY: T is f32 (as_f32 returned the weights), so the arrays have the same type.
        return unsafe { std::mem::transmute_copy::<[[f32; LANES]; R], [[T; LANES]; R]>(&acc) };
    }
    let mut acc = [[T::zero(); LANES]; R];
    let mut taps = weights.chunks_exact(LANES);
    for row in rows {
        for kj in 0..kw {
            let w = taps.next().expect("a block of weights per tap");
            for (a, &xv) in acc.iter_mut().zip(&row[kj..kj + R]) {
                for (al, &wl) in a.iter_mut().zip(w) {
                    *al = xv.mul_add(wl, *al);
                }
            }
        }
    }
    acc
}

/// The position layout's sums of one row run: for each channel c < `channels` and each of the
/// run's [`ROW`] positions q, `acc = x[q + kj] * w[c][tap] + acc` from zero, over `kw` taps of
/// each input row in turn (`rows` hold ROW + kw - 1 or more values each; `weights` are c_out x
/// taps). Channels from `channels` on are left zero; so may be positions from `positions` on.
fn row_sums<'a, T: Real>(
    rows: impl Iterator<Item = &'a [T]> + Clone,
    kw: usize,
    weights: &[T],
    channels: usize,
    positions: usize,
) -> [[T; ROW]; MAX_ROW_CHANNELS] {
    let taps = weights.len() / channels;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if let Some(weights) = as_f32(weights) {
        let rows = rows.map(|r| as_f32(r).expect("f32 rows"));
        let acc = avx512::row_sums_f32(rows, kw, weights, channels);
        // SAFETY: T is f32 (as_f32 returned the weights), so the arrays have the same type.
        return unsafe {
            std::mem::transmute_copy::<[[f32; ROW]; MAX_ROW_CHANNELS], [[T; ROW]; MAX_ROW_CHANNELS]>(
                &acc,
            )
        };
    }
    #[cfg(all(
        target_arch = "x86_64",
        not(target_feature = "avx512f"),
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if let Some(weights) = as_f32(weights) {
        let rows = rows.map(|r| as_f32(r).expect("f32 rows"));
        let acc = avx2::row_sums_f32(rows, kw, weights, channels, positions);
        // SAFETY: T is f32 (as_f32 returned the weights), so the arrays have the same type.
        return unsafe {
            std::mem::transmute_copy::<[[f32; ROW]; MAX_ROW_CHANNELS], [[T; ROW]; MAX_ROW_CHANNELS]>(
                &acc,
            )
        };
    }
    let _ = positions;
    let mut acc = [[T::zero(); ROW]; MAX_ROW_CHANNELS];
    let mut tap = 0;
    for row in rows {
        for kj in 0..kw {
            for (c, a) in acc.iter_mut().take(channels).enumerate() {
                let w = weights[c * taps + tap];
                for (al, &xv) in a.iter_mut().zip(&row[kj..kj + ROW]) {
                    *al = xv.mul_add(w, *al);
                }
            }
            tap += 1;
        }
    }
    acc
}

/// [`run_sums`] and [`row_sums`] for f32 in AVX-512 registers (the compiler does not vectorise
/// the generic loops): one register per position and tap weights loaded once, or two registers
/// per channel and each weight broadcast.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512 {
    use super::{LANES, MAX_ROW_CHANNELS, ROW};
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    /// Sixteen floats from the start of `v` (which must hold them) into a register.
    #[inline(always)]
    fn load(v: &[f32]) -> __m512 {
        let v: &[f32; LANES] = v[..LANES].try_into().expect("sixteen floats");
        // SAFETY: v holds LANES = 16 floats; AVX-512F is enabled for the whole program wherever
        // this module is compiled (the cfg above), so the instruction exists. The same holds for
        // every intrinsic below.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }

    /// A register's sixteen floats.
    #[inline(always)]
    fn store(r: __m512) -> [f32; LANES] {
        let mut out = [0.0f32; LANES];
        // SAFETY: out holds 16 floats; AVX-512F as in `load`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), r) };
        out
    }

    /// `x * w + acc`, rounded once.
    #[inline(always)]
    fn fma(x: __m512, w: __m512, acc: __m512) -> __m512 {
        // SAFETY: AVX-512F as in `load`.
        unsafe { _mm512_fmadd_ps(x, w, acc) }
    }

    /// A register with `v` in every lane.
    #[inline(always)]
    fn splat(v: f32) -> __m512 {
        // SAFETY: AVX-512F as in `load`.
        unsafe { _mm512_set1_ps(v) }
    }

    /// A register of zeros.
    #[inline(always)]
    fn zero() -> __m512 {
        // SAFETY: AVX-512F as in `load`.
        unsafe { _mm512_setzero_ps() }
    }

    /// See [`super::run_sums`].
    pub(super) fn run_sums_f32<'a, const R: usize>(
        rows: impl Iterator<Item = &'a [f32]>,
        kw: usize,
        weights: &[f32],
    ) -> [[f32; LANES]; R] {
        let mut acc = [zero(); R];
        let mut taps = weights.chunks_exact(LANES);
        for row in rows {
            for kj in 0..kw {
                let w = load(taps.next().expect("a block of weights per tap"));
                let xs: &[f32; R] = row[kj..kj + R].try_into().expect("a run of inputs");
                for (a, &xv) in acc.iter_mut().zip(xs) {
                    *a = fma(splat(xv), w, *a);
                }
            }
        }
        acc.map(store)
    }

    /// See [`super::row_sums`].
    pub(super) fn row_sums_f32<'a>(
        rows: impl Iterator<Item = &'a [f32]>,
        kw: usize,
        weights: &[f32],
        channels: usize,
    ) -> [[f32; ROW]; MAX_ROW_CHANNELS] {
        assert!(channels <= MAX_ROW_CHANNELS, "at most eight channels");
        let taps = weights.len() / channels;
        let mut lo = [zero(); MAX_ROW_CHANNELS];
        let mut hi = [zero(); MAX_ROW_CHANNELS];
        let mut tap = 0;
        for row in rows {
            for kj in 0..kw {
                let (x0, x1) = (load(&row[kj..]), load(&row[kj + LANES..]));
                for c in 0..channels {
                    let w = splat(weights[c * taps + tap]);
                    lo[c] = fma(x0, w, lo[c]);
                    hi[c] = fma(x1, w, hi[c]);
                }
                tap += 1;
            }
        }
        std::array::from_fn(|c| {
            let mut out = [0.0f32; ROW];
            out[..LANES].copy_from_slice(&store(lo[c]));
            out[LANES..].copy_from_slice(&store(hi[c]));
            out
        })
    }
}

/// [`run_sums`] and [`row_sums`] for f32 in AVX2 registers of 8 lanes, where AVX-512 is not
/// there. The same sums in the same order as [`avx512`], so bit for bit the same results: a
/// channel block's 16 lanes in two passes of 8 (a run's 8 or 10 accumulators stay in registers),
/// a row's positions in parts of 16 (two registers per channel) and a last part of 8 where no
/// more are needed, each channel's tap weight broadcast.
#[cfg(all(
    target_arch = "x86_64",
    not(target_feature = "avx512f"),
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{LANES, MAX_ROW_CHANNELS, ROW};
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    /// Lanes of one AVX2 register of f32.
    const WIDTH: usize = 8;

    /// Eight floats from the start of `v` (which must hold them) into a register.
    #[inline(always)]
    fn load(v: &[f32]) -> __m256 {
        let v: &[f32; WIDTH] = v[..WIDTH].try_into().expect("eight floats");
        // SAFETY: v holds WIDTH = 8 floats; AVX2 and FMA are enabled for the whole program
        // wherever this module is compiled (the cfg above), so the instructions exist. The same
        // holds for every intrinsic below.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    /// Stores a register's eight floats at the start of `out` (which must have room).
    #[inline(always)]
    fn store(out: &mut [f32], r: __m256) {
        let out: &mut [f32; WIDTH] = (&mut out[..WIDTH]).try_into().expect("eight floats");
        // SAFETY: out holds 8 floats; AVX2 as in `load`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), r) }
    }

    /// `x * w + acc`, rounded once.
    #[inline(always)]
    fn fma(x: __m256, w: __m256, acc: __m256) -> __m256 {
        // SAFETY: FMA as in `load`.
        unsafe { _mm256_fmadd_ps(x, w, acc) }
    }

    /// A register with `v` in every lane.
    #[inline(always)]
    fn splat(v: f32) -> __m256 {
        // SAFETY: AVX as in `load`.
        unsafe { _mm256_set1_ps(v) }
    }

    /// A register of zeros.
    #[inline(always)]
    fn zero() -> __m256 {
        // SAFETY: AVX as in `load`.
        unsafe { _mm256_setzero_ps() }
    }

    /// See [`super::run_sums`].
    pub(super) fn run_sums_f32<'a, const R: usize>(
        rows: impl Iterator<Item = &'a [f32]> + Clone,
        kw: usize,
        weights: &[f32],
    ) -> [[f32; LANES]; R] {
        let mut out = [[0.0f32; LANES]; R];
        for half in (0..LANES).step_by(WIDTH) {
            let mut acc = [zero(); R];
            let mut taps = weights.chunks_exact(LANES);
            for row in rows.clone() {
                for kj in 0..kw {
                    let w = load(&taps.next().expect("a block of weights per tap")[half..]);
                    let xs: &[f32; R] = row[kj..kj + R].try_into().expect("a run of inputs");
                    for (a, &xv) in acc.iter_mut().zip(xs) {
                        *a = fma(splat(xv), w, *a);
                    }
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                store(&mut o[half..], a);
            }
        }
        out
    }

    /// See [`super::row_sums`].
    pub(super) fn row_sums_f32<'a>(
        rows: impl Iterator<Item = &'a [f32]> + Clone,
        kw: usize,
        weights: &[f32],
        channels: usize,
        positions: usize,
    ) -> [[f32; ROW]; MAX_ROW_CHANNELS] {
        match channels {
            1 => row_sums_by::<1>(rows, kw, weights, positions),
            2 => row_sums_by::<2>(rows, kw, weights, positions),
            3 => row_sums_by::<3>(rows, kw, weights, positions),
            4 => row_sums_by::<4>(rows, kw, weights, positions),
            5 => row_sums_by::<5>(rows, kw, weights, positions),
            6 => row_sums_by::<6>(rows, kw, weights, positions),
            7 => row_sums_by::<7>(rows, kw, weights, positions),
            8 => row_sums_by::<8>(rows, kw, weights, positions),
            _ => panic!("one to eight channels, not {channels}"),
        }
    }

    /// [`row_sums_f32`] for `C` channels: parts of 16 positions while more than 8 remain, then
    /// one of 8.
    fn row_sums_by<'a, const C: usize>(
        rows: impl Iterator<Item = &'a [f32]> + Clone,
        kw: usize,
        weights: &[f32],
        positions: usize,
    ) -> [[f32; ROW]; MAX_ROW_CHANNELS] {
        let mut out = [[0.0f32; ROW]; MAX_ROW_CHANNELS];
        let mut start = 0;
        while start < positions.min(ROW) {
            let regs = if positions - start > WIDTH { 2 } else { 1 };
            let rows = rows.clone().map(|r| &r[start..]);
            if regs == 2 {
                let acc = row_part::<C, 2>(rows, kw, weights);
                for (o, a) in out.iter_mut().zip(acc) {
                    store(&mut o[start..], a[0]);
                    store(&mut o[start + WIDTH..], a[1]);
                }
            } else {
                let acc = row_part::<C, 1>(rows, kw, weights);
                for (o, a) in out.iter_mut().zip(acc) {
                    store(&mut o[start..], a[0]);
                }
            }
            start += regs * WIDTH;
        }
        out
    }

    /// The sums of `REGS` x 8 positions from the start of each row, for `C` channels.
    #[inline(always)]
    fn row_part<'a, const C: usize, const REGS: usize>(
        rows: impl Iterator<Item = &'a [f32]>,
        kw: usize,
        weights: &[f32],
    ) -> [[__m256; REGS]; C] {
        let taps = weights.len() / C;
        let mut acc = [[zero(); REGS]; C];
        let mut tap = 0;
        for row in rows {
            for kj in 0..kw {
                let xs: [__m256; REGS] = std::array::from_fn(|r| load(&row[kj + r * WIDTH..]));
                for (c, a) in acc.iter_mut().enumerate() {
                    let w = splat(weights[c * taps + tap]);
                    for (ar, &x) in a.iter_mut().zip(&xs) {
                        *ar = fma(x, w, *ar);
                    }
                }
                tap += 1;
            }
        }
        acc
    }
}
