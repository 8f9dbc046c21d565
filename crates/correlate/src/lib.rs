//! `correlate`: joins manifold-stats summaries with probe results on (train dataset, model) and
//! reports how RMQM, its terms and the peer metrics (RankMe, alpha-ReQ, LiDAR) correlate with
//! downstream performance, per task and on pools named for what they hold; the metric
//! leaderboard; the appendix A ablation with fitted weights; granulated Kendall; the seed study;
//! the paper's Tables 1-2 and Figures 2-6; and a report.md that links them all. The analysis is
//! rmqm-correlate's; this crate reads the inputs and writes tables, figures and the report.

mod figures;
mod inputs;
mod report;
mod tables;

use anyhow::{Result, bail};
use clap::Parser;
use rmqm_cli::{Summary, ThreadsArg, base_provenance};
use rmqm_correlate::{
    Inclusion, Normalise, Options, PoolTasks, ProbeRow, Scope, StatsRow, Study, analyse,
    dim_summaries, method_summaries,
};
use rmqm_vocab::Convention;
use std::path::PathBuf;

/// Command-line arguments of `correlate`.
#[derive(Debug, Parser)]
#[command(
    name = "correlate",
    version,
    about = "RMQM vs downstream performance: correlations, ablation, tables and figures",
    long_about = "Joins manifold-stats summaries and probe results on (train dataset, model), so grids \
whose model ids collide (an MNIST and a CIFAR-10 track) pool, and writes into an output folder: the metric \
leaderboard (RMQM, its terms, the weighted RMQM, RankMe, alpha-ReQ, LiDAR: Pearson, Spearman, Kendall with \
bootstrap intervals, granulated Kendall, cost per image); the correlation table per downstream task and \
per pool (paper/*: exactly the paper's sets and tasks; all/*: everything), per walk and convention; the \
appendix A ablation with fitted weights and their leave-one-model-out correlation; granulated Kendall; the \
seed study when models were retrained with several seeds; Tables 1-2; Figures 2-6 (PNG and SVG, averaged \
and per embedding dimension); and report.md. Stats of augment walks give each model's LiDAR. Encoders with \
embedding dimension below --min-dim and random-init baselines are left out of correlations and shown in \
the tables.",
    after_help = "Examples:\n  correlate --stats out/stats/*.parquet --probes out/probes/*.parquet -o out/report\n  \
correlate --stats 'out/stats/*.parquet' --probes 'out/probes/*.parquet' --curves 'out/curves/*.parquet' -o report --normalise minmax\n  \
correlate --stats results/paper-mnist/stats/*.parquet results/paper-cifar/stats/*.parquet --probes results/paper-*/probes/*.parquet -o pooled"
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
    /// Leave (downstream/task) out of the all-tasks pools, e.g. fashion/linear (the paper pools
    /// hold exactly the paper's sets and tasks whatever this says).
    #[arg(long)]
    pub exclude_task: Vec<String>,
    /// Skip the leave-one-model-out refits of the fitted weights.
    #[arg(long)]
    pub no_loo: bool,
    /// Worker threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// The inputs, read and checked.
struct Inputs {
    stats: Vec<StatsRow>,
    probes: Vec<ProbeRow>,
    curves: Vec<inputs::Curve>,
}

fn read_inputs(args: &Args) -> Result<Inputs> {
    let stats = inputs::read_stats(&inputs::expand(&args.stats)?)?;
    let probes = inputs::read_probes(&inputs::expand(&args.probes)?)?;
    let curves = inputs::read_curves(&inputs::expand(&args.curves)?)?;
    if stats.is_empty() {
        bail!("no stats rows (label \"all\") in the --stats files");
    }
    if probes.is_empty() {
        bail!("no rows in the --probes files");
    }
    Ok(Inputs {
        stats,
        probes,
        curves,
    })
}

fn options(args: &Args) -> Options {
    Options {
        normalise: args.normalise,
        resamples: args.resamples,
        seed: args.seed,
        inclusion: Inclusion {
            min_dim: args.min_dim,
            baselines: args.include_baselines,
        },
        excluded_tasks: args.exclude_task.clone(),
        leave_one_out: !args.no_loo,
    }
}

/// Names every model that lacks a part on stderr (they are listed in models.md too).
fn warn_unmatched(study: &Study) {
    for m in &study.unmatched.stats_only {
        eprintln!("correlate: warning: model {m} has stats but no probe result");
    }
    for m in &study.unmatched.probes_only {
        eprintln!("correlate: warning: model {m} has probe results but no stats");
    }
    for m in &study.unmatched.no_lidar {
        eprintln!("correlate: warning: model {m} has no augment-walk stats: no LiDAR");
    }
}

/// The convention of Tables 1-2: the paper's where present.
fn table_convention(stats: &[StatsRow]) -> Convention {
    if stats.iter().any(|r| r.convention == Convention::Paper) {
        Convention::Paper
    } else {
        stats[0].convention
    }
}

/// The one-line summary: the headline on the paper pool, else on the all-tasks pool.
fn headline(study: &Study) -> String {
    for scope in [Scope::Paper, Scope::All] {
        let pool = rmqm_correlate::Pool::new(scope, PoolTasks::Knn).to_string();
        if let Some(h) = study.correlations.iter().find(|r| {
            r.metric == "RMQM"
                && r.walk.alteration == "noise"
                && r.walk.convention == Convention::Paper
                && r.group == pool
        }) {
            return format!(
                "; RMQM (noise) vs {pool}: r = {:.3} over {} pairs",
                h.correlation.pearson, h.correlation.n
            );
        }
    }
    String::new()
}

/// Entry point.
pub fn run(argv: Vec<String>) -> Result<()> {
    let args = Args::try_parse_from(&argv)?;
    args.threads.init();
    let summary = Summary::start("correlate");
    let inputs = read_inputs(&args)?;
    let study = analyse(&inputs.stats, &inputs.probes, &options(&args));
    warn_unmatched(&study);

    let dir = &args.output;
    std::fs::create_dir_all(dir)?;
    let provenance = base_provenance("correlate", &argv);
    let convention = table_convention(&inputs.stats);
    let methods = method_summaries(&inputs.stats, args.min_dim, convention);
    let dims = dim_summaries(&inputs.stats, convention);
    let tables = tables::write_all(
        &tables::TableWriter {
            dir,
            provenance: &provenance,
        },
        &study,
        &methods,
        &dims,
        convention,
    )?;
    let figures: Vec<(String, String)> = figures::draw_all(
        dir,
        &inputs.stats,
        &inputs.curves,
        &study.figure6,
        args.min_dim,
    )?
    .into_iter()
    .map(|f| (f.stem, f.caption))
    .collect();
    let context = report::ReportContext {
        normalise: args.normalise,
        inclusion: format!(
            "Models with embedding dimension below {}{} are left out of correlations",
            args.min_dim,
            if args.include_baselines {
                ""
            } else {
                " and random-init baselines"
            }
        ),
        tables: &tables,
        figures: &figures,
    };
    std::fs::write(dir.join("report.md"), report::report(&study, &context))?;
    summary.finish(&format!(
        "{} models from {} track(s), {} correlations, {} figures{}; wrote {}",
        study.models.len(),
        study.tracks.len(),
        study.correlations.len(),
        figures.len(),
        headline(&study),
        dir.join("report.md").display()
    ));
    Ok(())
}
