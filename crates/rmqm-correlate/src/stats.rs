//! Correlation statistics: Pearson (with Fisher-z interval and t-test p-value), Spearman with
//! average ranks for ties, Kendall tau-b with ties, a seeded bootstrap interval, and the
//! granulated Kendall coefficient of Jiang et al. (2020).

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Pearson's r of two equally long samples (NaN when either is constant or n < 2).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 || x.len() != y.len() {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks 1..n with ties given their average rank.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rho: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's tau-b, which corrects for ties in either sample (O(n^2), fine for model counts).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 || n != y.len() {
        return f64::NAN;
    }
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].partial_cmp(&x[j]).unwrap_or(std::cmp::Ordering::Equal);
            let dy = y[i].partial_cmp(&y[j]).unwrap_or(std::cmp::Ordering::Equal);
            use std::cmp::Ordering::Equal;
            match (dx, dy) {
                (Equal, Equal) => {}
                (Equal, _) => ties_x += 1,
                (_, Equal) => ties_y += 1,
                (a, b) if a == b => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n0 = (concordant + discordant + ties_x) as f64;
    let n1 = (concordant + discordant + ties_y) as f64;
    if n0 == 0.0 || n1 == 0.0 {
        return f64::NAN;
    }
    (concordant - discordant) as f64 / (n0 * n1).sqrt()
}

/// The 95% interval of Pearson's r by the Fisher z transform: tanh(atanh(r) -+ 1.96/sqrt(n-3)).
pub fn fisher_interval(r: f64, n: usize, level: f64) -> (f64, f64) {
    if n < 4 || !r.is_finite() {
        return (f64::NAN, f64::NAN);
    }
    let z = r.clamp(-0.999_999_999, 0.999_999_999).atanh();
    let q = Normal::new(0.0, 1.0)
        .unwrap()
        .inverse_cdf(0.5 + level / 2.0);
    let se = 1.0 / ((n - 3) as f64).sqrt();
    ((z - q * se).tanh(), (z + q * se).tanh())
}

/// Two-sided p-value of Pearson's r against 0 (t = r sqrt((n-2)/(1-r^2)), n-2 degrees of freedom).
pub fn pearson_p_value(r: f64, n: usize) -> f64 {
    if n < 3 || !r.is_finite() {
        return f64::NAN;
    }
    if r.abs() >= 1.0 {
        return 0.0;
    }
    let df = (n - 2) as f64;
    let t = r * (df / (1.0 - r * r)).sqrt();
    let dist = StudentsT::new(0.0, 1.0, df).unwrap();
    2.0 * (1.0 - dist.cdf(t.abs()))
}

/// Percentile bootstrap interval of Pearson's r: `resamples` resamples of the pairs with
/// replacement, seeded; resamples with a constant side are skipped.
pub fn bootstrap_pearson(
    x: &[f64],
    y: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> (f64, f64) {
    let groups: Vec<usize> = (0..x.len()).collect();
    bootstrap_pearson_grouped(x, y, &groups, resamples, level, seed)
}

/// Percentile bootstrap interval of Pearson's r resampling groups (models) with replacement: every
/// pair of a drawn group enters, so pairs of one model across tasks stay together. Seeded.
pub fn bootstrap_pearson_grouped(
    x: &[f64],
    y: &[f64],
    groups: &[usize],
    resamples: usize,
    level: f64,
    seed: u64,
) -> (f64, f64) {
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let members: Vec<Vec<usize>> = members.into_values().collect();
    let m = members.len();
    if m < 3 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rs: Vec<f64> = (0..resamples)
        .into_par_iter()
        .map(|b| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ (b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let (mut xs, mut ys) = (Vec::with_capacity(x.len()), Vec::with_capacity(x.len()));
            for _ in 0..m {
                for &i in &members[rng.random_range(0..m)] {
                    xs.push(x[i]);
                    ys.push(y[i]);
                }
            }
            pearson(&xs, &ys)
        })
        .filter(|r| r.is_finite())
        .collect();
    if rs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    rs.sort_by(f64::total_cmp);
    let q = |p: f64| rs[((p * (rs.len() - 1) as f64).round() as usize).min(rs.len() - 1)];
    (q((1.0 - level) / 2.0), q(1.0 - (1.0 - level) / 2.0))
}

/// Granulated Kendall (Jiang et al. 2020) along one axis: models are grouped by their values on
/// every other axis; within each group of two or more, Kendall's tau-b between metric and
/// performance; the mean over groups. Returns (mean tau, groups used).
pub fn granulated_kendall(groups: &[Vec<(f64, f64)>]) -> (f64, usize) {
    let taus: Vec<f64> = groups
        .iter()
        .filter(|g| g.len() >= 2)
        .map(|g| {
            let (x, y): (Vec<f64>, Vec<f64>) = g.iter().copied().unzip();
            kendall_tau_b(&x, &y)
        })
        .filter(|t| t.is_finite())
        .collect();
    if taus.is_empty() {
        (f64::NAN, 0)
    } else {
        (taus.iter().sum::<f64>() / taus.len() as f64, taus.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn hand_computed_values() {
        // x = 1..5, y = 2,4,5,4,5: r = 0.774597 (sxy 6, sxx 10, syy 6), by hand.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        assert!(close(pearson(&x, &y), 6.0 / (60.0f64).sqrt(), 1e-12));
        // Ranks of y with ties: 2->1, 4->2.5, 5->4.5.
        assert_eq!(average_ranks(&y), vec![1.0, 2.5, 4.5, 2.5, 4.5]);
        // Spearman = Pearson of (1..5) and those ranks: sxy = 7, sxx = 10, syy = 9: 7/sqrt(90).
        assert!(close(spearman(&x, &y), 7.0 / 90f64.sqrt(), 1e-12));
        // Kendall tau-b: pairs C=7, D=1, ties in y only = 2 (n0 = 10, n1 = 8): 6/sqrt(80).
        assert!(close(kendall_tau_b(&x, &y), 6.0 / 80f64.sqrt(), 1e-12));
        // Perfect orders.
        assert!(close(kendall_tau_b(&x, &x), 1.0, 1e-12));
        let rev: Vec<f64> = x.iter().rev().copied().collect();
        assert!(close(kendall_tau_b(&x, &rev), -1.0, 1e-12));
    }

    #[test]
    fn fisher_interval_and_p_value() {
        // r = 0.5, n = 28: z = 0.549306, se = 0.2: tanh(0.549306 -+ 0.391993) = tanh(0.157313),
        // tanh(0.941299) = (0.156029, 0.735818).
        let (lo, hi) = fisher_interval(0.5, 28, 0.95);
        assert!(
            close(lo, 0.156_029, 1e-5) && close(hi, 0.735_818, 1e-5),
            "{lo} {hi}"
        );
        // r = 0.5, n = 12: t = 0.5 sqrt(10/0.75) = 1.825742; two-sided p (df 10) = I_0.75(5, 1/2)
        // = 0.097855 (numerical integration of the beta density).
        assert!(
            close(pearson_p_value(0.5, 12), 0.097_855, 1e-5),
            "{}",
            pearson_p_value(0.5, 12)
        );
    }

    #[test]
    fn bootstrap_brackets_r_and_is_seeded() {
        let x: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let y: Vec<f64> = x.iter().map(|v| v + ((v * 7.0) % 5.0) * 3.0).collect();
        let r = pearson(&x, &y);
        let (lo, hi) = bootstrap_pearson(&x, &y, 2000, 0.95, 1);
        assert!(lo < r && r < hi, "{lo} {r} {hi}");
        assert_eq!((lo, hi), bootstrap_pearson(&x, &y, 2000, 0.95, 1));
    }

    #[test]
    fn granulated_kendall_averages_groups() {
        let groups = vec![
            vec![(1.0, 1.0), (2.0, 2.0)],
            vec![(1.0, 2.0), (2.0, 1.0)],
            vec![(5.0, 5.0)],
        ];
        assert_eq!(granulated_kendall(&groups), (0.0, 2));
    }
}
