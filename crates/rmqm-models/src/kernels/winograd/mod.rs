//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): forward, input gradient and weight
//! gradient, in two tile sizes.
//!
//! Each `t x t` block of outputs (a tile) is `Y = A^T [U ⊙ V] A`, with `U = G g G^T` the kernel and
//! `V = B^T d B` the tile's `(t + 2) x (t + 2)` input patch, both transformed to `(t + 2)^2`
//! points; summed over input channels, each point is one product `M[p] (c_out x tiles) = U[p]
//! (c_out x c_in) * V[p] (c_in x tiles)`. The input gradient is the same convolution with the
//! kernel turned by 180 degrees and its channel axes swapped; the weight gradient is `G^T [sum
//! over tiles of (A dY A^T) ⊙ V] G`, again one product per point. Results equal the direct
//! convolution up to rounding.
//!
//! - [`f2x2`], F(2x2, 3x3): 16 points, 16 multiply-adds per tile (4 outputs) and channel pair
//!   instead of im2col's 36; the transforms only add, subtract and halve.
//! - [`f4x4`], F(4x4, 3x3): 36 points, 36 multiply-adds per tile (16 outputs) instead of 144, but
//!   transforms that scale by up to 8 (and the kernel's by 1/24), so rounding errors about 15x
//!   F(2x2)'s in f32. Used where images are at least [`MIN_SIDE_4X4`] on each side (ResNet-18's
//!   32x32 and 16x16 layers); on smaller images its tile rows are too short for the transforms to
//!   vectorise, and F(2x2) is faster.
//!
//! Both schemes share the driver here: images are grouped so that each product has enough
//! columns, the transforms run over a row of tiles at a time on contiguous arrays, so that the
//! compiler vectorises them across tiles, and each gemm runs on one core.

use super::Real;
use super::conv::ConvGeometry;
use super::gemm::{Accum, MatRef, gemm_rm};
use gemm::Parallelism;
use rayon::prelude::*;

/// Tile columns below which a group of images is too narrow for the products to run at speed:
/// images are grouped so that each product has at least this many columns.
const MIN_COLUMNS: usize = 128;

/// Channels below which the products are too thin for the transforms to pay (ResNet-18's first
/// convolution, 3 input channels, stays with im2col).
const MIN_CHANNELS: usize = 16;

/// Image sides from which F(4x4, 3x3) replaces F(2x2, 3x3) (per layer, 128 images, 2 threads:
/// 1.45x as fast on 64 channels 32x32, 1.25x on 128 channels 16x16, 0.7x on 256 channels 8x8).
const MIN_SIDE_4X4: usize = 16;

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

/// True when `g` (where [`applies`] holds) runs as F(4x4, 3x3), false for F(2x2, 3x3).
fn uses_4x4(g: &ConvGeometry) -> bool {
    g.h >= MIN_SIDE_4X4 && g.w >= MIN_SIDE_4X4
}

/// Tiles of one image: `rows x cols` tiles of `t x t` outputs (the last row or column partly
/// outside an image whose side is not a multiple of `t`).
#[derive(Debug, Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
}

impl Tiles {
    fn of(h: usize, w: usize, tile: usize) -> Self {
        Tiles {
            rows: h.div_ceil(tile),
            cols: w.div_ceil(tile),
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

/// Where one group's planes and transformed points lie: `images` images of `channels` planes
/// `h x w`, and points `(points, channels, ld)`, image j's tile (ty, tx) at column
/// `j * tiles + ty * cols + tx`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    points: usize,
    channels: usize,
    h: usize,
    w: usize,
    images: usize,
    tiles: Tiles,
    ld: usize,
}

impl Layout {
    fn new<S: Scheme>(channels: usize, h: usize, w: usize, images: usize) -> Self {
        let tiles = Tiles::of(h, w, S::TILE);
        Layout {
            points: S::POINTS,
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
        self.points * self.channels * self.ld
    }

    /// Plane `c` of image `j` in a buffer of whole images.
    fn plane(&self, j: usize, c: usize) -> std::ops::Range<usize> {
        let size = self.h * self.w;
        (j * self.channels + c) * size..(j * self.channels + c + 1) * size
    }

    /// Where each of the `P` points' rows for channel `c` starts at the first tile of tile row
    /// `ty` of image `j` (increasing with the point).
    fn point_starts<const P: usize>(&self, j: usize, c: usize, ty: usize) -> [usize; P] {
        assert_eq!(P, self.points, "Winograd points per tile");
        let col = j * self.tiles.count() + ty * self.tiles.cols;
        std::array::from_fn(|p| (p * self.channels + c) * self.ld + col)
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

/// Implements [`Scheme`] for `$scheme` with the calling module's functions of the same names
/// (`transform_weights`, `weight_grad_from_points`, `transform_input`, `transform_output`,
/// `transform_output_grad`), its `POINTS` constant and `$scratch::new(tiles)`.
macro_rules! scheme_from_module_functions {
    ($scheme:ident, tile: $tile:expr, scratch: $scratch:ident) => {
        impl Scheme for $scheme {
            const TILE: usize = $tile;
            const POINTS: usize = POINTS;
            type Scratch<T: Real> = $scratch<T>;
            fn scratch<T: Real>(tiles: Tiles) -> $scratch<T> {
                $scratch::new(tiles)
            }
            fn transform_weights<T: Real>(
                weight: &[T],
                c_out: usize,
                c_in: usize,
                flip: bool,
            ) -> Vec<T> {
                transform_weights(weight, c_out, c_in, flip)
            }
            fn weight_grad_from_points<T: Real>(du: &[T], c_out: usize, c_in: usize) -> Vec<T> {
                weight_grad_from_points(du, c_out, c_in)
            }
            fn transform_input<T: Real>(
                x: &[T],
                at: &Layout,
                v: &mut [T],
                scratch: &mut $scratch<T>,
            ) {
                transform_input(x, at, v, scratch)
            }
            fn transform_output<T: Real>(
                m: &[T],
                at: &Layout,
                y: &mut [T],
                bias: Option<&[T]>,
                relu: bool,
            ) {
                transform_output(m, at, y, bias, relu)
            }
            fn transform_output_grad<T: Real>(
                dy: &[T],
                at: &Layout,
                dm: &mut [T],
                scratch: &mut $scratch<T>,
            ) {
                transform_output_grad(dy, at, dm, scratch)
            }
        }
    };
}

mod f2x2;
mod f4x4;

/// A tile size: its transforms, each over a group of images laid out by [`Layout`].
trait Scheme: Send + Sync {
    /// Outputs along each side of a tile.
    const TILE: usize;
    /// Points of a transformed tile.
    const POINTS: usize;
    /// A thread's scratch space for the input and output-gradient transforms.
    type Scratch<T: Real>;
    /// Scratch space for images of `tiles`.
    fn scratch<T: Real>(tiles: Tiles) -> Self::Scratch<T>;
    /// Every kernel's points `(outs, POINTS, ins)`; `flip`: the input gradient's kernels
    /// `g'[i][o] = rot180(g[o][i])`.
    fn transform_weights<T: Real>(weight: &[T], c_out: usize, c_in: usize, flip: bool) -> Vec<T>;
    /// The weight gradient `(c_out, c_in, 3, 3)` from the points' gradient `(POINTS, c_out, c_in)`.
    fn weight_grad_from_points<T: Real>(du: &[T], c_out: usize, c_in: usize) -> Vec<T>;
    /// The group's input patches (whole images at the start of `x`) to points `v`.
    fn transform_input<T: Real>(x: &[T], at: &Layout, v: &mut [T], scratch: &mut Self::Scratch<T>);
    /// Points `m` to the group's outputs in `y`, plus the channel's bias and then ReLU if asked.
    fn transform_output<T: Real>(m: &[T], at: &Layout, y: &mut [T], bias: Option<&[T]>, relu: bool);
    /// The group's output gradients (whole images at the start of `dy`) to points `dm`: the
    /// adjoint of [`Scheme::transform_output`] without bias and ReLU.
    fn transform_output_grad<T: Real>(
        dy: &[T],
        at: &Layout,
        dm: &mut [T],
        scratch: &mut Self::Scratch<T>,
    );
}

/// Every kernel's `P` transformed points, `points(g)` of its 9 taps `g`: `(outs, P, ins)`, so
/// that point p's `outs x ins` matrix has rows `P * ins` apart ([`point_matrix`]). `flip`: the
/// kernels of the input gradient, `g'[i][o] = rot180(g[o][i])`, so `outs` is the weight's input
/// channels and `ins` its output channels.
fn transform_kernels<T: Real, const P: usize>(
    weight: &[T],
    c_out: usize,
    c_in: usize,
    flip: bool,
    points: impl Fn([T; 9]) -> [T; P] + Sync,
) -> Vec<T> {
    let (outs, ins) = if flip { (c_in, c_out) } else { (c_out, c_in) };
    let mut u = vec![T::zero(); outs * P * ins];
    u.par_chunks_mut(P * ins).enumerate().for_each(|(o, rows)| {
        for i in 0..ins {
            let (wo, wi) = if flip { (i, o) } else { (o, i) };
            let kernel = &weight[(wo * c_in + wi) * 9..][..9];
            let g = std::array::from_fn(|t| if flip { kernel[8 - t] } else { kernel[t] });
            for (p, value) in points(g).into_iter().enumerate() {
                rows[p * ins + i] = value;
            }
        }
    });
    u
}

/// What an output of channel `c` goes through last: plus the channel's bias, then ReLU if asked.
fn output_finish<T: Real>(bias: Option<&[T]>, c: usize, relu: bool) -> impl Fn(T) -> T + Copy {
    let b = bias.map_or(T::zero(), |b| b[c]);
    move |v: T| {
        let z = v + b;
        if relu && z <= T::zero() { T::zero() } else { z }
    }
}

/// Point `p`'s `outs x ins` matrix of kernels transformed by [`Scheme::transform_weights`].
fn point_matrix<S: Scheme, T>(u: &[T], p: usize, outs: usize, ins: usize) -> MatRef<'_, T> {
    MatRef::row_major_strided(&u[p * ins..], outs, ins, S::POINTS * ins)
}

/// One thread's buffers: the transformed inputs `(POINTS, ins, ld)`, the products or transformed
/// output gradients `(POINTS, outs, ld)`, and the scheme's scratch space.
struct Buffers<T: Real, S: Scheme> {
    inputs: Vec<T>,
    outputs: Vec<T>,
    scratch: S::Scratch<T>,
}

impl<T: Real, S: Scheme> Buffers<T, S> {
    fn new(ins: &Layout, outs: &Layout) -> Self {
        Buffers {
            inputs: vec![T::zero(); ins.points_len()],
            outputs: vec![T::zero(); outs.points_len()],
            scratch: S::scratch(ins.tiles),
        }
    }
}

/// The convolution of `n` images `(ins, h, w)` with transformed kernels `u (POINTS, outs, ins)`
/// (stride 1, padding 1), plus bias and ReLU if asked: `(n, outs, h, w)`.
struct Convolution<'a, T, S> {
    u: &'a [T],
    ins: usize,
    outs: usize,
    h: usize,
    w: usize,
    bias: Option<&'a [T]>,
    relu: bool,
    scheme: std::marker::PhantomData<S>,
}

impl<T: Real, S: Scheme> Convolution<'_, T, S> {
    fn run(&self, n: usize, x: &[T]) -> Vec<T> {
        let (h, w) = (self.h, self.w);
        let (in_size, out_size) = (self.ins * h * w, self.outs * h * w);
        let per = images_per_group(Tiles::of(h, w, S::TILE).count(), n);
        // one contiguous part of the batch per core, each with its buffers allocated once
        let per_part = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let mut y = vec![T::zero(); n * out_size];
        y.par_chunks_mut(per_part * out_size)
            .zip(x.par_chunks(per_part * in_size))
            .for_each(|(y_part, x_part)| {
                let mut buf = Buffers::<T, S>::new(
                    &Layout::new::<S>(self.ins, h, w, per),
                    &Layout::new::<S>(self.outs, h, w, per),
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
    fn group(&self, yg: &mut [T], xg: &[T], buf: &mut Buffers<T, S>) {
        let (h, w) = (self.h, self.w);
        let images = yg.len() / (self.outs * h * w);
        let (ins, outs) = (
            Layout::new::<S>(self.ins, h, w, images),
            Layout::new::<S>(self.outs, h, w, images),
        );
        let ld = ins.ld;
        let v = &mut buf.inputs[..ins.points_len()];
        S::transform_input(xg, &ins, v, &mut buf.scratch);
        let m = &mut buf.outputs[..outs.points_len()];
        for p in 0..S::POINTS {
            gemm_rm(
                &mut m[p * self.outs * ld..][..self.outs * ld],
                Accum::Replace,
                point_matrix::<S, T>(self.u, p, self.outs, self.ins),
                MatRef::row_major(&v[p * self.ins * ld..], self.ins, ld),
                Parallelism::None,
            );
        }
        S::transform_output(m, &outs, yg, self.bias, self.relu);
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
    if uses_4x4(g) {
        forward_by::<T, f4x4::F4x4>(g, x, weight, bias, relu)
    } else {
        forward_by::<T, f2x2::F2x2>(g, x, weight, bias, relu)
    }
}

/// Input gradient for a geometry where [`applies`] holds: `(n, c_in, h, w)` from `dy`.
pub fn input_grad<T: Real>(g: &ConvGeometry, dy: &[T], weight: &[T]) -> Vec<T> {
    if uses_4x4(g) {
        input_grad_by::<T, f4x4::F4x4>(g, dy, weight)
    } else {
        input_grad_by::<T, f2x2::F2x2>(g, dy, weight)
    }
}

/// Weight gradient `(c_out, c_in, 3, 3)` and, if `want_bias`, bias gradient `(c_out)`, for a
/// geometry where [`applies`] holds.
pub fn weight_grad<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    want_bias: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    if uses_4x4(g) {
        weight_grad_by::<T, f4x4::F4x4>(g, x, dy, want_bias)
    } else {
        weight_grad_by::<T, f2x2::F2x2>(g, x, dy, want_bias)
    }
}

/// [`forward`] by the tile size `S`.
fn forward_by<T: Real, S: Scheme>(
    g: &ConvGeometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    assert!(applies(g), "Winograd 3x3 stride-1 geometry");
    g.check(x, weight, bias.map(<[T]>::len));
    let u = S::transform_weights(weight, g.c_out, g.c_in, false);
    let conv = Convolution::<T, S> {
        u: &u,
        ins: g.c_in,
        outs: g.c_out,
        h: g.h,
        w: g.w,
        bias,
        relu,
        scheme: std::marker::PhantomData,
    };
    conv.run(g.n, x)
}

/// [`input_grad`] by the tile size `S`.
fn input_grad_by<T: Real, S: Scheme>(g: &ConvGeometry, dy: &[T], weight: &[T]) -> Vec<T> {
    assert!(applies(g), "Winograd 3x3 stride-1 geometry");
    assert_eq!(
        dy.len(),
        g.n * g.out_size(),
        "convolution output gradient size"
    );
    assert_eq!(weight.len(), g.c_out * g.ckk(), "convolution weight size");
    let u = S::transform_weights(weight, g.c_out, g.c_in, true);
    let conv = Convolution::<T, S> {
        u: &u,
        ins: g.c_out,
        outs: g.c_in,
        h: g.h,
        w: g.w,
        bias: None,
        relu: false,
        scheme: std::marker::PhantomData,
    };
    conv.run(g.n, dy)
}

/// [`weight_grad`] by the tile size `S`.
fn weight_grad_by<T: Real, S: Scheme>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    want_bias: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    assert!(applies(g), "Winograd 3x3 stride-1 geometry");
    assert_eq!(x.len(), g.n * g.in_size(), "convolution input size");
    assert_eq!(
        dy.len(),
        g.n * g.out_size(),
        "convolution output gradient size"
    );
    let tiles = Tiles::of(g.h, g.w, S::TILE);
    let (in_size, out_size) = (g.in_size(), g.out_size());
    let per = images_per_group(tiles.count(), g.n);
    let parts = rayon::current_num_threads().clamp(1, g.n.max(1));
    let per_part = g.n.div_ceil(parts).max(1);
    let points = S::POINTS * g.c_out * g.c_in;
    let partials: Vec<Vec<T>> = (0..g.n.div_ceil(per_part))
        .into_par_iter()
        .map(|part| {
            let mut du = vec![T::zero(); points];
            let mut buf = Buffers::<T, S>::new(
                &Layout::new::<S>(g.c_in, g.h, g.w, per),
                &Layout::new::<S>(g.c_out, g.h, g.w, per),
            );
            let end = ((part + 1) * per_part).min(g.n);
            for first in (part * per_part..end).step_by(per) {
                let images = per.min(end - first);
                let (ins, outs) = (
                    Layout::new::<S>(g.c_in, g.h, g.w, images),
                    Layout::new::<S>(g.c_out, g.h, g.w, images),
                );
                let ld = ins.ld;
                let v = &mut buf.inputs[..ins.points_len()];
                S::transform_input(&x[first * in_size..], &ins, v, &mut buf.scratch);
                let dm = &mut buf.outputs[..outs.points_len()];
                let dyg = &dy[first * out_size..];
                S::transform_output_grad(dyg, &outs, dm, &mut buf.scratch);
                // dU[p] (c_out x c_in) += dM[p] (c_out x ld) * V[p]^T (ld x c_in)
                for p in 0..S::POINTS {
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
    let dw = S::weight_grad_from_points(&du, g.c_out, g.c_in);
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

    /// Forward (plain, and with bias and ReLU), input, weight and bias gradients by the tile
    /// size `S` against the definition, in f64.
    fn check_against_the_definition<S: Scheme>() {
        // sizes that are and are not multiples of both tile sizes (8, 4 and 1 tiles to a vector,
        // a last tile partly outside), one-pixel images, a last group with fewer images (n = 7)
        for &(n, c_in, c_out, h, w) in &[
            (3, 16, 17, 8, 8),
            (2, 16, 16, 7, 5),
            (7, 18, 16, 4, 4),
            (5, 16, 20, 1, 1),
            (2, 17, 16, 2, 3),
            (1, 16, 16, 32, 32),
            (2, 16, 16, 18, 30),
            (1, 16, 16, 13, 13),
        ] {
            let g = geometry(n, c_in, c_out, h, w);
            assert!(applies(&g));
            let what = |part: &str| format!("{part}, {} tiles, {g:?}", S::TILE);
            let (x, weight, dy) = operands(&g);
            let bias: Vec<f64> = (0..c_out).map(|o| o as f64 * 0.1 - 0.5).collect();
            let plain = naive_conv(&g, &x, &weight);
            let forward = |bias, relu| forward_by::<f64, S>(&g, &x, &weight, bias, relu);
            assert_close(&forward(None, false), &plain, &what("forward"));
            let hw = h * w;
            let with_bias_relu: Vec<f64> = plain
                .iter()
                .enumerate()
                .map(|(i, v)| (v + bias[i / hw % c_out]).max(0.0))
                .collect();
            assert_close(
                &forward(Some(&bias), true),
                &with_bias_relu,
                &what("forward + bias + ReLU"),
            );
            assert_close(
                &input_grad_by::<f64, S>(&g, &dy, &weight),
                &naive_input_grad(&g, &dy, &weight),
                &what("input gradient"),
            );
            let (dw, db) = weight_grad_by::<f64, S>(&g, &x, &dy, true);
            assert_close(
                &dw,
                &naive_weight_grad(&g, &x, &dy),
                &what("weight gradient"),
            );
            let db_want: Vec<f64> = (0..c_out)
                .map(|o| {
                    (0..n)
                        .map(|b| dy[(b * c_out + o) * hw..][..hw].iter().sum::<f64>())
                        .sum()
                })
                .collect();
            assert_close(&db.unwrap(), &db_want, &what("bias gradient"));
        }
    }

    #[test]
    fn f2x2_forward_and_gradients_match_the_definition() {
        check_against_the_definition::<f2x2::F2x2>();
    }

    #[test]
    fn f4x4_forward_and_gradients_match_the_definition() {
        check_against_the_definition::<f4x4::F4x4>();
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
    fn images_of_16_or_more_on_each_side_use_4x4_tiles() {
        assert!(uses_4x4(&geometry(1, 64, 64, 32, 32)));
        assert!(uses_4x4(&geometry(1, 128, 128, 16, 16)));
        assert!(!uses_4x4(&geometry(1, 256, 256, 8, 8)));
        assert!(!uses_4x4(&geometry(1, 64, 64, 32, 8)));
    }

    /// The worst error of the f32 forward by `S` against the f64 definition, relative to the
    /// largest output.
    fn f32_forward_error<S: Scheme>() -> f64 {
        let g = geometry(4, 64, 64, 16, 16);
        let (x, weight, _) = operands(&g);
        let want = naive_conv(&g, &x, &weight);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let w32: Vec<f32> = weight.iter().map(|&v| v as f32).collect();
        let got = forward_by::<f32, S>(&g, &x32, &w32, None, false);
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        worst / scale
    }

    #[test]
    fn f32_forward_stays_within_rounding_of_f64() {
        // 64 input channels: F(2x2) within 1e-5 of the largest output, F(4x4) within 3e-5 (its
        // transforms scale by up to 8 and 1/24)
        let f2 = f32_forward_error::<f2x2::F2x2>();
        assert!(f2 <= 1e-5, "F(2x2, 3x3): relative error {f2}");
        let f4 = f32_forward_error::<f4x4::F4x4>();
        assert!(f4 <= 3e-5, "F(4x4, 3x3): relative error {f4}");
    }
}
