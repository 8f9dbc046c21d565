//! report.md: the leaderboard first, then RMQM beside the paper's numbers (on the paper pool
//! only), the all-tasks pool, the seed study, and links to every table and figure.

use rmqm_correlate::{
    CorrelationRow, LeaderRow, Normalise, PAPER_KNN_SETS, PAPER_LINEAR_SETS, Pool, PoolTasks,
    Scope, Study,
};
use rmqm_vocab::Convention;
use std::fmt::Write as _;

/// What the report says about how it was made.
pub struct ReportContext<'a> {
    /// Accuracy normalisation.
    pub normalise: Normalise,
    /// The inclusion rule, in words.
    pub inclusion: String,
    /// Tables written: (file stem, title).
    pub tables: &'a [(&'static str, String)],
    /// Figures drawn: (file stem, caption).
    pub figures: &'a [(String, String)],
}

/// The paper's headline correlations (section 5.1), by pool.
const PAPER_R: [(PoolTasks, f64); 3] = [
    (PoolTasks::Knn, 0.75),
    (PoolTasks::Linear, 0.78),
    (PoolTasks::Both, 0.72),
];

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "NA".into()
    }
}

fn with_interval(v: f64, low: f64, high: f64) -> String {
    format!("{} [{}, {}]", num(v), num(low), num(high))
}

/// The whole report.
pub fn report(study: &Study, ctx: &ReportContext) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# RMQM report\n");
    header(&mut s, study, ctx);
    leaderboard(&mut s, study);
    paper_comparison(&mut s, study);
    all_tasks(&mut s, study);
    seed_study(&mut s, study);
    links(&mut s, study, ctx);
    s
}

fn header(s: &mut String, study: &Study, ctx: &ReportContext) {
    let tracks: Vec<String> = study
        .tracks
        .iter()
        .map(|(t, n)| format!("{t} ({n} models)"))
        .collect();
    let _ = writeln!(s, "Tracks that entered: {}.", tracks.join(", "));
    let has = |name: &str| study.tracks.iter().any(|(t, _)| t == name);
    match (has("mnist"), has("cifar10")) {
        (true, false) => {
            let _ = writeln!(
                s,
                "The CIFAR-10 track is absent: the paper pools its MNIST and CIFAR-10 encoders in one correlation, so the paper-pool numbers below are the MNIST part of that pool alone."
            );
        }
        (false, true) => {
            let _ = writeln!(
                s,
                "The MNIST track is absent: the paper pools its MNIST and CIFAR-10 encoders in one correlation, so the paper-pool numbers below are the CIFAR-10 part of that pool alone."
            );
        }
        (true, true) => {
            let _ = writeln!(
                s,
                "Both of the paper's tracks entered, pooled as the paper pools them."
            );
        }
        (false, false) => {
            let _ = writeln!(
                s,
                "Neither of the paper's tracks (encoders trained on MNIST or CIFAR-10) is here."
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{} models. Accuracies normalised per (downstream, task) by `{}`. {} (see [models](models.md)).\n",
        study.models.len(),
        ctx.normalise,
        ctx.inclusion
    );
    let _ = writeln!(
        s,
        "Pools: `paper/knn` = 1-NN (cosine) on {}; `paper/linear` = the linear probe on {}; `paper/both` = the two. `all/*` = every downstream set and task present (k > 1, Fashion-MNIST, ...). Only the paper pools are compared with the paper's numbers.\n",
        PAPER_KNN_SETS.join(", "),
        PAPER_LINEAR_SETS.join(", ")
    );
}

fn leaderboard(s: &mut String, study: &Study) {
    let _ = writeln!(s, "## Leaderboard\n");
    let _ = writeln!(
        s,
        "Each metric against normalised downstream accuracy, best first by Kendall's tau-b in the direction the metric's authors expect (`better`). Brackets: 95% bootstrap intervals over models. Granulated Kendall (Jiang et al. 2020): mean Kendall within groups that differ along one axis only. Cost: forward/backward passes of the encoder and seconds per image on the machine that made the stats. Walk metrics use the paper convention.\n"
    );
    for pool in [
        Pool::new(Scope::Paper, PoolTasks::Both),
        Pool::new(Scope::All, PoolTasks::Both),
    ] {
        let rows: Vec<&LeaderRow> = study
            .leaderboard
            .iter()
            .filter(|r| r.pool == pool)
            .collect();
        let _ = writeln!(s, "### Pool `{pool}`\n");
        if rows.is_empty() {
            let _ = writeln!(s, "Empty: no pairs in this pool.\n");
            continue;
        }
        let seeds = rows
            .iter()
            .any(|r| r.granulated.iter().any(|g| g.0 == "seed"));
        let _ = writeln!(
            s,
            "| rank | metric | better | Pearson | Spearman | Kendall | sign | granulated method / dim / optimizer{} | passes fwd / bwd | s per image | pairs (models) |",
            if seeds { " / seed" } else { "" }
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for (rank, r) in rows.iter().enumerate() {
            let c = &r.correlation;
            let granulated: Vec<String> = r.granulated.iter().map(|g| num(g.1.tau)).collect();
            let sign = r.signed_kendall();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {}{} | {} ({}) |",
                rank + 1,
                r.name(),
                r.metric.better,
                with_interval(c.pearson, c.bootstrap.low, c.bootstrap.high),
                with_interval(
                    c.spearman,
                    r.spearman_interval.low,
                    r.spearman_interval.high
                ),
                with_interval(c.kendall, r.kendall_interval.low, r.kendall_interval.high),
                if !sign.is_finite() {
                    "NA"
                } else if sign > 0.0 {
                    "as expected"
                } else {
                    "**opposite**"
                },
                granulated.join(" / "),
                r.cost.forward,
                r.cost.backward,
                if r.cost.seconds.is_finite() {
                    format!("{:.2e}", r.cost.seconds)
                } else {
                    "NA".into()
                },
                if r.cost.measured { "" } else { " (est.)" },
                c.n,
                c.models
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Full table: [leaderboard](leaderboard.md).\n");
}

fn rmqm_row<'a>(
    study: &'a Study,
    alteration: &str,
    convention: Convention,
    group: &str,
) -> Option<&'a CorrelationRow> {
    study.correlations.iter().find(|r| {
        r.metric == "RMQM"
            && r.walk.alteration == alteration
            && r.walk.convention == convention
            && r.group == group
    })
}

fn paper_comparison(s: &mut String, study: &Study) {
    let _ = writeln!(s, "## RMQM beside the paper (paper pool)\n");
    let walks: Vec<(String, Convention)> = study
        .correlations
        .iter()
        .filter(|r| r.metric == "RMQM" && r.pool.is_some_and(|p| p.scope == Scope::Paper))
        .map(|r| (r.walk.alteration.clone(), r.walk.convention))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if walks.is_empty() {
        let _ = writeln!(
            s,
            "The paper pool is empty: none of the paper's downstream sets ({}) is among the probes, so nothing here is comparable with the paper's numbers. See the all-tasks pool below.\n",
            PAPER_KNN_SETS.join(", ")
        );
        return;
    }
    let _ = writeln!(
        s,
        "The paper's headline (section 5.1) is RMQM under white noise: r = 0.75 with 1-NN, 0.78 with the linear probe, 0.72 with both, over its MNIST and CIFAR-10 encoders together.\n"
    );
    let _ = writeln!(
        s,
        "| walk | pool | Pearson r (95% Fisher; bootstrap) | p | Spearman | Kendall | pairs (models) | paper |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (a, c) in &walks {
        for (tasks, paper) in PAPER_R {
            let pool = Pool::new(Scope::Paper, tasks).to_string();
            if let Some(r) = rmqm_row(study, a, *c, &pool) {
                let k = &r.correlation;
                let _ = writeln!(
                    s,
                    "| {a} ({c}) | `{pool}` | {} ({}, {}; {}, {}) | {:.1e} | {} | {} | {} ({}) | {paper} |",
                    num(k.pearson),
                    num(k.fisher.low),
                    num(k.fisher.high),
                    num(k.bootstrap.low),
                    num(k.bootstrap.high),
                    k.p_value,
                    num(k.spearman),
                    num(k.kendall),
                    k.n,
                    k.models
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n### Ablation (appendix A), noise walk, paper convention\n"
    );
    let _ = writeln!(
        s,
        "The paper: D alone 0.27, the spikes alone (1/D_RC + 1/P_RC) 0.72, all three 0.75 (the k-NN number), the other subsets 0.71-0.74.\n"
    );
    let pools: Vec<Pool> = [PoolTasks::Knn, PoolTasks::Linear, PoolTasks::Both]
        .into_iter()
        .map(|t| Pool::new(Scope::Paper, t))
        .filter(|p| study.ablation.iter().any(|a| a.pool == *p))
        .collect();
    let names: Vec<String> = pools.iter().map(|p| format!("`{p}`")).collect();
    let _ = writeln!(s, "| terms | {} | paper |", names.join(" | "));
    let _ = writeln!(s, "|---|{}---|", "---|".repeat(pools.len()));
    for terms in rmqm_correlate::ABLATION_SUBSETS.iter().map(|t| t.0) {
        let cells: Vec<String> = pools
            .iter()
            .map(|p| {
                study
                    .ablation
                    .iter()
                    .find(|a| {
                        a.pool == *p
                            && a.terms == terms
                            && a.walk.alteration == "noise"
                            && a.walk.convention == Convention::Paper
                    })
                    .map_or("NA".into(), |a| num(a.pearson))
            })
            .collect();
        let paper = match terms {
            "D" => "0.27",
            "1/D_RC + 1/P_RC" => "0.72",
            "D + 1/D_RC + 1/P_RC" => "0.75",
            _ => "0.71-0.74",
        };
        let _ = writeln!(s, "| {terms} | {} | {paper} |", cells.join(" | "));
    }
    let _ = writeln!(s, "\n### Fitted weights (eq. 6), paper pool\n");
    let _ = writeln!(
        s,
        "The paper: w = (0.95, 0.74, 0.11), r = 0.784 (it does not say on which pool). Each weight is bounded to [0, 1]; weights near 0 mean the best fit is the small-w limit, where ln(1 + w.x) is linear in w.x and only the shares matter.\n"
    );
    let _ = writeln!(
        s,
        "| walk | pool | w (D, 1/D_RC, 1/P_RC) | shares | r in sample | r leave-one-model-out | models |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for w in study
        .weights
        .iter()
        .filter(|w| w.pool.scope == Scope::Paper && w.walk.convention == Convention::Paper)
    {
        let total: f64 = w.fit.weights.iter().sum();
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.2e}, {:.2e}, {:.2e} | {:.2}, {:.2}, {:.2} | {} | {} | {} |",
            w.walk.alteration,
            w.pool,
            w.fit.weights[0],
            w.fit.weights[1],
            w.fit.weights[2],
            w.fit.weights[0] / total,
            w.fit.weights[1] / total,
            w.fit.weights[2] / total,
            num(w.fit.pearson),
            num(w.pearson_leave_one_out),
            w.models
        );
    }
    let _ = writeln!(s);
}

fn all_tasks(s: &mut String, study: &Study) {
    let _ = writeln!(
        s,
        "## RMQM on the all-tasks pool (not comparable with the paper)\n"
    );
    let _ = writeln!(
        s,
        "| walk | pool | Pearson r (95% Fisher; bootstrap) | Spearman | Kendall | pairs (models) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in study
        .correlations
        .iter()
        .filter(|r| r.metric == "RMQM" && r.pool.is_some_and(|p| p.scope == Scope::All))
    {
        let k = &r.correlation;
        let _ = writeln!(
            s,
            "| {} ({}) | `{}` | {} ({}, {}; {}, {}) | {} | {} | {} ({}) |",
            r.walk.alteration,
            r.walk.convention,
            r.group,
            num(k.pearson),
            num(k.fisher.low),
            num(k.fisher.high),
            num(k.bootstrap.low),
            num(k.bootstrap.high),
            num(k.spearman),
            num(k.kendall),
            k.n,
            k.models
        );
    }
    let _ = writeln!(s);
}

fn seed_study(s: &mut String, study: &Study) {
    if study.seed_spread.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Seed study\n");
    let _ = writeln!(
        s,
        "Spread between seeds of one configuration beside spread between methods (see [seed_spread](seed_spread.md)). A ratio well above 1 means methods differ by more than the noise of retraining.\n"
    );
    let _ = writeln!(
        s,
        "| quantity | sd across seeds | sd across methods | ratio | method pairs apart (p < 0.05) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for r in &study.seed_spread {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.4} | {:.1} | {} of {} |",
            r.quantity,
            r.sd_across_seeds,
            r.sd_across_methods,
            r.ratio(),
            r.separable_pairs,
            r.method_pairs
        );
    }
    let _ = writeln!(s);
}

fn links(s: &mut String, study: &Study, ctx: &ReportContext) {
    let _ = writeln!(s, "## Tables\n");
    for (name, title) in ctx.tables {
        let _ = writeln!(s, "- [{title}]({name}.md) ([Parquet]({name}.parquet))");
    }
    let _ = writeln!(s, "\n## Figures\n");
    for (file, caption) in ctx.figures {
        let _ = writeln!(
            s,
            "### {caption}\n\n![{caption}]({file}.png) ([SVG]({file}.svg))\n"
        );
    }
    let u = &study.unmatched;
    if !u.is_empty() {
        let list = |keys: &[rmqm_correlate::ModelKey]| {
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(s, "## Unmatched models\n");
        let _ = writeln!(s, "- stats without probe results: {}", list(&u.stats_only));
        let _ = writeln!(s, "- probe results without stats: {}", list(&u.probes_only));
        let _ = writeln!(s, "- no augment walk (no LiDAR): {}", list(&u.no_lidar));
    }
}
