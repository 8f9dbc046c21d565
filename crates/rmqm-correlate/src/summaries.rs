//! Tables 1 and 2 of the paper: D and the spike metrics per method (mean and standard deviation
//! over dimensions and optimizers), per track, random-init baselines on their own rows.

use crate::analysis::StatsRow;
use rmqm_vocab::Convention;
use std::collections::{BTreeMap, BTreeSet};

/// Mean and sample standard deviation of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanSd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub sd: f64,
    /// Values.
    pub n: usize,
}

impl MeanSd {
    /// Of the finite values; None when there are none.
    pub fn of(values: &[f64]) -> Option<MeanSd> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(MeanSd {
            mean,
            sd,
            n: v.len(),
        })
    }
}

/// One method's row of Tables 1-2 on one track.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSummary {
    /// The track (train dataset).
    pub train_dataset: String,
    /// The method, `<method> (random init)` for baselines.
    pub method: String,
    /// Models.
    pub models: usize,
    /// (metric column, alteration) -> mean and sd over the method's models.
    pub values: BTreeMap<(String, String), MeanSd>,
}

/// The label of a row's method in the tables.
pub fn method_label(r: &StatsRow) -> String {
    if r.epochs == 0 {
        format!("{} (random init)", r.method)
    } else {
        r.method.clone()
    }
}

/// D, D_RC and P_RC per (track, method), over the models with embedding dimension at least
/// `min_dim`, in `convention`, for every alteration but augment.
pub fn method_summaries(
    stats: &[StatsRow],
    min_dim: i64,
    convention: Convention,
) -> Vec<MethodSummary> {
    let mut cells: BTreeMap<(String, String), Vec<&StatsRow>> = BTreeMap::new();
    for r in stats
        .iter()
        .filter(|r| r.convention == convention && r.dim >= min_dim && r.alteration != "augment")
    {
        cells
            .entry((r.key.train_dataset.clone(), method_label(r)))
            .or_default()
            .push(r);
    }
    cells
        .into_iter()
        .map(|((train_dataset, method), rows)| {
            let alterations: BTreeSet<&str> = rows.iter().map(|r| r.alteration.as_str()).collect();
            let mut values = BTreeMap::new();
            for a in alterations {
                for column in ["D", "D_RC", "P_RC"] {
                    let v: Vec<f64> = rows
                        .iter()
                        .filter(|r| r.alteration == a)
                        .map(|r| r.metric(column))
                        .collect();
                    if let Some(ms) = MeanSd::of(&v) {
                        values.insert((column.to_string(), a.to_string()), ms);
                    }
                }
            }
            MethodSummary {
                train_dataset,
                method,
                models: rows.iter().map(|r| &r.key).collect::<BTreeSet<_>>().len(),
                values,
            }
        })
        .collect()
}

/// One (track, method, dimension, walk) cell: the metrics averaged over optimizers and seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct DimSummary {
    /// The track (train dataset).
    pub train_dataset: String,
    /// The method (`<method> (random init)` for baselines).
    pub method: String,
    /// Embedding dimension.
    pub dim: i64,
    /// The alteration.
    pub alteration: String,
    /// Models averaged.
    pub models: usize,
    /// Metric column -> mean and sd over the cell's models (D, D_RC, P_RC, RMQM).
    pub values: BTreeMap<String, MeanSd>,
}

/// D, D_RC, P_RC and RMQM per (track, method, dimension, walk) in `convention`, augment walks
/// aside: the numbers behind the per-dimension figures and the paper's per-dimension claims.
pub fn dim_summaries(stats: &[StatsRow], convention: Convention) -> Vec<DimSummary> {
    let mut cells: BTreeMap<(String, String, i64, String), Vec<&StatsRow>> = BTreeMap::new();
    for r in stats
        .iter()
        .filter(|r| r.convention == convention && r.alteration != "augment")
    {
        cells
            .entry((
                r.key.train_dataset.clone(),
                method_label(r),
                r.dim,
                r.alteration.clone(),
            ))
            .or_default()
            .push(r);
    }
    cells
        .into_iter()
        .map(
            |((train_dataset, method, dim, alteration), rows)| DimSummary {
                train_dataset,
                method,
                dim,
                alteration,
                models: rows.len(),
                values: ["D", "D_RC", "P_RC", "RMQM"]
                    .iter()
                    .filter_map(|c| {
                        let v: Vec<f64> = rows.iter().map(|r| r.metric(c)).collect();
                        MeanSd::of(&v).map(|m| (c.to_string(), m))
                    })
                    .collect(),
            },
        )
        .collect()
}
