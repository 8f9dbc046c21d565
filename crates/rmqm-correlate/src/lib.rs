//! correlate's library: how RMQM and its terms (and the peer metrics) correlate with downstream
//! performance, the appendix A ablation, fitted weights, the paper's tables and figures.

pub mod analysis;
pub mod fit;
pub mod plots;
pub mod stats;

pub use analysis::{
    Normalise, Pair, ProbeRow, StatsRow, Unmatched, exclusion, normalise, pairs, unmatched,
};
pub use fit::{
    ABLATION_SUBSETS, Terms, ablation, fit_weights, fit_weights_from, leave_one_out_r,
    weighted_rmqm,
};
pub use stats::{
    average_ranks, bootstrap_pearson, bootstrap_pearson_grouped, fisher_interval,
    granulated_kendall, kendall_tau_b, pearson, pearson_p_value, spearman,
};
