//! Alterations that walk the representation manifold: seeded white noise (counter-based, so every
//! model sees exactly the same noise), PGD with each method's own training loss, and the
//! augmentation walk (seeded views of each image, LiDAR's surrogate classes).

mod augment;
mod noise;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vl"
))]
mod noise_lanes;
mod pgd;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vl"
))]
mod ziggurat_table;

pub use augment::{AugmentConfig, augment_view};
pub use noise::{NoiseConfig, NoiseDirection, noise_image, noise_stream_key};
pub use pgd::{PgdConfig, PgdLevels, PgdStep, PgdWalk, pgd_batch, pgd_step, pgd_walk};
