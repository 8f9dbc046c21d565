//! Groups a stream of trajectory rows into whole images, checking the order rules: rows sorted by
//! (image_id, step), each image contiguous, steps exactly 0..=J with the same J for every image.

use rmqm_artifacts::VectorBatch;

/// A rule of the trajectory format that the input breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TrajectoryError(pub String);

/// One image's whole trajectory: J+1 embeddings, step-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTrajectory {
    /// The image's id.
    pub image_id: u32,
    /// The image's label.
    pub label: i32,
    /// (J+1) * dim raw embedding values, step 0 first.
    pub rows: Vec<f32>,
    /// The epsilon of each step.
    pub epsilons: Vec<f32>,
}

/// Collects rows into whole images and checks the order rules as it goes.
#[derive(Debug)]
pub struct TrajectoryGrouper {
    dim: usize,
    expected_steps: Option<usize>,
    current: Option<ImageTrajectory>,
    last_step: u16,
    last_finished: Option<u32>,
    images: u64,
}

impl TrajectoryGrouper {
    /// A grouper for `dim`-dimensional embeddings; `steps` (J) if known from metadata.
    pub fn new(dim: usize, steps: Option<usize>) -> Self {
        TrajectoryGrouper {
            dim,
            expected_steps: steps,
            current: None,
            last_step: 0,
            last_finished: None,
            images: 0,
        }
    }

    /// J, once known (from metadata or the first complete image).
    pub fn steps(&self) -> Option<usize> {
        self.expected_steps
    }

    /// Images completed so far.
    pub fn images(&self) -> u64 {
        self.images
    }

    fn close(&mut self) -> Result<Option<ImageTrajectory>, TrajectoryError> {
        let Some(img) = self.current.take() else {
            return Ok(None);
        };
        let n = img.epsilons.len();
        match self.expected_steps {
            Some(j) if n != j + 1 => {
                return Err(TrajectoryError(format!(
                    "image_id {} has steps 0..={} but other images have 0..={j}: missing steps",
                    img.image_id,
                    n - 1
                )));
            }
            None => {
                if n < 3 {
                    return Err(TrajectoryError(format!(
                        "image_id {} has only steps 0..={}: at least steps 0..=2 are needed",
                        img.image_id,
                        n - 1
                    )));
                }
                self.expected_steps = Some(n - 1);
            }
            _ => {}
        }
        self.last_finished = Some(img.image_id);
        self.images += 1;
        Ok(Some(img))
    }

    /// Feeds rows; completed images are appended to `done`.
    pub fn push(
        &mut self,
        rows: &VectorBatch,
        done: &mut Vec<ImageTrajectory>,
    ) -> Result<(), TrajectoryError> {
        for i in 0..rows.len() {
            let (id, label, step, eps) = (
                rows.image_ids[i],
                rows.labels[i],
                rows.steps[i],
                rows.epsilons[i],
            );
            let same = self.current.as_ref().is_some_and(|c| c.image_id == id);
            if same {
                let c = self.current.as_mut().unwrap();
                if step == self.last_step {
                    return Err(TrajectoryError(format!(
                        "image_id {id} has step {step} twice (duplicate step)"
                    )));
                }
                if step != self.last_step + 1 {
                    return Err(TrajectoryError(format!(
                        "image_id {id}: step {step} follows step {}: steps must be contiguous and sorted (missing or out-of-order step)",
                        self.last_step
                    )));
                }
                if label != c.label {
                    return Err(TrajectoryError(format!(
                        "image_id {id} has label {} at step 0 but {label} at step {step}",
                        c.label
                    )));
                }
                if let Some(j) = self.expected_steps
                    && step as usize > j
                {
                    return Err(TrajectoryError(format!(
                        "image_id {id} has step {step}, beyond J = {j} of the other images"
                    )));
                }
                c.rows.extend_from_slice(rows.row(i));
                c.epsilons.push(eps);
                self.last_step = step;
            } else {
                if let Some(img) = self.close()? {
                    done.push(img);
                }
                if let Some(prev) = self.last_finished
                    && id <= prev
                {
                    return Err(TrajectoryError(format!(
                        "image_id {id} after image_id {prev}: rows must be sorted by (image_id, step), each image contiguous"
                    )));
                }
                if step != 0 {
                    return Err(TrajectoryError(format!(
                        "image_id {id} starts at step {step}: step 0 (the clean input) is missing"
                    )));
                }
                let mut r = Vec::with_capacity(self.dim * (self.expected_steps.unwrap_or(0) + 1));
                r.extend_from_slice(rows.row(i));
                self.current = Some(ImageTrajectory {
                    image_id: id,
                    label,
                    rows: r,
                    epsilons: vec![eps],
                });
                self.last_step = 0;
            }
        }
        Ok(())
    }

    /// Ends the stream: returns the last image, if any.
    pub fn finish(&mut self) -> Result<Option<ImageTrajectory>, TrajectoryError> {
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmqm_artifacts::VectorBatchBuilder;

    #[allow(non_snake_case)]
    fn Rows(keys: Vec<(u32, i32, u16)>) -> VectorBatch {
        let mut b = VectorBatchBuilder::new(2, keys.len());
        for (id, label, step) in keys {
            b.push(id, label, step, step as f32, &[1.0, 0.0]);
        }
        b.finish()
    }

    fn run(rows: Vec<(u32, i32, u16)>) -> Result<Vec<ImageTrajectory>, TrajectoryError> {
        let mut g = TrajectoryGrouper::new(2, None);
        let mut done = Vec::new();
        // Feed in two pieces, so an image straddles batches.
        let mid = rows.len() / 2;
        g.push(&Rows(rows[..mid].to_vec()), &mut done)?;
        g.push(&Rows(rows[mid..].to_vec()), &mut done)?;
        if let Some(last) = g.finish()? {
            done.push(last);
        }
        Ok(done)
    }

    #[test]
    fn groups_images_across_batches() {
        let rows = vec![
            (0, 1, 0),
            (0, 1, 1),
            (0, 1, 2),
            (5, 2, 0),
            (5, 2, 1),
            (5, 2, 2),
        ];
        let imgs = run(rows).unwrap();
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[1].image_id, 5);
        assert_eq!(imgs[1].rows.len(), 6);
    }

    #[test]
    fn order_rules_give_clear_errors() {
        let e = run(vec![(0, 1, 0), (0, 1, 1), (0, 1, 1), (0, 1, 2)]).unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
        let e = run(vec![(0, 1, 0), (0, 1, 2), (0, 1, 3)]).unwrap_err();
        assert!(e.0.contains("missing"), "{e}");
        let e = run(vec![(0, 1, 0), (0, 1, 1), (0, 1, 2), (1, 1, 0), (1, 1, 1)]).unwrap_err();
        assert!(e.0.contains("missing steps"), "{e}");
        let e = run(vec![
            (1, 1, 0),
            (1, 1, 1),
            (1, 1, 2),
            (0, 1, 0),
            (0, 1, 1),
            (0, 1, 2),
        ])
        .unwrap_err();
        assert!(e.0.contains("sorted"), "{e}");
        let e = run(vec![
            (0, 1, 0),
            (0, 1, 1),
            (0, 1, 2),
            (1, 1, 0),
            (1, 1, 1),
            (1, 1, 2),
            (0, 1, 0),
        ])
        .unwrap_err();
        assert!(e.0.contains("contiguous"), "{e}");
        let e = run(vec![(0, 1, 1), (0, 1, 2), (0, 1, 3)]).unwrap_err();
        assert!(e.0.contains("step 0"), "{e}");
        let e = run(vec![(0, 1, 0), (0, 1, 1)]).unwrap_err();
        assert!(e.0.contains("at least"), "{e}");
        let e = run(vec![(0, 1, 0), (0, 2, 1), (0, 1, 2)]).unwrap_err();
        assert!(e.0.contains("label"), "{e}");
    }
}
