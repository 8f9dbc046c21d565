//! correlate's library: how RMQM and its terms (and the peer metrics) correlate with downstream
//! performance, the appendix A ablation, fitted weights, the paper's tables and figures.

pub mod fit;
pub mod plots;
pub mod stats;

pub use fit::{ablation, fit_weights, leave_one_out_r, weighted_rmqm, Terms, ABLATION_SUBSETS};
pub use stats::{average_ranks, bootstrap_pearson, fisher_interval, granulated_kendall, kendall_tau_b, pearson, pearson_p_value, spearman};
