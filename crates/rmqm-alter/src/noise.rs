//! White-noise alterations: x_ij = clip(x_i + a_ij, 0, 1), a_ij ~ N(0, eps_j^2) per pixel,
//! eps_j = eps_max * j / J. The draw for (image id, step) comes from its own ChaCha stream keyed by
//! (seed, image id, step), so it does not depend on batch size, subset, thread count or model.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::fmt;
use std::str::FromStr;

/// How the noise direction relates across steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseDirection {
    /// A new draw at every step (the paper and its reference code).
    Fresh,
    /// One N(0,1) draw per image scaled by eps_j: a straight ray.
    Fixed,
}

impl fmt::Display for NoiseDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoiseDirection::Fresh => "fresh",
            NoiseDirection::Fixed => "fixed",
        })
    }
}

impl FromStr for NoiseDirection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fresh" => Ok(NoiseDirection::Fresh),
            "fixed" => Ok(NoiseDirection::Fixed),
            o => Err(format!("unknown direction {o:?} (fresh or fixed)")),
        }
    }
}

/// The noise walk's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseConfig {
    /// J: steps are 0..=J.
    pub steps: usize,
    /// eps at step J.
    pub eps_max: f64,
    /// Fresh draws or a fixed ray.
    pub direction: NoiseDirection,
    /// Seed of every draw.
    pub seed: u64,
}

impl NoiseConfig {
    /// eps_j = eps_max * j / J.
    pub fn epsilon(&self, step: usize) -> f64 {
        self.eps_max * step as f64 / self.steps as f64
    }
}

/// The 64-bit key of the stream for (seed, image id, step): SplitMix64 finalisation of a mix.
pub fn noise_stream_key(seed: u64, image_id: u32, step: u64) -> u64 {
    let mut z = seed
        ^ (image_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The altered image at `step` (step 0 is the clean image).
pub fn noise_image(clean: &[f32], image_id: u32, step: usize, cfg: &NoiseConfig) -> Vec<f32> {
    if step == 0 {
        return clean.to_vec();
    }
    let eps = cfg.epsilon(step) as f32;
    // Fixed: one stream per image (step key u64::MAX), the same direction at every step.
    let key = match cfg.direction {
        NoiseDirection::Fresh => noise_stream_key(cfg.seed, image_id, step as u64),
        NoiseDirection::Fixed => noise_stream_key(cfg.seed, image_id, u64::MAX),
    };
    add_clipped_noise(clean, eps, ChaCha8Rng::seed_from_u64(key))
}

/// clip(x + eps * z, 0, 1) for the pixels x in order, each z the `StandardNormal` draw (as f32)
/// that follows on `rng`: the plain loop where the build lacks AVX-512.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vl"
)))]
fn add_clipped_noise(clean: &[f32], eps: f32, mut rng: ChaCha8Rng) -> Vec<f32> {
    clean
        .iter()
        .map(|&x| add_clipped(x, eps, &mut rng))
        .collect()
}

/// clip(x + eps * z, 0, 1) for the pixels x in order, each z the `StandardNormal` draw (as f32)
/// that follows on `rng`: runs of draws accepted at the ziggurat's first try in AVX-512 lanes
/// (`noise_lanes`), every other draw by rand_distr's sampler on the same words; the plain loop's
/// pixels bit for bit.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vl"
))]
fn add_clipped_noise(clean: &[f32], eps: f32, rng: ChaCha8Rng) -> Vec<f32> {
    let mut words = super::noise_lanes::WordStream::new(rng);
    let mut out = Vec::with_capacity(clean.len());
    while out.len() < clean.len() {
        let left = &clean[out.len()..];
        let taken = super::noise_lanes::first_tries(left, eps, words.ahead(), &mut out);
        words.skip(taken);
        if let Some(&x) = left.get(taken) {
            out.push(add_clipped(x, eps, &mut words));
        }
    }
    out
}

/// One pixel: clip(x + eps * z, 0, 1) with z the next `StandardNormal` draw on `rng`, as f32.
fn add_clipped(x: f32, eps: f32, rng: &mut impl RngCore) -> f32 {
    let z: f32 = StandardNormal.sample(rng);
    (x + eps * z).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(direction: NoiseDirection) -> NoiseConfig {
        NoiseConfig {
            steps: 10,
            eps_max: 1.0,
            direction,
            seed: 42,
        }
    }

    #[test]
    fn same_key_same_noise_and_clip_holds() {
        let img: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let a = noise_image(&img, 7, 3, &cfg(NoiseDirection::Fresh));
        let b = noise_image(&img, 7, 3, &cfg(NoiseDirection::Fresh));
        let c = noise_image(&img, 8, 3, &cfg(NoiseDirection::Fresh));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(noise_image(&img, 7, 0, &cfg(NoiseDirection::Fresh)), img);
    }

    #[test]
    fn fixed_direction_lies_on_a_ray() {
        // Away from the clip, x_j - x = eps_j z with the same z at every step.
        let img = vec![0.5f32; 200];
        let c = NoiseConfig {
            steps: 10,
            eps_max: 0.05,
            direction: NoiseDirection::Fixed,
            seed: 1,
        };
        let d1: Vec<f32> = noise_image(&img, 3, 1, &c)
            .iter()
            .map(|v| v - 0.5)
            .collect();
        for j in 2..=10 {
            let dj: Vec<f32> = noise_image(&img, 3, j, &c)
                .iter()
                .map(|v| v - 0.5)
                .collect();
            for (a, b) in d1.iter().zip(&dj) {
                if b.abs() < 0.499 {
                    assert!(
                        (b - a * j as f32).abs() < 1e-5,
                        "step {j}: {b} vs {}",
                        a * j as f32
                    );
                }
            }
        }
    }

    #[test]
    fn every_pixel_equals_the_plain_samplers_bit_for_bit() {
        // 1,500 streams of 784 draws: about 1% of first tries are rejected and a few hundred
        // draws fall in the tail, so the lanes stop, hand over and resume many times. Pixels at
        // 0, 1 and between, at a small, the largest and a larger eps, clip on both sides.
        let clean: Vec<f32> = (0..784)
            .map(|i| [0.0, 1.0, 0.5, (i % 97) as f32 / 96.0][i % 4])
            .collect();
        let (mut draws, mut words) = (0u64, 0u64);
        for key in 0..1_500u64 {
            let eps = [0.01f32, 1.0, 3.0][key as usize % 3];
            let mut plain_rng = ChaCha8Rng::seed_from_u64(key);
            let plain: Vec<f32> = clean
                .iter()
                .map(|&x| add_clipped(x, eps, &mut plain_rng))
                .collect();
            let ours = add_clipped_noise(&clean, eps, ChaCha8Rng::seed_from_u64(key));
            let same = plain
                .iter()
                .zip(&ours)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && plain.len() == ours.len(), "stream {key}");
            draws += clean.len() as u64;
            words += (plain_rng.get_word_pos() / 2) as u64;
        }
        // Rejected first tries took more words than draws.
        assert!(words > draws + 1_000, "{words} words for {draws} draws");
    }

    #[test]
    fn noise_has_the_stated_scale() {
        let img = vec![0.5f32; 20_000];
        let c = NoiseConfig {
            steps: 100,
            eps_max: 1.0,
            direction: NoiseDirection::Fresh,
            seed: 3,
        };
        let x = noise_image(&img, 0, 10, &c); // eps = 0.1, clipping negligible
        let var = x.iter().map(|v| ((v - 0.5) as f64).powi(2)).sum::<f64>() / x.len() as f64;
        assert!((var.sqrt() - 0.1).abs() < 0.003, "{}", var.sqrt());
    }
}
