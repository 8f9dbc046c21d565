//! The linear probe: multinomial logistic regression on frozen, standardised embeddings, with the L2
//! penalty chosen on a validation part of the train split, then refit on the whole train split.
//! The optimiser is L-BFGS with a fixed iteration budget: deterministic for a given thread count.

use crate::ProbeError;
use rmqm_linalg::{matmul, matmul_at_b};

/// How the linear probe is fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeConfig {
    /// Candidate L2 penalties (on the mean cross-entropy: loss + lambda/2 ||W||^2).
    pub lambdas: Vec<f64>,
    /// Fraction of the train split held out to choose lambda (stratified, seeded).
    pub validation_fraction: f64,
    /// Seed of the validation split.
    pub seed: u64,
    /// L-BFGS iterations per candidate during the search.
    pub search_iterations: usize,
    /// L-BFGS iterations of the final fit.
    pub final_iterations: usize,
    /// Stop early when the gradient's largest entry falls below this.
    pub gradient_tolerance: f64,
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        LinearProbeConfig {
            lambdas: vec![1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
            validation_fraction: 0.2,
            seed: 0,
            search_iterations: 100,
            final_iterations: 300,
            gradient_tolerance: 1e-5,
        }
    }
}

/// A fitted probe: standardisation, weights and the class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbe {
    dim: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// dim x classes, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    classes: Vec<i32>,
}

/// What the fit chose and saw.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeReport {
    /// The chosen penalty.
    pub lambda: f64,
    /// Validation accuracy of each candidate, in `lambdas` order.
    pub validation_accuracy: Vec<f64>,
    /// Iterations of the final fit.
    pub iterations: usize,
    /// Final training loss (with penalty).
    pub final_loss: f64,
}

fn standardise(x: &[f32], dim: usize, mean: &[f32], inv_std: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(dim) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(inv_std) {
            *v = (*v - m) * s;
        }
    }
    out
}

/// Loss and gradient of the penalised mean cross-entropy at `params` = [W (dim x c), b (c)].
fn loss_and_gradient(
    x: &[f32],
    y: &[usize],
    dim: usize,
    c: usize,
    lambda: f64,
    params: &[f64],
    grad: &mut [f64],
) -> f64 {
    let n = y.len();
    let w: Vec<f32> = params[..dim * c].iter().map(|&v| v as f32).collect();
    let b = &params[dim * c..];
    let mut logits = vec![0.0f32; n * c];
    matmul(x, &w, &mut logits, n, c, dim, 1.0, 0.0);
    let mut loss = 0.0f64;
    let mut grad_b = vec![0.0f64; c];
    // Softmax in place: logits become P - Y, scaled by 1/n.
    for (i, row) in logits.chunks_exact_mut(c).enumerate() {
        let mut max = f64::NEG_INFINITY;
        for (z, bk) in row.iter().zip(b) {
            max = max.max(*z as f64 + bk);
        }
        let mut sum = 0.0f64;
        for (z, bk) in row.iter_mut().zip(b) {
            let e = (*z as f64 + bk - max).exp();
            *z = e as f32;
            sum += e;
        }
        let yi = y[i];
        loss += -((row[yi] as f64 / sum).max(1e-300)).ln();
        for (k, z) in row.iter_mut().enumerate() {
            let mut p = *z as f64 / sum;
            if k == yi {
                p -= 1.0;
            }
            grad_b[k] += p / n as f64;
            *z = (p / n as f64) as f32;
        }
    }
    let mut gw = vec![0.0f32; dim * c];
    matmul_at_b(x, &logits, &mut gw, dim, c, n, 1.0, 0.0);
    let mut penalty = 0.0;
    for (i, g) in grad[..dim * c].iter_mut().enumerate() {
        *g = gw[i] as f64 + lambda * params[i];
        penalty += params[i] * params[i];
    }
    grad[dim * c..].copy_from_slice(&grad_b);
    loss / n as f64 + 0.5 * lambda * penalty
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises with L-BFGS (memory 10, backtracking Armijo line search); returns (loss, iterations).
fn lbfgs(
    params: &mut [f64],
    max_iter: usize,
    tolerance: f64,
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
) -> (f64, usize) {
    let m = 10;
    let len = params.len();
    let mut grad = vec![0.0; len];
    let mut loss = f(params, &mut grad);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    let mut new_grad = vec![0.0; len];
    let mut trial = vec![0.0; len];
    for it in 0..max_iter {
        iterations = it + 1;
        if grad.iter().fold(0.0f64, |a, g| a.max(g.abs())) < tolerance {
            iterations = it;
            break;
        }
        // Two-loop recursion for the direction d = -H g.
        let mut q = grad.clone();
        let mut alphas = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alphas[i] = rho * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alphas[i] * yj;
            }
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1.0 / grad.iter().map(|g| g * g).sum::<f64>().sqrt().max(1e-12),
        };
        for v in q.iter_mut() {
            *v *= gamma;
        }
        for i in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alphas[i] - beta) * sj;
            }
        }
        let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            direction = grad.iter().map(|g| -g).collect();
            slope = dot(&grad, &direction);
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..30 {
            for ((t, p), d) in trial.iter_mut().zip(params.iter()).zip(&direction) {
                *t = p + step * d;
            }
            let l = f(&trial, &mut new_grad);
            if l.is_finite() && l <= loss + 1e-4 * step * slope {
                let s: Vec<f64> = trial
                    .iter()
                    .zip(params.iter())
                    .map(|(t, p)| t - p)
                    .collect();
                let y: Vec<f64> = new_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
                if dot(&s, &y) > 1e-12 {
                    if s_hist.len() == m {
                        s_hist.remove(0);
                        y_hist.remove(0);
                    }
                    s_hist.push(s);
                    y_hist.push(y);
                }
                params.copy_from_slice(&trial);
                std::mem::swap(&mut grad, &mut new_grad);
                let improvement = loss - l;
                loss = l;
                accepted = true;
                if improvement.abs() < 1e-12 * loss.abs().max(1.0) {
                    return (loss, iterations);
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    (loss, iterations)
}

fn fit_fixed(
    x: &[f32],
    y: &[usize],
    dim: usize,
    c: usize,
    lambda: f64,
    iterations: usize,
    tol: f64,
) -> (Vec<f64>, f64, usize) {
    let mut params = vec![0.0f64; dim * c + c];
    let (loss, its) = lbfgs(&mut params, iterations, tol, |p, g| {
        loss_and_gradient(x, y, dim, c, lambda, p, g)
    });
    (params, loss, its)
}

fn predict_params(x: &[f32], dim: usize, c: usize, params: &[f64]) -> Vec<usize> {
    let n = x.len() / dim;
    let w: Vec<f32> = params[..dim * c].iter().map(|&v| v as f32).collect();
    let mut logits = vec![0.0f32; n * c];
    matmul(x, &w, &mut logits, n, c, dim, 1.0, 0.0);
    logits
        .chunks_exact(c)
        .map(|row| {
            let mut best = 0;
            for k in 1..c {
                if row[k] as f64 + params[dim * c + k] > row[best] as f64 + params[dim * c + best] {
                    best = k;
                }
            }
            best
        })
        .collect()
}

/// Fits the probe on (`x`, `labels`) with `dim`-dimensional rows.
pub fn fit_linear_probe(
    x: &[f32],
    labels: &[i32],
    dim: usize,
    config: &LinearProbeConfig,
) -> Result<(LinearProbe, LinearProbeReport), ProbeError> {
    if labels.is_empty() {
        return Err(ProbeError::Empty("the train split"));
    }
    if dim == 0 || x.len() != labels.len() * dim {
        return Err(ProbeError::Mismatch(format!(
            "{} values for {} rows of dim {dim}",
            x.len(),
            labels.len()
        )));
    }
    if config.lambdas.is_empty() {
        return Err(ProbeError::Mismatch("no candidate lambda".into()));
    }
    let mut classes: Vec<i32> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let c = classes.len();
    let y: Vec<usize> = labels
        .iter()
        .map(|l| classes.binary_search(l).unwrap())
        .collect();
    let n = labels.len();
    let mut mean = vec![0.0f64; dim];
    let mut sq = vec![0.0f64; dim];
    for row in x.chunks_exact(dim) {
        for k in 0..dim {
            mean[k] += row[k] as f64;
            sq[k] += (row[k] as f64).powi(2);
        }
    }
    let mean: Vec<f64> = mean.iter().map(|m| m / n as f64).collect();
    let inv_std: Vec<f32> = (0..dim)
        .map(|k| {
            let var = (sq[k] / n as f64 - mean[k] * mean[k]).max(0.0);
            if var > 1e-12 {
                (1.0 / var.sqrt()) as f32
            } else {
                1.0
            }
        })
        .collect();
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let xs = standardise(x, dim, &mean, &inv_std);

    // Choose lambda on a stratified validation part.
    let mut validation_accuracy = Vec::new();
    let lambda = if config.lambdas.len() == 1 {
        validation_accuracy.push(f64::NAN);
        config.lambdas[0]
    } else {
        let split =
            rmqm_data::stratified_split(labels, 1.0 - config.validation_fraction, config.seed)
                .map_err(|e| ProbeError::Mismatch(e.to_string()))?;
        if split.test.is_empty() || split.train.is_empty() {
            return Err(ProbeError::Empty("the validation part of the train split"));
        }
        let pick = |idx: &[usize]| -> (Vec<f32>, Vec<usize>) {
            let mut xv = Vec::with_capacity(idx.len() * dim);
            for &i in idx {
                xv.extend_from_slice(&xs[i * dim..(i + 1) * dim]);
            }
            (xv, idx.iter().map(|&i| y[i]).collect())
        };
        let (xt, yt) = pick(&split.train);
        let (xv, yv) = pick(&split.test);
        let mut best = (f64::NEG_INFINITY, config.lambdas[0]);
        for &lam in &config.lambdas {
            let (params, _, _) = fit_fixed(
                &xt,
                &yt,
                dim,
                c,
                lam,
                config.search_iterations,
                config.gradient_tolerance,
            );
            let pred = predict_params(&xv, dim, c, &params);
            let acc = pred.iter().zip(&yv).filter(|(a, b)| a == b).count() as f64 / yv.len() as f64;
            validation_accuracy.push(acc);
            // Ties go to the larger penalty (the simpler model).
            if acc > best.0 || (acc == best.0 && lam > best.1) {
                best = (acc, lam);
            }
        }
        best.1
    };
    let (params, final_loss, iterations) = fit_fixed(
        &xs,
        &y,
        dim,
        c,
        lambda,
        config.final_iterations,
        config.gradient_tolerance,
    );
    let probe = LinearProbe {
        dim,
        mean,
        inv_std,
        weights: params[..dim * c].iter().map(|&v| v as f32).collect(),
        bias: params[dim * c..].iter().map(|&v| v as f32).collect(),
        classes,
    };
    Ok((
        probe,
        LinearProbeReport {
            lambda,
            validation_accuracy,
            iterations,
            final_loss,
        },
    ))
}

impl LinearProbe {
    /// Predicted labels for rows of `x`.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<i32>, ProbeError> {
        if !x.len().is_multiple_of(self.dim) {
            return Err(ProbeError::Mismatch(format!(
                "rows of {} values, probe expects {}",
                x.len(),
                self.dim
            )));
        }
        let xs = standardise(x, self.dim, &self.mean, &self.inv_std);
        let c = self.classes.len();
        let mut params: Vec<f64> = self.weights.iter().map(|&v| v as f64).collect();
        params.extend(self.bias.iter().map(|&v| v as f64));
        Ok(predict_params(&xs, self.dim, c, &params)
            .into_iter()
            .map(|k| self.classes[k])
            .collect())
    }

    /// Number of classes seen in training.
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, dim, c) = (20, 3, 4);
        let x: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let y: Vec<usize> = (0..n).map(|_| rng.random_range(0..c)).collect();
        let p: Vec<f64> = (0..dim * c + c)
            .map(|_| rng.random::<f64>() - 0.5)
            .collect();
        let mut g = vec![0.0; p.len()];
        loss_and_gradient(&x, &y, dim, c, 0.1, &p, &mut g);
        for i in 0..p.len() {
            let h = 1e-3;
            let mut a = p.clone();
            a[i] += h;
            let mut b = p.clone();
            b[i] -= h;
            let mut scratch = vec![0.0; p.len()];
            let fd = (loss_and_gradient(&x, &y, dim, c, 0.1, &a, &mut scratch)
                - loss_and_gradient(&x, &y, dim, c, 0.1, &b, &mut scratch))
                / (2.0 * h);
            assert!((fd - g[i]).abs() < 2e-4, "{i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn separable_classes_are_separated_perfectly_and_deterministically() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let dim = 6;
        let centres: Vec<Vec<f32>> = (0..5)
            .map(|k| (0..dim).map(|d| if d == k { 4.0 } else { 0.0 }).collect())
            .collect();
        let make = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| {
            let mut x = Vec::new();
            let mut l = Vec::new();
            for i in 0..n {
                let k = i % 5;
                x.extend(centres[k].iter().map(|c| c + rng.random::<f32>() - 0.5));
                l.push(10 + k as i32 * 3);
            }
            (x, l)
        };
        let (xt, lt) = make(&mut rng, 400);
        let (xq, lq) = make(&mut rng, 100);
        let (probe, report) =
            fit_linear_probe(&xt, &lt, dim, &LinearProbeConfig::default()).unwrap();
        assert_eq!(probe.predict(&xq).unwrap(), lq);
        assert_eq!(probe.predict(&xt).unwrap(), lt);
        let (probe2, report2) =
            fit_linear_probe(&xt, &lt, dim, &LinearProbeConfig::default()).unwrap();
        assert_eq!(probe, probe2);
        assert_eq!(report, report2);
        assert_eq!(report.validation_accuracy.len(), 5);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            fit_linear_probe(&[], &[], 2, &LinearProbeConfig::default()),
            Err(ProbeError::Empty(_))
        ));
        assert!(
            fit_linear_probe(&[1.0, 2.0, 3.0], &[0, 1], 2, &LinearProbeConfig::default()).is_err()
        );
    }
}
