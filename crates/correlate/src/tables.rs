//! The study as tables, each written as Parquet (with provenance) and Markdown.

use anyhow::Result;
use rmqm_artifacts::{Column, Output, Provenance, Table, keys, write_table};
use rmqm_correlate::{
    AblationRow, CorrelationRow, DimSummary, GranulatedRow, LeaderRow, MethodSummary, ModelStatus,
    SeedSpreadRow, Study, WeightRow,
};
use rmqm_vocab::Convention;
use std::path::Path;

/// Writes tables into the report folder.
pub struct TableWriter<'a> {
    /// The report folder.
    pub dir: &'a Path,
    /// Provenance every table carries.
    pub provenance: &'a Provenance,
}

impl TableWriter<'_> {
    /// Writes `name.parquet` and `name.md` (titled `title`, `note` below the title).
    pub fn write(&self, name: &str, title: &str, note: &str, table: &Table) -> Result<()> {
        write_table(
            &Output::Path(self.dir.join(format!("{name}.parquet"))),
            table,
            &self.provenance.clone().with(keys::KIND, name),
        )?;
        let note = if note.is_empty() {
            String::new()
        } else {
            format!("{note}\n\n")
        };
        std::fs::write(
            self.dir.join(format!("{name}.md")),
            format!("# {title}\n\n{note}{}", table.to_markdown()),
        )?;
        Ok(())
    }
}

/// Builds a table column by column from a slice of result rows.
struct Columns<'a, R> {
    rows: &'a [R],
    table: Table,
}

impl<'a, R> Columns<'a, R> {
    fn new(rows: &'a [R]) -> Self {
        Columns {
            rows,
            table: Table::new(),
        }
    }
    fn text(mut self, name: &str, f: impl Fn(&R) -> String) -> Self {
        self.table
            .push(name, Column::Str(self.rows.iter().map(f).collect()));
        self
    }
    fn float(mut self, name: &str, f: impl Fn(&R) -> f64) -> Self {
        self.table
            .push(name, Column::F64(self.rows.iter().map(f).collect()));
        self
    }
    fn int(mut self, name: &str, f: impl Fn(&R) -> i64) -> Self {
        self.table
            .push(name, Column::I64(self.rows.iter().map(f).collect()));
        self
    }
    fn done(self) -> Table {
        self.table
    }
}

/// Every correlation.
pub fn correlations(rows: &[CorrelationRow]) -> Table {
    Columns::new(rows)
        .text("alteration", |r| r.walk.alteration.clone())
        .text("convention", |r| r.walk.convention.to_string())
        .text("metric", |r| r.metric.to_string())
        .text("group", |r| r.group.clone())
        .int("n", |r| r.correlation.n as i64)
        .int("models", |r| r.correlation.models as i64)
        .float("pearson", |r| r.correlation.pearson)
        .float("pearson_ci_low", |r| r.correlation.fisher.low)
        .float("pearson_ci_high", |r| r.correlation.fisher.high)
        .float("p_value", |r| r.correlation.p_value)
        .float("spearman", |r| r.correlation.spearman)
        .float("kendall_tau_b", |r| r.correlation.kendall)
        .float("bootstrap_low", |r| r.correlation.bootstrap.low)
        .float("bootstrap_high", |r| r.correlation.bootstrap.high)
        .done()
}

/// The leaderboard.
pub fn leaderboard(rows: &[LeaderRow]) -> Table {
    let axis = |r: &LeaderRow, a: &str| {
        r.granulated
            .iter()
            .find(|g| g.0 == a)
            .map_or(f64::NAN, |g| g.1.tau)
    };
    Columns::new(rows)
        .text("pool", |r| r.pool.to_string())
        .text("metric", |r| r.name())
        .text("better", |r| r.metric.better.to_string())
        .int("n", |r| r.correlation.n as i64)
        .int("models", |r| r.correlation.models as i64)
        .float("pearson", |r| r.correlation.pearson)
        .float("pearson_low", |r| r.correlation.bootstrap.low)
        .float("pearson_high", |r| r.correlation.bootstrap.high)
        .float("spearman", |r| r.correlation.spearman)
        .float("spearman_low", |r| r.spearman_interval.low)
        .float("spearman_high", |r| r.spearman_interval.high)
        .float("kendall", |r| r.correlation.kendall)
        .float("kendall_low", |r| r.kendall_interval.low)
        .float("kendall_high", |r| r.kendall_interval.high)
        .text("expected_sign", |r| {
            let k = r.signed_kendall();
            if !k.is_finite() {
                "NA".into()
            } else if k > 0.0 {
                "agrees".into()
            } else {
                "opposite".into()
            }
        })
        .float("granulated_method", |r| axis(r, "method"))
        .float("granulated_dim", |r| axis(r, "dim"))
        .float("granulated_optimizer", |r| axis(r, "optimizer"))
        .float("granulated_seed", |r| axis(r, "seed"))
        .float("forward_passes", |r| r.cost.forward)
        .float("backward_passes", |r| r.cost.backward)
        .float("seconds_per_image", |r| r.cost.seconds)
        .text("seconds_basis", |r| {
            if r.cost.measured {
                "measured".into()
            } else {
                "estimated (one noise-walk pass)".into()
            }
        })
        .done()
}

/// The ablation.
pub fn ablation(rows: &[AblationRow]) -> Table {
    Columns::new(rows)
        .text("alteration", |r| r.walk.alteration.clone())
        .text("convention", |r| r.walk.convention.to_string())
        .text("pool", |r| r.pool.to_string())
        .text("terms", |r| r.terms.to_string())
        .float("pearson", |r| r.pearson)
        .int("n", |r| r.n as i64)
        .done()
}

/// The fitted weights.
pub fn weights(rows: &[WeightRow]) -> Table {
    let share = |r: &WeightRow, k: usize| r.fit.weights[k] / r.fit.weights.iter().sum::<f64>();
    Columns::new(rows)
        .text("alteration", |r| r.walk.alteration.clone())
        .text("convention", |r| r.walk.convention.to_string())
        .text("pool", |r| r.pool.to_string())
        .float("w_D", |r| r.fit.weights[0])
        .float("w_inv_D_RC", |r| r.fit.weights[1])
        .float("w_inv_P_RC", |r| r.fit.weights[2])
        // Near w = 0 the fit is linear in w.x and only the proportions matter.
        .float("share_D", |r| share(r, 0))
        .float("share_inv_D_RC", |r| share(r, 1))
        .float("share_inv_P_RC", |r| share(r, 2))
        .float("pearson_in_sample", |r| r.fit.pearson)
        .float("pearson_leave_one_model_out", |r| r.pearson_leave_one_out)
        .int("models", |r| r.models as i64)
        .done()
}

/// Granulated Kendall.
pub fn granulated(rows: &[GranulatedRow]) -> Table {
    Columns::new(rows)
        .text("alteration", |r| r.walk.alteration.clone())
        .text("convention", |r| r.walk.convention.to_string())
        .text("pool", |r| r.pool.to_string())
        .text("metric", |r| r.metric.to_string())
        .text("axis", |r| r.axis.to_string())
        .float("granulated_kendall", |r| r.granulated.tau)
        .int("groups", |r| r.granulated.groups as i64)
        .done()
}

/// The seed study.
pub fn seed_spread(rows: &[SeedSpreadRow]) -> Table {
    Columns::new(rows)
        .text("quantity", |r| r.quantity.clone())
        .int("seeds", |r| r.seeds as i64)
        .int("configs", |r| r.configs as i64)
        .float("sd_across_seeds", |r| r.sd_across_seeds)
        .float("sd_across_methods", |r| r.sd_across_methods)
        .float("methods_over_seeds", |r| r.ratio())
        .int("separable_method_pairs", |r| r.separable_pairs as i64)
        .int("method_pairs", |r| r.method_pairs as i64)
        .done()
}

/// Table 1 (D) or Table 2 (D_RC, P_RC): mean ± sd per method and alteration.
pub fn method_table(rows: &[MethodSummary], columns: &[&str]) -> Table {
    let alterations: std::collections::BTreeSet<String> = rows
        .iter()
        .flat_map(|r| r.values.keys().map(|k| k.1.clone()))
        .collect();
    let mut t = Columns::new(rows)
        .text("train_dataset", |r| r.train_dataset.clone())
        .text("method", |r| r.method.clone())
        .int("models", |r| r.models as i64)
        .done();
    for a in &alterations {
        for c in columns {
            let key = (c.to_string(), a.clone());
            t.push(
                &format!("{c}_{a}"),
                Column::Str(
                    rows.iter()
                        .map(|r| {
                            r.values
                                .get(&key)
                                .map_or("NA".into(), |v| format!("{:.2} ± {:.2}", v.mean, v.sd))
                        })
                        .collect(),
                ),
            );
        }
    }
    t
}

/// Metrics per (track, method, dimension, walk).
pub fn by_dim(rows: &[DimSummary]) -> Table {
    let value = |r: &DimSummary, c: &str| r.values.get(c).map_or(f64::NAN, |v| v.mean);
    let sd = |r: &DimSummary, c: &str| r.values.get(c).map_or(f64::NAN, |v| v.sd);
    Columns::new(rows)
        .text("train_dataset", |r| r.train_dataset.clone())
        .text("alteration", |r| r.alteration.clone())
        .text("method", |r| r.method.clone())
        .int("dim", |r| r.dim)
        .int("models", |r| r.models as i64)
        .float("D", |r| value(r, "D"))
        .float("D_sd", |r| sd(r, "D"))
        .float("D_RC", |r| value(r, "D_RC"))
        .float("P_RC", |r| value(r, "P_RC"))
        .float("RMQM", |r| value(r, "RMQM"))
        .float("RMQM_sd", |r| sd(r, "RMQM"))
        .done()
}

/// Every model, with why it is left out and what it lacks.
pub fn models(rows: &[ModelStatus]) -> Table {
    let yes = |b: bool, no: &str| if b { "yes".to_string() } else { no.to_string() };
    Columns::new(rows)
        .text("train_dataset", |r| r.key.train_dataset.clone())
        .text("model", |r| r.key.model.clone())
        .text("method", |r| r.row.method.clone())
        .int("dim", |r| r.row.dim)
        .text("optimizer", |r| r.row.optimizer.clone())
        .int("epochs", |r| r.row.epochs)
        .text("in_correlations", |r| {
            r.excluded
                .as_ref()
                .map_or("yes".to_string(), |why| format!("no: {why}"))
        })
        .text("probe_results", |r| yes(r.probes, "missing"))
        .text("lidar", |r| yes(r.lidar, "missing (no augment walk)"))
        .text("walks", |r| r.walks.join(" "))
        .done()
}

/// Writes every table of the study; returns (file stem, title) of each, in report order.
pub fn write_all(
    w: &TableWriter,
    study: &Study,
    methods: &[MethodSummary],
    dims: &[DimSummary],
    convention: Convention,
) -> Result<Vec<(&'static str, String)>> {
    let mut written = Vec::new();
    let mut put = |name: &'static str, title: String, note: &str, t: Table| -> Result<()> {
        w.write(name, &title, note, &t)?;
        written.push((name, title));
        Ok(())
    };
    put(
        "leaderboard",
        "Metric leaderboard: correlation with normalised downstream accuracy".into(),
        "Per pool, best first by Kendall's tau-b in the metric's expected direction (`better`: which values its authors expect of better transfer; `expected_sign` says whether the data agree). Intervals: 95% bootstrap over models. Cost: encoder passes and seconds per image.",
        leaderboard(&study.leaderboard),
    )?;
    put(
        "correlations",
        "Correlations of every metric, per walk, task and pool".into(),
        "Groups `downstream/task` are single tasks; `paper/*` pools hold exactly the paper's sets and tasks; `all/*` pools hold every task. Peer metrics (RankMe, alpha-ReQ, LiDAR) do not depend on the walk and repeat under each.",
        correlations(&study.correlations),
    )?;
    put(
        "ablation",
        "Ablation (appendix A): RMQM from subsets of {D, 1/D_RC, 1/P_RC}, per pool".into(),
        "",
        ablation(&study.ablation),
    )?;
    put(
        "fitted_weights",
        "Fitted weights of eq. 6 (each in [0, 1], maximising Pearson r), per pool".into(),
        "",
        weights(&study.weights),
    )?;
    put(
        "granulated_kendall",
        "Granulated Kendall per hyperparameter axis (Jiang et al. 2020), per pool".into(),
        "",
        granulated(&study.granulated),
    )?;
    if !study.seed_spread.is_empty() {
        put(
            "seed_spread",
            "Seed study: spread across seeds beside spread across methods".into(),
            "sd_across_seeds: standard deviation between seeds of one configuration (track, method, dim, optimizer), pooled; sd_across_methods: standard deviation between the methods' seed means (same track, dim, optimizer), pooled; separable_method_pairs: method pairs whose means differ at p < 0.05 (Welch's t over seeds).",
            seed_spread(&study.seed_spread),
        )?;
    }
    put(
        "table1_distance",
        format!(
            "Table 1: D per method (mean ± sd over dims and optimizers, {convention} convention)"
        ),
        "",
        method_table(methods, &["D"]),
    )?;
    put(
        "table2_spikes",
        format!("Table 2: spike metrics per method (mean ± sd, {convention} convention)"),
        "",
        method_table(methods, &["D_RC", "P_RC"]),
    )?;
    put(
        "table_by_dim",
        format!(
            "D, spikes and RMQM per method and embedding dimension (mean over optimizers and seeds, {convention} convention)"
        ),
        "",
        by_dim(dims),
    )?;
    put(
        "models",
        "Models and their inclusion".into(),
        "",
        models(&study.models),
    )?;
    Ok(written)
}
