//! Seeded augmentations for the self-supervised methods, as one projective warp per view with
//! bilinear sampling and zero fill:
//! - 28x28 grey: random rotation up to 15 degrees, then random perspective (distortion 0.5, p 0.8);
//! - 32x32 RGB: random resized crop (scale 0.08-1, ratio 3/4-4/3), horizontal and vertical flips
//!   (p 0.3 each), random perspective (distortion 0.2, p 0.5).
//!
//! Each view's randomness comes from its own stream keyed by (seed, epoch, image id, view), so a
//! view does not depend on batch order, batch size or thread count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The augmentation pipeline for an input shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Augmentation {
    /// Rotation then perspective (for 28x28 grey images).
    RotatePerspective {
        /// Largest rotation, degrees.
        max_degrees: f64,
        /// Perspective distortion scale.
        distortion: f64,
        /// Probability of the perspective step.
        p: f64,
    },
    /// Resized crop, flips, perspective (for 32x32 colour images).
    CropFlipPerspective {
        /// Probability of each flip.
        flip_p: f64,
        /// Perspective distortion scale.
        distortion: f64,
        /// Probability of the perspective step.
        p: f64,
    },
}

impl Augmentation {
    /// The pipeline for images of `channels` channels: grey gets rotation/perspective, colour crop/flip.
    pub fn for_images(channels: usize) -> Self {
        if channels == 1 {
            Augmentation::RotatePerspective {
                max_degrees: 15.0,
                distortion: 0.5,
                p: 0.8,
            }
        } else {
            Augmentation::CropFlipPerspective {
                flip_p: 0.3,
                distortion: 0.2,
                p: 0.5,
            }
        }
    }
}

/// A 3x3 matrix mapping homogeneous output coordinates to input coordinates.
pub(crate) type Mat3 = [f64; 9];

fn mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            c[i * 3 + j] = (0..3).map(|k| a[i * 3 + k] * b[k * 3 + j]).sum();
        }
    }
    c
}

const IDENTITY: Mat3 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

/// The homography taking each `from` point to the matching `to` point (solved as an 8x8 system).
pub fn homography(from: &[[f64; 2]; 4], to: &[[f64; 2]; 4]) -> Mat3 {
    let mut a = [[0.0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i], to[i]);
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..8 {
        let piv = (col..8)
            .max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))
            .unwrap();
        a.swap(col, piv);
        let p = a[col][col];
        if p.abs() < 1e-12 {
            return IDENTITY;
        }
        for r in 0..8 {
            if r != col {
                let f = a[r][col] / p;
                let pivot_row = a[col];
                for (x, y) in a[r].iter_mut().zip(pivot_row.iter()).skip(col) {
                    *x -= f * y;
                }
            }
        }
    }
    let h: Vec<f64> = (0..8).map(|i| a[i][8] / a[i][i]).collect();
    [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0]
}

/// torchvision's random perspective: corners moved inward by up to `distortion` of half the side;
/// returns the map from output to input coordinates.
fn random_perspective(rng: &mut ChaCha8Rng, w: usize, h: usize, distortion: f64) -> Mat3 {
    let (hw, hh) = ((w / 2) as f64, (h / 2) as f64);
    let dx = (distortion * hw).floor() as i64;
    let dy = (distortion * hh).floor() as i64;
    let (wl, hl) = (w as i64 - 1, h as i64 - 1);
    let mut r = |lo: i64, hi: i64| rng.random_range(lo..=hi.max(lo)) as f64;
    let end = [
        [r(0, dx), r(0, dy)],
        [r(wl - dx, wl), r(0, dy)],
        [r(wl - dx, wl), r(hl - dy, hl)],
        [r(0, dx), r(hl - dy, hl)],
    ];
    let start = [
        [0.0, 0.0],
        [wl as f64, 0.0],
        [wl as f64, hl as f64],
        [0.0, hl as f64],
    ];
    homography(&end, &start)
}

/// Rotation by `degrees` about the image centre, as a map from output to input coordinates.
fn rotation(w: usize, h: usize, degrees: f64) -> Mat3 {
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let t = -degrees.to_radians();
    let (c, s) = (t.cos(), t.sin());
    // p_in = R(-t) (p_out - c) + c
    [
        c,
        -s,
        cx - c * cx + s * cy,
        s,
        c,
        cy - s * cx - c * cy,
        0.0,
        0.0,
        1.0,
    ]
}

/// torchvision's RandomResizedCrop parameters (scale 0.08-1, ratio 3/4-4/3), as a map from output
/// to input coordinates of the same size.
fn random_resized_crop(rng: &mut ChaCha8Rng, w: usize, h: usize) -> Mat3 {
    let area = (w * h) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut crop = (0.0, 0.0, w as f64, h as f64);
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let ratio = rng.random_range(lo..=hi).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w as f64 && ch <= h as f64 {
            let i = rng.random_range(0..=(h - ch as usize)) as f64;
            let j = rng.random_range(0..=(w - cw as usize)) as f64;
            crop = (j, i, cw, ch);
            break;
        }
    }
    let (x0, y0, cw, ch) = crop;
    let (sx, sy) = (cw / w as f64, ch / h as f64);
    // Pixel centres: x_in + 0.5 = x0 + (x_out + 0.5) * sx.
    [
        sx,
        0.0,
        x0 + 0.5 * sx - 0.5,
        0.0,
        sy,
        y0 + 0.5 * sy - 0.5,
        0.0,
        0.0,
        1.0,
    ]
}

/// Output pixels of a row whose source coordinates are computed together: one AVX2 register of
/// f64, so that the two divisions per pixel run four at a time.
const COORD_LANES: usize = 4;

/// Samples `img` (c, h, w) at the input coordinates `m` gives each output pixel; bilinear, zero outside.
pub fn warp(img: &[f32], c: usize, h: usize, w: usize, m: &Mat3) -> Vec<f32> {
    let mut out = vec![0.0f32; c * h * w];
    warp_bordered(&bordered_planes(img, c, h, w), c, h, w, m, &mut out);
    out
}

/// Each plane of `img` with a one-pixel border of zeros: the four taps of a point whose top-left
/// tap is at most one pixel outside read zeros there (as zero padding gives); a point further out
/// has all four taps outside, and its output stays 0.
fn bordered_planes(img: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    assert!(img.len() >= c * h * w, "warp: image size");
    let (bw, bh) = (w + 2, h + 2);
    let mut bordered = vec![0.0f32; c * bh * bw];
    for ch in 0..c {
        for y in 0..h {
            bordered[(ch * bh + y + 1) * bw + 1..][..w]
                .copy_from_slice(&img[(ch * h + y) * w..][..w]);
        }
    }
    bordered
}

/// The warp of the zero-bordered planes into `out` (zeros): in AVX-512 lanes where the build has
/// them, else four coordinates at a time in plain Rust; the same values bit for bit either way.
fn warp_bordered(bordered: &[f32], c: usize, h: usize, w: usize, m: &Mat3, out: &mut [f32]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512vl"
    ))]
    return super::warp_lanes::warp_bordered(bordered, c, h, w, m, out);
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512vl"
    )))]
    warp_bordered_generic(bordered, c, h, w, m, out)
}

/// [`warp_bordered`] in plain Rust: four source coordinates computed together per row.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512vl"
    ),
    allow(dead_code)
)]
fn warp_bordered_generic(
    bordered: &[f32],
    c: usize,
    h: usize,
    w: usize,
    m: &Mat3,
    out: &mut [f32],
) {
    let (bw, bh) = (w + 2, h + 2);
    let (mut us, mut vs, mut zs) = (
        [0.0f64; COORD_LANES],
        [0.0; COORD_LANES],
        [0.0; COORD_LANES],
    );
    for y in 0..h {
        let yf = y as f64;
        // The same sums as m * (x, y, 1), in the same order: (m0 x + m1 y) + m2.
        let (uy, vy, zy) = (m[1] * yf, m[4] * yf, m[7] * yf);
        for first in (0..w).step_by(COORD_LANES) {
            for lane in 0..COORD_LANES {
                let xf = (first + lane) as f64;
                let z = m[6] * xf + zy + m[8];
                zs[lane] = z;
                us[lane] = (m[0] * xf + uy + m[2]) / z;
                vs[lane] = (m[3] * xf + vy + m[5]) / z;
            }
            for lane in 0..COORD_LANES.min(w - first) {
                let (u, v, z) = (us[lane], vs[lane], zs[lane]);
                // Near a perspective's vanishing line the source point runs off to infinity (or
                // behind the view): nothing to sample there, the output stays 0.
                if !(z > 1e-9 && u.abs() < 1e6 && v.abs() < 1e6) {
                    continue;
                }
                let (x0, y0) = (u.floor(), v.floor());
                let (fx, fy) = ((u - x0) as f32, (v - y0) as f32);
                let (x0, y0) = (x0 as i64, y0 as i64);
                if x0 < -1 || y0 < -1 || x0 >= w as i64 || y0 >= h as i64 {
                    continue;
                }
                let at = (y0 + 1) as usize * bw + (x0 + 1) as usize;
                for ch in 0..c {
                    let p = &bordered[ch * bh * bw + at..][..bw + 2];
                    let top = p[0] * (1.0 - fx) + p[1] * fx;
                    let bottom = p[bw] * (1.0 - fx) + p[bw + 1] * fx;
                    out[ch * h * w + y * w + first + lane] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
    }
}

/// One augmented view of one image (c, h, w), from the stream keyed by (seed, epoch, id, view).
pub fn augment_image(
    aug: Augmentation,
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    key: (u64, u64, u32, u8),
) -> Vec<f32> {
    warp(img, c, h, w, &view_matrix(aug, h, w, key))
}

/// The warp of one view of an h x w image, from the stream keyed by (seed, epoch, id, view).
fn view_matrix(aug: Augmentation, h: usize, w: usize, key: (u64, u64, u32, u8)) -> Mat3 {
    let (seed, epoch, id, view) = key;
    let stream = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ (view as u64) << 61;
    let mut rng = ChaCha8Rng::seed_from_u64(stream);
    match aug {
        Augmentation::RotatePerspective {
            max_degrees,
            distortion,
            p,
        } => {
            let rot = rotation(w, h, rng.random_range(-max_degrees..=max_degrees));
            // Output -> (undo perspective) -> rotated image -> (undo rotation) -> input.
            if rng.random::<f64>() < p {
                mul(&rot, &random_perspective(&mut rng, w, h, distortion))
            } else {
                rot
            }
        }
        Augmentation::CropFlipPerspective {
            flip_p,
            distortion,
            p,
        } => {
            let mut m = random_resized_crop(&mut rng, w, h);
            if rng.random::<f64>() < flip_p {
                m = mul(
                    &m,
                    &[-1.0, 0.0, w as f64 - 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                );
            }
            if rng.random::<f64>() < flip_p {
                m = mul(
                    &m,
                    &[1.0, 0.0, 0.0, 0.0, -1.0, h as f64 - 1.0, 0.0, 0.0, 1.0],
                );
            }
            if rng.random::<f64>() < p {
                m = mul(&m, &random_perspective(&mut rng, w, h, distortion));
            }
            m
        }
    }
}

/// Augments a batch of images (each c*h*w values, ids giving the streams) in parallel.
pub fn augment_batch(
    aug: Augmentation,
    images: &[&[f32]],
    ids: &[u32],
    c: usize,
    h: usize,
    w: usize,
    seed: u64,
    epoch: u64,
    view: u8,
) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = images
        .par_iter()
        .zip(ids.par_iter())
        .map(|(img, &id)| augment_image(aug, img, c, h, w, (seed, epoch, id, view)))
        .collect();
    parts.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warp as first written, pixel by pixel with bounds-checked taps: [`warp`] must equal it
    /// bit for bit.
    fn warp_pixel_by_pixel(img: &[f32], c: usize, h: usize, w: usize, m: &Mat3) -> Vec<f32> {
        let mut out = vec![0.0f32; c * h * w];
        for y in 0..h {
            for x in 0..w {
                let (xf, yf) = (x as f64, y as f64);
                let z = m[6] * xf + m[7] * yf + m[8];
                let u = (m[0] * xf + m[1] * yf + m[2]) / z;
                let v = (m[3] * xf + m[4] * yf + m[5]) / z;
                if !(z > 1e-9 && u.abs() < 1e6 && v.abs() < 1e6) {
                    continue;
                }
                let (x0, y0) = (u.floor(), v.floor());
                let (fx, fy) = ((u - x0) as f32, (v - y0) as f32);
                let (x0, y0) = (x0 as i64, y0 as i64);
                for ch in 0..c {
                    let plane = &img[ch * h * w..(ch + 1) * h * w];
                    let at = |yy: i64, xx: i64| -> f32 {
                        if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                            0.0
                        } else {
                            plane[yy as usize * w + xx as usize]
                        }
                    };
                    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
                    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
                    out[ch * h * w + y * w + x] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        out
    }

    #[test]
    fn the_warp_equals_the_pixel_by_pixel_one_bit_for_bit() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (c, h, w) in [(1, 28, 28), (3, 32, 32), (2, 5, 7)] {
            let img: Vec<f32> = (0..c * h * w)
                .map(|_| rng.random_range(-0.5..1.5))
                .collect();
            let aug = Augmentation::for_images(c);
            // The training views' matrices, shifts far outside and just outside, a vanishing
            // line inside the image, and arbitrary matrices.
            let mut matrices = vec![
                IDENTITY,
                [1.0, 0.0, -40.0, 0.0, 1.0, 3.0, 0.0, 0.0, 1.0],
                [1.0, 0.0, -0.5, 0.0, 1.0, h as f64 - 0.75, 0.0, 0.0, 1.0],
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -0.1, 0.0, 1.0],
                // z = 0 everywhere (infinite or NaN coordinates), and NaN entries.
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                [f64::NAN, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, f64::NAN, 1.0],
            ];
            for _ in 0..200 {
                matrices.push(std::array::from_fn(|_| rng.random_range(-2.0..2.0)));
            }
            let generic = |m: &Mat3| {
                let mut out = vec![0.0f32; c * h * w];
                warp_bordered_generic(&bordered_planes(&img, c, h, w), c, h, w, m, &mut out);
                out
            };
            for (i, m) in matrices.iter().enumerate() {
                let want = bits(&warp_pixel_by_pixel(&img, c, h, w, m));
                assert_eq!(
                    bits(&warp(&img, c, h, w, m)),
                    want,
                    "{c}x{h}x{w}, matrix {i}"
                );
                assert_eq!(bits(&generic(m)), want, "{c}x{h}x{w}, matrix {i}, generic");
            }
            for id in 0..300 {
                let m = view_matrix(aug, h, w, (3, 1, id, (id % 2) as u8));
                assert_eq!(
                    bits(&warp(&img, c, h, w, &m)),
                    bits(&warp_pixel_by_pixel(&img, c, h, w, &m)),
                    "{c}x{h}x{w}, view of image {id}"
                );
            }
        }
    }

    #[test]
    fn homography_maps_the_corners() {
        let from = [[1.0, 2.0], [20.0, 1.0], [25.0, 26.0], [0.0, 22.0]];
        let to = [[0.0, 0.0], [27.0, 0.0], [27.0, 27.0], [0.0, 27.0]];
        let m = homography(&from, &to);
        for (f, t) in from.iter().zip(&to) {
            let z = m[6] * f[0] + m[7] * f[1] + m[8];
            let u = (m[0] * f[0] + m[1] * f[1] + m[2]) / z;
            let v = (m[3] * f[0] + m[4] * f[1] + m[5]) / z;
            assert!((u - t[0]).abs() < 1e-9 && (v - t[1]).abs() < 1e-9);
        }
    }

    #[test]
    fn identity_warp_and_rotation_keep_the_image() {
        let img: Vec<f32> = (0..28 * 28).map(|i| (i % 7) as f32 / 7.0).collect();
        assert_eq!(warp(&img, 1, 28, 28, &IDENTITY), img);
        // A 90-degree rotation four times is the identity (up to the grid).
        let r = rotation(28, 28, 90.0);
        let mut x = img.clone();
        for _ in 0..4 {
            x = warp(&x, 1, 28, 28, &r);
        }
        assert!(x.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn degenerate_perspectives_sample_zero_not_nan() {
        let img = vec![0.7f32; 28 * 28];
        // z = 1 - x/10 crosses zero inside the image.
        let m = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -0.1, 0.0, 1.0];
        let out = warp(&img, 1, 28, 28, &m);
        assert!(out.iter().all(|v| v.is_finite()));
        assert_eq!(out[10], 0.0);
        // Many random views: never a NaN.
        let aug = Augmentation::for_images(1);
        for id in 0..2000 {
            assert!(
                augment_image(aug, &img, 1, 28, 28, (0, 0, id, 0))
                    .iter()
                    .all(|v| v.is_finite()),
                "view {id}"
            );
        }
    }

    #[test]
    fn views_are_seeded_and_differ() {
        let img: Vec<f32> = (0..28 * 28)
            .map(|i| ((i / 28 + i % 28) % 5) as f32 / 5.0)
            .collect();
        let aug = Augmentation::for_images(1);
        let a = augment_image(aug, &img, 1, 28, 28, (1, 0, 7, 0));
        let b = augment_image(aug, &img, 1, 28, 28, (1, 0, 7, 0));
        let c = augment_image(aug, &img, 1, 28, 28, (1, 0, 7, 1));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        let rgb: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 11) as f32 / 11.0).collect();
        let v = augment_image(Augmentation::for_images(3), &rgb, 3, 32, 32, (1, 0, 7, 0));
        assert_eq!(v.len(), rgb.len());
    }
}
