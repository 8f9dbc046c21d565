//! Batch normalisation in training mode (batch statistics, fused ReLU, a backward that reuses the
//! forward's statistics) and the per-channel affine map of eval mode.

use super::{GradLayout, Real, Want, vec_written_by, vec_written_by_reserving};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Independent f64 partial sums the per-channel reductions keep (two AVX-512 registers of f64),
/// so that a plane is not one chain of dependent adds, each waiting for the last.
const SUM_LANES: usize = 16;

/// Partial sums in [`SUM_LANES`] lanes: element `i` of a plane goes to lane `i % SUM_LANES`.
#[derive(Debug, Clone, Copy)]
struct LaneSums([f64; SUM_LANES]);

impl LaneSums {
    const ZERO: LaneSums = LaneSums([0.0; SUM_LANES]);

    /// The lanes added up pairwise (a fixed order).
    fn total(&self) -> f64 {
        let mut lanes = self.0;
        let mut width = SUM_LANES;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                lanes[l] += lanes[l + width];
            }
        }
        lanes[0]
    }
}

/// Adds each element of `plane` into `sum` and its square into `sum_sq`, lane by lane.
fn add_plane_moments<T: Real>(plane: &[T], sum: &mut LaneSums, sum_sq: &mut LaneSums) {
    // local lanes, so that the compiler keeps them in registers
    let (mut s, mut s2) = (sum.0, sum_sq.0);
    let (chunks, rest) = plane.as_chunks::<SUM_LANES>();
    for chunk in chunks {
        // whole-lane steps (convert, add, square-add), which the compiler turns into vector
        // instructions
        let v: [f64; SUM_LANES] = std::array::from_fn(|l| chunk[l].to_f64());
        for l in 0..SUM_LANES {
            s[l] += v[l];
        }
        for l in 0..SUM_LANES {
            s2[l] += v[l] * v[l];
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        let v = v.to_f64();
        s[l] += v;
        s2[l] += v * v;
    }
    (sum.0, sum_sq.0) = (s, s2);
}

/// Adds each gradient element of a plane into `sum_g`, and its product with the input into
/// `sum_gx`, lane by lane; with `mask` = (scale, shift), a gradient counts as 0 where
/// `x * scale + shift` is <= 0.
fn add_plane_grad_sums<T: Real>(
    g: &[T],
    x: &[T],
    mask: Option<(T, T)>,
    sum_g: &mut LaneSums,
    sum_gx: &mut LaneSums,
) {
    let (a, b) = mask.unwrap_or((T::zero(), T::zero()));
    let masked = mask.is_some();
    let (mut sg, mut sgx) = (sum_g.0, sum_gx.0);
    let kept = |gv: T, xv: T| {
        let dropped = masked && xv * a + b <= T::zero();
        T::select(dropped, T::zero(), gv).to_f64()
    };
    let (g_chunks, g_rest) = g.as_chunks::<SUM_LANES>();
    let (x_chunks, x_rest) = x.as_chunks::<SUM_LANES>();
    for (gc, xc) in g_chunks.iter().zip(x_chunks) {
        // whole-lane steps, as in add_plane_moments
        let gv: [f64; SUM_LANES] = std::array::from_fn(|l| kept(gc[l], xc[l]));
        let xv: [f64; SUM_LANES] = std::array::from_fn(|l| xc[l].to_f64());
        for l in 0..SUM_LANES {
            sg[l] += gv[l];
        }
        for l in 0..SUM_LANES {
            sgx[l] += gv[l] * xv[l];
        }
    }
    for (l, (&gv, &xv)) in g_rest.iter().zip(x_rest).enumerate() {
        let gv = kept(gv, xv);
        sg[l] += gv;
        sgx[l] += gv * xv.to_f64();
    }
    (sum_g.0, sum_gx.0) = (sg, sgx);
}

/// Per-channel mean and biased variance of an NCHW tensor (as f64), channels in parallel.
pub fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), n * c * hw, "batch norm input size");
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sum, mut sum_sq) = (LaneSums::ZERO, LaneSums::ZERO);
            for b in 0..n {
                add_plane_moments(&x[(b * c + ch) * hw..][..hw], &mut sum, &mut sum_sq);
            }
            let mean = sum.total() / m;
            (mean, (sum_sq.total() / m - mean * mean).max(0.0))
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
            let (mut sum_g, mut sum_gx) = (LaneSums::ZERO, LaneSums::ZERO);
            let channel_mask = mask.map(|(s, t)| (s[ch], t[ch]));
            for i in 0..n {
                let plane = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (gp, xp) = (&g[plane.clone()], &x[plane]);
                add_plane_grad_sums(gp, xp, channel_mask, &mut sum_g, &mut sum_gx);
            }
            (sum_g.total(), sum_gx.total())
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
                // the channel's constants in locals, so that the loop below keeps them in
                // registers and vectorises
                let k = i % c;
                let (a, mean_k, inv_sigma_k) = (state.scale[k], mean[k], inv_sigma[k]);
                let (mg, mgx) = (sg[k] / m, sgxhat[k] / m);
                let (sa, sb) = (scale_t[k], shift_t[k]);
                let masked = relu;
                for ((d, &xv), &gv) in dp.iter_mut().zip(xp).zip(gp) {
                    let dropped = masked && xv * sa + sb <= T::zero();
                    let gv = T::select(dropped, T::zero(), gv).to_f64();
                    let xhat = (xv.to_f64() - mean_k) * inv_sigma_k;
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

    /// Values in [-1.5, 1.5) from a fixed sequence.
    fn values(len: usize, step: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (i * step % 997) as f64 / 997.0 * 3.0 - 1.5)
            .collect()
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{what}[{k}]: {a} against {b}"
            );
        }
    }

    #[test]
    fn lane_sums_match_one_serial_sum() {
        // planes of 37 (two whole 16-lane chunks and a rest of 5) and of 3 (a rest only)
        for &(n, c, hw) in &[(3, 2, 37), (4, 3, 3), (2, 1, 64)] {
            let (x, g) = (values(n * c * hw, 7919), values(n * c * hw, 104_729));
            let planes =
                |ch: usize| (0..n).flat_map(move |b| (b * c + ch) * hw..(b * c + ch + 1) * hw);
            let (mean, var) = channel_stats(&x, n, c, hw);
            let m = (n * hw) as f64;
            let want_mean: Vec<f64> = (0..c)
                .map(|ch| planes(ch).map(|i| x[i]).sum::<f64>() / m)
                .collect();
            let want_var: Vec<f64> = (0..c)
                .map(|ch| {
                    planes(ch)
                        .map(|i| (x[i] - want_mean[ch]).powi(2))
                        .sum::<f64>()
                        / m
                })
                .collect();
            assert_close(&mean, &want_mean, "mean");
            assert_close(&var, &want_var, "variance");
            let (scale, shift) = (vec![1.0, -0.5, 2.0], vec![0.25, 0.0, -0.1]);
            let mask = Some((&scale[..c], &shift[..c]));
            let (sg, sgx) = channel_sums(&g, &x, n, c, hw, mask);
            let kept = |ch: usize, i: usize| {
                if x[i] * scale[ch] + shift[ch] <= 0.0 {
                    0.0
                } else {
                    g[i]
                }
            };
            let want_sg: Vec<f64> = (0..c)
                .map(|ch| planes(ch).map(|i| kept(ch, i)).sum())
                .collect();
            let want_sgx: Vec<f64> = (0..c)
                .map(|ch| planes(ch).map(|i| kept(ch, i) * x[i]).sum())
                .collect();
            assert_close(&sg, &want_sg, "sum of g");
            assert_close(&sgx, &want_sgx, "sum of g x");
        }
    }
}
