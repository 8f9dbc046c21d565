//! Manifold statistics from trajectories: for every image, the distances of its L2-normalised
//! embeddings to the clean one (d0_j) and to the previous step (dp_j), turned into D, D_RC, P_RC and
//! RMQM in two conventions (the paper's printed equations and the authors' public code), plus
//! per-step curves and the label-free peer metrics RankMe, alpha-ReQ and LiDAR (on augmentation walks). Everything streams image by
//! image: memory does not grow with the number of images.

mod lidar;
mod spectrum;
mod stream;
mod summary;
mod terms;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vl"
))]
mod terms_lanes;

pub use lidar::{
    Lidar, LidarAccumulator, LidarConfig, LidarError, discriminant_eigenvalues, effective_rank,
    lidar_dense,
};
pub use spectrum::{AlphaReq, SpectrumAccumulator, SpectrumPeers, alpha_req, rankme};
pub use stream::{ImageTrajectory, TrajectoryError, TrajectoryGrouper};
pub use summary::{
    CURVE_NAMES, Convention, ConventionSummary, CurveAccumulator, CurvePoint, StatsAccumulator,
    Weights,
};
pub use terms::{ImageTerms, PaperTerms, ReferenceTerms, image_terms};
