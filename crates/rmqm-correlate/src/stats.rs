//! Correlation statistics: Pearson (with Fisher-z interval and t-test p-value from the survival
//! function, so strong correlations report tiny p-values rather than 0), Spearman with average
//! ranks for ties, Kendall tau-b with ties (Knight's O(n log n) algorithm), seeded bootstrap
//! intervals over groups (models), and the granulated Kendall coefficient of Jiang et al. (2020).

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

/// Kendall's tau-b with ties, by Knight's algorithm: sort by (x, y), count the swaps a merge sort
/// by y needs (the discordant pairs), and the ties in x, in y and in both. NaN when n < 2 or
/// either sample is constant.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 || n != y.len() {
        return f64::NAN;
    }
    let mut pairs: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let ties_x = tied_pairs(&pairs, |a, b| a.0 == b.0);
    let ties_xy = tied_pairs(&pairs, |a, b| a == b);
    let mut ys: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let swaps = merge_count(&mut ys, &mut vec![0.0; n]);
    let ties_y = tied_pairs(&ys, |a, b| a == b);
    let n0 = (n * (n - 1) / 2) as i64;
    let numerator = (n0 - ties_x - ties_y + ties_xy - 2 * swaps) as f64;
    let denominator = (((n0 - ties_x) as f64) * ((n0 - ties_y) as f64)).sqrt();
    if denominator == 0.0 {
        return f64::NAN;
    }
    numerator / denominator
}

/// Pairs within runs of equal neighbours of sorted `items`: sum of t (t - 1) / 2 over runs.
fn tied_pairs<T>(items: &[T], same: impl Fn(&T, &T) -> bool) -> i64 {
    let (mut total, mut run) = (0i64, 1i64);
    for w in items.windows(2) {
        if same(&w[0], &w[1]) {
            run += 1;
        } else {
            total += run * (run - 1) / 2;
            run = 1;
        }
    }
    total + run * (run - 1) / 2
}

/// Sorts `v` ascending by merge sort and returns the number of inversions (pairs out of order,
/// equal values not counted).
fn merge_count(v: &mut [f64], buffer: &mut [f64]) -> i64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let (left, right) = v.split_at_mut(mid);
    let mut swaps = merge_count(left, &mut buffer[..mid]) + merge_count(right, &mut buffer[mid..]);
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < left.len() && j < right.len() {
        if right[j] < left[i] {
            buffer[k] = right[j];
            swaps += (left.len() - i) as i64;
            j += 1;
        } else {
            buffer[k] = left[i];
            i += 1;
        }
        k += 1;
    }
    buffer[k..k + left.len() - i].copy_from_slice(&left[i..]);
    k += left.len() - i;
    buffer[k..k + right.len() - j].copy_from_slice(&right[j..]);
    v.copy_from_slice(&buffer[..n]);
    swaps
}

/// Kendall's tau-b, which corrects for ties in either sample (O(n^2), fine for model counts).
pub fn kendall_tau_b_pairwise(x: &[f64], y: &[f64]) -> f64 {
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
pub fn fisher_interval(r: f64, n: usize, level: f64) -> Interval {
    if n < 4 || !r.is_finite() {
        return Interval::NAN;
    }
    let z = r.clamp(-0.999_999_999, 0.999_999_999).atanh();
    let q = Normal::new(0.0, 1.0)
        .unwrap()
        .inverse_cdf(0.5 + level / 2.0);
    let se = 1.0 / ((n - 3) as f64).sqrt();
    Interval {
        low: (z - q * se).tanh(),
        high: (z + q * se).tanh(),
    }
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
    2.0 * dist.sf(t.abs())
}

/// A confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Interval {
    /// The interval of nothing: both bounds NaN.
    pub const NAN: Interval = Interval {
        low: f64::NAN,
        high: f64::NAN,
    };
}

/// A statistic of paired samples (Pearson, Spearman, Kendall).
pub type PairStatistic = fn(&[f64], &[f64]) -> f64;

/// Percentile bootstrap intervals of Pearson's r: `resamples` resamples of the pairs with
/// replacement, seeded; resamples with a constant side are skipped.
pub fn bootstrap_pearson(
    x: &[f64],
    y: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Interval {
    let groups: Vec<usize> = (0..x.len()).collect();
    bootstrap_grouped(x, y, &groups, resamples, level, seed, &[pearson])[0]
}

/// Percentile bootstrap intervals of each of `statistics`, resampling groups (models) with
/// replacement: every pair of a drawn group enters, so the pairs of one model across tasks stay
/// together. Every statistic sees the same resamples. Seeded; at least 3 groups are needed.
pub fn bootstrap_grouped(
    x: &[f64],
    y: &[f64],
    groups: &[usize],
    resamples: usize,
    level: f64,
    seed: u64,
    statistics: &[PairStatistic],
) -> Vec<Interval> {
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let members: Vec<Vec<usize>> = members.into_values().collect();
    let m = members.len();
    if m < 3 || resamples == 0 {
        return vec![Interval::NAN; statistics.len()];
    }
    let values: Vec<Vec<f64>> = (0..resamples)
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
            statistics.iter().map(|f| f(&xs, &ys)).collect()
        })
        .collect();
    (0..statistics.len())
        .map(|k| {
            let mut v: Vec<f64> = values
                .iter()
                .map(|r| r[k])
                .filter(|r| r.is_finite())
                .collect();
            if v.is_empty() {
                return Interval::NAN;
            }
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
            Interval {
                low: q((1.0 - level) / 2.0),
                high: q(1.0 - (1.0 - level) / 2.0),
            }
        })
        .collect()
}

/// Granulated Kendall (Jiang et al. 2020) along one axis: models are grouped by their values on
/// every other axis; within each group of two or more, Kendall's tau-b between metric and
/// performance; the mean over groups.
pub fn granulated_kendall(groups: &[Vec<(f64, f64)>]) -> Granulated {
    let taus: Vec<f64> = groups
        .iter()
        .filter(|g| g.len() >= 2)
        .map(|g| {
            let (x, y): (Vec<f64>, Vec<f64>) = g.iter().copied().unzip();
            kendall_tau_b(&x, &y)
        })
        .filter(|t| t.is_finite())
        .collect();
    Granulated {
        tau: if taus.is_empty() {
            f64::NAN
        } else {
            taus.iter().sum::<f64>() / taus.len() as f64
        },
        groups: taus.len(),
    }
}

/// A granulated Kendall coefficient and the groups it averages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Granulated {
    /// Mean of Kendall's tau-b over the groups (NaN when none has two distinct values).
    pub tau: f64,
    /// Groups that entered the mean.
    pub groups: usize,
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
        let Interval { low: lo, high: hi } = fisher_interval(0.5, 28, 0.95);
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
        let Interval { low: lo, high: hi } = bootstrap_pearson(&x, &y, 2000, 0.95, 1);
        assert!(lo < r && r < hi, "{lo} {r} {hi}");
        assert_eq!(
            bootstrap_pearson(&x, &y, 2000, 0.95, 1),
            Interval { low: lo, high: hi }
        );
        // Grouped: every statistic brackets its value on the full sample.
        let groups: Vec<usize> = (0..40).map(|i| i / 2).collect();
        let iv = bootstrap_grouped(
            &x,
            &y,
            &groups,
            2000,
            0.95,
            3,
            &[pearson, spearman, kendall_tau_b],
        );
        for (f, i) in [pearson as PairStatistic, spearman, kendall_tau_b]
            .iter()
            .zip(&iv)
        {
            let v = f(&x, &y);
            assert!(i.low < v && v < i.high, "{i:?} {v}");
        }
    }

    #[test]
    fn fast_kendall_equals_the_pairwise_definition() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for n in [2, 3, 7, 50, 301] {
            for levels in [3, 10, 1000] {
                let x: Vec<f64> = (0..n).map(|_| rng.random_range(0..levels) as f64).collect();
                let y: Vec<f64> = (0..n).map(|_| rng.random_range(0..levels) as f64).collect();
                let (a, b) = (kendall_tau_b(&x, &y), kendall_tau_b_pairwise(&x, &y));
                assert!(
                    (a - b).abs() < 1e-12 || (a.is_nan() && b.is_nan()),
                    "n {n} levels {levels}: {a} vs {b}"
                );
            }
        }
        assert!(kendall_tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    }

    #[test]
    fn p_values_far_below_double_rounding_are_not_zero() {
        // r = 0.95 over 100 pairs: t = 30, p about 1e-51; 1 - cdf would round to 0.
        let p = pearson_p_value(0.95, 100);
        assert!(p > 0.0 && p < 1e-20, "{p}");
        let p = pearson_p_value(0.999, 60);
        assert!(p > 0.0 && p < 1e-20, "{p}");
    }

    #[test]
    fn granulated_kendall_averages_groups() {
        let groups = vec![
            vec![(1.0, 1.0), (2.0, 2.0)],
            vec![(1.0, 2.0), (2.0, 1.0)],
            vec![(5.0, 5.0)],
        ];
        assert_eq!(
            granulated_kendall(&groups),
            Granulated {
                tau: 0.0,
                groups: 2
            }
        );
    }
}
