//! `col2im` (folding a convolution's columns back onto its input, adding) for narrow stride-1
//! layers in AVX-512 lanes: LeNet-5's input gradients, whose rows are 8 to 28 wide. The generic
//! fold walks the columns tap by tap and adds each tap's output row to an input row as a short
//! slice; at these widths its per-segment slicing and bounds checks cost several times the adds
//! (a tenth of a LeNet-5 PGD walk's profile). Here an input row stays in one or two registers
//! while every tap that reaches it adds its output row, shifted and masked, in one instruction;
//! several channels' rows are summed side by side, so that their chains of adds overlap.
//!
//! The adds are the generic fold's, in its order for every element: an input element receives
//! its taps' contributions in (kernel row, kernel column) order, each once, added to what the
//! element held; lanes outside a tap's reach are left untouched (masked adds), so even the signs
//! of zeros come out the same (tested bit for bit against the generic fold).

use super::conv::ConvGeometry;
use std::arch::x86_64::{
    __m512, __mmask16, _mm512_mask_add_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
};

/// f32 lanes of a register.
const LANES: usize = 16;
/// The widest input rows folded here: two registers.
const MAX_WIDTH: usize = 2 * LANES;

/// Whether [`fold_add`] takes this geometry: stride 1, input rows at most 32 wide.
pub(super) fn takes(g: &ConvGeometry) -> bool {
    g.stride == 1 && g.w <= MAX_WIDTH && g.w > 0
}

/// `x += fold(cols)` for one image: `cols` holds row r = (ci, ki, kj) of the columns at
/// `r * row_len + offset`, `ho * wo` long; `x` is (c_in, h, w).
pub(super) fn fold_add(
    g: &ConvGeometry,
    cols: &[f32],
    row_len: usize,
    offset: usize,
    x: &mut [f32],
) {
    assert!(takes(g), "fold geometry");
    let rows = g.c_in * g.kh * g.kw;
    assert!(
        rows == 0 || cols.len() >= (rows - 1) * row_len + offset + g.ho() * g.wo(),
        "fold columns size"
    );
    assert!(x.len() >= g.c_in * g.h * g.w, "fold image size");
    // SAFETY: the sizes are asserted just above, the geometry by `takes`; AVX-512F is enabled
    // for the whole build wherever this module is compiled.
    unsafe {
        if g.w <= LANES {
            fold_channels::<1, 6>(g, cols, row_len, offset, x);
        } else {
            fold_channels::<2, 3>(g, cols, row_len, offset, x);
        }
    }
}

/// [`fold_rows`] on groups of G channels, then on the channels left one at a time.
///
/// # Safety
/// As [`fold_rows`].
#[target_feature(enable = "avx512f")]
unsafe fn fold_channels<const V: usize, const G: usize>(
    g: &ConvGeometry,
    cols: &[f32],
    row_len: usize,
    offset: usize,
    x: &mut [f32],
) {
    let lanes = TapLanes::<V>::new(g);
    let grouped = g.c_in / G * G;
    // SAFETY: the caller's contract; the channel ranges lie in 0..c_in.
    unsafe {
        for first in (0..grouped).step_by(G) {
            fold_rows::<V, G>(g, &lanes, cols, row_len, offset, x, first);
        }
        for ci in grouped..g.c_in {
            fold_rows::<V, 1>(g, &lanes, cols, row_len, offset, x, ci);
        }
    }
}

/// The lanes a geometry's rows use, the same for every row and channel of an image.
struct TapLanes<const V: usize> {
    /// Per kernel column kj: the lanes it reaches (input columns kj - p .. kj - p + wo of the
    /// row) and the offset of its loads (lane jj reads src[jj + p - kj]).
    taps: Vec<([__mmask16; V], isize)>,
    /// The lanes of a row's w columns.
    row: [__mmask16; V],
}

impl<const V: usize> TapLanes<V> {
    /// The lanes of `g`'s rows.
    fn new(g: &ConvGeometry) -> Self {
        let (wo, w, p) = (g.wo() as isize, g.w as isize, g.padding as isize);
        let taps = (0..g.kw)
            .map(|kj| {
                let shift = p - kj as isize;
                let (first, end) = ((-shift).max(0), (wo - shift).min(w));
                (std::array::from_fn(|v| lanes(v, first, end)), shift)
            })
            .collect();
        TapLanes {
            taps,
            row: std::array::from_fn(|v| lanes(v, 0, w)),
        }
    }
}

/// [`fold_add`] for channels `first..first + G`, each input row in V registers; the G channels'
/// rows are summed side by side (their adds are independent, so they overlap in the pipeline).
///
/// # Safety
/// `cols` and `x` must hold what [`fold_add`] asserts, the geometry must satisfy [`takes`],
/// `g.w <= 16 * V` and `first + G <= g.c_in`.
#[target_feature(enable = "avx512f")]
unsafe fn fold_rows<const V: usize, const G: usize>(
    g: &ConvGeometry,
    lanes: &TapLanes<V>,
    cols: &[f32],
    row_len: usize,
    offset: usize,
    x: &mut [f32],
    first: usize,
) {
    let (ho, wo) = (g.ho(), g.wo());
    let (h, w, p) = (g.h, g.w, g.padding as isize);
    let (taps, row_lanes) = (&lanes.taps, lanes.row);
    let cols = cols.as_ptr();
    for ii in 0..h {
        let out: [*mut f32; G] =
            std::array::from_fn(|c| x.as_mut_ptr().wrapping_add(((first + c) * h + ii) * w));
        let mut acc: [[__m512; V]; G] = std::array::from_fn(|c| {
            std::array::from_fn(|v| {
                // SAFETY: the masked lanes are the rows' w floats (x's size, asserted by the
                // caller).
                unsafe { _mm512_maskz_loadu_ps(row_lanes[v], out[c].wrapping_add(v * LANES)) }
            })
        });
        for ki in 0..g.kh {
            let oi = ii as isize + p - ki as isize;
            if oi < 0 || oi >= ho as isize {
                continue;
            }
            for (kj, (masks, shift)) in taps.iter().enumerate() {
                for (c, acc) in acc.iter_mut().enumerate() {
                    let tap = ((first + c) * g.kh + ki) * g.kw + kj;
                    let src = cols.wrapping_add(tap * row_len + offset + oi as usize * wo);
                    for (v, a) in acc.iter_mut().enumerate() {
                        let base = src.wrapping_offset((v * LANES) as isize + shift);
                        // SAFETY: the masked lanes read src[jj + shift] for jj + shift in
                        // 0..wo: inside this output row of the columns (sizes asserted by the
                        // caller); masked-off lanes are neither read nor faulted on.
                        *a = unsafe {
                            _mm512_mask_add_ps(
                                *a,
                                masks[v],
                                *a,
                                _mm512_maskz_loadu_ps(masks[v], base),
                            )
                        };
                    }
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                // SAFETY: the lanes of the row's w floats.
                unsafe { _mm512_mask_storeu_ps(out[c].wrapping_add(v * LANES), row_lanes[v], *a) };
            }
        }
    }
}

/// The lanes of register `v` (columns 16v..16v+16 of the row) whose column lies in `lo..hi`.
fn lanes(v: usize, lo: isize, hi: isize) -> __mmask16 {
    let start = (v * LANES) as isize;
    let (a, b) = (
        (lo - start).clamp(0, LANES as isize),
        (hi - start).clamp(0, LANES as isize),
    );
    if a >= b {
        return 0;
    }
    let ones = (1u32 << (b - a)) - 1;
    ((ones << a) & 0xffff) as __mmask16
}
