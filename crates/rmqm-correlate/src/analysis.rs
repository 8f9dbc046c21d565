//! Joining stats summaries with probe results on the model id, normalising accuracies per task,
//! and the sample pairs every correlation is computed on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// One model's stats under one (alteration, convention).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    /// Model id.
    pub model: String,
    /// Training method.
    pub method: String,
    /// Embedding dimension.
    pub dim: i64,
    /// Optimizer.
    pub optimizer: String,
    /// Epochs trained (0 = random initialisation; -1 unknown).
    pub epochs: i64,
    /// noise, pgd, ...
    pub alteration: String,
    /// paper or reference.
    pub convention: String,
    /// Metric name -> value (RMQM, D, inv_D_RC, inv_P_RC, RMQM_weighted, rankme, alpha_req, ...).
    pub metrics: BTreeMap<String, f64>,
}

/// One downstream result of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    /// Model id.
    pub model: String,
    /// Downstream dataset.
    pub downstream: String,
    /// Task name: `knn-<k>` or `linear`.
    pub task: String,
    /// Accuracy in [0,1].
    pub accuracy: f64,
}

/// How accuracies are normalised within each (downstream, task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalise {
    /// accuracy / the best model's accuracy (the reference code).
    Max,
    /// (accuracy - min) / (max - min).
    MinMax,
    /// (accuracy - mean) / sd.
    ZScore,
    /// Raw accuracy.
    None,
}

impl FromStr for Normalise {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Normalise::Max),
            "minmax" => Ok(Normalise::MinMax),
            "zscore" => Ok(Normalise::ZScore),
            "none" => Ok(Normalise::None),
            o => Err(format!(
                "unknown normalisation {o:?} (max, minmax, zscore, none)"
            )),
        }
    }
}

impl fmt::Display for Normalise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Normalise::Max => "max",
            Normalise::MinMax => "minmax",
            Normalise::ZScore => "zscore",
            Normalise::None => "none",
        })
    }
}

/// Normalises `values` in place.
pub fn normalise(values: &mut [f64], how: Normalise) {
    if values.is_empty() {
        return;
    }
    let n = values.len() as f64;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    for v in values.iter_mut() {
        *v = match how {
            Normalise::Max => *v / max,
            Normalise::MinMax => (*v - min) / (max - min),
            Normalise::ZScore => (*v - mean) / sd,
            Normalise::None => *v,
        };
    }
}

/// Why a model is left out of the correlations.
pub fn exclusion(row: &StatsRow, min_dim: i64, include_baselines: bool) -> Option<String> {
    if row.dim < min_dim {
        return Some(format!("embedding dimension {} < {min_dim}", row.dim));
    }
    if !include_baselines && row.epochs == 0 {
        return Some("random-init baseline (0 epochs)".into());
    }
    None
}

/// Models present in one input but not the other.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unmatched {
    /// Models with stats but no probe result.
    pub stats_only: Vec<String>,
    /// Models with probe results but no stats.
    pub probes_only: Vec<String>,
}

/// The model ids in one set and not the other.
pub fn unmatched(stats: &[StatsRow], probes: &[ProbeRow]) -> Unmatched {
    let s: BTreeSet<&str> = stats.iter().map(|r| r.model.as_str()).collect();
    let p: BTreeSet<&str> = probes.iter().map(|r| r.model.as_str()).collect();
    Unmatched {
        stats_only: s.difference(&p).map(|m| m.to_string()).collect(),
        probes_only: p.difference(&s).map(|m| m.to_string()).collect(),
    }
}

/// One (metric, normalised accuracy) pair: the unit of every correlation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Model id.
    pub model: String,
    /// Downstream dataset.
    pub downstream: String,
    /// Task.
    pub task: String,
    /// Normalised accuracy.
    pub performance: f64,
    /// The stats row of the model.
    pub stats: StatsRow,
}

/// Joins the stats of one (alteration, convention) with the probe results of the included
/// models; accuracies normalised within each (downstream, task) over those models.
pub fn pairs(
    stats: &[StatsRow],
    probes: &[ProbeRow],
    how: Normalise,
    included: &dyn Fn(&StatsRow) -> bool,
) -> Vec<Pair> {
    let by_model: BTreeMap<&str, &StatsRow> = stats
        .iter()
        .filter(|r| included(r))
        .map(|r| (r.model.as_str(), r))
        .collect();
    let mut groups: BTreeMap<(String, String), Vec<(&str, f64)>> = BTreeMap::new();
    for p in probes {
        if by_model.contains_key(p.model.as_str()) && p.accuracy.is_finite() {
            groups
                .entry((p.downstream.clone(), p.task.clone()))
                .or_default()
                .push((&p.model, p.accuracy));
        }
    }
    let mut out = Vec::new();
    for ((downstream, task), rows) in groups {
        let mut values: Vec<f64> = rows.iter().map(|r| r.1).collect();
        normalise(&mut values, how);
        for ((model, _), v) in rows.iter().zip(values) {
            out.push(Pair {
                model: model.to_string(),
                downstream: downstream.clone(),
                task: task.clone(),
                performance: v,
                stats: by_model[model].clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(model: &str, dim: i64, epochs: i64, rmqm: f64) -> StatsRow {
        StatsRow {
            model: model.into(),
            method: "ntxent".into(),
            dim,
            optimizer: "adam".into(),
            epochs,
            alteration: "noise".into(),
            convention: "paper".into(),
            metrics: [("RMQM".to_string(), rmqm)].into_iter().collect(),
        }
    }
    fn probe(model: &str, downstream: &str, acc: f64) -> ProbeRow {
        ProbeRow {
            model: model.into(),
            downstream: downstream.into(),
            task: "knn-1".into(),
            accuracy: acc,
        }
    }

    #[test]
    fn join_reports_unmatched_and_normalises_per_task() {
        let s = vec![
            stats("a", 16, 7, 1.0),
            stats("b", 32, 7, 2.0),
            stats("c", 2, 7, 3.0),
            stats("r", 16, 0, 0.5),
            stats("lonely", 16, 7, 1.0),
        ];
        let p = vec![
            probe("a", "kmnist", 0.4),
            probe("b", "kmnist", 0.8),
            probe("c", "kmnist", 0.9),
            probe("r", "kmnist", 0.3),
            probe("ghost", "kmnist", 0.5),
            probe("a", "omniglot", 0.1),
            probe("b", "omniglot", 0.2),
        ];
        let u = unmatched(&s, &p);
        assert_eq!(u.stats_only, vec!["lonely"]);
        assert_eq!(u.probes_only, vec!["ghost"]);
        let included = |r: &StatsRow| exclusion(r, 4, false).is_none();
        assert!(exclusion(&s[2], 4, false).unwrap().contains("dimension"));
        assert!(exclusion(&s[3], 4, false).unwrap().contains("random"));
        let pairs = pairs(&s, &p, Normalise::Max, &included);
        let k: Vec<(String, f64)> = pairs
            .iter()
            .filter(|p| p.downstream == "kmnist")
            .map(|p| (p.model.clone(), p.performance))
            .collect();
        assert_eq!(k, vec![("a".to_string(), 0.5), ("b".to_string(), 1.0)]);
        assert_eq!(pairs.len(), 4);
        let mut v = vec![1.0, 2.0, 3.0];
        normalise(&mut v, Normalise::MinMax);
        assert_eq!(v, vec![0.0, 0.5, 1.0]);
        let mut v = vec![1.0, 2.0, 3.0];
        normalise(&mut v, Normalise::ZScore);
        assert_eq!(v, vec![-1.0, 0.0, 1.0]);
    }
}
