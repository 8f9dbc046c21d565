//! The seed study: how far each metric and each accuracy move when the same configuration is
//! retrained with another seed, beside how far they move between methods. Is a difference
//! between two methods larger than the noise of retraining?

use crate::analysis::{Inclusion, ProbeRow, StatsRow, walks};
use crate::metrics::{METRICS, Source};
use rmqm_vocab::Convention;
use statrs::distribution::{ContinuousCDF, StudentsT};
use std::collections::{BTreeMap, BTreeSet};

/// One quantity's spread across seeds and across methods.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedSpreadRow {
    /// What is measured, e.g. `RMQM (noise)` or `accuracy kmnist/knn-1`.
    pub quantity: String,
    /// Largest number of seeds of a configuration.
    pub seeds: usize,
    /// Configurations (track, method, dim, optimizer) with two or more seeds.
    pub configs: usize,
    /// Standard deviation across seeds within a configuration (pooled over configurations).
    pub sd_across_seeds: f64,
    /// Standard deviation across methods of the seed means (pooled over track, dim, optimizer).
    pub sd_across_methods: f64,
    /// Pairs of methods (same track, dim and optimizer) whose means differ at p < 0.05 (Welch).
    pub separable_pairs: usize,
    /// Pairs of methods compared.
    pub method_pairs: usize,
}

impl SeedSpreadRow {
    /// sd across methods / sd across seeds: how many retraining noises apart methods are.
    pub fn ratio(&self) -> f64 {
        self.sd_across_methods / self.sd_across_seeds
    }
}

/// (track, method, dim, optimizer): a configuration retrained with several seeds.
type Config = (String, String, i64, String);

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        f64::NAN
    };
    (m, var)
}

/// Welch's two-sided p-value for the difference of two means.
fn welch_p(a: &[f64], b: &[f64]) -> f64 {
    let ((ma, va), (mb, vb)) = (mean_var(a), mean_var(b));
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let se2 = va / na + vb / nb;
    if !(se2.is_finite()) {
        return f64::NAN;
    }
    if se2 == 0.0 {
        return if ma == mb { 1.0 } else { 0.0 };
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / ((va / na).powi(2) / (na - 1.0) + (vb / nb).powi(2) / (nb - 1.0));
    match StudentsT::new(0.0, 1.0, df) {
        Ok(d) => 2.0 * d.sf(t.abs()),
        Err(_) => f64::NAN,
    }
}

/// The spread of one quantity, from its value per (configuration, seed).
fn spread(quantity: String, values: &BTreeMap<Config, Vec<f64>>) -> Option<SeedSpreadRow> {
    let repeated: Vec<(&Config, &Vec<f64>)> = values.iter().filter(|(_, v)| v.len() >= 2).collect();
    if repeated.is_empty() {
        return None;
    }
    let seed_var = repeated.iter().map(|(_, v)| mean_var(v).1).sum::<f64>() / repeated.len() as f64;
    // Blocks of methods sharing track, dim and optimizer.
    let mut blocks: BTreeMap<(String, i64, String), Vec<&Vec<f64>>> = BTreeMap::new();
    for (c, v) in &repeated {
        blocks
            .entry((c.0.clone(), c.2, c.3.clone()))
            .or_default()
            .push(v);
    }
    let (mut method_var, mut blocks_used, mut pairs, mut separable) = (0.0, 0usize, 0usize, 0usize);
    for methods in blocks.values().filter(|m| m.len() >= 2) {
        let means: Vec<f64> = methods.iter().map(|v| mean_var(v).0).collect();
        method_var += mean_var(&means).1;
        blocks_used += 1;
        for i in 0..methods.len() {
            for j in i + 1..methods.len() {
                pairs += 1;
                if welch_p(methods[i], methods[j]) < 0.05 {
                    separable += 1;
                }
            }
        }
    }
    Some(SeedSpreadRow {
        quantity,
        seeds: repeated.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
        configs: repeated.len(),
        sd_across_seeds: seed_var.sqrt(),
        sd_across_methods: if blocks_used > 0 {
            (method_var / blocks_used as f64).sqrt()
        } else {
            f64::NAN
        },
        separable_pairs: separable,
        method_pairs: pairs,
    })
}

fn config(r: &StatsRow) -> Config {
    (
        r.key.train_dataset.clone(),
        r.method.clone(),
        r.dim,
        r.optimizer.clone(),
    )
}

/// The seed study over the trained models `inclusion` admits: every walk metric under each
/// paper-convention walk, the peer metrics, and the raw accuracy of every (downstream, task).
/// Empty when no configuration has two seeds.
pub fn seed_spread(
    stats: &[StatsRow],
    probes: &[ProbeRow],
    inclusion: &Inclusion,
) -> Vec<SeedSpreadRow> {
    let included: Vec<&StatsRow> = stats
        .iter()
        .filter(|r| inclusion.exclusion(r).is_none())
        .collect();
    let seeds: BTreeSet<Option<i64>> = included.iter().map(|r| r.seed).collect();
    if seeds.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let paper_walks: Vec<String> = walks(stats)
        .into_iter()
        .filter(|w| w.convention == Convention::Paper)
        .map(|w| w.alteration)
        .collect();
    for m in &METRICS {
        let alterations: Vec<&str> = match m.source {
            Source::Walk => paper_walks.iter().map(String::as_str).collect(),
            Source::Clean => paper_walks
                .first()
                .map(String::as_str)
                .into_iter()
                .collect(),
            Source::Augment => vec!["augment"],
        };
        for a in alterations {
            let mut values: BTreeMap<Config, Vec<f64>> = BTreeMap::new();
            for r in included
                .iter()
                .filter(|r| r.alteration == a && r.convention == Convention::Paper)
            {
                let v = r.metric(m.column);
                if v.is_finite() {
                    values.entry(config(r)).or_default().push(v);
                }
            }
            let name = match m.source {
                Source::Walk => format!("{} ({a})", m.label),
                _ => m.label.to_string(),
            };
            out.extend(spread(name, &values));
        }
    }
    let model_config: BTreeMap<_, Config> = included.iter().map(|r| (&r.key, config(r))).collect();
    let mut accuracy: BTreeMap<(String, String), BTreeMap<Config, Vec<f64>>> = BTreeMap::new();
    for p in probes {
        if let Some(c) = model_config.get(&p.key) {
            accuracy
                .entry((p.downstream.clone(), p.task.clone()))
                .or_default()
                .entry(c.clone())
                .or_default()
                .push(p.accuracy);
        }
    }
    for ((downstream, task), values) in accuracy {
        out.extend(spread(format!("accuracy {downstream}/{task}"), &values));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_separable_pairs() {
        let c = |m: &str| ("mnist".to_string(), m.to_string(), 64, "adam".to_string());
        let mut v = BTreeMap::new();
        v.insert(c("a"), vec![1.0, 1.1, 0.9]);
        v.insert(c("b"), vec![2.0, 2.2, 1.8]);
        v.insert(c("c"), vec![1.05, 0.95, 1.0]);
        let r = spread("x".into(), &v).unwrap();
        // Variances 0.01, 0.04, 0.0025: pooled sd sqrt(0.0175).
        assert!((r.sd_across_seeds - 0.0175f64.sqrt()).abs() < 1e-12);
        // Means 1, 2, 1: sd 1/sqrt(3).
        assert!((r.sd_across_methods - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!((r.method_pairs, r.separable_pairs), (3, 2));
        assert_eq!((r.seeds, r.configs), (3, 3));
        // Welch against a hand computation: means 1 and 2, variances 0.01 and 0.04, n 3 each:
        // t = -7.746, df = 2.941 -> p = 0.004798 (scipy.stats.ttest_ind, equal_var=False).
        let p = welch_p(&[1.0, 1.1, 0.9], &[2.0, 2.2, 1.8]);
        assert!((p - 0.004_798).abs() < 1e-5, "{p}");
        let mut single = BTreeMap::new();
        single.insert(c("a"), vec![1.0]);
        assert!(spread("y".into(), &single).is_none());
    }
}
