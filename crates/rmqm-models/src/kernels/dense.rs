//! Dense layers: `y = x w^T + b` with fused ReLU, and all three gradients from one call.

use super::gemm::{Accum, MatRef, gemm_rm, parallelism};
use super::{GradLayout, Real, Want};
use rayon::prelude::*;

/// Dense layer forward: `y (n, out) = x (n, in) * w^T + b`, ReLU if `relu`; `w` is the
/// `(out, in)` weight as stored: row-major, or column-major (a transposed view of a row-major
/// `(in, out)` copy), which the product reads without packing it first. Both give the same values
/// whenever `n` is at least [`super::row_invariant_rows`]`(in, out)`.
pub fn linear_forward<T: Real>(
    x: &[T],
    w: MatRef<'_, T>,
    b: Option<&[T]>,
    n: usize,
    relu: bool,
) -> Vec<T> {
    let (d_out, d_in) = (w.rows(), w.cols());
    assert_eq!(x.len(), n * d_in, "dense input size");
    if let Some(b) = b {
        assert_eq!(b.len(), d_out, "dense bias size");
    }
    let mut y = vec![T::zero(); n * d_out];
    gemm_rm(
        &mut y,
        Accum::Replace,
        MatRef::row_major(x, n, d_in),
        w.t(),
        parallelism(n * d_in * d_out),
    );
    if b.is_some() || relu {
        y.par_chunks_mut(d_out).for_each(|row| {
            for (k, v) in row.iter_mut().enumerate() {
                let z = *v + b.map_or(T::zero(), |b| b[k]);
                *v = if relu && z <= T::zero() { T::zero() } else { z };
            }
        });
    }
    y
}

/// Where a dense layer's gradients asked for in `want` sit in one flat vector: input (n x d_in),
/// weight (d_out x d_in), bias (d_out).
pub fn dense_grad_layout(n: usize, d_in: usize, d_out: usize, want: Want) -> GradLayout {
    GradLayout::new(want, [n * d_in, d_out * d_in, d_out])
}

/// Dense layer gradients as one flat vector [dx = dy w | dw = dy^T x | db = column sums of dy],
/// each part only if asked in `want` (laid out by [`dense_grad_layout`]).
pub fn linear_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    n: usize,
    d_in: usize,
    d_out: usize,
    want: Want,
) -> Vec<T> {
    assert_eq!(x.len(), n * d_in, "dense input size");
    assert_eq!(w.len(), d_out * d_in, "dense weight size");
    assert_eq!(dy.len(), n * d_out, "dense output gradient size");
    let par = parallelism(n * d_in * d_out);
    let layout = dense_grad_layout(n, d_in, d_out, want);
    let mut flat = vec![T::zero(); layout.total()];
    let [dx, dw, db] = layout.split_mut(&mut flat);
    if want.input {
        let (dy, w) = (
            MatRef::row_major(dy, n, d_out),
            MatRef::row_major(w, d_out, d_in),
        );
        gemm_rm(dx, Accum::Replace, dy, w, par);
    }
    if want.weight {
        let dy_t = MatRef::row_major(dy, n, d_out).t();
        gemm_rm(dw, Accum::Replace, dy_t, MatRef::row_major(x, n, d_in), par);
    }
    if want.bias {
        for row in dy.chunks_exact(d_out) {
            for (a, &b) in db.iter_mut().zip(row) {
                *a += b;
            }
        }
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::relu_mask;

    #[test]
    fn relu_keeps_nan_visible() {
        let w = MatRef::row_major(&[1.0, 1.0], 1, 2);
        let y = linear_forward(&[f32::NAN, 1.0], w, None, 1, true);
        assert!(y[0].is_nan());
        assert!(relu_mask(&[2.0f32, 3.0], &[f32::NAN, 0.0])[0] == 2.0);
    }

    #[test]
    fn a_weight_by_columns_gives_the_rows_values_from_the_row_invariant_rows_on() {
        // A value of no simple pattern, so a misplaced element changes some output.
        let value =
            |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 1013) as f32 / 997.0 - 0.5;
        // LeNet-5's layers, the head, ResNet-18's MLP and odd sizes.
        for (d_in, d_out) in [
            (256, 512),
            (512, 512),
            (512, 16),
            (16, 10),
            (84, 16),
            (3, 5),
            (1024, 64),
        ] {
            let w: Vec<f32> = (0..d_out * d_in).map(|i| value(i, 1)).collect();
            let mut columns = vec![0.0; d_in * d_out];
            for o in 0..d_out {
                for i in 0..d_in {
                    columns[i * d_out + o] = w[o * d_in + i];
                }
            }
            let b: Vec<f32> = (0..d_out).map(|i| value(i, 2)).collect();
            let first = crate::kernels::row_invariant_rows(d_in, d_out);
            for n in [first, first + 1, first + 47, 256] {
                let x: Vec<f32> = (0..n * d_in).map(|i| value(i, 3)).collect();
                let by_rows =
                    linear_forward(&x, MatRef::row_major(&w, d_out, d_in), Some(&b), n, true);
                let by_columns = linear_forward(
                    &x,
                    MatRef::row_major(&columns, d_in, d_out).t(),
                    Some(&b),
                    n,
                    true,
                );
                let same = by_rows
                    .iter()
                    .zip(&by_columns)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{d_in} -> {d_out}, {n} rows");
            }
        }
    }

    #[test]
    fn backward_lays_out_only_the_parts_asked_for() {
        // x (2 x 3), w (2 x 3), dy (2 x 2)
        let x = [1.0, 2.0, 3.0, -1.0, 0.5, 2.0];
        let w = [0.5, -1.0, 2.0, 1.0, 1.0, -0.5];
        let dy = [1.0, -2.0, 0.5, 3.0];
        let all = Want {
            input: true,
            weight: true,
            bias: true,
        };
        let full = linear_backward(&x, &w, &dy, 2, 3, 2, all);
        let ranges = dense_grad_layout(2, 3, 2, all).ranges();
        let part = |i: usize| full[ranges[i].clone().unwrap()].to_vec();
        // dx = dy w, dw = dy^T x, db = column sums
        assert_eq!(part(0), [-1.5, -3.0, 3.0, 3.25, 2.5, -0.5]);
        assert_eq!(part(1), [0.5, 2.25, 4.0, -5.0, -2.5, 0.0]);
        assert_eq!(part(2), [1.5, 1.0]);
        let bias_only = Want {
            input: false,
            weight: false,
            bias: true,
        };
        assert_eq!(linear_backward(&x, &w, &dy, 2, 3, 2, bias_only), part(2));
    }
}
