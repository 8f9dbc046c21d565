//! The whole analysis of a set of stats and probe results, as named results: correlations of
//! every metric per task and pool, the appendix A ablation and fitted weights on each pool,
//! granulated Kendall, the metric leaderboard, the seed study, and the data of Figure 6.

use crate::analysis::{
    Inclusion, ModelKey, Normalise, Pair, ProbeRow, StatsRow, Unmatched, Walk, pairs, unmatched,
    walks,
};
use crate::fit::{FittedWeights, Terms, ablation, fit_weights, leave_one_out_r};
use crate::metrics::{Cost, METRICS, MetricInfo, Source, cost};
use crate::pools::{Group, Pool, groups};
use crate::seeds::{SeedSpreadRow, seed_spread};
use crate::stats::{
    Granulated, Interval, bootstrap_grouped, fisher_interval, granulated_kendall, kendall_tau_b,
    pearson, pearson_p_value, spearman,
};
use rmqm_vocab::Convention;
use std::collections::{BTreeMap, BTreeSet};

/// How the analysis runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Accuracy normalisation per (downstream, task).
    pub normalise: Normalise,
    /// Bootstrap resamples (over models).
    pub resamples: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Which models enter the correlations.
    pub inclusion: Inclusion,
    /// `downstream/task` names left out of the all-tasks pools.
    pub excluded_tasks: Vec<String>,
    /// Whether to refit the weights leaving each model out.
    pub leave_one_out: bool,
}

/// Level of every interval.
pub const LEVEL: f64 = 0.95;

/// Pearson, Spearman and Kendall of one metric against performance over one group of pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correlation {
    /// Pairs that entered (both values finite).
    pub n: usize,
    /// Models among them.
    pub models: usize,
    /// Pearson's r.
    pub pearson: f64,
    /// Fisher-z interval of r.
    pub fisher: Interval,
    /// Two-sided p-value of r.
    pub p_value: f64,
    /// Spearman's rho.
    pub spearman: f64,
    /// Kendall's tau-b.
    pub kendall: f64,
    /// Bootstrap interval of r, resampling models.
    pub bootstrap: Interval,
}

/// One row of the correlation table.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationRow {
    /// The walk whose stats were used.
    pub walk: Walk,
    /// The metric's column.
    pub metric: &'static str,
    /// `downstream/task` or a pool's name.
    pub group: String,
    /// The pool, when the group is one.
    pub pool: Option<Pool>,
    /// The statistics.
    pub correlation: Correlation,
}

/// One subset of RMQM's terms on one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct AblationRow {
    /// The walk.
    pub walk: Walk,
    /// The pool.
    pub pool: Pool,
    /// The subset, e.g. `D + 1/D_RC`.
    pub terms: &'static str,
    /// Pearson's r with performance.
    pub pearson: f64,
    /// Pairs.
    pub n: usize,
}

/// The fitted weights of eq. 6 on one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightRow {
    /// The walk.
    pub walk: Walk,
    /// The pool.
    pub pool: Pool,
    /// The fit.
    pub fit: FittedWeights,
    /// Pearson's r of weights fitted without each model, on that model.
    pub pearson_leave_one_out: f64,
    /// Models.
    pub models: usize,
}

/// The granulated Kendall of one metric along one axis on one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct GranulatedRow {
    /// The walk.
    pub walk: Walk,
    /// The pool.
    pub pool: Pool,
    /// The metric's column.
    pub metric: &'static str,
    /// method, dim, optimizer or seed.
    pub axis: &'static str,
    /// The coefficient.
    pub granulated: Granulated,
}

/// One metric's row of the leaderboard on one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderRow {
    /// The pool.
    pub pool: Pool,
    /// The metric.
    pub metric: &'static MetricInfo,
    /// The walk of a walk metric (None for the metrics of clean embeddings and augment views).
    pub walk: Option<Walk>,
    /// Pairs and models.
    pub correlation: Correlation,
    /// Bootstrap interval of Spearman's rho.
    pub spearman_interval: Interval,
    /// Bootstrap interval of Kendall's tau-b.
    pub kendall_interval: Interval,
    /// Granulated Kendall per axis (method, dim, optimizer; seed where there are several).
    pub granulated: Vec<(&'static str, Granulated)>,
    /// Cost per image.
    pub cost: Cost,
}

impl LeaderRow {
    /// Kendall's tau-b times the metric's expected sign: positive when the metric ranks encoders
    /// the way its authors claim (the leaderboard's order).
    pub fn signed_kendall(&self) -> f64 {
        self.correlation.kendall * self.metric.better.sign()
    }

    /// The metric's name with its walk, e.g. `RMQM (noise)`.
    pub fn name(&self) -> String {
        match &self.walk {
            Some(w) => format!("{} ({})", self.metric.label, w.alteration),
            None => self.metric.label.to_string(),
        }
    }
}

/// RMQM against normalised 1-NN accuracy on one downstream set (Figure 6).
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterSeries {
    /// Downstream dataset.
    pub downstream: String,
    /// (RMQM, normalised accuracy) per model.
    pub points: Vec<(f64, f64)>,
}

/// One model's place in the analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatus {
    /// The model.
    pub key: ModelKey,
    /// One of its stats rows (method, dim, ...).
    pub row: StatsRow,
    /// Why it is left out of the correlations, if it is.
    pub excluded: Option<String>,
    /// Whether it has probe results.
    pub probes: bool,
    /// Whether it has LiDAR (an augment walk).
    pub lidar: bool,
    /// The walks it has stats for.
    pub walks: Vec<String>,
}

/// Everything the analysis found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Study {
    /// Train datasets (tracks) that entered, with their model counts.
    pub tracks: Vec<(String, usize)>,
    /// Every model.
    pub models: Vec<ModelStatus>,
    /// Correlations of every metric, per walk, task and pool.
    pub correlations: Vec<CorrelationRow>,
    /// The ablation per walk and pool.
    pub ablation: Vec<AblationRow>,
    /// Fitted weights per walk and pool.
    pub weights: Vec<WeightRow>,
    /// Granulated Kendall per walk, pool, metric and axis.
    pub granulated: Vec<GranulatedRow>,
    /// The leaderboard, per pool, best first.
    pub leaderboard: Vec<LeaderRow>,
    /// The seed study (empty with one seed).
    pub seed_spread: Vec<SeedSpreadRow>,
    /// Figure 6's data.
    pub figure6: Vec<ScatterSeries>,
    /// Models in one input and not the other.
    pub unmatched: Unmatched,
}

/// Runs the analysis.
pub fn analyse(stats: &[StatsRow], probes: &[ProbeRow], options: &Options) -> Study {
    let mut study = Study {
        tracks: tracks(stats),
        models: model_statuses(stats, probes, &options.inclusion),
        unmatched: unmatched(stats, probes),
        ..Study::default()
    };
    for walk in walks(stats) {
        let pairs = pairs(stats, &walk, probes, options.normalise, &options.inclusion);
        if pairs.is_empty() {
            continue;
        }
        let groups = groups(&pairs, &options.excluded_tasks);
        let models = model_index(&pairs);
        for group in &groups {
            study
                .correlations
                .extend(correlation_rows(&walk, group, &pairs, &models, options));
            if let Some(pool) = group.pool() {
                fit_pool(&mut study, &walk, pool, group, &pairs, &models, options);
                study
                    .granulated
                    .extend(granulated_rows(&walk, pool, group, &pairs));
            }
        }
        if walk.alteration == "noise" && walk.convention == Convention::Paper {
            study.figure6 = figure6(&pairs);
        }
    }
    study.leaderboard = leaderboard(stats, probes, options);
    study.seed_spread = seed_spread(stats, probes, &options.inclusion);
    study
}

/// The train datasets and how many models each has.
fn tracks(stats: &[StatsRow]) -> Vec<(String, usize)> {
    let mut t: BTreeMap<&str, BTreeSet<&ModelKey>> = BTreeMap::new();
    for r in stats {
        t.entry(&r.key.train_dataset).or_default().insert(&r.key);
    }
    t.into_iter()
        .map(|(k, v)| (k.to_string(), v.len()))
        .collect()
}

fn model_statuses(
    stats: &[StatsRow],
    probes: &[ProbeRow],
    inclusion: &Inclusion,
) -> Vec<ModelStatus> {
    let probed: BTreeSet<&ModelKey> = probes.iter().map(|p| &p.key).collect();
    let mut by_model: BTreeMap<&ModelKey, Vec<&StatsRow>> = BTreeMap::new();
    for r in stats {
        by_model.entry(&r.key).or_default().push(r);
    }
    by_model
        .into_iter()
        .map(|(key, rows)| {
            let walk_row = rows
                .iter()
                .find(|r| r.alteration != "augment")
                .unwrap_or(&rows[0]);
            ModelStatus {
                key: key.clone(),
                row: (*walk_row).clone(),
                excluded: inclusion.exclusion(walk_row),
                probes: probed.contains(key),
                lidar: rows
                    .iter()
                    .any(|r| r.alteration == "augment" && r.metric("lidar").is_finite()),
                walks: rows
                    .iter()
                    .map(|r| r.alteration.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            }
        })
        .collect()
}

/// Each pair's model as a small integer (the bootstrap's groups).
fn model_index(pairs: &[Pair]) -> Vec<usize> {
    let ids: BTreeMap<&ModelKey, usize> = pairs
        .iter()
        .map(|p| &p.stats.key)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, i))
        .collect();
    pairs.iter().map(|p| ids[&p.stats.key]).collect()
}

/// A metric and performance over a group's pairs where both are finite, with each pair's model.
struct Sample {
    x: Vec<f64>,
    y: Vec<f64>,
    models: Vec<usize>,
}

fn sample(column: &str, members: &[usize], pairs: &[Pair], models: &[usize]) -> Sample {
    let mut s = Sample {
        x: Vec::new(),
        y: Vec::new(),
        models: Vec::new(),
    };
    for &i in members {
        let x = pairs[i].stats.metric(column);
        let y = pairs[i].performance;
        if x.is_finite() && y.is_finite() {
            s.x.push(x);
            s.y.push(y);
            s.models.push(models[i]);
        }
    }
    s
}

fn correlation(s: &Sample, options: &Options) -> Correlation {
    let r = pearson(&s.x, &s.y);
    let n = s.x.len();
    Correlation {
        n,
        models: s.models.iter().collect::<BTreeSet<_>>().len(),
        pearson: r,
        fisher: fisher_interval(r, n, LEVEL),
        p_value: pearson_p_value(r, n),
        spearman: spearman(&s.x, &s.y),
        kendall: kendall_tau_b(&s.x, &s.y),
        bootstrap: bootstrap_grouped(
            &s.x,
            &s.y,
            &s.models,
            options.resamples,
            LEVEL,
            options.seed,
            &[pearson],
        )[0],
    }
}

fn correlation_rows(
    walk: &Walk,
    group: &Group,
    pairs: &[Pair],
    models: &[usize],
    options: &Options,
) -> Vec<CorrelationRow> {
    METRICS
        .iter()
        .map(|m| CorrelationRow {
            walk: walk.clone(),
            metric: m.column,
            group: group.name(),
            pool: group.pool(),
            correlation: correlation(&sample(m.column, &group.members, pairs, models), options),
        })
        .collect()
}

/// The ablation and the fitted weights on one pool.
fn fit_pool(
    study: &mut Study,
    walk: &Walk,
    pool: Pool,
    group: &Group,
    pairs: &[Pair],
    models: &[usize],
    options: &Options,
) {
    let members: Vec<usize> = group
        .members
        .iter()
        .copied()
        .filter(|&i| {
            let s = &pairs[i].stats;
            ["D", "inv_D_RC", "inv_P_RC"]
                .iter()
                .all(|c| s.metric(c).is_finite())
                && pairs[i].performance.is_finite()
        })
        .collect();
    if members.len() < 3 {
        return;
    }
    let column =
        |c: &str| -> Vec<f64> { members.iter().map(|&i| pairs[i].stats.metric(c)).collect() };
    let terms = Terms {
        d: column("D"),
        inv_d_rc: column("inv_D_RC"),
        inv_p_rc: column("inv_P_RC"),
    };
    let performance: Vec<f64> = members.iter().map(|&i| pairs[i].performance).collect();
    let groups: Vec<usize> = members.iter().map(|&i| models[i]).collect();
    for a in ablation(&terms, &performance) {
        study.ablation.push(AblationRow {
            walk: walk.clone(),
            pool,
            terms: a.terms,
            pearson: a.pearson,
            n: performance.len(),
        });
    }
    study.weights.push(WeightRow {
        walk: walk.clone(),
        pool,
        fit: fit_weights(&terms, &performance),
        pearson_leave_one_out: if options.leave_one_out {
            leave_one_out_r(&terms, &performance, &groups)
        } else {
            f64::NAN
        },
        models: groups.iter().collect::<BTreeSet<_>>().len(),
    });
}

/// The hyperparameter axes of a set of pairs: method, dim, optimizer, and seed when there are
/// several seeds.
fn axes(pairs: &[Pair], members: &[usize]) -> Vec<&'static str> {
    let seeds: BTreeSet<Option<i64>> = members.iter().map(|&i| pairs[i].stats.seed).collect();
    let mut a = vec!["method", "dim", "optimizer"];
    if seeds.len() > 1 {
        a.push("seed");
    }
    a
}

fn axis_value(s: &StatsRow, axis: &str) -> String {
    match axis {
        "method" => s.method.clone(),
        "dim" => s.dim.to_string(),
        "optimizer" => s.optimizer.clone(),
        _ => format!("{:?}", s.seed),
    }
}

/// Granulated Kendall of `column` along `axis` over a group's pairs: pairs grouped by track,
/// downstream set, task and every other axis; Kendall within each group; the mean.
fn granulated_on(
    column: &str,
    axis: &str,
    all_axes: &[&str],
    members: &[usize],
    pairs: &[Pair],
) -> Granulated {
    let mut cells: BTreeMap<Vec<String>, Vec<(f64, f64)>> = BTreeMap::new();
    for &i in members {
        let p = &pairs[i];
        let (x, y) = (p.stats.metric(column), p.performance);
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        let mut key = vec![
            p.stats.key.train_dataset.clone(),
            p.downstream.clone(),
            p.task.clone(),
        ];
        key.extend(
            all_axes
                .iter()
                .filter(|&&a| a != axis)
                .map(|a| axis_value(&p.stats, a)),
        );
        cells.entry(key).or_default().push((x, y));
    }
    granulated_kendall(&cells.into_values().collect::<Vec<_>>())
}

fn granulated_rows(walk: &Walk, pool: Pool, group: &Group, pairs: &[Pair]) -> Vec<GranulatedRow> {
    let all_axes = axes(pairs, &group.members);
    let mut out = Vec::new();
    for m in &METRICS {
        for &axis in &all_axes {
            out.push(GranulatedRow {
                walk: walk.clone(),
                pool,
                metric: m.column,
                axis,
                granulated: granulated_on(m.column, axis, &all_axes, &group.members, pairs),
            });
        }
    }
    out
}

fn figure6(pairs: &[Pair]) -> Vec<ScatterSeries> {
    let mut by_set: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.task == "knn-1") {
        by_set
            .entry(&p.downstream)
            .or_default()
            .push((p.stats.metric("RMQM"), p.performance));
    }
    by_set
        .into_iter()
        .map(|(d, points)| ScatterSeries {
            downstream: d.to_string(),
            points,
        })
        .collect()
}

/// The leaderboard: on every pool, every metric (walk metrics under each paper-convention walk,
/// the others once), with bootstrap intervals of all three coefficients, granulated Kendall per
/// axis and the cost per image; best first by Kendall in the expected direction.
fn leaderboard(stats: &[StatsRow], probes: &[ProbeRow], options: &Options) -> Vec<LeaderRow> {
    let paper_walks: Vec<Walk> = walks(stats)
        .into_iter()
        .filter(|w| w.convention == Convention::Paper)
        .collect();
    let no_bootstrap = Options {
        resamples: 0,
        ..options.clone()
    };
    let mut rows = Vec::new();
    for (k, walk) in paper_walks.iter().enumerate() {
        let pairs = pairs(stats, walk, probes, options.normalise, &options.inclusion);
        let groups = groups(&pairs, &options.excluded_tasks);
        let models = model_index(&pairs);
        for group in groups.iter().filter(|g| g.pool().is_some()) {
            let all_axes = axes(&pairs, &group.members);
            for m in &METRICS {
                // The metrics of clean embeddings and augment views are the same under every
                // walk: one row, from the first walk.
                if m.source != Source::Walk && k > 0 {
                    continue;
                }
                let s = sample(m.column, &group.members, &pairs, &models);
                if s.x.len() < 3 {
                    continue;
                }
                let intervals = bootstrap_grouped(
                    &s.x,
                    &s.y,
                    &s.models,
                    options.resamples,
                    LEVEL,
                    options.seed,
                    &[pearson, spearman, kendall_tau_b],
                );
                let mut correlation = correlation(&s, &no_bootstrap);
                correlation.bootstrap = intervals[0];
                let walk_of_metric = (m.source == Source::Walk).then(|| walk.clone());
                rows.push(LeaderRow {
                    pool: group.pool().expect("pools only"),
                    metric: m,
                    cost: cost(m, walk_of_metric.as_ref(), stats),
                    walk: walk_of_metric,
                    correlation,
                    spearman_interval: intervals[1],
                    kendall_interval: intervals[2],
                    granulated: all_axes
                        .iter()
                        .map(|&a| {
                            (
                                a,
                                granulated_on(m.column, a, &all_axes, &group.members, &pairs),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    let key = |r: &LeaderRow| {
        let k = r.signed_kendall();
        if k.is_finite() { k } else { f64::NEG_INFINITY }
    };
    rows.sort_by(|a, b| a.pool.cmp(&b.pool).then(key(b).total_cmp(&key(a))));
    rows
}
