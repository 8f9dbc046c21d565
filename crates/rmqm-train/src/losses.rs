//! The losses of the five training methods.

use candle_core::{D, DType, Result, Tensor};
use rmqm_models::{Encoder, Method};

/// Mean cross-entropy of `logits` (n, classes) against integer `labels` (n).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, labels)
}

/// Rows scaled to unit L2 norm (differentiable; a tiny epsilon keeps zero rows finite).
fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// Pairwise Euclidean distances between the rows of `e` (assumed unit-norm), differentiable.
fn pairwise_distances(e: &Tensor) -> Result<Tensor> {
    let n = e.dim(0)?;
    let sq = e.sqr()?.sum_keepdim(1)?;
    let gram = e.matmul(&e.t()?)?;
    let d2 = sq
        .broadcast_add(&sq.reshape((1, n))?)?
        .sub(&(gram * 2.0)?)?;
    (d2.relu()? + 1e-12)?.sqrt()
}

/// Every semihard triplet (a, p, n) of a batch: label[a] == label[p], a != p, label[n] != label[a],
/// and d(a,p) < d(a,n) < d(a,p) + margin, from a distance matrix given row-major.
pub fn semihard_triplets(
    distances: &[f64],
    labels: &[i64],
    margin: f64,
) -> Vec<(usize, usize, usize)> {
    let n = labels.len();
    let mut out = Vec::new();
    for a in 0..n {
        for p in 0..n {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            let dap = distances[a * n + p];
            for (k, &l) in labels.iter().enumerate() {
                if l == labels[a] {
                    continue;
                }
                let dan = distances[a * n + k];
                if dap < dan && dan < dap + margin {
                    out.push((a, p, k));
                }
            }
        }
    }
    out
}

/// Semihard triplet loss on L2-normalised embeddings: mean over the mined triplets of
/// d(a,p) - d(a,n) + margin (all of which are positive, so this is the mean over non-zero losses);
/// zero when the batch has none.
pub fn semihard_triplet(embeddings: &Tensor, labels: &[i64], margin: f64) -> Result<Tensor> {
    let n = embeddings.dim(0)?;
    let e = l2_normalise(embeddings)?;
    let d = pairwise_distances(&e)?;
    let values: Vec<f64> = d.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let triplets = semihard_triplets(&values, labels, margin);
    if triplets.is_empty() {
        return d.sum_all()?.affine(0.0, 0.0);
    }
    let flat = d.flatten_all()?;
    let ap: Vec<u32> = triplets
        .iter()
        .map(|&(a, p, _)| (a * n + p) as u32)
        .collect();
    let an: Vec<u32> = triplets
        .iter()
        .map(|&(a, _, k)| (a * n + k) as u32)
        .collect();
    let dev = embeddings.device();
    let dap = flat.index_select(&Tensor::new(ap, dev)?, 0)?;
    let dan = flat.index_select(&Tensor::new(an, dev)?, 0)?;
    ((dap - dan)? + margin)?.mean_all()
}

/// Batch-all triplet loss: mean over every valid triplet (a, p, n) of relu(d(a,p) - d(a,n) + margin)
/// on L2-normalised embeddings. Unlike the semihard loss (a mean over a shrinking set), it falls
/// steadily as embeddings separate, so it serves to monitor training.
pub fn batch_all_triplet(embeddings: &Tensor, labels: &[i64], margin: f64) -> Result<f64> {
    let n = embeddings.dim(0)?;
    let e = l2_normalise(embeddings)?;
    let d: Vec<f64> = pairwise_distances(&e)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let (mut sum, mut count) = (0.0, 0usize);
    for a in 0..n {
        for p in 0..n {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            for k in 0..n {
                if labels[k] != labels[a] {
                    sum += (d[a * n + p] - d[a * n + k] + margin).max(0.0);
                    count += 1;
                }
            }
        }
    }
    Ok(if count == 0 { 0.0 } else { sum / count as f64 })
}

/// NT-Xent (SimCLR) over 2N views: view i's positive is its other view, the other 2N-2 are negatives;
/// cosine similarities divided by `temperature`; mean over all 2N anchors.
pub fn ntxent(view1: &Tensor, view2: &Tensor, temperature: f64) -> Result<Tensor> {
    let n = view1.dim(0)?;
    let z = l2_normalise(&Tensor::cat(&[view1, view2], 0)?)?;
    let sim = (z.matmul(&z.t()?)? / temperature)?;
    // Remove self-similarity from the softmax.
    let eye = Tensor::eye(2 * n, sim.dtype(), sim.device())?;
    let sim = (sim - (eye * 1e9)?)?;
    let targets: Vec<u32> = (0..2 * n).map(|i| ((i + n) % (2 * n)) as u32).collect();
    cross_entropy(&sim, &Tensor::new(targets, sim.device())?)
}

/// What one training batch feeds a method's loss.
pub enum BatchInput<'a> {
    /// Images (n, c, h, w) and their labels.
    Labelled {
        /// Pixels in [0,1].
        images: &'a Tensor,
        /// Class labels.
        labels: &'a [i64],
    },
    /// Two augmented views of the same n images.
    Views {
        /// First views.
        first: &'a Tensor,
        /// Second views.
        second: &'a Tensor,
    },
}

/// A batch's embeddings, as a method's loss reads them.
pub enum BatchEmbeddings<'a> {
    /// Embeddings (n, dim) and their labels.
    Labelled {
        /// Embeddings of the images.
        embeddings: &'a Tensor,
        /// Class labels.
        labels: &'a [i64],
    },
    /// Embeddings of two augmented views of the same n images.
    Views {
        /// Embeddings of the first views.
        first: &'a Tensor,
        /// Embeddings of the second views.
        second: &'a Tensor,
    },
}

/// The loss of `method` on one batch's embeddings (the classifier head applied where the method
/// has one).
pub fn embedding_loss(model: &Encoder, method: Method, batch: &BatchEmbeddings) -> Result<Tensor> {
    let cfg = model.config();
    match (method, batch) {
        (
            Method::CrossEntropy | Method::TripletEntropy | Method::TripletSupervised,
            BatchEmbeddings::Labelled {
                embeddings: e,
                labels,
            },
        ) => {
            let labels_t = Tensor::new(
                labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
                e.device(),
            )?;
            match method {
                Method::CrossEntropy => {
                    let logits = model.logits(e)?.expect("cross-entropy models have a head");
                    cross_entropy(&logits, &labels_t)
                }
                Method::TripletEntropy => {
                    let logits = model
                        .logits(e)?
                        .expect("triplet-entropy models have a head");
                    cross_entropy(&logits, &labels_t)? + semihard_triplet(e, labels, cfg.margin)?
                }
                _ => semihard_triplet(e, labels, cfg.margin),
            }
        }
        (Method::TripletSs, BatchEmbeddings::Views { first, second }) => {
            let n = first.dim(0)?;
            let e = Tensor::cat(&[*first, *second], 0)?;
            let ids: Vec<i64> = (0..2 * n).map(|i| (i % n) as i64).collect();
            semihard_triplet(&e, &ids, cfg.margin)
        }
        (Method::Ntxent, BatchEmbeddings::Views { first, second }) => {
            ntxent(first, second, cfg.temperature)
        }
        _ => candle_core::bail!("{method} does not take this kind of batch"),
    }
}

/// The loss of `method` on one batch: the encoder's embeddings (batch-norm mode `train`), then
/// [`embedding_loss`].
pub fn method_loss(
    model: &Encoder,
    method: Method,
    input: &BatchInput,
    train: bool,
) -> Result<Tensor> {
    match input {
        BatchInput::Labelled { images, labels } => embedding_loss(
            model,
            method,
            &BatchEmbeddings::Labelled {
                embeddings: &model.embed(images, train)?,
                labels,
            },
        ),
        BatchInput::Views { first, second } => embedding_loss(
            model,
            method,
            &BatchEmbeddings::Views {
                first: &model.embed(first, train)?,
                second: &model.embed(second, train)?,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semihard_mining_on_a_hand_made_batch() {
        // Four points on a line: labels 0,0,1,1 at positions 0, 0.3, 0.5, 2.0 (distances |x - y|).
        let pos: [f64; 4] = [0.0, 0.3, 0.5, 2.0];
        let labels = [0, 0, 1, 1];
        let d: Vec<f64> = (0..16).map(|i| (pos[i / 4] - pos[i % 4]).abs()).collect();
        let t = semihard_triplets(&d, &labels, 0.5);
        // a=0,p=1 (d .3): negatives with .3 < d < .8: point 2 (.5). a=1,p=0 (.3): point 2 (.2)? no; point 3 (1.7)? no.
        // a=2,p=3 (1.5): negatives in (1.5, 2.0): none (0.5, 0.2). a=3,p=2 (1.5): in (1.5, 2.0): point 1 (1.7).
        assert_eq!(t, vec![(0, 1, 2), (3, 2, 1)]);
    }

    #[test]
    fn ntxent_is_log_of_2n_minus_1_for_identical_random_views() {
        // With every similarity equal the loss is ln(2N - 1).
        let z = Tensor::ones((3, 4), DType::F64, &candle_core::Device::Cpu).unwrap();
        let l = ntxent(&z, &z, 0.5).unwrap().to_scalar::<f64>().unwrap();
        assert!((l - 5f64.ln()).abs() < 1e-9, "{l}");
    }
}
