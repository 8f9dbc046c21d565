//! Alterations that walk the representation manifold: seeded white noise (counter-based, so every
//! model sees exactly the same noise) and PGD with each method's own loss.

mod noise;
mod pgd;

pub use noise::{NoiseConfig, NoiseDirection, noise_image, noise_stream_key};
pub use pgd::{PgdConfig, PgdStep, PgdWalk, pgd_batch, pgd_step};
