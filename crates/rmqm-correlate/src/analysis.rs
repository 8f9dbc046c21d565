//! The rows correlate reads (stats summaries and probe results), keyed by (train dataset, model);
//! the join of the two, accuracies normalised per (downstream, task), and the sample pairs every
//! correlation is computed on.

use rmqm_vocab::Convention;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A model's identity across grids. Ids repeat between tracks (`ntxent_d64_adam_s0` is trained on
/// MNIST and on CIFAR-10), so the dataset the encoder was trained on is part of the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelKey {
    /// Dataset the encoder was trained on (`rmqm.train_dataset`).
    pub train_dataset: String,
    /// Model id (`rmqm.model`).
    pub model: String,
}

impl ModelKey {
    /// A key from its two parts.
    pub fn new(train_dataset: &str, model: &str) -> Self {
        ModelKey {
            train_dataset: train_dataset.to_string(),
            model: model.to_string(),
        }
    }
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.train_dataset, self.model)
    }
}

/// One model's stats under one walk (alteration and convention).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    /// The model.
    pub key: ModelKey,
    /// Training method.
    pub method: String,
    /// Embedding dimension.
    pub dim: i64,
    /// Optimizer.
    pub optimizer: String,
    /// Epochs trained (0 = random initialisation; -1 unknown).
    pub epochs: i64,
    /// Training seed, from the model id's `_s<seed>` suffix (None when the id has none).
    pub seed: Option<i64>,
    /// noise, pgd, pgd-reference, augment, ...
    pub alteration: String,
    /// paper or reference.
    pub convention: Convention,
    /// Images measured.
    pub n_images: f64,
    /// J, the steps after the clean input (Q views for augment walks).
    pub n_steps: f64,
    /// Wall seconds of the manifold-stats run (the whole pipe when piped; NaN when unknown).
    pub seconds: f64,
    /// Metric name -> value (RMQM, D, inv_D_RC, inv_P_RC, RMQM_weighted, rankme, alpha_req, lidar, ...).
    pub metrics: BTreeMap<String, f64>,
}

impl StatsRow {
    /// A metric's value, NaN when the row lacks it.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(f64::NAN)
    }
}

/// The training seed a model id names in its `_s<seed>` suffix.
pub fn seed_of_model_id(model: &str) -> Option<i64> {
    model.rsplit('_').next()?.strip_prefix('s')?.parse().ok()
}

/// One downstream result of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    /// The model.
    pub key: ModelKey,
    /// Downstream dataset.
    pub downstream: String,
    /// Task name: `knn-<k>` (cosine), `knn-<k>-<metric>`, or `linear`.
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

/// Which models enter the correlations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inclusion {
    /// Smallest embedding dimension that enters.
    pub min_dim: i64,
    /// Whether random-init baselines (0 epochs) enter.
    pub baselines: bool,
}

impl Inclusion {
    /// Why `row`'s model is left out of the correlations, if it is.
    pub fn exclusion(&self, row: &StatsRow) -> Option<String> {
        if row.dim < self.min_dim {
            return Some(format!(
                "embedding dimension {} < {}",
                row.dim, self.min_dim
            ));
        }
        if !self.baselines && row.epochs == 0 {
            return Some("random-init baseline (0 epochs)".into());
        }
        None
    }
}

/// Models present in one input but not the other, and models without an augment walk.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unmatched {
    /// Models with stats but no probe result.
    pub stats_only: Vec<ModelKey>,
    /// Models with probe results but no stats.
    pub probes_only: Vec<ModelKey>,
    /// Models with walk stats but no augment-walk stats (no LiDAR).
    pub no_lidar: Vec<ModelKey>,
}

impl Unmatched {
    /// Whether everything matched.
    pub fn is_empty(&self) -> bool {
        self.stats_only.is_empty() && self.probes_only.is_empty() && self.no_lidar.is_empty()
    }
}

/// The models in one input and not the other.
pub fn unmatched(stats: &[StatsRow], probes: &[ProbeRow]) -> Unmatched {
    let s: BTreeSet<&ModelKey> = stats.iter().map(|r| &r.key).collect();
    let p: BTreeSet<&ModelKey> = probes.iter().map(|r| &r.key).collect();
    let lidar: BTreeSet<&ModelKey> = stats
        .iter()
        .filter(|r| r.alteration == "augment" && r.metric("lidar").is_finite())
        .map(|r| &r.key)
        .collect();
    Unmatched {
        stats_only: s.difference(&p).map(|&m| m.clone()).collect(),
        probes_only: p.difference(&s).map(|&m| m.clone()).collect(),
        no_lidar: s.difference(&lidar).map(|&m| m.clone()).collect(),
    }
}

/// A walk whose stats enter the correlations: an alteration under one convention.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Walk {
    /// noise, pgd, pgd-reference, ...
    pub alteration: String,
    /// paper or reference.
    pub convention: Convention,
}

impl fmt::Display for Walk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.alteration, self.convention)
    }
}

/// The walks the stats hold, augment walks aside (they give LiDAR, joined onto every walk).
pub fn walks(stats: &[StatsRow]) -> Vec<Walk> {
    stats
        .iter()
        .filter(|r| r.alteration != "augment")
        .map(|r| Walk {
            alteration: r.alteration.clone(),
            convention: r.convention,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One (metric, normalised accuracy) pair: the unit of every correlation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Downstream dataset.
    pub downstream: String,
    /// Task.
    pub task: String,
    /// Raw accuracy.
    pub accuracy: f64,
    /// Normalised accuracy.
    pub performance: f64,
    /// The model's stats row under the walk, with `lidar` from its augment walk.
    pub stats: StatsRow,
}

/// Joins the stats of one walk with the probe results of the models `inclusion` admits;
/// accuracies normalised within each (downstream, task) over those models. Each model's LiDAR
/// (from its augment-walk stats, NaN when it has none) joins its metrics.
pub fn pairs(
    stats: &[StatsRow],
    walk: &Walk,
    probes: &[ProbeRow],
    how: Normalise,
    inclusion: &Inclusion,
) -> Vec<Pair> {
    let lidar: BTreeMap<&ModelKey, f64> = stats
        .iter()
        .filter(|r| r.alteration == "augment")
        .map(|r| (&r.key, r.metric("lidar")))
        .collect();
    let by_model: BTreeMap<&ModelKey, &StatsRow> = stats
        .iter()
        .filter(|r| r.alteration == walk.alteration && r.convention == walk.convention)
        .filter(|r| inclusion.exclusion(r).is_none())
        .map(|r| (&r.key, r))
        .collect();
    let mut groups: BTreeMap<(&str, &str), Vec<&ProbeRow>> = BTreeMap::new();
    for p in probes {
        if by_model.contains_key(&p.key) && p.accuracy.is_finite() {
            groups
                .entry((p.downstream.as_str(), p.task.as_str()))
                .or_default()
                .push(p);
        }
    }
    let mut out = Vec::new();
    for ((downstream, task), rows) in groups {
        let mut values: Vec<f64> = rows.iter().map(|r| r.accuracy).collect();
        normalise(&mut values, how);
        for (row, performance) in rows.iter().zip(values) {
            let mut stats = by_model[&row.key].clone();
            stats.metrics.insert(
                "lidar".into(),
                lidar.get(&row.key).copied().unwrap_or(f64::NAN),
            );
            out.push(Pair {
                downstream: downstream.to_string(),
                task: task.to_string(),
                accuracy: row.accuracy,
                performance,
                stats,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn stats(track: &str, model: &str, dim: i64, epochs: i64, rmqm: f64) -> StatsRow {
        StatsRow {
            key: ModelKey::new(track, model),
            method: "ntxent".into(),
            dim,
            optimizer: "adam".into(),
            epochs,
            seed: seed_of_model_id(model),
            alteration: "noise".into(),
            convention: Convention::Paper,
            n_images: 10.0,
            n_steps: 100.0,
            seconds: 1.0,
            metrics: [("RMQM".to_string(), rmqm)].into_iter().collect(),
        }
    }

    fn probe(track: &str, model: &str, downstream: &str, acc: f64) -> ProbeRow {
        ProbeRow {
            key: ModelKey::new(track, model),
            downstream: downstream.into(),
            task: "knn-1".into(),
            accuracy: acc,
        }
    }

    #[test]
    fn join_keys_on_track_and_model_and_normalises_per_task() {
        let mut s = vec![
            stats("mnist", "a", 16, 7, 1.0),
            stats("mnist", "b", 32, 7, 2.0),
            stats("mnist", "c", 2, 7, 3.0),
            stats("mnist", "r", 16, 0, 0.5),
            stats("mnist", "lonely", 16, 7, 1.0),
            // The same id on another track is another model.
            stats("cifar10", "a", 16, 7, 5.0),
        ];
        let mut aug = stats("mnist", "a", 16, 7, f64::NAN);
        aug.alteration = "augment".into();
        aug.metrics.insert("lidar".into(), 12.5);
        s.push(aug);
        let p = vec![
            probe("mnist", "a", "kmnist", 0.4),
            probe("mnist", "b", "kmnist", 0.8),
            probe("mnist", "c", "kmnist", 0.9),
            probe("mnist", "r", "kmnist", 0.3),
            probe("mnist", "ghost", "kmnist", 0.5),
            probe("mnist", "a", "omniglot", 0.1),
            probe("mnist", "b", "omniglot", 0.2),
            probe("cifar10", "a", "cifar100", 0.3),
        ];
        let u = unmatched(&s, &p);
        assert_eq!(u.stats_only, vec![ModelKey::new("mnist", "lonely")]);
        assert_eq!(u.probes_only, vec![ModelKey::new("mnist", "ghost")]);
        assert!(u.no_lidar.contains(&ModelKey::new("cifar10", "a")));
        let inclusion = Inclusion {
            min_dim: 4,
            baselines: false,
        };
        assert!(inclusion.exclusion(&s[2]).unwrap().contains("dimension"));
        assert!(inclusion.exclusion(&s[3]).unwrap().contains("random"));
        assert_eq!(walks(&s).len(), 1);
        let pairs = pairs(&s, &walks(&s)[0], &p, Normalise::Max, &inclusion);
        let k: Vec<(String, f64)> = pairs
            .iter()
            .filter(|p| p.downstream == "kmnist")
            .map(|p| (p.stats.key.model.clone(), p.performance))
            .collect();
        assert_eq!(k, vec![("a".to_string(), 0.5), ("b".to_string(), 1.0)]);
        assert_eq!(pairs.len(), 5);
        let cifar = pairs.iter().find(|p| p.downstream == "cifar100").unwrap();
        assert_eq!(cifar.stats.metric("RMQM"), 5.0);
        assert!(cifar.stats.metric("lidar").is_nan());
        let a = pairs.iter().find(|p| p.downstream == "omniglot").unwrap();
        assert_eq!(a.stats.metric("lidar"), 12.5);
        let mut v = vec![1.0, 2.0, 3.0];
        normalise(&mut v, Normalise::MinMax);
        assert_eq!(v, vec![0.0, 0.5, 1.0]);
        let mut v = vec![1.0, 2.0, 3.0];
        normalise(&mut v, Normalise::ZScore);
        assert_eq!(v, vec![-1.0, 0.0, 1.0]);
        assert_eq!(seed_of_model_id("ntxent_d64_adam_s12"), Some(12));
        assert_eq!(seed_of_model_id("my-encoder"), None);
    }
}
