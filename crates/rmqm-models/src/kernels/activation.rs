//! Element-wise ReLU kernels: the gradient mask of a fused ReLU and the residual join
//! `relu(a + b)`, split over cores in fixed chunks.

use super::{Real, vec_written_by};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Multiplies `dy` by the ReLU mask of the forward result `y` (1 where y > 0); a NaN in `y` passes
/// its gradient on, so a NaN reaches the parameters and the loss check instead of hiding as zero.
pub fn relu_mask<T: Real>(dy: &[T], y: &[T]) -> Vec<T> {
    assert_eq!(dy.len(), y.len(), "relu mask operand sizes");
    const CHUNK: usize = 1 << 14;
    let write = |out: &mut [MaybeUninit<T>]| {
        out.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(oc, (gc, yc))| {
                for ((o, &g), &v) in oc.iter_mut().zip(gc).zip(yc) {
                    o.write(if v <= T::zero() { T::zero() } else { g });
                }
            });
    };
    // SAFETY: `write` initialises every element: out and dy are cut into the same chunks, zipped
    // with y's chunks (y as long as dy, asserted), and every element of every out chunk is written.
    unsafe { vec_written_by(dy.len(), write) }
}

/// `relu(a + b)` elementwise (ResNet's residual join), split over cores.
pub fn add_relu<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "add_relu operand sizes");
    const CHUNK: usize = 1 << 14;
    let write = |y: &mut [MaybeUninit<T>]| {
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(yc, (ac, bc))| {
                for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
                    let z = u + v;
                    o.write(if z <= T::zero() { T::zero() } else { z });
                }
            });
    };
    // SAFETY: `write` initialises every element: y, a and b have one length (asserted) and are cut
    // into the same chunks, and every element of every y chunk is written.
    unsafe { vec_written_by(a.len(), write) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_mask_passes_nan_on() {
        assert_eq!(
            relu_mask(&[2.0f32, 3.0, 4.0], &[f32::NAN, 0.0, 1.0]),
            [2.0, 0.0, 4.0]
        );
        let y = add_relu(&[1.0f64, -2.0, f64::NAN], &[0.5, 1.0, 0.0]);
        assert_eq!(&y[..2], &[1.5, 0.0]);
        assert!(y[2].is_nan());
    }

    #[test]
    #[should_panic(expected = "relu mask operand sizes")]
    fn relu_mask_refuses_a_short_forward_result() {
        relu_mask(&[1.0f32; 40_000], &[1.0; 39_999]);
    }
}
