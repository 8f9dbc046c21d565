//! correlate's library: whether RMQM, its terms and the label-free peer metrics (RankMe,
//! alpha-ReQ, LiDAR) predict downstream performance. Rows keyed by (train dataset, model); pools
//! named for what they hold (the paper's sets and tasks, or all of them); correlations with
//! Fisher and bootstrap intervals; the appendix A ablation and fitted weights; granulated
//! Kendall; the metric leaderboard with each metric's cost; the seed study; Tables 1-2; figures.

pub mod analysis;
pub mod fit;
pub mod metrics;
pub mod plots;
pub mod pools;
pub mod seeds;
pub mod stats;
pub mod study;
pub mod summaries;

pub use analysis::{
    Inclusion, ModelKey, Normalise, Pair, ProbeRow, StatsRow, Unmatched, Walk, normalise, pairs,
    seed_of_model_id, unmatched, walks,
};
pub use fit::{
    ABLATION_SUBSETS, AblationTerm, FittedWeights, Terms, ablation, fit_weights, fit_weights_from,
    leave_one_out_r, weighted_rmqm,
};
pub use metrics::{Better, Cost, METRICS, MetricInfo, Source, cost, metric_info, passes};
pub use pools::{GroupKind, PAPER_KNN_SETS, PAPER_LINEAR_SETS, Pool, PoolTasks, Scope, groups};
pub use seeds::{SeedSpreadRow, seed_spread};
pub use stats::{
    Granulated, Interval, PairStatistic, average_ranks, bootstrap_grouped, bootstrap_pearson,
    fisher_interval, granulated_kendall, kendall_tau_b, kendall_tau_b_pairwise, pearson,
    pearson_p_value, spearman,
};
pub use study::{
    AblationRow, Correlation, CorrelationRow, GranulatedRow, LEVEL, LeaderRow, ModelStatus,
    Options, ScatterSeries, Study, WeightRow, analyse,
};
pub use summaries::{
    DimSummary, MeanSd, MethodSummary, dim_summaries, method_label, method_summaries,
};
