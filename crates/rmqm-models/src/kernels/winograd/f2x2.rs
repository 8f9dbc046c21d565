//! Winograd's F(2x2, 3x3): 2x2 output tiles, 4x4 input patches, 16 points. The transforms only
//! add, subtract and halve. Transforms run over a row of tiles at a time on contiguous arrays
//! (the patches' even and odd columns split apart first), so that the compiler vectorises them
//! across tiles.

use super::{
    Layout, Scheme, Tiles, lanes, map2, map3, output_finish, store_lanes, transform_kernels,
};
use crate::kernels::Real;
use rayon::prelude::*;

/// Points of a transformed tile (4 x 4).
const POINTS: usize = 16;

/// F(2x2, 3x3) ([`Scheme`]).
pub(super) struct F2x2;

scheme_from_module_functions!(F2x2, tile: 2, scratch: SplitPlane);

/// The 16 transformed points of every kernel (see [`transform_kernels`]).
fn transform_weights<T: Real>(weight: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T> {
    transform_kernels(weight, c_out, c_in, flip, kernel_tile_points)
}

/// `G g G^T`: the 16 points of one kernel's 9 taps `g`, point `4r + k` at `r * 4 + k`.
fn kernel_tile_points<T: Real>(g: [T; 9]) -> [T; POINTS] {
    let half = T::from_f64(0.5);
    // G g (4 x 3), then (G g) G^T (4 x 4)
    let gg: [[T; 3]; 4] = [
        [g[0], g[1], g[2]],
        std::array::from_fn(|c| (g[c] + g[3 + c] + g[6 + c]) * half),
        std::array::from_fn(|c| (g[c] - g[3 + c] + g[6 + c]) * half),
        [g[6], g[7], g[8]],
    ];
    let mut points = [T::zero(); POINTS];
    for (r, row) in gg.iter().enumerate() {
        let values = [
            row[0],
            (row[0] + row[1] + row[2]) * half,
            (row[0] - row[1] + row[2]) * half,
            row[2],
        ];
        points[r * 4..r * 4 + 4].copy_from_slice(&values);
    }
    points
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
pub(super) struct SplitPlane<T> {
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
                let starts = at.point_starts::<POINTS>(j, c, ty);
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
            let finish = output_finish(bias, c, relu);
            let plane = &mut y[at.plane(j, c)];
            for ty in 0..at.tiles.rows {
                let starts = at.point_starts::<POINTS>(j, c, ty);
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
                let starts = at.point_starts::<POINTS>(j, c, ty);
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
