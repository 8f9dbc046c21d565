//! Batch normalisation in training mode (batch statistics, fused ReLU, a backward that reuses the
//! forward's statistics) and the per-channel affine map of eval mode.

use super::{GradLayout, Real, Want, vec_written_by, vec_written_by_reserving};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Per-channel mean and biased variance of an NCHW tensor (as f64), channels in parallel.
pub fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), n * c * hw, "batch norm input size");
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0.0f64, 0.0f64);
            for b in 0..n {
                for &v in &x[(b * c + ch) * hw..][..hw] {
                    let v = v.to_f64();
                    s += v;
                    s2 += v * v;
                }
            }
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
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            let (a, b) = mask.map_or((T::zero(), T::zero()), |(s, t)| (s[ch], t[ch]));
            for i in 0..n {
                let off = (i * c + ch) * hw;
                for (&gv, &xv) in g[off..off + hw].iter().zip(&x[off..off + hw]) {
                    let gv = if mask.is_some() && xv * a + b <= T::zero() {
                        0.0
                    } else {
                        gv.to_f64()
                    };
                    sg += gv;
                    sgx += gv * xv.to_f64();
                }
            }
            (sg, sgx)
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
