//! 2x2 max pooling with stride 2 (floor): forward, and a gradient that goes to each window's first
//! maximum as PyTorch's CPU kernel does.

use super::{Real, vec_written_by};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// 2x2 max pooling with stride 2 (floor) on (planes, h, w); returns (planes, h/2, w/2).
pub fn max_pool2x2_forward<T: Real>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    assert_eq!(x.len(), planes * h * w, "max pool input size");
    let (ho, wo) = (h / 2, w / 2);
    if ho == 0 || wo == 0 {
        return Vec::new();
    }
    let write = |y: &mut [MaybeUninit<T>]| {
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(yp, xp)| {
                for (i, yr) in yp.chunks_exact_mut(wo).enumerate() {
                    let r0 = &xp[2 * i * w..][..2 * wo];
                    let r1 = &xp[(2 * i + 1) * w..][..2 * wo];
                    for ((o, a), b) in yr
                        .iter_mut()
                        .zip(r0.chunks_exact(2))
                        .zip(r1.chunks_exact(2))
                    {
                        let mut m = a[0];
                        for v in [a[1], b[0], b[1]] {
                            if v > m {
                                m = v;
                            }
                        }
                        o.write(m);
                    }
                }
            });
    };
    // SAFETY: `write` initialises every element: y has `planes` chunks of ho * wo, each zipped
    // with one of x's `planes` planes of h * w (x's length was asserted, so the zip stops at no
    // chunk); each chunk is ho rows of wo, and each row writes one value per window of 2 * wo.
    unsafe { vec_written_by(planes * ho * wo, write) }
}

/// Gradient of 2x2 max pooling: each output's gradient goes to the first maximum of its window
/// (row-major order), as PyTorch's CPU kernel does. The window's winner is found with selects
/// rather than branches (random data mispredicts every other branch).
pub fn max_pool2x2_backward<T: Real>(
    x: &[T],
    dy: &[T],
    planes: usize,
    h: usize,
    w: usize,
) -> Vec<T> {
    assert_eq!(x.len(), planes * h * w, "max pool input size");
    let (ho, wo) = (h / 2, w / 2);
    assert_eq!(dy.len(), planes * ho * wo, "max pool gradient size");
    if ho == 0 || wo == 0 {
        return vec![T::zero(); planes * h * w];
    }
    let zero = T::zero();
    let write = |dx: &mut [MaybeUninit<T>]| {
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(dy.par_chunks(ho * wo))
            .for_each(|((dxp, xp), dyp)| {
                for i in 0..ho {
                    let gr = &dyp[i * wo..(i + 1) * wo];
                    let r0 = &xp[2 * i * w..][..2 * wo];
                    let r1 = &xp[(2 * i + 1) * w..][..2 * wo];
                    let (top, bottom) = dxp[2 * i * w..].split_at_mut(w);
                    let bottom = &mut bottom[..w];
                    if w % 2 == 1 {
                        top[w - 1].write(zero);
                        bottom[w - 1].write(zero);
                    }
                    let (top, bottom) = (&mut top[..2 * wo], &mut bottom[..2 * wo]);
                    for j in 0..wo {
                        let g = gr[j];
                        let (a, b) = (r0[2 * j], r0[2 * j + 1]);
                        let (c, d) = (r1[2 * j], r1[2 * j + 1]);
                        // the running maximum and its position, as the forward compares
                        let up = b > a;
                        let (m, k) = (T::select(up, b, a), up as u8);
                        let up = c > m;
                        let (m, k) = (T::select(up, c, m), k + up as u8 * (2 - k));
                        let up = d > m;
                        let k = k + up as u8 * (3 - k);
                        top[2 * j].write(T::select(k == 0, g, zero));
                        top[2 * j + 1].write(T::select(k == 1, g, zero));
                        bottom[2 * j].write(T::select(k == 2, g, zero));
                        bottom[2 * j + 1].write(T::select(k == 3, g, zero));
                    }
                }
                // a last row that no window covers (odd height)
                dxp[2 * ho * w..].iter_mut().for_each(|v| {
                    v.write(zero);
                });
            });
    };
    // SAFETY: `write` initialises every element: dx has `planes` planes of h * w, each zipped with
    // one plane of x and one of dy (both lengths asserted, so the zip covers every plane); in each
    // plane, window row i writes columns 0..2 * wo of rows 2i and 2i + 1 and their last column when
    // w is odd, and the rows from 2 * ho on are zeroed at the end.
    unsafe { vec_written_by(planes * h * w, write) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_gradient_goes_to_the_first_maximum_with_ties_and_nan() {
        // windows (row-major a b / c d): tie between b and d; NaN first; NaN second; all equal
        let nan = f32::NAN;
        let x = [
            1.0, 5.0, nan, 2.0, 3.0, nan, 1.0, 1.0, //
            0.0, 5.0, 7.0, 9.0, 4.0, 2.0, 1.0, 1.0,
        ];
        let y = max_pool2x2_forward(&x, 1, 2, 8);
        assert_eq!(y[0], 5.0);
        assert!(y[1].is_nan());
        assert_eq!((y[2], y[3]), (4.0, 1.0));
        let dx = max_pool2x2_backward(&x, &[1.0, 2.0, 3.0, 4.0], 1, 2, 8);
        assert_eq!(
            dx,
            vec![
                0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 4.0, 0.0, //
                0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0
            ]
        );
    }

    #[test]
    #[should_panic(expected = "max pool gradient size")]
    fn a_short_gradient_is_refused() {
        max_pool2x2_backward(&[0.0f32; 16], &[1.0; 3], 1, 4, 4);
    }

    #[test]
    #[should_panic(expected = "max pool input size")]
    fn a_short_input_is_refused() {
        max_pool2x2_forward(&[0.0f32; 15], 1, 4, 4);
    }
}
