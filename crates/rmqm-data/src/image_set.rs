/// A set of images in memory: f32 pixels in [0,1] laid out NCHW, one label and one stable id per image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Dataset name as used by `--dataset` (for example `mnist`).
    pub dataset: String,
    /// Split name (for example `train`, `test`, `background`).
    pub split: String,
    /// Channels per image (1 or 3).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// All pixels, image after image, each image channel-major (C, H, W), values in [0,1].
    pub pixels: Vec<f32>,
    /// One class label per image.
    pub labels: Vec<i32>,
    /// One stable id per image: its index in the publisher's source order.
    pub ids: Vec<u32>,
    /// Class names indexed by label, where the dataset has them.
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of f32 values per image (C*H*W).
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (C*H*W values).
    pub fn image(&self, i: usize) -> &[f32] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// Number of classes: the largest label plus one (0 for an empty set).
    pub fn n_classes(&self) -> usize {
        self.labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1)
    }

    /// A new set holding the images at `indices`, in that order, ids and labels kept.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let s = self.image_size();
        let mut pixels = Vec::with_capacity(indices.len() * s);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            dataset: self.dataset.clone(),
            split: self.split.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ids: indices.iter().map(|&i| self.ids[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Keeps only the first `n` images (all of them when `n` is larger than the set).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.pixels.truncate(n * self.image_size());
            self.labels.truncate(n);
            self.ids.truncate(n);
        }
    }

    /// Keeps only the images whose label is in `classes`, relabelled 0.. in the order of `classes`.
    pub fn keep_classes(&self, classes: &[i32]) -> ImageSet {
        let indices: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&self.labels[i]))
            .collect();
        let mut out = self.select(&indices);
        for l in &mut out.labels {
            *l = classes.iter().position(|c| c == l).unwrap() as i32;
        }
        out.class_names = classes
            .iter()
            .map(|&c| {
                self.class_names
                    .get(c as usize)
                    .cloned()
                    .unwrap_or_else(|| c.to_string())
            })
            .collect();
        out
    }
}

/// Which images of a split a tool works on: images of `classes` (labels kept), then the images
/// `ids` names (every id must exist), then the first `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these classes (empty: all).
    pub classes: Vec<i32>,
    /// Only these image ids (empty: all).
    pub ids: Vec<u32>,
    /// Only the first N.
    pub limit: Option<usize>,
}

impl Selection {
    /// The selected images of `set`, in source order; an unknown id is an error naming the split.
    pub fn apply(&self, set: ImageSet) -> Result<ImageSet, String> {
        let set = if self.classes.is_empty() {
            set
        } else {
            let keep: Vec<usize> = (0..set.len())
                .filter(|&i| self.classes.contains(&set.labels[i]))
                .collect();
            set.select(&keep)
        };
        let mut set = if self.ids.is_empty() {
            set
        } else {
            let mut idx = Vec::with_capacity(self.ids.len());
            for &id in &self.ids {
                match set.ids.iter().position(|&x| x == id) {
                    Some(i) => idx.push(i),
                    None => {
                        return Err(format!(
                            "{} {}: unknown image id {id} (ids are 0..{})",
                            set.dataset,
                            set.split,
                            set.len()
                        ));
                    }
                }
            }
            idx.sort_unstable();
            idx.dedup();
            set.select(&idx)
        };
        if let Some(n) = self.limit {
            set.truncate(n);
        }
        Ok(set)
    }
}
