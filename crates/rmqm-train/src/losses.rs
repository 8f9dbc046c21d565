//! The losses of the five training methods.

use crate::semihard::{SemihardLoss, SemihardMining, for_each_semihard_triplet};
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
    let mut out = Vec::new();
    for_each_semihard_triplet(distances, labels, margin, |a, p, ks| {
        out.extend(ks.iter().map(|&k| (a, p, k)))
    });
    out
}

/// Semihard triplet loss on L2-normalised embeddings: mean over the mined triplets of
/// d(a,p) - d(a,n) + margin (all of which are positive, so this is the mean over non-zero losses);
/// zero when the batch has none. Computed by [`SemihardLoss`]; with candle's default ops on
/// (`rmqm_models::ops::use_candle_default_ops`), by the equivalent `index_select` graph.
pub fn semihard_triplet(embeddings: &Tensor, labels: &[i64], margin: f64) -> Result<Tensor> {
    let e = l2_normalise(embeddings)?;
    let d = pairwise_distances(&e)?;
    let values: Vec<f64> = d.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let mining = SemihardMining::of(&values, labels, margin);
    if mining.is_empty() {
        return d.sum_all()?.affine(0.0, 0.0);
    }
    if rmqm_models::ops::candle_default_ops() {
        return semihard_triplet_graph(&d, &mining, margin);
    }
    d.apply_op1(SemihardLoss { mining, margin })
}

/// The semihard triplet loss as a candle graph: the mined distances gathered by `index_select`,
/// `d(a,p) - d(a,n) + margin`, `mean_all` (what [`SemihardLoss`] computes in one op).
fn semihard_triplet_graph(d: &Tensor, mining: &SemihardMining, margin: f64) -> Result<Tensor> {
    let flat = d.flatten_all()?;
    let dev = d.device();
    let dap = flat.index_select(&Tensor::new(mining.positive_indices(), dev)?, 0)?;
    let dan = flat.index_select(&Tensor::new(mining.negative_indices(), dev)?, 0)?;
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

    /// The embeddings' gradient of `n * loss + sum(e)` (an extra term, as triplet-entropy adds
    /// cross-entropy) and the loss, through the op or through the graph.
    fn loss_and_gradient(
        e: &candle_core::Var,
        labels: &[i64],
        margin: f64,
        graph: bool,
    ) -> (Vec<f64>, Vec<f64>, usize) {
        let x = e.as_tensor();
        let d = pairwise_distances(&l2_normalise(x).unwrap()).unwrap();
        let values: Vec<f64> = d
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mining = SemihardMining::of(&values, labels, margin);
        let triplets = mining.len();
        let loss = if graph {
            semihard_triplet_graph(&d, &mining, margin).unwrap()
        } else {
            d.apply_op1(SemihardLoss { mining, margin }).unwrap()
        };
        let total = ((loss.clone() * labels.len() as f64).unwrap() + x.sum_all().unwrap()).unwrap();
        let grads = total.backward().unwrap();
        let as_f64 = |t: &Tensor| -> Vec<f64> {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        (as_f64(&loss), as_f64(grads.get(x).unwrap()), triplets)
    }

    #[test]
    fn semihard_op_matches_the_index_select_graph_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let device = candle_core::Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // (batch, classes, dim, margin, dtype): labelled batches of 10 classes, a triplet-ss batch
        // (pairs of views), and f64.
        let cases = [
            (64, 10, 16, 0.2, DType::F32),
            (256, 10, 16, 0.2, DType::F32),
            (256, 10, 128, 1.0, DType::F32),
            (128, 64, 32, 0.5, DType::F32),
            (96, 10, 8, 0.2, DType::F64),
        ];
        for (n, classes, dim, margin, dtype) in cases {
            let data: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let labels: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
            let e = candle_core::Var::from_tensor(
                &Tensor::from_vec(data, (n, dim), &device)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let (op_values, op_grad, triplets) = loss_and_gradient(&e, &labels, margin, false);
            let (graph_values, graph_grad, _) = loss_and_gradient(&e, &labels, margin, true);
            assert!(
                triplets > 100,
                "case {n}/{classes}: only {triplets} triplets"
            );
            let differing = |a: &[f64], b: &[f64]| {
                assert_eq!(a.len(), b.len());
                let at: Vec<usize> = (0..a.len())
                    .filter(|&i| a[i].to_bits() != b[i].to_bits())
                    .collect();
                at.first()
                    .map(|&i| format!("{} differ, first at {i}: {} vs {}", at.len(), a[i], b[i]))
            };
            assert_eq!(
                differing(&op_values, &graph_values),
                None,
                "loss, case {n}/{classes}"
            );
            assert_eq!(
                differing(&op_grad, &graph_grad),
                None,
                "gradient, case {n}/{classes}"
            );
            assert!(
                op_grad.iter().any(|&g| g != 1.0),
                "the triplet term has a gradient"
            );
        }
    }

    #[test]
    fn ntxent_is_log_of_2n_minus_1_for_identical_random_views() {
        // With every similarity equal the loss is ln(2N - 1).
        let z = Tensor::ones((3, 4), DType::F64, &candle_core::Device::Cpu).unwrap();
        let l = ntxent(&z, &z, 0.5).unwrap().to_scalar::<f64>().unwrap();
        assert!((l - 5f64.ln()).abs() < 1e-9, "{l}");
    }
}
