//! Batch normalisation in training mode (batch statistics, fused ReLU, a backward that reuses the
//! forward's statistics) and the per-channel affine map of eval mode.

use super::{GradLayout, Real, Want, vec_written_by, vec_written_by_reserving};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// How many independent f64 partial sums the per-channel reductions keep: one AVX-512 register of
/// f64, so that a long plane is not one chain of dependent adds (each waiting for the last).
const SUM_LANES: usize = 8;

/// Adds each element of `plane` and its square into lanes: element i into lane i % [`SUM_LANES`].
fn add_plane_moments<T: Real>(
    plane: &[T],
    sum: &mut [f64; SUM_LANES],
    sum_sq: &mut [f64; SUM_LANES],
) {
    let chunks = plane.chunks_exact(SUM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks.chain(std::iter::once(rest)) {
        for ((&v, s), s2) in chunk.iter().zip(sum.iter_mut()).zip(sum_sq.iter_mut()) {
            let v = v.to_f64();
            *s += v;
            *s2 += v * v;
        }
    }
}

/// Adds each gradient element of a plane, and its product with the input, into lanes (element i
/// into lane i % [`SUM_LANES`]); with `mask` = (scale, shift), a gradient counts as 0 where
/// `x * scale + shift` is <= 0.
fn add_plane_grad_sums<T: Real>(
    g: &[T],
    x: &[T],
    mask: Option<(T, T)>,
    sum_g: &mut [f64; SUM_LANES],
    sum_gx: &mut [f64; SUM_LANES],
) {
    let (g_chunks, x_chunks) = (g.chunks_exact(SUM_LANES), x.chunks_exact(SUM_LANES));
    let rest = (g_chunks.remainder(), x_chunks.remainder());
    for (gk, xk) in g_chunks.zip(x_chunks).chain(std::iter::once(rest)) {
        let lanes = gk
            .iter()
            .zip(xk)
            .zip(sum_g.iter_mut())
            .zip(sum_gx.iter_mut());
        for (((&gv, &xv), sg), sgx) in lanes {
            let gv = match mask {
                Some((a, b)) if xv * a + b <= T::zero() => 0.0,
                _ => gv.to_f64(),
            };
            *sg += gv;
            *sgx += gv * xv.to_f64();
        }
    }
}

/// The lanes of one partial sum added up, lane 0 first.
fn lanes_total(lanes: &[f64; SUM_LANES]) -> f64 {
    lanes.iter().sum()
}

/// Per-channel mean and biased variance of an NCHW tensor (as f64), channels in parallel.
pub fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), n * c * hw, "batch norm input size");
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sum, mut sum_sq) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
            for b in 0..n {
                add_plane_moments(&x[(b * c + ch) * hw..][..hw], &mut sum, &mut sum_sq);
            }
            let (s, s2) = (lanes_total(&sum), lanes_total(&sum_sq));
            let mean = s / m;
            (mean, (s2 / m - mean * mean).max(0.0))
        })
        .unzip()
}

/// What a training-mode batch-norm forward used: kept for its backward (no second pass for the
/// statistics) and for the layer's running statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormState {
    /// Per-channel batch mean.
    pub mean: Vec<f64>,
    /// Per-channel biased batch variance.
    pub var: Vec<f64>,
    /// 1 / sqrt(var + eps).
    pub inv_sigma: Vec<f64>,
    /// gamma / sqrt(var + eps), before rounding to the element type.
    pub scale: Vec<f64>,
    /// beta - mean * scale (scale rounded to the element type), before rounding.
    pub shift: Vec<f64>,
}

impl BatchNormState {
    /// The per-channel scale and shift in the element type, exactly as the forward applied them.
    fn affine<T: Real>(&self) -> (Vec<T>, Vec<T>) {
        (
            self.scale.iter().map(|&v| T::from_f64(v)).collect(),
            self.shift.iter().map(|&v| T::from_f64(v)).collect(),
        )
    }
}

/// Batch-norm forward in training mode: y = gamma (x - mean) / sqrt(var + eps) + beta with the
/// batch's per-channel statistics, then ReLU if `relu`; returns y and what it used.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
    relu: bool,
) -> (Vec<T>, BatchNormState) {
    assert!(
        gamma.len() == c && beta.len() == c,
        "batch norm parameter sizes"
    );
    let (mean, var) = channel_stats(x, n, c, hw);
    let inv_sigma: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f64> = (0..c)
        .map(|k| gamma[k].to_f64() / (var[k] + eps).sqrt())
        .collect();
    let shift: Vec<f64> = (0..c)
        .map(|k| beta[k].to_f64() - mean[k] * T::from_f64(scale[k]).to_f64())
        .collect();
    let state = BatchNormState {
        mean,
        var,
        inv_sigma,
        scale,
        shift,
    };
    let (scale_t, shift_t) = state.affine::<T>();
    (channel_affine(x, &scale_t, &shift_t, c, hw, relu), state)
}

/// `y = x * scale[c] + shift[c]` per channel of an NCHW tensor, then ReLU if `relu`.
pub fn channel_affine<T: Real>(
    x: &[T],
    scale: &[T],
    shift: &[T],
    c: usize,
    hw: usize,
    relu: bool,
) -> Vec<T> {
    assert!(
        scale.len() == c && shift.len() == c,
        "channel affine parameter sizes"
    );
    assert!(
        c * hw == 0 || x.len().is_multiple_of(c * hw),
        "channel affine input size"
    );
    if hw == 0 || c == 0 {
        return x.to_vec();
    }
    let write = |y: &mut [MaybeUninit<T>]| {
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let (a, b) = (scale[i % c], shift[i % c]);
                for (o, &v) in yp.iter_mut().zip(xp) {
                    let z = v * a + b;
                    o.write(if relu && z <= T::zero() { T::zero() } else { z });
                }
            });
    };
    // SAFETY: `write` initialises every element: y and x have one length and are cut into the
    // same chunks of hw, and every element of every y chunk is written.
    unsafe { vec_written_by(x.len(), write) }
}

/// Per-channel sums of `g` and of `g * x` over an NCHW tensor; with `mask` = (scale, shift),
/// `g` counts only where `x * scale + shift` (the pre-ReLU output) is not <= 0.
pub fn channel_sums<T: Real>(
    g: &[T],
    x: &[T],
    n: usize,
    c: usize,
    hw: usize,
    mask: Option<(&[T], &[T])>,
) -> (Vec<f64>, Vec<f64>) {
    assert!(
        x.len() == n * c * hw && g.len() == x.len(),
        "batch norm gradient sizes"
    );
    if let Some((scale, shift)) = mask {
        assert!(
            scale.len() == c && shift.len() == c,
            "batch norm mask sizes"
        );
    }
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sum_g, mut sum_gx) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
            let channel_mask = mask.map(|(s, t)| (s[ch], t[ch]));
            for i in 0..n {
                let plane = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (gp, xp) = (&g[plane.clone()], &x[plane]);
                add_plane_grad_sums(gp, xp, channel_mask, &mut sum_g, &mut sum_gx);
            }
            (lanes_total(&sum_g), lanes_total(&sum_gx))
        })
        .unzip()
}

/// Batch-norm backward in training mode from the forward's `state`: one flat vector
/// [dx | dgamma | dbeta] holding the parts asked for in `want` (laid out by
/// [`batch_norm_grad_layout`]); with `relu`, the gradient first
/// passes ReLU's mask (recomputed from x exactly as the forward computed it).
/// dx = gamma / sigma * (g - mean(g) - xhat * mean(g * xhat)); dgamma = sum(g * xhat); dbeta = sum(g).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Real>(
    x: &[T],
    g: &[T],
    state: &BatchNormState,
    n: usize,
    c: usize,
    hw: usize,
    relu: bool,
    want: Want,
) -> Vec<T> {
    assert!(
        x.len() == n * c * hw && g.len() == x.len(),
        "batch norm gradient sizes"
    );
    assert!(
        [&state.mean, &state.inv_sigma, &state.scale]
            .iter()
            .all(|v| v.len() == c),
        "batch norm state size"
    );
    let (scale_t, shift_t) = state.affine::<T>();
    let mask = relu.then_some((scale_t.as_slice(), shift_t.as_slice()));
    let (sg, sgx) = channel_sums(g, x, n, c, hw, mask);
    let (mean, inv_sigma) = (&state.mean, &state.inv_sigma);
    let m = (n * hw) as f64;
    // sum(g * xhat) = (sum(g x) - mean sum(g)) / sigma
    let sgxhat: Vec<f64> = (0..c)
        .map(|k| (sgx[k] - mean[k] * sg[k]) * inv_sigma[k])
        .collect();
    let layout = batch_norm_grad_layout(n, c, hw, want);
    let params = layout.total() - layout.lens()[0];
    let write = |dx: &mut [MaybeUninit<T>]| {
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .zip(g.par_chunks(hw))
            .enumerate()
            .for_each(|(i, ((dp, xp), gp))| {
                let k = i % c;
                let a = state.scale[k];
                let (mg, mgx) = (sg[k] / m, sgxhat[k] / m);
                let (sa, sb) = (scale_t[k], shift_t[k]);
                for ((d, &xv), &gv) in dp.iter_mut().zip(xp).zip(gp) {
                    let gv = if relu && xv * sa + sb <= T::zero() {
                        0.0
                    } else {
                        gv.to_f64()
                    };
                    let xhat = (xv.to_f64() - mean[k]) * inv_sigma[k];
                    d.write(T::from_f64(a * (gv - mg - xhat * mgx)));
                }
            });
    };
    let mut flat = if !want.input {
        Vec::with_capacity(params)
    } else if hw == 0 || c == 0 {
        vec![T::zero(); x.len()]
    } else {
        // SAFETY: `write` initialises every element: dx, x and g have one length (asserted on
        // entry) and are cut into the same chunks of hw, and every element of every
        // dx chunk is written.
        unsafe { vec_written_by_reserving(x.len(), params, write) }
    };
    if want.weight {
        flat.extend(sgxhat.iter().map(|&v| T::from_f64(v)));
    }
    if want.bias {
        flat.extend(sg.iter().map(|&v| T::from_f64(v)));
    }
    debug_assert_eq!(flat.len(), layout.total());
    flat
}

/// Where batch norm's gradients asked for in `want` sit in one flat vector: input
/// (n x c x hw), gamma (c), beta (c).
pub fn batch_norm_grad_layout(n: usize, c: usize, hw: usize, want: Want) -> GradLayout {
    GradLayout::new(want, [n * c * hw, c, c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Relative distance, with an absolute floor for sums near zero.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-13 * b.abs().max(1.0)
    }

    #[test]
    fn lane_sums_equal_one_serial_f64_sum_to_rounding() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (n, c, hw) in [
            (1, 1, 1),
            (3, 2, 7),
            (2, 3, 8),
            (3, 1, 9),
            (2, 4, 16),
            (3, 2, 33),
            (1, 2, 64),
        ] {
            let len = n * c * hw;
            // Values far from zero's scale, so that a lost or doubled element shows.
            let x: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0..5.0)).collect();
            let g: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0..2.0)).collect();
            let scale: Vec<f32> = (0..c).map(|_| rng.random_range(0.5..1.5)).collect();
            let shift: Vec<f32> = (0..c).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (mean, var) = channel_stats(&x, n, c, hw);
            for masked in [false, true] {
                let mask = masked.then_some((scale.as_slice(), shift.as_slice()));
                let (sg, sgx) = channel_sums(&g, &x, n, c, hw, mask);
                for ch in 0..c {
                    let (mut s, mut s2, mut tg, mut tgx) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
                    for b in 0..n {
                        for i in (b * c + ch) * hw..(b * c + ch + 1) * hw {
                            let (xv, gv) = (x[i] as f64, g[i] as f64);
                            s += xv;
                            s2 += xv * xv;
                            let off = masked && x[i] * scale[ch] + shift[ch] <= 0.0;
                            let gv = if off { 0.0 } else { gv };
                            tg += gv;
                            tgx += gv * xv;
                        }
                    }
                    let m = (n * hw) as f64;
                    let at = format!("n {n} c {c} hw {hw} channel {ch} masked {masked}");
                    assert!(close(mean[ch], s / m), "mean, {at}");
                    assert!(close(var[ch], s2 / m - (s / m) * (s / m)), "variance, {at}");
                    assert!(close(sg[ch], tg), "sum of g, {at}");
                    assert!(close(sgx[ch], tgx), "sum of g x, {at}");
                }
            }
        }
    }
}
