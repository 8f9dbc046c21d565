//! Winograd's F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity: 4x4 output
//! tiles, 6x6 input patches, 36 points. The input and output transforms scale by 2, 4, 5 and 8,
//! the kernel's by 1/4, 1/6, 1/12 and 1/24 (computed in f64, rounded once). Transforms run over a
//! row of tiles at a time on contiguous arrays (the plane's columns split by their remainder
//! modulo 4 first), so that the compiler vectorises them across tiles.

use super::{
    Layout, Scheme, Tiles, lanes, map2, map3, output_finish, store_lanes, transform_kernels,
};
use crate::kernels::Real;
use rayon::prelude::*;

/// Outputs along each side of a tile.
const TILE: usize = 4;

/// Inputs along each side of a tile's patch (`TILE + 2`), and points along each side of its
/// transform.
const SIDE: usize = TILE + 2;

/// Points of a transformed tile (6 x 6).
const POINTS: usize = SIDE * SIDE;

/// F(4x4, 3x3) ([`Scheme`]).
pub(super) struct F4x4;

scheme_from_module_functions!(F4x4, tile: 4, scratch: PlanePhases);

/// `G x` for the three values `x` of a kernel's column or row: its six points.
fn kernel_points(x: [f64; 3]) -> [f64; SIDE] {
    let [a, b, c] = x;
    [
        a / 4.0,
        -(a + b + c) / 6.0,
        (b - a - c) / 6.0,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

/// `G^T u` for six points `u` of a kernel gradient's column or row: the adjoint of
/// [`kernel_points`].
fn kernel_points_adjoint(u: [f64; SIDE]) -> [f64; 3] {
    let (sum12, sum34) = (u[1] + u[2], u[3] + u[4]);
    [
        u[0] / 4.0 - sum12 / 6.0 + sum34 / 24.0,
        (u[2] - u[1]) / 6.0 + (u[3] - u[4]) / 12.0,
        (sum34 - sum12) / 6.0 + u[5],
    ]
}

/// The 36 transformed points of every kernel (see [`transform_kernels`]), computed in f64 and
/// rounded once.
fn transform_weights<T: Real>(weight: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T> {
    transform_kernels(weight, c_out, c_in, flip, kernel_tile_points)
}

/// `G g G^T`: the 36 points of one kernel's 9 taps `g`, point `6r + k` at `r * SIDE + k`.
fn kernel_tile_points<T: Real>(g: [T; 9]) -> [T; POINTS] {
    let g = g.map(|v| v.to_f64());
    // G g (6 x 3) one kernel column at a time, then (G g) G^T (6 x 6) by rows
    let columns: [[f64; SIDE]; 3] =
        std::array::from_fn(|c| kernel_points([g[c], g[3 + c], g[6 + c]]));
    let mut points = [T::zero(); POINTS];
    for r in 0..SIDE {
        let row = kernel_points([columns[0][r], columns[1][r], columns[2][r]]);
        for (k, value) in row.into_iter().enumerate() {
            points[r * SIDE + k] = T::from_f64(value);
        }
    }
    points
}

/// The weight gradient `(c_out, c_in, 3, 3)` from the gradient of the transformed kernel
/// `du (POINTS, c_out, c_in)`: `G^T dU G`, the adjoint of [`transform_weights`], in f64.
fn weight_grad_from_points<T: Real>(du: &[T], c_out: usize, c_in: usize) -> Vec<T> {
    let per_point = c_out * c_in;
    let mut dw = vec![T::zero(); per_point * 9];
    dw.par_chunks_mut(9 * c_in)
        .enumerate()
        .for_each(|(o, kernels)| {
            for (i, kernel) in kernels.chunks_exact_mut(9).enumerate() {
                let k = o * c_in + i;
                let u: [f64; POINTS] = std::array::from_fn(|p| du[p * per_point + k].to_f64());
                // G^T dU (3 x 6) one column at a time, then (G^T dU) G (3 x 3) by rows
                let columns: [[f64; 3]; SIDE] = std::array::from_fn(|c| {
                    kernel_points_adjoint(std::array::from_fn(|r| u[r * SIDE + c]))
                });
                for r in 0..3 {
                    let row = kernel_points_adjoint(std::array::from_fn(|c| columns[c][r]));
                    for (c, value) in row.into_iter().enumerate() {
                        kernel[r * 3 + c] = T::from_f64(value);
                    }
                }
            }
        });
    dw
}

/// One plane's columns split by their remainder modulo [`TILE`], with a zero row above the plane
/// and zero rows below it to a whole number of tile rows: after [`PlanePhases::fill`], phase `q`
/// holds the plane's element `(r, TILE * i + q)` at [`PlanePhases::row_start`]`(r + 1) + i`
/// (zero past the row's end), and one zero guard value at each end of the phase, so that the
/// tile kernels may read one value before a row's first tile and one after its last.
pub(super) struct PlanePhases<T> {
    data: Vec<T>,
    cols: usize,
    len: usize,
}

impl<T: Real> PlanePhases<T> {
    fn new(tiles: Tiles) -> Self {
        let cols = tiles.cols;
        // rows: the zero row, TILE per tile row, and one more zero row for the input patches'
        // last row; a guard at each end
        let len = (TILE * tiles.rows + 2) * cols + 2;
        PlanePhases {
            data: vec![T::zero(); TILE * len],
            cols,
            len,
        }
    }

    /// Where row `k` starts in every phase (row 0 is the zero row above the plane).
    fn row_start(&self, k: usize) -> usize {
        1 + k * self.cols
    }

    /// Splits `plane` (`h x w`, with `h <= TILE * rows` and `w <= TILE * cols`). Rows and
    /// columns past the plane are zero: never written here, zeroed at [`PlanePhases::new`].
    fn fill(&mut self, plane: &[T], h: usize, w: usize) {
        let (cols, len) = (self.cols, self.len);
        assert!(
            w <= TILE * cols && self.row_start(h + 1) <= len && plane.len() >= h * w,
            "Winograd plane phases too short"
        );
        let first = self.row_start(1);
        let [q0, q1, q2, q3]: [&mut [T]; TILE] = {
            let (q0, rest) = self.data.split_at_mut(len);
            let (q1, rest) = rest.split_at_mut(len);
            let (q2, q3) = rest.split_at_mut(len);
            [q0, q1, q2, q3].map(|q| &mut q[first..first + h * cols])
        };
        if w == TILE * cols {
            // the rows run on into each other in every phase as in the plane: one long loop,
            // which the compiler vectorises (plain indexing over slices cut to length)
            let src = &plane[..h * w];
            for m in 0..h * cols {
                q0[m] = src[TILE * m];
                q1[m] = src[TILE * m + 1];
                q2[m] = src[TILE * m + 2];
                q3[m] = src[TILE * m + 3];
            }
        } else {
            // a last tile partly past the row's end: one value at a time
            let at = |r: usize, c: usize| if c < w { plane[r * w + c] } else { T::zero() };
            for r in 0..h {
                for i in 0..cols {
                    let m = r * cols + i;
                    q0[m] = at(r, TILE * i);
                    q1[m] = at(r, TILE * i + 1);
                    q2[m] = at(r, TILE * i + 2);
                    q3[m] = at(r, TILE * i + 3);
                }
            }
        }
    }

    /// The [`TILE`] phases.
    fn phases(&self) -> [&[T]; TILE] {
        std::array::from_fn(|q| &self.data[q * self.len..][..self.len])
    }
}

/// Panics unless every point's row holds `cols` tiles from its start in a buffer of `len`
/// elements (the starts grow with the point), and every phase holds a value before each row
/// start in `bases` and `cols + 1` from it: what the tile kernels below need for tiles `i..i + L`
/// with `i + L <= cols`.
fn check_tile_row<T>(
    starts: &[usize; POINTS],
    cols: usize,
    len: usize,
    phases: &[&[T]; TILE],
    bases: &[usize],
) {
    assert!(
        starts.windows(2).all(|p| p[0] <= p[1]) && starts[POINTS - 1] + cols <= len,
        "Winograd points buffer too short"
    );
    let phase_len = phases.iter().map(|q| q.len()).min().unwrap_or(0);
    assert!(
        bases.iter().all(|&b| b >= 1 && b + cols < phase_len),
        "Winograd plane phases too short"
    );
}

/// `B^T d` for six lane vectors `d` (a patch's column or row): `4 d0 - 5 d2 + d4`,
/// `(d3 + d4) - 4 (d1 + d2)`, `(d4 - d3) + 4 (d1 - d2)`, `(d4 - d2) + 2 (d3 - d1)`,
/// `(d4 - d2) - 2 (d3 - d1)` and `4 d1 - 5 d3 + d5`.
#[inline(always)]
fn input_points<T: Real, const L: usize>(d: &[[T; L]; SIDE]) -> [[T; L]; SIDE] {
    let (two, four) = (T::from_f64(2.0), T::from_f64(4.0));
    let (minus_two, minus_four, minus_five) =
        (T::from_f64(-2.0), T::from_f64(-4.0), T::from_f64(-5.0));
    let s12 = map2(&d[1], &d[2], |a, b| a + b);
    let d12 = map2(&d[1], &d[2], |a, b| a - b);
    let s34 = map2(&d[3], &d[4], |a, b| a + b);
    let d43 = map2(&d[4], &d[3], |a, b| a - b);
    let d42 = map2(&d[4], &d[2], |a, b| a - b);
    let d31 = map2(&d[3], &d[1], |a, b| a - b);
    [
        map3(&d[0], &d[2], &d[4], |a, c, e| {
            a.mul_add(four, c.mul_add(minus_five, e))
        }),
        map2(&s12, &s34, |s, t| s.mul_add(minus_four, t)),
        map2(&d12, &d43, |s, t| s.mul_add(four, t)),
        map2(&d31, &d42, |s, t| s.mul_add(two, t)),
        map2(&d31, &d42, |s, t| s.mul_add(minus_two, t)),
        map3(&d[1], &d[3], &d[5], |b, c, e| {
            b.mul_add(four, c.mul_add(minus_five, e))
        }),
    ]
}

/// `A^T m` for six lane vectors `m` (points' column or row): `m0 + (m1 + m2) + (m3 + m4)`,
/// `(m1 - m2) + 2 (m3 - m4)`, `(m1 + m2) + 4 (m3 + m4)` and `(m1 - m2) + 8 (m3 - m4) + m5`.
#[inline(always)]
fn output_values<T: Real, const L: usize>(m: &[[T; L]; SIDE]) -> [[T; L]; TILE] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let s12 = map2(&m[1], &m[2], |a, b| a + b);
    let d12 = map2(&m[1], &m[2], |a, b| a - b);
    let s34 = map2(&m[3], &m[4], |a, b| a + b);
    let d34 = map2(&m[3], &m[4], |a, b| a - b);
    [
        map3(&m[0], &s12, &s34, |a, s, t| a + s + t),
        map2(&d34, &d12, |t, s| t.mul_add(two, s)),
        map2(&s34, &s12, |t, s| t.mul_add(four, s)),
        map3(&d34, &d12, &m[5], |t, s, e| t.mul_add(eight, s + e)),
    ]
}

/// `A y` for four lane vectors `y` (an output gradient's column or row): the adjoint of
/// [`output_values`], `y0`, `(y0 + y2) + (y1 + y3)`, `(y0 + y2) - (y1 + y3)`,
/// `(y0 + 4 y2) + (2 y1 + 8 y3)`, `(y0 + 4 y2) - (2 y1 + 8 y3)` and `y3`.
#[inline(always)]
fn gradient_points<T: Real, const L: usize>(y: &[[T; L]; TILE]) -> [[T; L]; SIDE] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let s02 = map2(&y[0], &y[2], |a, c| a + c);
    let s13 = map2(&y[1], &y[3], |b, d| b + d);
    let w02 = map2(&y[2], &y[0], |c, a| c.mul_add(four, a));
    let w13 = map2(&y[3], &y[1], |d, b| d.mul_add(eight, b * two));
    [
        y[0],
        map2(&s02, &s13, |s, t| s + t),
        map2(&s02, &s13, |s, t| s - t),
        map2(&w02, &w13, |s, t| s + t),
        map2(&w02, &w13, |s, t| s - t),
        y[3],
    ]
}

/// `B^T d B` for tiles `i..i + L` of a row of `cols` tiles, whose patches' six input rows start
/// at `bases` in the plane's `phases` ([`PlanePhases`]), stored at `starts[p] + i` of `v`: each
/// patch row through [`input_points`], then each column.
///
/// # Safety
/// `i + L <= cols`; `bases[r] >= 1` and `bases[r] + cols + 1 <=` every phase's length; and
/// `starts[p] + i + L <= v.len()` for every point p (see [`check_tile_row`]).
#[inline(always)]
unsafe fn input_tiles<T: Real, const L: usize>(
    phases: &[&[T]; TILE],
    bases: &[usize; SIDE],
    cols: usize,
    i: usize,
    v: &mut [T],
    starts: &[usize; POINTS],
) {
    let mut t = [[[T::zero(); L]; SIDE]; SIDE];
    for (r, &base) in bases.iter().enumerate() {
        // patch column c of tile i is the row's column TILE * i + c - 1: phase (c + 3) % TILE at
        // tile i - 1 (c = 0), i (c = 1..=4) or i + 1 (c = 5); the first and last are zero
        // (padding) at the row's first and last tile
        // SAFETY: reads from base + i - 1 to base + i + L + 1 <= base + cols + 1, within every
        // phase (this function's contract)
        let mut d: [[T; L]; SIDE] = unsafe {
            [
                lanes(phases[3], base + i - 1),
                lanes(phases[0], base + i),
                lanes(phases[1], base + i),
                lanes(phases[2], base + i),
                lanes(phases[3], base + i),
                lanes(phases[0], base + i + 1),
            ]
        };
        if i == 0 {
            d[0][0] = T::zero();
        }
        if i + L == cols {
            d[5][L - 1] = T::zero();
        }
        t[r] = input_points(&d);
    }
    for k in 0..SIDE {
        let column: [[T; L]; SIDE] = std::array::from_fn(|r| t[r][k]);
        for (r, values) in input_points(&column).into_iter().enumerate() {
            // SAFETY: starts[p] + i + L <= v.len() (this function's contract)
            unsafe { store_lanes(v, starts[r * SIDE + k] + i, values) };
        }
    }
}

/// `A^T m A` for tiles `i..i + L` of the points at `starts[p] + i` of `m`: the tiles' 4x4
/// outputs, by row.
///
/// # Safety
/// `starts[p] + i + L <= m.len()` for every point p.
#[inline(always)]
unsafe fn output_tiles<T: Real, const L: usize>(
    m: &[T],
    i: usize,
    starts: &[usize; POINTS],
) -> [[[T; L]; TILE]; TILE] {
    // A^T m by columns: s[r][k]
    let mut s = [[[T::zero(); L]; SIDE]; TILE];
    for k in 0..SIDE {
        // SAFETY: starts[p] + i + L <= m.len() (this function's contract)
        let column: [[T; L]; SIDE] =
            std::array::from_fn(|r| unsafe { lanes(m, starts[r * SIDE + k] + i) });
        for (r, values) in output_values(&column).into_iter().enumerate() {
            s[r][k] = values;
        }
    }
    // (A^T m) A by rows
    s.map(|row| output_values(&row))
}

/// Writes tiles `i..i + L` of one output row: `values[c][l]` at column `TILE * (i + l) + c`,
/// each through `finish`, leaving out columns past the row's end.
#[inline(always)]
fn store_row<T: Real, const L: usize>(
    dst: &mut [T],
    i: usize,
    values: &[[T; L]; TILE],
    finish: impl Fn(T) -> T,
) {
    let at = TILE * i;
    if at + TILE * L <= dst.len() {
        // interleaved in registers, then one store of TILE * L values
        let mut quads = [[T::zero(); TILE]; L];
        for l in 0..L {
            quads[l] = std::array::from_fn(|c| finish(values[c][l]));
        }
        dst[at..at + TILE * L].copy_from_slice(quads.as_flattened());
    } else {
        for l in 0..L {
            for (c, column) in values.iter().enumerate() {
                if let Some(d) = dst.get_mut(at + TILE * l + c) {
                    *d = finish(column[l]);
                }
            }
        }
    }
}

/// `A dY A^T` for tiles `i..i + L` of a tile row whose four gradient rows start at `bases` in
/// the plane's `phases` ([`PlanePhases`]), stored at `starts[p] + i` of `dm` (the adjoint of
/// [`output_tiles`]).
///
/// # Safety
/// `bases[r] + i + L <=` every phase's length, and `starts[p] + i + L <= dm.len()` for every
/// point p.
#[inline(always)]
unsafe fn gradient_tiles<T: Real, const L: usize>(
    phases: &[&[T]; TILE],
    bases: &[usize; TILE],
    i: usize,
    dm: &mut [T],
    starts: &[usize; POINTS],
) {
    // A dY by columns: p[r][c]
    let mut p = [[[T::zero(); L]; TILE]; SIDE];
    for c in 0..TILE {
        // SAFETY: reads at bases[r] + i, L lanes, within every phase (this function's contract)
        let column: [[T; L]; TILE] =
            std::array::from_fn(|r| unsafe { lanes(phases[c], bases[r] + i) });
        for (r, values) in gradient_points(&column).into_iter().enumerate() {
            p[r][c] = values;
        }
    }
    // (A dY) A^T by rows
    for (r, row) in p.iter().enumerate() {
        for (k, values) in gradient_points(row).into_iter().enumerate() {
            // SAFETY: starts[p] + i + L <= dm.len() (this function's contract)
            unsafe { store_lanes(dm, starts[r * SIDE + k] + i, values) };
        }
    }
}

/// Transforms the input patches of the group's images (whole images at the start of `x`) into
/// `v` (see [`Layout`]).
#[inline(never)]
fn transform_input<T: Real>(x: &[T], at: &Layout, v: &mut [T], split: &mut PlanePhases<T>) {
    let cols = at.tiles.cols;
    for j in 0..at.images {
        for c in 0..at.channels {
            split.fill(&x[at.plane(j, c)], at.h, at.w);
            let phases = split.phases();
            for ty in 0..at.tiles.rows {
                // input rows TILE * ty - 1 .. TILE * ty + 4 are phase rows TILE * ty .. + 5
                let bases: [usize; SIDE] = std::array::from_fn(|r| split.row_start(TILE * ty + r));
                let starts = at.point_starts::<POINTS>(j, c, ty);
                check_tile_row(&starts, cols, v.len(), &phases, &bases);
                // SAFETY: over_tiles runs tiles i..i + L with i + L <= cols, and
                // check_tile_row asserted the bounds input_tiles needs for those
                over_tiles!(cols, |i, L| unsafe {
                    input_tiles::<T, L>(&phases, &bases, cols, i, v, &starts)
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
                // the tile row's output rows, fewer at the bottom of the image
                let first_row = TILE * ty;
                let row_count = TILE.min(at.h - first_row);
                let block = &mut plane[first_row * at.w..][..row_count * at.w];
                check_tile_row::<T>(&starts, at.tiles.cols, m.len(), &[&[]; TILE], &[]);
                over_tiles!(at.tiles.cols, |i, L| {
                    // SAFETY: over_tiles runs tiles i..i + L with i + L <= cols, and
                    // check_tile_row asserted that every point's row holds cols tiles
                    let values = unsafe { output_tiles::<T, L>(m, i, &starts) };
                    for (row, row_values) in block.chunks_exact_mut(at.w).zip(&values) {
                        store_row(row, i, row_values, finish);
                    }
                });
            }
        }
    }
}

/// The adjoint of [`transform_output`] (without bias and ReLU): the group's output gradients
/// (whole images at the start of `dy`) to points `dm` (see [`Layout`]), each tile `A dY A^T`.
#[inline(never)]
fn transform_output_grad<T: Real>(dy: &[T], at: &Layout, dm: &mut [T], split: &mut PlanePhases<T>) {
    let cols = at.tiles.cols;
    for j in 0..at.images {
        for c in 0..at.channels {
            split.fill(&dy[at.plane(j, c)], at.h, at.w);
            let phases = split.phases();
            for ty in 0..at.tiles.rows {
                // gradient rows TILE * ty .. + 3 are phase rows TILE * ty + 1 .. + 4
                let bases: [usize; TILE] =
                    std::array::from_fn(|r| split.row_start(TILE * ty + 1 + r));
                let starts = at.point_starts::<POINTS>(j, c, ty);
                check_tile_row(&starts, cols, dm.len(), &phases, &bases);
                // SAFETY: over_tiles runs tiles i..i + L with i + L <= cols, and
                // check_tile_row asserted the bounds gradient_tiles needs for those
                over_tiles!(cols, |i, L| unsafe {
                    gradient_tiles::<T, L>(&phases, &bases, i, dm, &starts)
                });
            }
        }
    }
}
