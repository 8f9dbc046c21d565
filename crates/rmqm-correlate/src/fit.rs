//! The RMQM ablation (appendix A) and fitted weights (eq. 6): which of D, 1/D_RC and 1/P_RC carry
//! the correlation, and the weights in [0, 1] that maximise Pearson's r, with a leave-one-model-out
//! check so that overfitting shows.

use crate::stats::pearson;

/// The three RMQM terms of a set of models.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    /// D per model.
    pub d: Vec<f64>,
    /// 1/D_RC per model.
    pub inv_d_rc: Vec<f64>,
    /// 1/P_RC per model.
    pub inv_p_rc: Vec<f64>,
}

impl Terms {
    /// Number of models.
    pub fn len(&self) -> usize {
        self.d.len()
    }
    /// True with no model.
    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }
}

/// ln(1 + w1 D + w2 / D_RC + w3 / P_RC) for every model.
pub fn weighted_rmqm(t: &Terms, w: [f64; 3]) -> Vec<f64> {
    (0..t.len())
        .map(|i| (1.0 + w[0] * t.d[i] + w[1] * t.inv_d_rc[i] + w[2] * t.inv_p_rc[i]).ln())
        .collect()
}

/// The seven non-empty subsets of {D, 1/D_RC, 1/P_RC}, as (name, unit weights).
pub const ABLATION_SUBSETS: [(&str, [f64; 3]); 7] = [
    ("D", [1.0, 0.0, 0.0]),
    ("1/D_RC", [0.0, 1.0, 0.0]),
    ("1/P_RC", [0.0, 0.0, 1.0]),
    ("D + 1/D_RC", [1.0, 1.0, 0.0]),
    ("D + 1/P_RC", [1.0, 0.0, 1.0]),
    ("1/D_RC + 1/P_RC", [0.0, 1.0, 1.0]),
    ("D + 1/D_RC + 1/P_RC", [1.0, 1.0, 1.0]),
];

/// Pearson's r of each ablation subset's RMQM with `performance`.
pub fn ablation(t: &Terms, performance: &[f64]) -> Vec<AblationTerm> {
    ABLATION_SUBSETS
        .iter()
        .map(|(name, w)| AblationTerm {
            terms: name,
            pearson: pearson(&weighted_rmqm(t, *w), performance),
        })
        .collect()
}

/// Pearson's r of RMQM built from one subset of its terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AblationTerm {
    /// The subset, e.g. `D + 1/D_RC`.
    pub terms: &'static str,
    /// Pearson's r with performance.
    pub pearson: f64,
}

/// Weights of eq. 6 and the correlation they reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FittedWeights {
    /// w1 (D), w2 (1/D_RC), w3 (1/P_RC), each in [0, 1].
    pub weights: [f64; 3],
    /// Pearson's r of the weighted RMQM with performance.
    pub pearson: f64,
}

/// Minimises `f` over R^3 by Nelder-Mead from `start` (deterministic).
fn nelder_mead(
    f: &dyn Fn([f64; 3]) -> f64,
    start: [f64; 3],
    step: f64,
    iterations: usize,
) -> ([f64; 3], f64) {
    let mut simplex: Vec<([f64; 3], f64)> = (0..4)
        .map(|k| {
            let mut p = start;
            if k > 0 {
                p[k - 1] += step;
            }
            (p, f(p))
        })
        .collect();
    let combine = |a: [f64; 3], b: [f64; 3], t: f64| {
        [
            a[0] + t * (b[0] - a[0]),
            a[1] + t * (b[1] - a[1]),
            a[2] + t * (b[2] - a[2]),
        ]
    };
    for _ in 0..iterations {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if (simplex[3].1 - simplex[0].1).abs() < 1e-15 {
            break;
        }
        let mut c = [0.0; 3];
        for (p, _) in &simplex[..3] {
            for k in 0..3 {
                c[k] += p[k] / 3.0;
            }
        }
        let worst = simplex[3];
        let r = combine(c, worst.0, -1.0);
        let fr = f(r);
        if fr < simplex[0].1 {
            let e = combine(c, worst.0, -2.0);
            let fe = f(e);
            simplex[3] = if fe < fr { (e, fe) } else { (r, fr) };
        } else if fr < simplex[2].1 {
            simplex[3] = (r, fr);
        } else {
            let k = combine(c, worst.0, 0.5);
            let fk = f(k);
            if fk < worst.1 {
                simplex[3] = (k, fk);
            } else {
                let best = simplex[0].0;
                for s in simplex.iter_mut().skip(1) {
                    s.0 = combine(best, s.0, 0.5);
                    s.1 = f(s.0);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0]
}

/// Weights in [0, 1] (w = sin^2 theta) maximising Pearson's r of the weighted RMQM with
/// `performance`, best of several Nelder-Mead starts (among them the paper's 0.95, 0.74, 0.11).
/// Returns (weights, r).
///
/// The bound matters: r is unchanged by the scale of w only in the limits, so an unbounded fit
/// runs off to w -> infinity (where ln(1 + w.x) becomes ln(w.x) plus a constant) or to w -> 0
/// (where it becomes linear in w.x). Bounding each weight by 1, the unweighted RMQM's value, keeps
/// the fit an answer to the paper's question: how much of each term to keep.
pub fn fit_weights(t: &Terms, performance: &[f64]) -> FittedWeights {
    let starts: [[f64; 3]; 7] = [
        [0.95, 0.74, 0.11],
        [0.9, 0.9, 0.9],
        [0.9, 0.1, 0.1],
        [0.1, 0.9, 0.1],
        [0.1, 0.1, 1.0],
        [0.3, 0.3, 0.3],
        [0.01, 0.01, 0.01],
    ];
    fit_weights_from(t, performance, &starts)
}

/// Like [`fit_weights`], from the given starting weights.
pub fn fit_weights_from(t: &Terms, performance: &[f64], starts: &[[f64; 3]]) -> FittedWeights {
    let weights = |th: [f64; 3]| {
        [
            th[0].sin().powi(2),
            th[1].sin().powi(2),
            th[2].sin().powi(2),
        ]
    };
    let objective = |theta: [f64; 3]| -> f64 {
        let r = pearson(&weighted_rmqm(t, weights(theta)), performance);
        if r.is_finite() { -r } else { 1.0 }
    };
    let mut best = ([1.0, 1.0, 1.0], f64::INFINITY);
    for s in starts {
        let angle = |w: f64| w.clamp(0.0, 1.0).sqrt().asin();
        let theta0 = [angle(s[0]), angle(s[1]), angle(s[2])];
        let mut result = nelder_mead(&objective, theta0, 0.2, 1500);
        // A restart from the optimum refines a collapsed simplex.
        result = nelder_mead(&objective, result.0, 0.02, 1500);
        if result.1 < best.1 {
            best = result;
        }
    }
    FittedWeights {
        weights: weights(best.0),
        pearson: -best.1,
    }
}

/// Leave-one-model-out: for each model (every pair of it, `groups[i]` naming each pair's model),
/// weights fitted on the other models score its pairs; Pearson's r of all held-out scores with
/// `performance`. Each fold starts from the weights fitted on all models.
pub fn leave_one_out_r(t: &Terms, performance: &[f64], groups: &[usize]) -> f64 {
    use rayon::prelude::*;
    let models: std::collections::BTreeSet<usize> = groups.iter().copied().collect();
    if models.len() < 4 {
        return f64::NAN;
    }
    let full = fit_weights(t, performance).weights;
    let held: Vec<Vec<(usize, f64)>> = models
        .par_iter()
        .map(|&m| {
            let keep: Vec<usize> = (0..t.len()).filter(|&i| groups[i] != m).collect();
            let sub = Terms {
                d: keep.iter().map(|&i| t.d[i]).collect(),
                inv_d_rc: keep.iter().map(|&i| t.inv_d_rc[i]).collect(),
                inv_p_rc: keep.iter().map(|&i| t.inv_p_rc[i]).collect(),
            };
            let perf: Vec<f64> = keep.iter().map(|&i| performance[i]).collect();
            let w = fit_weights_from(&sub, &perf, &[full]).weights;
            (0..t.len())
                .filter(|&i| groups[i] == m)
                .map(|i| {
                    (
                        i,
                        (1.0 + w[0] * t.d[i] + w[1] * t.inv_d_rc[i] + w[2] * t.inv_p_rc[i]).ln(),
                    )
                })
                .collect()
        })
        .collect();
    let mut scores = vec![f64::NAN; t.len()];
    for (i, v) in held.into_iter().flatten() {
        scores[i] = v;
    }
    pearson(&scores, performance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn recovers_known_weights() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let n = 40;
        let t = Terms {
            d: (0..n).map(|_| rng.random_range(0.1..1.2)).collect(),
            inv_d_rc: (0..n).map(|_| rng.random_range(0.5..8.0)).collect(),
            inv_p_rc: (0..n).map(|_| rng.random_range(0.5..20.0)).collect(),
        };
        let truth = [0.95, 0.74, 0.11];
        let perf = weighted_rmqm(&t, truth);
        let FittedWeights {
            weights: w,
            pearson: r,
        } = fit_weights(&t, &perf);
        assert!(r > 0.999_999, "{r}");
        for k in 0..3 {
            assert!((w[k] - truth[k]).abs() < 0.02 * truth[k].max(0.1), "{w:?}");
        }
        let groups: Vec<usize> = (0..n).collect();
        let loo = leave_one_out_r(&t, &perf, &groups);
        assert!(loo > 0.999, "{loo}");
        let ab = ablation(&t, &perf);
        assert_eq!(ab.len(), 7);
        assert!(ab[6].pearson > ab[0].pearson, "{ab:?}");
    }
}
