//! `correlate`: joins manifold-stats summaries with probe results on the model id and reports how
//! RMQM, its terms and the peer metrics correlate with downstream performance; the appendix A
//! ablation with fitted weights; granulated Kendall per hyperparameter axis; the paper's Tables 1-2
//! and Figures 2-6; and a report.md that links them all.

mod figures;
mod inputs;

use anyhow::{Result, bail};
use clap::Parser;
use rmqm_artifacts::{Column, Output, Table, keys, write_table};
use rmqm_cli::{Summary, base_provenance};
use rmqm_correlate::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use inputs::METRICS;

/// Command-line arguments of `correlate`.
#[derive(Debug, Parser)]
#[command(
    name = "correlate",
    version,
    about = "RMQM vs downstream performance: correlations, ablation, tables and figures",
    long_about = "Joins manifold-stats summaries and probe results on the model id and writes, into an \
output folder: the correlation table (Pearson r with Fisher-z interval and p-value, Spearman, Kendall tau-b, \
bootstrap interval over models) for RMQM, D, 1/D_RC, 1/P_RC, the weighted RMQM and the peer metrics, per \
downstream task and pooled, per alteration and convention; the appendix A ablation with fitted weights and \
their leave-one-model-out correlation; granulated Kendall per hyperparameter axis; Tables 1-2; Figures 2-6 \
(PNG and SVG); and report.md. Encoders with embedding dimension below --min-dim and random-init baselines \
are left out of correlations and shown in the tables.",
    after_help = "Examples:\n  correlate --stats out/stats/*.parquet --probes out/probes/*.parquet -o out/report\n  \
correlate --stats 'out/stats/*.parquet' --probes 'out/probes/*.parquet' --curves 'out/curves/*.parquet' -o report --normalise minmax"
)]
pub struct Args {
    /// manifold-stats summaries (files or glob patterns).
    #[arg(long, num_args = 1.., required = true)]
    pub stats: Vec<String>,
    /// probe results (files or glob patterns).
    #[arg(long, num_args = 1.., required = true)]
    pub probes: Vec<String>,
    /// manifold-stats --curves files for Figures 2-4 (files or glob patterns).
    #[arg(long, num_args = 1..)]
    pub curves: Vec<String>,
    /// Output folder.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Accuracy normalisation per (downstream, task): max, minmax, zscore, none.
    #[arg(long, default_value = "max")]
    pub normalise: Normalise,
    /// Bootstrap resamples (over models).
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Smallest embedding dimension that enters correlations.
    #[arg(long, default_value_t = 4)]
    pub min_dim: i64,
    /// Let random-init baselines (0 epochs) enter correlations.
    #[arg(long)]
    pub include_baselines: bool,
    /// Leave (downstream/task) out of pooled correlations, e.g. omniglot/linear (as the paper did).
    #[arg(long)]
    pub exclude_task: Vec<String>,
    /// Skip the leave-one-model-out refits of the fitted weights.
    #[arg(long)]
    pub no_loo: bool,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// One fitted-weights result: alteration, convention, task, weights, r in sample, r leave-one-out, models.
type WeightRow = (String, String, String, [f64; 3], f64, f64, usize);

/// One correlation result.
struct CorrRow {
    alteration: String,
    convention: String,
    metric: String,
    task: String,
    n: usize,
    models: usize,
    pearson: f64,
    ci: (f64, f64),
    p: f64,
    spearman: f64,
    kendall: f64,
    boot: (f64, f64),
}

fn write_both(
    dir: &Path,
    name: &str,
    title: &str,
    table: &Table,
    prov: &rmqm_artifacts::Provenance,
) -> Result<()> {
    write_table(
        &Output::Path(dir.join(format!("{name}.parquet"))),
        table,
        &prov.clone().with(keys::KIND, name),
    )?;
    std::fs::write(
        dir.join(format!("{name}.md")),
        format!("# {title}\n\n{}", table.to_markdown()),
    )?;
    Ok(())
}

/// Task groups: every (downstream, task), then each task pooled over downstream sets, then all.
fn task_groups(pairs: &[Pair], exclude: &[String]) -> Vec<(String, Vec<usize>)> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut pooled: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut all = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let name = format!("{}/{}", p.downstream, p.task);
        groups.entry(name.clone()).or_default().push(i);
        if !exclude.contains(&name) {
            pooled
                .entry(format!("pooled/{}", p.task))
                .or_default()
                .push(i);
            all.push(i);
        }
    }
    let mut out: Vec<(String, Vec<usize>)> = groups.into_iter().collect();
    out.extend(pooled);
    out.push(("pooled/all".into(), all));
    out
}

fn fmt_pm(values: &[f64]) -> String {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "NA".into();
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    format!("{m:.2} ± {sd:.2}")
}

/// Entry point.
pub fn run(argv: Vec<String>) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    rmqm_cli::init_threads(args.threads);
    let summary = Summary::start("correlate");
    let stats = inputs::read_stats(&inputs::expand(&args.stats)?)?;
    let probes = inputs::read_probes(&inputs::expand(&args.probes)?)?;
    let curves = inputs::read_curves(&inputs::expand(&args.curves)?)?;
    if stats.is_empty() {
        bail!("no stats rows (label \"all\") in the --stats files");
    }
    if probes.is_empty() {
        bail!("no rows in the --probes files");
    }
    let dir = &args.output;
    std::fs::create_dir_all(dir)?;
    let prov = base_provenance("correlate", &argv);
    let unmatched = unmatched(&stats, &probes);
    for m in &unmatched.stats_only {
        eprintln!("correlate: model {m} has stats but no probe result");
    }
    for m in &unmatched.probes_only {
        eprintln!("correlate: model {m} has probe results but no stats");
    }

    // Models: every (model) with its inclusion status.
    let mut model_info: BTreeMap<String, &StatsRow> = BTreeMap::new();
    for r in &stats {
        model_info.entry(r.model.clone()).or_insert(r);
    }
    let included = |r: &StatsRow| exclusion(r, args.min_dim, args.include_baselines).is_none();
    let combos: BTreeSet<(String, String)> = stats
        .iter()
        .map(|r| (r.alteration.clone(), r.convention.clone()))
        .collect();

    // Correlations.
    let mut corr: Vec<CorrRow> = Vec::new();
    let mut ablation_rows: Vec<(String, String, String, String, f64, usize)> = Vec::new();
    let mut weight_rows: Vec<WeightRow> = Vec::new();
    let mut kendall_rows: Vec<(String, String, String, String, f64, usize)> = Vec::new();
    let mut fig6: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (alteration, convention) in &combos {
        let rows: Vec<StatsRow> = stats
            .iter()
            .filter(|r| &r.alteration == alteration && &r.convention == convention)
            .cloned()
            .collect();
        let pairs = pairs(&rows, &probes, args.normalise, &included);
        if pairs.is_empty() {
            continue;
        }
        let model_index: BTreeMap<&str, usize> = pairs
            .iter()
            .map(|p| p.model.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        for (task, idx) in task_groups(&pairs, &args.exclude_task) {
            let perf: Vec<f64> = idx.iter().map(|&i| pairs[i].performance).collect();
            let groups: Vec<usize> = idx
                .iter()
                .map(|&i| model_index[pairs[i].model.as_str()])
                .collect();
            let models = groups.iter().collect::<BTreeSet<_>>().len();
            for metric in METRICS {
                let x: Vec<f64> = idx
                    .iter()
                    .map(|&i| {
                        pairs[i]
                            .stats
                            .metrics
                            .get(metric)
                            .copied()
                            .unwrap_or(f64::NAN)
                    })
                    .collect();
                let keep: Vec<usize> = (0..x.len())
                    .filter(|&k| x[k].is_finite() && perf[k].is_finite())
                    .collect();
                let (xs, ys, gs): (Vec<f64>, Vec<f64>, Vec<usize>) = (
                    keep.iter().map(|&k| x[k]).collect(),
                    keep.iter().map(|&k| perf[k]).collect(),
                    keep.iter().map(|&k| groups[k]).collect(),
                );
                let r = pearson(&xs, &ys);
                corr.push(CorrRow {
                    alteration: alteration.clone(),
                    convention: convention.clone(),
                    metric: metric.to_string(),
                    task: task.clone(),
                    n: xs.len(),
                    models,
                    pearson: r,
                    ci: fisher_interval(r, xs.len(), 0.95),
                    p: pearson_p_value(r, xs.len()),
                    spearman: spearman(&xs, &ys),
                    kendall: kendall_tau_b(&xs, &ys),
                    boot: bootstrap_pearson_grouped(&xs, &ys, &gs, args.resamples, 0.95, args.seed),
                });
            }
            // Ablation and fitted weights on the pooled groups.
            if task.starts_with("pooled/") {
                let t = Terms {
                    d: idx.iter().map(|&i| pairs[i].stats.metrics["D"]).collect(),
                    inv_d_rc: idx
                        .iter()
                        .map(|&i| pairs[i].stats.metrics["inv_D_RC"])
                        .collect(),
                    inv_p_rc: idx
                        .iter()
                        .map(|&i| pairs[i].stats.metrics["inv_P_RC"])
                        .collect(),
                };
                for (name, r) in ablation(&t, &perf) {
                    ablation_rows.push((
                        alteration.clone(),
                        convention.clone(),
                        task.clone(),
                        name.to_string(),
                        r,
                        perf.len(),
                    ));
                }
                let (w, r) = fit_weights(&t, &perf);
                let loo = if args.no_loo {
                    f64::NAN
                } else {
                    leave_one_out_r(&t, &perf, &groups)
                };
                weight_rows.push((
                    alteration.clone(),
                    convention.clone(),
                    task.clone(),
                    w,
                    r,
                    loo,
                    models,
                ));
            } else {
                // Granulated Kendall per axis within this task.
                for axis in ["method", "dim", "optimizer"] {
                    let mut g: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
                    for &i in &idx {
                        let s = &pairs[i].stats;
                        let key = match axis {
                            "method" => format!("{}|{}", s.dim, s.optimizer),
                            "dim" => format!("{}|{}", s.method, s.optimizer),
                            _ => format!("{}|{}", s.method, s.dim),
                        };
                        g.entry(key)
                            .or_default()
                            .push((s.metrics["RMQM"], pairs[i].performance));
                    }
                    let (tau, used) = granulated_kendall(&g.into_values().collect::<Vec<_>>());
                    kendall_rows.push((
                        alteration.clone(),
                        convention.clone(),
                        task.clone(),
                        axis.to_string(),
                        tau,
                        used,
                    ));
                }
            }
            if alteration == "noise"
                && convention == "paper"
                && task.ends_with("/knn-1")
                && !task.starts_with("pooled/")
            {
                let pts: Vec<(f64, f64)> = idx
                    .iter()
                    .map(|&i| (pairs[i].stats.metrics["RMQM"], pairs[i].performance))
                    .collect();
                fig6.push((task.trim_end_matches("/knn-1").to_string(), pts));
            }
        }
    }

    // Correlation table.
    let s = |f: &dyn Fn(&CorrRow) -> String| Column::Str(corr.iter().map(f).collect());
    let f = |f: &dyn Fn(&CorrRow) -> f64| Column::F64(corr.iter().map(f).collect());
    let mut ct = Table::new();
    ct.push("alteration", s(&|r| r.alteration.clone()));
    ct.push("convention", s(&|r| r.convention.clone()));
    ct.push("metric", s(&|r| r.metric.clone()));
    ct.push("task", s(&|r| r.task.clone()));
    ct.push("n", Column::I64(corr.iter().map(|r| r.n as i64).collect()));
    ct.push(
        "models",
        Column::I64(corr.iter().map(|r| r.models as i64).collect()),
    );
    ct.push("pearson", f(&|r| r.pearson));
    ct.push("pearson_ci_low", f(&|r| r.ci.0));
    ct.push("pearson_ci_high", f(&|r| r.ci.1));
    ct.push("p_value", f(&|r| r.p));
    ct.push("spearman", f(&|r| r.spearman));
    ct.push("kendall_tau_b", f(&|r| r.kendall));
    ct.push("bootstrap_low", f(&|r| r.boot.0));
    ct.push("bootstrap_high", f(&|r| r.boot.1));
    write_both(
        dir,
        "correlations",
        "Correlation of each metric with normalised downstream accuracy",
        &ct,
        &prov,
    )?;

    let mut at = Table::new();
    at.push(
        "alteration",
        Column::Str(ablation_rows.iter().map(|r| r.0.clone()).collect()),
    );
    at.push(
        "convention",
        Column::Str(ablation_rows.iter().map(|r| r.1.clone()).collect()),
    );
    at.push(
        "task",
        Column::Str(ablation_rows.iter().map(|r| r.2.clone()).collect()),
    );
    at.push(
        "terms",
        Column::Str(ablation_rows.iter().map(|r| r.3.clone()).collect()),
    );
    at.push(
        "pearson",
        Column::F64(ablation_rows.iter().map(|r| r.4).collect()),
    );
    at.push(
        "n",
        Column::I64(ablation_rows.iter().map(|r| r.5 as i64).collect()),
    );
    write_both(
        dir,
        "ablation",
        "Ablation (appendix A): RMQM from subsets of {D, 1/D_RC, 1/P_RC}",
        &at,
        &prov,
    )?;

    let mut wt = Table::new();
    wt.push(
        "alteration",
        Column::Str(weight_rows.iter().map(|r| r.0.clone()).collect()),
    );
    wt.push(
        "convention",
        Column::Str(weight_rows.iter().map(|r| r.1.clone()).collect()),
    );
    wt.push(
        "task",
        Column::Str(weight_rows.iter().map(|r| r.2.clone()).collect()),
    );
    for (k, name) in ["w_D", "w_inv_D_RC", "w_inv_P_RC"].iter().enumerate() {
        wt.push(
            name,
            Column::F64(weight_rows.iter().map(|r| r.3[k]).collect()),
        );
    }
    // The direction of the weights: near w = 0 the fit is linear in w.x and only proportions matter.
    for (k, name) in ["share_D", "share_inv_D_RC", "share_inv_P_RC"]
        .iter()
        .enumerate()
    {
        wt.push(
            name,
            Column::F64(
                weight_rows
                    .iter()
                    .map(|r| r.3[k] / (r.3[0] + r.3[1] + r.3[2]))
                    .collect(),
            ),
        );
    }
    wt.push(
        "pearson_in_sample",
        Column::F64(weight_rows.iter().map(|r| r.4).collect()),
    );
    wt.push(
        "pearson_leave_one_model_out",
        Column::F64(weight_rows.iter().map(|r| r.5).collect()),
    );
    wt.push(
        "models",
        Column::I64(weight_rows.iter().map(|r| r.6 as i64).collect()),
    );
    write_both(
        dir,
        "fitted_weights",
        "Fitted weights of eq. 6 (each in [0, 1], maximising Pearson r)",
        &wt,
        &prov,
    )?;

    let mut kt = Table::new();
    kt.push(
        "alteration",
        Column::Str(kendall_rows.iter().map(|r| r.0.clone()).collect()),
    );
    kt.push(
        "convention",
        Column::Str(kendall_rows.iter().map(|r| r.1.clone()).collect()),
    );
    kt.push(
        "task",
        Column::Str(kendall_rows.iter().map(|r| r.2.clone()).collect()),
    );
    kt.push(
        "axis",
        Column::Str(kendall_rows.iter().map(|r| r.3.clone()).collect()),
    );
    kt.push(
        "granulated_kendall",
        Column::F64(kendall_rows.iter().map(|r| r.4).collect()),
    );
    kt.push(
        "groups",
        Column::I64(kendall_rows.iter().map(|r| r.5 as i64).collect()),
    );
    write_both(
        dir,
        "granulated_kendall",
        "Granulated Kendall of RMQM per hyperparameter axis (Jiang et al. 2020)",
        &kt,
        &prov,
    )?;

    // Tables 1 and 2 (paper convention where present), per method; baselines on their own rows.
    let convention = if combos.iter().any(|c| c.1 == "paper") {
        "paper"
    } else {
        combos
            .iter()
            .next()
            .map(|c| c.1.as_str())
            .unwrap_or("paper")
    };
    let mut methods: BTreeSet<String> = BTreeSet::new();
    for r in &stats {
        methods.insert(if r.epochs == 0 {
            format!("{} (random init)", r.method)
        } else {
            r.method.clone()
        });
    }
    let alterations: Vec<String> = combos
        .iter()
        .map(|c| c.0.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let values = |method: &str, alteration: &str, metric: &str| -> Vec<f64> {
        stats
            .iter()
            .filter(|r| {
                r.alteration == alteration && r.convention == convention && r.dim >= args.min_dim
            })
            .filter(|r| {
                if r.epochs == 0 {
                    format!("{} (random init)", r.method) == method
                } else {
                    r.method == method
                }
            })
            .map(|r| r.metrics.get(metric).copied().unwrap_or(f64::NAN))
            .collect()
    };
    let methods: Vec<String> = methods.into_iter().collect();
    let mut t1 = Table::new().with("method", Column::Str(methods.clone()));
    let mut t2 = Table::new().with("method", Column::Str(methods.clone()));
    for a in &alterations {
        t1.push(
            &format!("D_{a}"),
            Column::Str(methods.iter().map(|m| fmt_pm(&values(m, a, "D"))).collect()),
        );
        t2.push(
            &format!("D_RC_{a}"),
            Column::Str(
                methods
                    .iter()
                    .map(|m| fmt_pm(&values(m, a, "D_RC")))
                    .collect(),
            ),
        );
        t2.push(
            &format!("P_RC_{a}"),
            Column::Str(
                methods
                    .iter()
                    .map(|m| fmt_pm(&values(m, a, "P_RC")))
                    .collect(),
            ),
        );
    }
    t1.push(
        "models",
        Column::I64(
            methods
                .iter()
                .map(|m| {
                    values(
                        m,
                        alterations.first().map(String::as_str).unwrap_or(""),
                        "D",
                    )
                    .len() as i64
                })
                .collect(),
        ),
    );
    write_both(
        dir,
        "table1_distance",
        &format!(
            "Table 1: D per method (mean ± sd over dims and optimizers, {convention} convention)"
        ),
        &t1,
        &prov,
    )?;
    write_both(
        dir,
        "table2_spikes",
        &format!("Table 2: spike metrics per method (mean ± sd, {convention} convention)"),
        &t2,
        &prov,
    )?;

    // Every model, with why it is left out.
    let mut mt = Table::new();
    let models: Vec<&StatsRow> = model_info.values().copied().collect();
    mt.push(
        "model",
        Column::Str(models.iter().map(|r| r.model.clone()).collect()),
    );
    mt.push(
        "method",
        Column::Str(models.iter().map(|r| r.method.clone()).collect()),
    );
    mt.push("dim", Column::I64(models.iter().map(|r| r.dim).collect()));
    mt.push(
        "optimizer",
        Column::Str(models.iter().map(|r| r.optimizer.clone()).collect()),
    );
    mt.push(
        "epochs",
        Column::I64(models.iter().map(|r| r.epochs).collect()),
    );
    mt.push(
        "in_correlations",
        Column::Str(
            models
                .iter()
                .map(|r| {
                    exclusion(r, args.min_dim, args.include_baselines)
                        .map_or("yes".to_string(), |why| format!("no: {why}"))
                })
                .collect(),
        ),
    );
    mt.push(
        "probe_results",
        Column::Str(
            models
                .iter()
                .map(|r| {
                    if unmatched.stats_only.contains(&r.model) {
                        "missing".to_string()
                    } else {
                        "yes".to_string()
                    }
                })
                .collect(),
        ),
    );
    write_both(dir, "models", "Models", &mt, &prov)?;

    let figures = figures::draw_all(dir, &stats, &curves, &fig6, args.min_dim)?;
    let report = report(
        &args,
        &corr,
        &weight_rows,
        &ablation_rows,
        &unmatched,
        &figures,
        models.len(),
    );
    std::fs::write(dir.join("report.md"), report)?;
    let head = corr.iter().find(|r| {
        r.metric == "RMQM"
            && r.alteration == "noise"
            && r.convention == "paper"
            && r.task == "pooled/knn-1"
    });
    summary.finish(&format!(
        "{} models, {} correlations, {} figures{}; wrote {}",
        models.len(),
        corr.len(),
        figures.len(),
        head.map(|h| format!(
            "; RMQM (noise) vs 1-NN: r = {:.3} over {} pairs",
            h.pearson, h.n
        ))
        .unwrap_or_default(),
        dir.join("report.md").display()
    ));
    Ok(())
}

#[allow(clippy::type_complexity)]
fn report(
    args: &Args,
    corr: &[CorrRow],
    weights: &[WeightRow],
    ablation: &[(String, String, String, String, f64, usize)],
    unmatched: &Unmatched,
    figures: &[(String, String)],
    n_models: usize,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# RMQM report\n");
    let _ = writeln!(
        s,
        "{n_models} models. Accuracies normalised per (downstream, task) by `{}`. Models with embedding dimension below {} {} are left out of correlations (see [models](models.md)).\n",
        args.normalise,
        args.min_dim,
        if args.include_baselines {
            ""
        } else {
            "and random-init baselines"
        }
    );
    let _ = writeln!(s, "## Headline\n");
    for r in corr
        .iter()
        .filter(|r| r.metric == "RMQM" && r.task.starts_with("pooled/"))
    {
        let _ = writeln!(
            s,
            "- RMQM ({}, {} convention) vs {}: Pearson r = {:.3} (95% CI {:.3} to {:.3}, bootstrap {:.3} to {:.3}, p = {:.2e}), Spearman {:.3}, Kendall {:.3}; {} pairs from {} models.",
            r.alteration,
            r.convention,
            r.task,
            r.pearson,
            r.ci.0,
            r.ci.1,
            r.boot.0,
            r.boot.1,
            r.p,
            r.spearman,
            r.kendall,
            r.n,
            r.models
        );
    }
    let _ = writeln!(
        s,
        "\nThe paper reports Pearson 0.75 for k-NN, 0.78 for the linear probe and 0.72 for both together.\n"
    );
    let _ = writeln!(s, "## Fitted weights (eq. 6)\n");
    for w in weights {
        let _ = writeln!(
            s,
            "- {} / {} / {}: w = ({:.3}, {:.3}, {:.3}) (shares {:.2}, {:.2}, {:.2}), r in sample {:.3}, leave-one-model-out {:.3} ({} models). The paper: (0.95, 0.74, 0.11), r = 0.784.",
            w.0,
            w.1,
            w.2,
            w.3[0],
            w.3[1],
            w.3[2],
            w.3[0] / (w.3[0] + w.3[1] + w.3[2]),
            w.3[1] / (w.3[0] + w.3[1] + w.3[2]),
            w.3[2] / (w.3[0] + w.3[1] + w.3[2]),
            w.4,
            w.5,
            w.6
        );
    }
    let _ = writeln!(
        s,
        "\nEach weight is bounded to [0, 1]. Weights near 0 mean the best fit is the small-w limit, where ln(1 + w.x) is linear in w.x and only the shares matter.\n"
    );
    let _ = writeln!(s, "\n## Ablation (pooled k-NN, noise, paper convention)\n");
    for a in ablation
        .iter()
        .filter(|a| a.0 == "noise" && a.1 == "paper" && a.2 == "pooled/knn-1")
    {
        let _ = writeln!(s, "- {}: r = {:.3}", a.3, a.4);
    }
    let _ = writeln!(s, "\n## Tables\n");
    for (name, title) in [
        (
            "correlations",
            "Correlations of every metric, per task and pooled",
        ),
        ("ablation", "Ablation"),
        ("fitted_weights", "Fitted weights"),
        (
            "granulated_kendall",
            "Granulated Kendall per hyperparameter axis",
        ),
        ("table1_distance", "Table 1: D per method"),
        ("table2_spikes", "Table 2: spike metrics per method"),
        ("models", "Models and their inclusion"),
    ] {
        let _ = writeln!(s, "- [{title}]({name}.md) ([Parquet]({name}.parquet))");
    }
    let _ = writeln!(s, "\n## Figures\n");
    for (file, caption) in figures {
        let _ = writeln!(
            s,
            "### {caption}\n\n![{caption}]({file}.png) ([SVG]({file}.svg))\n"
        );
    }
    if !unmatched.stats_only.is_empty() || !unmatched.probes_only.is_empty() {
        let _ = writeln!(s, "## Unmatched models\n");
        let _ = writeln!(
            s,
            "- stats without probe results: {}",
            unmatched.stats_only.join(", ")
        );
        let _ = writeln!(
            s,
            "- probe results without stats: {}",
            unmatched.probes_only.join(", ")
        );
    }
    s
}
