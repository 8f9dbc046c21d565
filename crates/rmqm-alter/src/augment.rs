//! The augmentation walk: for every image, step 0 is the clean image and steps 1..=Q are Q views
//! drawn with the training augmentation of the data's kind (grey 28x28: rotation + perspective;
//! colour 32x32: resized crop, flips, perspective). The views are independent draws, not a path:
//! they are LiDAR's surrogate class of the image. Each view comes from its own stream keyed by
//! (seed, image id, view), so a view does not depend on batch, subset, thread count or model.

use rmqm_train::{Augmentation, augment_image};

/// The first "epoch" word of the walk's streams: training uses epochs below 2^32, so no walk view
/// repeats a training view of a model trained with the same seed.
const WALK_STREAM_BASE: u64 = 1 << 32;

/// The augmentation walk's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AugmentConfig {
    /// Q: views per image (steps 1..=Q).
    pub views: usize,
    /// Seed of every view.
    pub seed: u64,
}

impl AugmentConfig {
    /// The epsilon column of `step`: 0 for the clean image, 1 for every view (each view is a full
    /// draw of the training augmentation; there is no strength that grows with the step).
    pub fn epsilon(&self, step: usize) -> f64 {
        if step == 0 { 0.0 } else { 1.0 }
    }
}

/// Step `step` of image `image_id` (c x h x w values in [0, 1]): the clean image at step 0, else
/// view `step` of the training augmentation for `c` channels.
pub fn augment_view(
    clean: &[f32],
    image_id: u32,
    step: usize,
    (c, h, w): (usize, usize, usize),
    cfg: &AugmentConfig,
) -> Vec<f32> {
    assert_eq!(
        clean.len(),
        c * h * w,
        "image size does not match {c}x{h}x{w}"
    );
    if step == 0 {
        return clean.to_vec();
    }
    augment_image(
        Augmentation::for_images(c),
        clean,
        c,
        h,
        w,
        (cfg.seed, WALK_STREAM_BASE + step as u64, image_id, 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<f32> {
        (0..28 * 28)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn views_are_seeded_distinct_and_in_range() {
        let cfg = AugmentConfig { views: 12, seed: 3 };
        let img = image();
        assert_eq!(augment_view(&img, 7, 0, (1, 28, 28), &cfg), img);
        let views: Vec<Vec<f32>> = (1..=12)
            .map(|q| augment_view(&img, 7, q, (1, 28, 28), &cfg))
            .collect();
        for (q, v) in views.iter().enumerate() {
            assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
            assert_ne!(v, &img, "view {} equals the clean image", q + 1);
            for u in &views[..q] {
                assert_ne!(u, v, "two views of one image are equal");
            }
        }
        // The same key gives the same view; another image id or seed gives another.
        assert_eq!(augment_view(&img, 7, 5, (1, 28, 28), &cfg), views[4]);
        assert_ne!(augment_view(&img, 8, 5, (1, 28, 28), &cfg), views[4]);
        let other = AugmentConfig { seed: 4, ..cfg };
        assert_ne!(augment_view(&img, 7, 5, (1, 28, 28), &other), views[4]);
        assert_eq!(cfg.epsilon(0), 0.0);
        assert_eq!(cfg.epsilon(3), 1.0);
    }
}
