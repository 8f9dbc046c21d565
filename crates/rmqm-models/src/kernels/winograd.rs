//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): forward, input
//! gradient and weight gradient.
//!
//! Each 2x2 block of outputs (a tile) is `Y = A^T [U ⊙ V] A`, with `U = G g G^T` the kernel and
//! `V = B^T d B` the tile's 4x4 input patch, both transformed to 16 points; summed over input
//! channels, each point is one product `M[p] (c_out x tiles) = U[p] (c_out x c_in) * V[p] (c_in x
//! tiles)`: 16 gemms with 16 multiply-adds per tile and channel pair instead of im2col's 36. The
//! input gradient is the same convolution with the kernel turned by 180 degrees and its channel
//! axes swapped; the weight gradient is `G^T [sum over tiles of (A dY A^T) ⊙ V] G`, again 16
//! gemms. Results equal the direct convolution up to rounding (the transforms add and halve).
//!
//! Transforms run over a row of tiles at a time on contiguous arrays (the patches' even and odd
//! columns split apart first), so that the compiler vectorises them across tiles.

use super::Real;
use super::conv::ConvGeometry;
use super::gemm::{Accum, MatRef, gemm_rm};
use gemm::Parallelism;
use rayon::prelude::*;

/// Points of a transformed tile (4 x 4).
const POINTS: usize = 16;

/// Tile columns below which a group of images is too narrow for the 16 products to run at speed:
/// images are grouped so that each product has at least this many columns.
const MIN_COLUMNS: usize = 128;

/// Channels below which the products are too thin for the transforms to pay (ResNet-18's first
/// convolution, 3 input channels, stays with im2col).
const MIN_CHANNELS: usize = 16;

/// True when `g` is a 3x3 convolution with stride 1 and padding 1, at least
/// [`MIN_CHANNELS`] channels in and out: the convolutions this module computes.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.padding == 1
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.h > 0
        && g.w > 0
}

/// Tiles of one image: `rows x cols` tiles of 2x2 outputs (the last row or column half outside
/// an odd-sized image).
#[derive(Debug, Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
}

impl Tiles {
    fn of(h: usize, w: usize) -> Self {
        Tiles {
            rows: h.div_ceil(2),
            cols: w.div_ceil(2),
        }
    }
    fn count(&self) -> usize {
        self.rows * self.cols
    }
}

/// Images to one group of products: enough for [`MIN_COLUMNS`] tile columns, never so many
/// that the cores run out of groups.
fn images_per_group(tiles: usize, n: usize) -> usize {
    let per_core = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    MIN_COLUMNS.div_ceil(tiles.max(1)).clamp(1, per_core)
}

/// The 16 transformed points of every kernel: `(outs, POINTS, ins)`, so that point p's `outs x
/// ins` matrix has rows `POINTS * ins` apart ([`point_matrix`]). `flip`: the kernel of the input
/// gradient, `g'[i][o] = rot180(g[o][i])`, so `outs` is the weight's input channels and `ins`
/// its output channels.
fn transform_weights<T: Real>(weight: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T> {
    let (outs, ins) = if flip { (c_in, c_out) } else { (c_out, c_in) };
    let half = T::from_f64(0.5);
    let mut u = vec![T::zero(); outs * POINTS * ins];
    u.par_chunks_mut(POINTS * ins)
        .enumerate()
        .for_each(|(o, rows)| {
            for i in 0..ins {
                let (wo, wi) = if flip { (i, o) } else { (o, i) };
                let kernel = &weight[(wo * c_in + wi) * 9..][..9];
                let g: [T; 9] =
                    std::array::from_fn(|t| if flip { kernel[8 - t] } else { kernel[t] });
                // G g (4 x 3), then (G g) G^T (4 x 4)
                let gg: [[T; 3]; 4] = [
                    [g[0], g[1], g[2]],
                    std::array::from_fn(|c| (g[c] + g[3 + c] + g[6 + c]) * half),
                    std::array::from_fn(|c| (g[c] - g[3 + c] + g[6 + c]) * half),
                    [g[6], g[7], g[8]],
                ];
                for (r, row) in gg.iter().enumerate() {
                    let values = [
                        row[0],
                        (row[0] + row[1] + row[2]) * half,
                        (row[0] - row[1] + row[2]) * half,
                        row[2],
                    ];
                    for (k, value) in values.into_iter().enumerate() {
                        rows[(r * 4 + k) * ins + i] = value;
                    }
                }
            }
        });
    u
}

/// Point `p`'s `outs x ins` matrix of kernels transformed by [`transform_weights`].
fn point_matrix<T>(u: &[T], p: usize, outs: usize, ins: usize) -> MatRef<'_, T> {
    MatRef::row_major_strided(&u[p * ins..], outs, ins, POINTS * ins)
}

/// The weight gradient `(c_out, c_in, 3, 3)` from the gradient of the transformed kernel
/// `du (POINTS, c_out, c_in)`: `G^T dU G`, the adjoint of [`transform_weights`].
fn weight_grad_from_points<T: Real>(du: &[T], c_out: usize, c_in: usize) -> Vec<T> {
    let per_point = c_out * c_in;
    let half = T::from_f64(0.5);
    let mut dw = vec![T::zero(); per_point * 9];
    dw.par_chunks_mut(9 * c_in)
        .enumerate()
        .for_each(|(o, kernels)| {
            for (i, kernel) in kernels.chunks_exact_mut(9).enumerate() {
                let k = o * c_in + i;
                let mut u = [T::zero(); POINTS];
                for (p, value) in u.iter_mut().enumerate() {
                    *value = du[p * per_point + k];
                }
                for r in 0..3 {
                    // row r of G^T dU (3 x 4), then of (G^T dU) G (3 x 3)
                    let y: [T; 4] = match r {
                        0 => [0, 1, 2, 3].map(|c| u[c] + (u[4 + c] + u[8 + c]) * half),
                        1 => [0, 1, 2, 3].map(|c| (u[4 + c] - u[8 + c]) * half),
                        _ => [0, 1, 2, 3].map(|c| (u[4 + c] + u[8 + c]) * half + u[12 + c]),
                    };
                    kernel[r * 3] = y[0] + (y[1] + y[2]) * half;
                    kernel[r * 3 + 1] = (y[1] - y[2]) * half;
                    kernel[r * 3 + 2] = (y[1] + y[2]) * half + y[3];
                }
            }
        });
    dw
}

/// Where one group's planes and transformed points lie: `images` images of `channels` planes
/// `h x w`, and points `(POINTS, channels, ld)`, image j's tile (ty, tx) at column
/// `j * tiles + ty * cols + tx`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    channels: usize,
    h: usize,
    w: usize,
    images: usize,
    tiles: Tiles,
    ld: usize,
}

impl Layout {
    fn new(channels: usize, h: usize, w: usize, images: usize) -> Self {
        let tiles = Tiles::of(h, w);
        Layout {
            channels,
            h,
            w,
            images,
            tiles,
            ld: images * tiles.count(),
        }
    }

    /// Elements of the points buffer.
    fn points_len(&self) -> usize {
        POINTS * self.channels * self.ld
    }

    /// Plane `c` of image `j` in a buffer of whole images.
    fn plane(&self, j: usize, c: usize) -> std::ops::Range<usize> {
        let size = self.h * self.w;
        (j * self.channels + c) * size..(j * self.channels + c + 1) * size
    }

    /// Where each point's row for channel `c` starts at the first tile of tile row `ty` of
    /// image `j`.
    fn point_starts(&self, j: usize, c: usize, ty: usize) -> [usize; POINTS] {
        let col = j * self.tiles.count() + ty * self.tiles.cols;
        std::array::from_fn(|p| (p * self.channels + c) * self.ld + col)
    }
}

/// Sets `even[i] = src[2i]` and `odd[i] = src[2i + 1]`, zero past the end of `src`.
fn deinterleave<T: Real>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let len = even.len().min(odd.len());
    let pairs = (src.len() / 2).min(len);
    // a plain indexed loop over slices cut to length: the compiler vectorises it
    let (src_pairs, even_pairs, odd_pairs) =
        (&src[..2 * pairs], &mut even[..pairs], &mut odd[..pairs]);
    for i in 0..pairs {
        even_pairs[i] = src_pairs[2 * i];
        odd_pairs[i] = src_pairs[2 * i + 1];
    }
    let mut done = pairs;
    if src.len() % 2 == 1 && done < len {
        even[done] = src[src.len() - 1];
        odd[done] = T::zero();
        done += 1;
    }
    even[done..].fill(T::zero());
    odd[done..].fill(T::zero());
}

/// The even and odd columns of every row of one plane, with zero rows around it: after
/// [`SplitPlane::fill`] with `offset`, row `k` holds the plane's row `k + offset` (zero outside),
/// split as `even[i] = row[2i + offset]`, `odd[i] = row[2i + offset + 1]` for `i` in `0..=cols`
/// (zero outside the row). Inputs use `offset = -1` (padding 1), output gradients `0`.
struct SplitPlane<T> {
    data: Vec<T>,
    len: usize,
}

impl<T: Real> SplitPlane<T> {
    fn new(tiles: Tiles) -> Self {
        let len = tiles.cols + 1;
        SplitPlane {
            data: vec![T::zero(); (2 * tiles.rows + 2) * 2 * len],
            len,
        }
    }

    /// Splits the rows of `plane` (`h x w`), shifted by `offset` (-1 or 0).
    fn fill(&mut self, plane: &[T], h: usize, w: usize, offset: isize) {
        let len = self.len;
        for (k, split) in self.data.chunks_exact_mut(2 * len).enumerate() {
            let (even, odd) = split.split_at_mut(len);
            let r = k as isize + offset;
            if r < 0 || r as usize >= h {
                even.fill(T::zero());
                odd.fill(T::zero());
                continue;
            }
            let row = &plane[r as usize * w..][..w];
            if offset < 0 {
                // even[0] is the padding column left of the row, odd[0] its first element
                even[0] = T::zero();
                odd[0] = row[0];
                deinterleave(&row[1..], &mut even[1..], &mut odd[1..]);
            } else {
                deinterleave(row, even, odd);
            }
        }
    }

    /// Even and odd columns of row `k`.
    fn row(&self, k: usize) -> (&[T], &[T]) {
        self.data[2 * k * self.len..][..2 * self.len].split_at(self.len)
    }
}

/// `L` values of `s` from `at`, unchecked: the tile kernels below run many of these per tile,
/// and their callers check a whole tile row's bounds once ([`check_tile_row`]).
///
/// # Safety
/// `at + L <= s.len()`.
#[inline(always)]
unsafe fn lanes<T: Real, const L: usize>(s: &[T], at: usize) -> [T; L] {
    debug_assert!(at + L <= s.len());
    // SAFETY: at + L <= s.len() (this function's contract), so the L elements read lie in s;
    // read_unaligned needs no alignment beyond T's, which s's pointer has.
    unsafe { std::ptr::read_unaligned(s.as_ptr().add(at).cast::<[T; L]>()) }
}

/// Stores `values` at `at` of `s`, unchecked (see [`lanes`]).
///
/// # Safety
/// `at + L <= s.len()`.
#[inline(always)]
unsafe fn store_lanes<T: Real, const L: usize>(s: &mut [T], at: usize, values: [T; L]) {
    debug_assert!(at + L <= s.len());
    // SAFETY: at + L <= s.len() (this function's contract), so the L elements written lie in s,
    // which is borrowed exclusively.
    unsafe { std::ptr::write_unaligned(s.as_mut_ptr().add(at).cast::<[T; L]>(), values) }
}

/// Panics unless every point's row holds `cols` tiles from its start in a buffer of `len`
/// elements, and every split row (even and odd columns) holds `cols + 1`: what the tile kernels
/// below need for tiles `i..i + L` with `i + L <= cols`.
fn check_tile_row<T>(starts: &[usize; POINTS], cols: usize, len: usize, rows: &[(&[T], &[T])]) {
    assert!(
        starts.iter().all(|&s| s + cols <= len),
        "Winograd points buffer too short"
    );
    assert!(
        rows.iter().all(|(e, o)| e.len() > cols && o.len() > cols),
        "Winograd split rows too short"
    );
}

/// Lane-wise `f(a, b)` (a plain loop: `std::array::from_fn` is not always inlined).
#[inline(always)]
fn map2<T: Real, const L: usize>(a: &[T; L], b: &[T; L], f: impl Fn(T, T) -> T) -> [T; L] {
    let mut out = [T::zero(); L];
    for l in 0..L {
        out[l] = f(a[l], b[l]);
    }
    out
}

/// Lane-wise `f(a, b, c)`.
#[inline(always)]
fn map3<T: Real, const L: usize>(
    a: &[T; L],
    b: &[T; L],
    c: &[T; L],
    f: impl Fn(T, T, T) -> T,
) -> [T; L] {
    let mut out = [T::zero(); L];
    for l in 0..L {
        out[l] = f(a[l], b[l], c[l]);
    }
    out
}

/// Column `k` of `d B` for tiles `i..i + L` of one input row split into `(even, odd)` columns:
/// with d0 = even[i], d1 = odd[i], d2 = even[i + 1], d3 = odd[i + 1], columns d0 - d2, d1 + d2,
/// d2 - d1 and d1 - d3.
///
/// # Safety
/// `i + L + 1 <= even.len()` and `<= odd.len()`.
#[inline(always)]
unsafe fn patch_column<T: Real, const L: usize>(row: (&[T], &[T]), i: usize, k: usize) -> [T; L] {
    let (even, odd) = row;
    // SAFETY: every read is at i or i + 1, L lanes, within both rows (this function's contract)
    unsafe {
        match k {
            0 => map2(&lanes(even, i), &lanes(even, i + 1), |a, b| a - b),
            1 => map2(&lanes(odd, i), &lanes(even, i + 1), |a, b| a + b),
            2 => map2(&lanes(even, i + 1), &lanes(odd, i), |a, b| a - b),
            _ => map2(&lanes(odd, i), &lanes(odd, i + 1), |a, b| a - b),
        }
    }
}

/// `B^T t` for column `k` of the tiles' `t = d B` (rows t0..t3): t0 - t2, t1 + t2, t2 - t1 and
/// t1 - t3, stored as points `4r + k` at `starts[4r + k] + i` of `v`.
///
/// # Safety
/// `starts[p] + i + L <= v.len()` for every point p.
#[inline(always)]
unsafe fn store_input_column<T: Real, const L: usize>(
    t: &[[T; L]; 4],
    k: usize,
    i: usize,
    v: &mut [T],
    starts: &[usize; POINTS],
) {
    let out = [
        map2(&t[0], &t[2], |a, b| a - b),
        map2(&t[1], &t[2], |a, b| a + b),
        map2(&t[2], &t[1], |a, b| a - b),
        map2(&t[1], &t[3], |a, b| a - b),
    ];
    for (r, values) in out.into_iter().enumerate() {
        // SAFETY: starts[p] + i + L <= v.len() (this function's contract)
        unsafe { store_lanes(v, starts[r * 4 + k] + i, values) };
    }
}

/// `B^T d B` for tiles `i..i + L` of a tile row whose four input rows' even and odd columns are
/// `rows`, stored at `starts[p] + i` of `v`. One column of the 4x4 patch at a time, so that few
/// values are live (they stay in registers).
///
/// # Safety
/// `i + L + 1 <=` every row's length, and `starts[p] + i + L <= v.len()` for every point p
/// (see [`check_tile_row`]).
#[inline(always)]
unsafe fn input_tiles<T: Real, const L: usize>(
    rows: &[(&[T], &[T]); 4],
    i: usize,
    v: &mut [T],
    starts: &[usize; POINTS],
) {
    for k in 0..4 {
        // SAFETY: the reads and writes this function's contract allows
        unsafe {
            let t: [[T; L]; 4] = [
                patch_column(rows[0], i, k),
                patch_column(rows[1], i, k),
                patch_column(rows[2], i, k),
                patch_column(rows[3], i, k),
            ];
            store_input_column(&t, k, i, v, starts);
        }
    }
}

/// `A^T m A` for tiles `i..i + L` of the points at `starts[p] + i` of `m`: the tiles' outputs
/// (row 0 column 0, row 0 column 1, row 1 column 0, row 1 column 1).
///
/// # Safety
/// `starts[p] + i + L <= m.len()` for every point p.
#[inline(always)]
unsafe fn output_tiles<T: Real, const L: usize>(
    m: &[T],
    i: usize,
    starts: &[usize; POINTS],
) -> [[T; L]; 4] {
    // SAFETY: starts[p] + i + L <= m.len() (this function's contract)
    let point = |p: usize| unsafe { lanes::<T, L>(m, starts[p] + i) };
    // A^T m: s[0][k] = m0k + m1k + m2k, s[1][k] = m1k - m2k - m3k
    let (mut s0, mut s1) = ([[T::zero(); L]; 4], [[T::zero(); L]; 4]);
    for (k, (upper, lower)) in s0.iter_mut().zip(s1.iter_mut()).enumerate() {
        let (m0, m1, m2, m3) = (point(k), point(4 + k), point(8 + k), point(12 + k));
        *upper = map3(&m0, &m1, &m2, |a, b, c| a + b + c);
        *lower = map3(&m1, &m2, &m3, |a, b, c| a - b - c);
    }
    // (A^T m) A: y[r][0] = s_r0 + s_r1 + s_r2, y[r][1] = s_r1 - s_r2 - s_r3
    [
        map3(&s0[0], &s0[1], &s0[2], |a, b, c| a + b + c),
        map3(&s0[1], &s0[2], &s0[3], |a, b, c| a - b - c),
        map3(&s1[0], &s1[1], &s1[2], |a, b, c| a + b + c),
        map3(&s1[1], &s1[2], &s1[3], |a, b, c| a - b - c),
    ]
}

/// Writes tiles `i..i + L` of one output row: `first[l]` at column `2 (i + l)`, `second[l]` at
/// the next, each through `finish`, leaving out columns past the row's end.
#[inline(always)]
fn store_pairs<T: Real, const L: usize>(
    dst: &mut [T],
    i: usize,
    first: &[T; L],
    second: &[T; L],
    finish: impl Fn(T) -> T,
) {
    let at = 2 * i;
    if at + 2 * L <= dst.len() {
        // interleaved in registers, then one store of 2L values
        let mut pairs = [[T::zero(); 2]; L];
        for l in 0..L {
            pairs[l] = [finish(first[l]), finish(second[l])];
        }
        dst[at..at + 2 * L].copy_from_slice(pairs.as_flattened());
    } else {
        for l in 0..L {
            if let Some(d) = dst.get_mut(at + 2 * l) {
                *d = finish(first[l]);
            }
            if let Some(d) = dst.get_mut(at + 2 * l + 1) {
                *d = finish(second[l]);
            }
        }
    }
}

/// `A dY A^T` for tiles `i..i + L` of a tile row whose two gradient rows' even and odd columns
/// are `rows`, stored at `starts[p] + i` of `dm` (the adjoint of [`output_tiles`]).
///
/// # Safety
/// `i + L <=` every row's length, and `starts[p] + i + L <= dm.len()` for every point p.
#[inline(always)]
unsafe fn gradient_tiles<T: Real, const L: usize>(
    rows: &[(&[T], &[T]); 2],
    i: usize,
    dm: &mut [T],
    starts: &[usize; POINTS],
) {
    // SAFETY: reads at i, L lanes, within every row (this function's contract)
    let [a, b, c, d] = unsafe {
        [
            lanes::<T, L>(rows[0].0, i),
            lanes::<T, L>(rows[0].1, i),
            lanes::<T, L>(rows[1].0, i),
            lanes::<T, L>(rows[1].1, i),
        ]
    };
    let zero = [T::zero(); L];
    // A dY (4 x 2): rows (a, b), (a + c, b + d), (a - c, b - d), (-c, -d)
    let pq: [([T; L], [T; L]); 4] = [
        (a, b),
        (map2(&a, &c, |x, y| x + y), map2(&b, &d, |x, y| x + y)),
        (map2(&a, &c, |x, y| x - y), map2(&b, &d, |x, y| x - y)),
        (map2(&zero, &c, |x, y| x - y), map2(&zero, &d, |x, y| x - y)),
    ];
    // (A dY) A^T: row (p, q) -> (p, p + q, p - q, -q)
    for (r, (p, q)) in pq.iter().enumerate() {
        let row = [
            *p,
            map2(p, q, |x, y| x + y),
            map2(p, q, |x, y| x - y),
            map2(&zero, q, |x, y| x - y),
        ];
        for (k, values) in row.into_iter().enumerate() {
            // SAFETY: starts[p] + i + L <= dm.len() (this function's contract)
            unsafe { store_lanes(dm, starts[r * 4 + k] + i, values) };
        }
    }
}

/// Runs `step::<8>`, then `step::<4>`, then `step::<1>` over tiles `0..count`, each at the first
/// tile not yet done (so the compiler vectorises across 8 or 4 tiles).
macro_rules! over_tiles {
    ($count:expr, |$i:ident, $lanes:ident| $body:expr) => {{
        let count = $count;
        let mut $i = 0;
        while $i + 8 <= count {
            {
                const $lanes: usize = 8;
                $body;
            }
            $i += 8;
        }
        while $i + 4 <= count {
            {
                const $lanes: usize = 4;
                $body;
            }
            $i += 4;
        }
        while $i < count {
            {
                const $lanes: usize = 1;
                $body;
            }
            $i += 1;
        }
    }};
}

/// Transforms the input patches of the group's images (whole images at the start of `x`) into
/// `v` (see [`Layout`]).
#[inline(never)]
fn transform_input<T: Real>(x: &[T], at: &Layout, v: &mut [T], split: &mut SplitPlane<T>) {
    for j in 0..at.images {
        for c in 0..at.channels {
            split.fill(&x[at.plane(j, c)], at.h, at.w, -1);
            for ty in 0..at.tiles.rows {
                // input rows 2ty - 1 .. 2ty + 2 are split rows 2ty .. 2ty + 3
                let rows: [(&[T], &[T]); 4] = std::array::from_fn(|r| split.row(2 * ty + r));
                let starts = at.point_starts(j, c, ty);
                check_tile_row(&starts, at.tiles.cols, v.len(), &rows);
                // SAFETY: over_tiles runs tiles i..i + L with i + L <= cols, and
                // check_tile_row asserted the bounds input_tiles needs for those
                over_tiles!(at.tiles.cols, |i, L| unsafe {
                    input_tiles::<T, L>(&rows, i, v, &starts)
                });
            }
        }
    }
}

/// The inverse direction for outputs: the points `m` (see [`Layout`]) to the group's images in
/// `y`, each tile `A^T m A`, plus the channel's bias and then ReLU if asked.
#[inline(never)]
fn transform_output<T: Real>(m: &[T], at: &Layout, y: &mut [T], bias: Option<&[T]>, relu: bool) {
    for j in 0..at.images {
        for c in 0..at.channels {
            let b = bias.map_or(T::zero(), |b| b[c]);
            let finish = |v: T| {
                let z = v + b;
                if relu && z <= T::zero() { T::zero() } else { z }
            };
            let plane = &mut y[at.plane(j, c)];
            for ty in 0..at.tiles.rows {
                let starts = at.point_starts(j, c, ty);
                let (upper, lower) = plane[2 * ty * at.w..].split_at_mut(at.w);
                let lower_len = if 2 * ty + 1 < at.h { at.w } else { 0 };
                let lower = &mut lower[..lower_len];
                check_tile_row::<T>(&starts, at.tiles.cols, m.len(), &[]);
                over_tiles!(at.tiles.cols, |i, L| {
                    // SAFETY: over_tiles runs tiles i..i + L with i + L <= cols, and
                    // check_tile_row asserted that every point's row holds cols tiles
                    let [y00, y01, y10, y11] = unsafe { output_tiles::<T, L>(m, i, &starts) };
                    store_pairs(upper, i, &y00, &y01, finish);
                    store_pairs(lower, i, &y10, &y11, finish);
                });
            }
        }
    }
}

/// The adjoint of [`transform_output`] (without bias and ReLU): the group's output gradients
/// (whole images at the start of `dy`) to points `dm` (see [`Layout`]), each tile `A dY A^T`.
#[inline(never)]
fn transform_output_grad<T: Real>(dy: &[T], at: &Layout, dm: &mut [T], split: &mut SplitPlane<T>) {
    for j in 0..at.images {
        for c in 0..at.channels {
            split.fill(&dy[at.plane(j, c)], at.h, at.w, 0);
            for ty in 0..at.tiles.rows {
                let rows = [split.row(2 * ty), split.row(2 * ty + 1)];
                let starts = at.point_starts(j, c, ty);
                check_tile_row(&starts, at.tiles.cols, dm.len(), &rows);
                // SAFETY: over_tiles runs tiles i..i + L with i + L <= cols, and
                // check_tile_row asserted the bounds gradient_tiles needs for those
                over_tiles!(at.tiles.cols, |i, L| unsafe {
                    gradient_tiles::<T, L>(&rows, i, dm, &starts)
                });
            }
        }
    }
}

/// One thread's buffers: the transformed inputs `(POINTS, ins, ld)`, the products or transformed
/// output gradients `(POINTS, outs, ld)`, and one split plane.
struct Buffers<T> {
    inputs: Vec<T>,
    outputs: Vec<T>,
    split: SplitPlane<T>,
}

impl<T: Real> Buffers<T> {
    fn new(ins: &Layout, outs: &Layout) -> Self {
        Buffers {
            inputs: vec![T::zero(); ins.points_len()],
            outputs: vec![T::zero(); outs.points_len()],
            split: SplitPlane::new(ins.tiles),
        }
    }
}

/// The convolution of `n` images `(ins, h, w)` with transformed kernels `u (POINTS, outs, ins)`
/// (stride 1, padding 1), plus bias and ReLU if asked: `(n, outs, h, w)`.
struct Convolution<'a, T> {
    u: &'a [T],
    ins: usize,
    outs: usize,
    h: usize,
    w: usize,
    bias: Option<&'a [T]>,
    relu: bool,
}

impl<T: Real> Convolution<'_, T> {
    fn run(&self, n: usize, x: &[T]) -> Vec<T> {
        let (h, w) = (self.h, self.w);
        let (in_size, out_size) = (self.ins * h * w, self.outs * h * w);
        let per = images_per_group(Tiles::of(h, w).count(), n);
        // one contiguous part of the batch per core, each with its buffers allocated once
        let per_part = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let mut y = vec![T::zero(); n * out_size];
        y.par_chunks_mut(per_part * out_size)
            .zip(x.par_chunks(per_part * in_size))
            .for_each(|(y_part, x_part)| {
                let mut buf = Buffers::new(
                    &Layout::new(self.ins, h, w, per),
                    &Layout::new(self.outs, h, w, per),
                );
                let groups = y_part
                    .chunks_mut(per * out_size)
                    .zip(x_part.chunks(per * in_size));
                for (yg, xg) in groups {
                    self.group(yg, xg, &mut buf);
                }
            });
        y
    }

    /// The outputs `yg` of the whole images `xg`, at most the group size of `buf`.
    fn group(&self, yg: &mut [T], xg: &[T], buf: &mut Buffers<T>) {
        let (h, w) = (self.h, self.w);
        let images = yg.len() / (self.outs * h * w);
        let (ins, outs) = (
            Layout::new(self.ins, h, w, images),
            Layout::new(self.outs, h, w, images),
        );
        let ld = ins.ld;
        let v = &mut buf.inputs[..ins.points_len()];
        transform_input(xg, &ins, v, &mut buf.split);
        let m = &mut buf.outputs[..outs.points_len()];
        for p in 0..POINTS {
            gemm_rm(
                &mut m[p * self.outs * ld..][..self.outs * ld],
                Accum::Replace,
                point_matrix(self.u, p, self.outs, self.ins),
                MatRef::row_major(&v[p * self.ins * ld..], self.ins, ld),
                Parallelism::None,
            );
        }
        transform_output(m, &outs, yg, self.bias, self.relu);
    }
}

/// Convolution forward for a geometry where [`applies`] holds: `(n, c_out, h, w)`, plus bias
/// and then ReLU if asked.
pub fn forward<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    assert!(applies(g), "Winograd F(2x2, 3x3) geometry");
    g.check(x, weight, bias.map(<[T]>::len));
    let u = transform_weights(weight, g.c_out, g.c_in, false);
    let conv = Convolution {
        u: &u,
        ins: g.c_in,
        outs: g.c_out,
        h: g.h,
        w: g.w,
        bias,
        relu,
    };
    conv.run(g.n, x)
}

/// Input gradient for a geometry where [`applies`] holds: `(n, c_in, h, w)` from `dy`.
pub fn input_grad<T: Real>(g: &ConvGeometry, dy: &[T], weight: &[T]) -> Vec<T> {
    assert!(applies(g), "Winograd F(2x2, 3x3) geometry");
    assert_eq!(
        dy.len(),
        g.n * g.out_size(),
        "convolution output gradient size"
    );
    assert_eq!(weight.len(), g.c_out * g.ckk(), "convolution weight size");
    let u = transform_weights(weight, g.c_out, g.c_in, true);
    let conv = Convolution {
        u: &u,
        ins: g.c_out,
        outs: g.c_in,
        h: g.h,
        w: g.w,
        bias: None,
        relu: false,
    };
    conv.run(g.n, dy)
}

/// Weight gradient `(c_out, c_in, 3, 3)` and, if `want_bias`, bias gradient `(c_out)`, for a
/// geometry where [`applies`] holds.
pub fn weight_grad<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    want_bias: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    assert!(applies(g), "Winograd F(2x2, 3x3) geometry");
    assert_eq!(x.len(), g.n * g.in_size(), "convolution input size");
    assert_eq!(
        dy.len(),
        g.n * g.out_size(),
        "convolution output gradient size"
    );
    let tiles = Tiles::of(g.h, g.w);
    let (in_size, out_size) = (g.in_size(), g.out_size());
    let per = images_per_group(tiles.count(), g.n);
    let parts = rayon::current_num_threads().clamp(1, g.n.max(1));
    let per_part = g.n.div_ceil(parts).max(1);
    let points = POINTS * g.c_out * g.c_in;
    let partials: Vec<Vec<T>> = (0..g.n.div_ceil(per_part))
        .into_par_iter()
        .map(|part| {
            let mut du = vec![T::zero(); points];
            let mut buf = Buffers::new(
                &Layout::new(g.c_in, g.h, g.w, per),
                &Layout::new(g.c_out, g.h, g.w, per),
            );
            let end = ((part + 1) * per_part).min(g.n);
            for first in (part * per_part..end).step_by(per) {
                let images = per.min(end - first);
                let (ins, outs) = (
                    Layout::new(g.c_in, g.h, g.w, images),
                    Layout::new(g.c_out, g.h, g.w, images),
                );
                let ld = ins.ld;
                let v = &mut buf.inputs[..ins.points_len()];
                transform_input(&x[first * in_size..], &ins, v, &mut buf.split);
                let dm = &mut buf.outputs[..outs.points_len()];
                let dyg = &dy[first * out_size..];
                transform_output_grad(dyg, &outs, dm, &mut buf.split);
                // dU[p] (c_out x c_in) += dM[p] (c_out x ld) * V[p]^T (ld x c_in)
                for p in 0..POINTS {
                    gemm_rm(
                        &mut du[p * g.c_out * g.c_in..][..g.c_out * g.c_in],
                        Accum::Add,
                        MatRef::row_major(&dm[p * g.c_out * ld..], g.c_out, ld),
                        MatRef::row_major(&v[p * g.c_in * ld..], g.c_in, ld).t(),
                        Parallelism::None,
                    );
                }
            }
            du
        })
        .collect();
    let mut iter = partials.into_iter();
    let mut du = iter.next().unwrap_or_else(|| vec![T::zero(); points]);
    for other in iter {
        du.iter_mut().zip(other).for_each(|(a, b)| *a += b);
    }
    let dw = weight_grad_from_points(&du, g.c_out, g.c_in);
    let db = want_bias.then(|| {
        let hw = g.h * g.w;
        let mut db = vec![T::zero(); g.c_out];
        for image in dy.chunks_exact(out_size) {
            for (s, plane) in db.iter_mut().zip(image.chunks_exact(hw)) {
                for &v in plane {
                    *s += v;
                }
            }
        }
        db
    });
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::super::reference::{naive_conv, naive_input_grad, naive_weight_grad, operands};
    use super::*;

    fn geometry(n: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> ConvGeometry {
        ConvGeometry {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        }
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * scale,
                "{what}[{i}]: {a} against {b}"
            );
        }
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        // even and odd sizes, one-pixel images, a last group with fewer images (n = 7)
        for &(n, c_in, c_out, h, w) in &[
            (3, 16, 17, 8, 8),
            (2, 16, 16, 7, 5),
            (7, 18, 16, 4, 4),
            (5, 16, 20, 1, 1),
            (2, 17, 16, 2, 3),
            (1, 16, 16, 32, 32),
        ] {
            let g = geometry(n, c_in, c_out, h, w);
            assert!(applies(&g));
            let (x, weight, dy) = operands(&g);
            let bias: Vec<f64> = (0..c_out).map(|o| o as f64 * 0.1 - 0.5).collect();
            let plain = naive_conv(&g, &x, &weight);
            assert_close(&forward(&g, &x, &weight, None, false), &plain, "forward");
            let hw = h * w;
            let with_bias_relu: Vec<f64> = plain
                .iter()
                .enumerate()
                .map(|(i, v)| (v + bias[i / hw % c_out]).max(0.0))
                .collect();
            assert_close(
                &forward(&g, &x, &weight, Some(&bias), true),
                &with_bias_relu,
                "forward + bias + ReLU",
            );
            assert_close(
                &input_grad(&g, &dy, &weight),
                &naive_input_grad(&g, &dy, &weight),
                "input gradient",
            );
            let (dw, db) = weight_grad(&g, &x, &dy, true);
            assert_close(&dw, &naive_weight_grad(&g, &x, &dy), "weight gradient");
            let db_want: Vec<f64> = (0..c_out)
                .map(|o| {
                    (0..n)
                        .map(|b| dy[(b * c_out + o) * hw..][..hw].iter().sum::<f64>())
                        .sum()
                })
                .collect();
            assert_close(&db.unwrap(), &db_want, "bias gradient");
        }
    }

    #[test]
    fn only_stride_one_padding_one_3x3_with_enough_channels_applies() {
        let g = geometry(1, 16, 16, 8, 8);
        assert!(applies(&g));
        assert!(!applies(&ConvGeometry { c_in: 3, ..g }));
        assert!(!applies(&ConvGeometry { stride: 2, ..g }));
        assert!(!applies(&ConvGeometry { padding: 0, ..g }));
        assert!(!applies(&ConvGeometry {
            kh: 1,
            kw: 1,
            padding: 0,
            ..g
        }));
    }

    #[test]
    fn f32_forward_stays_within_rounding_of_f64() {
        let g = geometry(4, 64, 64, 8, 8);
        let (x, weight, _) = operands(&g);
        let want = naive_conv(&g, &x, &weight);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let w32: Vec<f32> = weight.iter().map(|&v| v as f32).collect();
        let got = forward(&g, &x32, &w32, None, false);
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-5 * scale,
            "worst error {worst} at scale {scale}"
        );
    }
}
