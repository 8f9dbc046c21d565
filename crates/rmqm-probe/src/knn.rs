//! Exact k-nearest-neighbour classification by blocked matrix products.

use crate::ProbeError;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// The distance k-NN ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Euclidean distance between L2-normalised embeddings (ranks like cosine similarity).
    Cosine,
    /// Euclidean distance between raw embeddings.
    Euclidean,
}

impl Metric {
    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Euclidean => "euclidean",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "euclidean" => Ok(Metric::Euclidean),
            o => Err(format!("unknown metric {o:?} (cosine or euclidean)")),
        }
    }
}

/// L2-normalises each row of `x` (`dim` columns) in place; zero rows stay zero.
pub fn normalise_rows(x: &mut [f32], dim: usize) {
    x.par_chunks_mut(dim).for_each(|r| {
        let n = r
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if n > 0.0 {
            let inv = (1.0 / n) as f32;
            r.iter_mut().for_each(|v| *v *= inv);
        }
    });
}

/// Query rows per block (one block per task across cores).
const QUERY_BLOCK: usize = 128;
/// Gallery rows per block: a block of distances is QUERY_BLOCK x GALLERY_BLOCK floats (4 MiB).
const GALLERY_BLOCK: usize = 8192;

/// A neighbour: squared distance, gallery index.
type Neighbour = (f32, u32);

/// Inserts `cand` into the sorted list `best` (ascending by distance, then index), keeping `k`.
fn insert(best: &mut Vec<Neighbour>, k: usize, cand: Neighbour) {
    if best.len() == k {
        let last = best[k - 1];
        if (cand.0, cand.1) >= (last.0, last.1) {
            return;
        }
        best.pop();
    }
    let pos = best.partition_point(|b| (b.0, b.1) < (cand.0, cand.1));
    best.insert(pos, cand);
}

/// Majority vote over the `k` nearest; a tie between classes goes to the tied class whose nearest
/// member comes first in the (distance, index) order.
fn vote(neighbours: &[Neighbour], labels: &[i32], k: usize) -> i32 {
    let top = &neighbours[..k.min(neighbours.len())];
    let mut counts: Vec<(i32, usize, usize)> = Vec::new(); // (label, votes, rank of first)
    for (rank, &(_, idx)) in top.iter().enumerate() {
        let l = labels[idx as usize];
        match counts.iter_mut().find(|c| c.0 == l) {
            Some(c) => c.1 += 1,
            None => counts.push((l, 1, rank)),
        }
    }
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|c| c.0)
        .unwrap()
}

/// Predicts the label of every query row with k-NN for each `k` in `ks`; returns one prediction
/// vector per k. Exact: all distances are computed, in blocks, never as one N x M matrix.
pub fn knn_predict_many(
    gallery: &[f32],
    gallery_labels: &[i32],
    queries: &[f32],
    dim: usize,
    ks: &[usize],
    metric: Metric,
) -> Result<Vec<Vec<i32>>, ProbeError> {
    if dim == 0 {
        return Err(ProbeError::Mismatch("embedding dimension is 0".into()));
    }
    if gallery.is_empty() {
        return Err(ProbeError::Empty("the train (gallery) split"));
    }
    if queries.is_empty() {
        return Err(ProbeError::Empty("the test (query) split"));
    }
    if !gallery.len().is_multiple_of(dim) || !queries.len().is_multiple_of(dim) {
        return Err(ProbeError::Mismatch(format!(
            "data length is not a multiple of dim {dim}"
        )));
    }
    let n_gallery = gallery.len() / dim;
    if gallery_labels.len() != n_gallery {
        return Err(ProbeError::Mismatch(format!(
            "{n_gallery} gallery rows but {} labels",
            gallery_labels.len()
        )));
    }
    if ks.is_empty() || ks.contains(&0) {
        return Err(ProbeError::Mismatch("k must be at least 1".into()));
    }
    let k_max = *ks.iter().max().unwrap();
    let (gallery, queries) = match metric {
        Metric::Cosine => {
            let mut g = gallery.to_vec();
            let mut q = queries.to_vec();
            normalise_rows(&mut g, dim);
            normalise_rows(&mut q, dim);
            (std::borrow::Cow::Owned(g), std::borrow::Cow::Owned(q))
        }
        Metric::Euclidean => (
            std::borrow::Cow::Borrowed(gallery),
            std::borrow::Cow::Borrowed(queries),
        ),
    };
    let sq = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(dim)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect()
    };
    let g_sq = sq(&gallery);
    let n_query = queries.len() / dim;
    let per_block: Vec<Vec<Vec<i32>>> = queries
        .par_chunks(QUERY_BLOCK * dim)
        .map(|q_blk| {
            let m = q_blk.len() / dim;
            let q_sq = sq(q_blk);
            let mut best: Vec<Vec<Neighbour>> = vec![Vec::with_capacity(k_max + 1); m];
            let mut dots = vec![0.0f32; m * GALLERY_BLOCK];
            for (b, g_blk) in gallery.chunks(GALLERY_BLOCK * dim).enumerate() {
                let n = g_blk.len() / dim;
                let dots = &mut dots[..m * n];
                // SAFETY: q_blk holds m x dim and g_blk n x dim elements (m and n are their
                // lengths over dim, both multiples of dim, checked on entry), g_blk read as its
                // transpose (strides 1, dim); dots is sliced to m x n and borrowed exclusively.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        dim,
                        n,
                        1.0,
                        q_blk.as_ptr(),
                        dim as isize,
                        1,
                        g_blk.as_ptr(),
                        1,
                        dim as isize,
                        0.0,
                        dots.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                let base = b * GALLERY_BLOCK;
                for i in 0..m {
                    let row = &dots[i * n..(i + 1) * n];
                    let list = &mut best[i];
                    for (j, &dot) in row.iter().enumerate() {
                        let d = (q_sq[i] + g_sq[base + j] - 2.0 * dot).max(0.0);
                        if list.len() < k_max || d <= list[list.len() - 1].0 {
                            insert(list, k_max, (d, (base + j) as u32));
                        }
                    }
                }
            }
            ks.iter()
                .map(|&k| best.iter().map(|nb| vote(nb, gallery_labels, k)).collect())
                .collect()
        })
        .collect();
    let mut out = vec![Vec::with_capacity(n_query); ks.len()];
    for blk in per_block {
        for (o, preds) in out.iter_mut().zip(blk) {
            o.extend(preds);
        }
    }
    Ok(out)
}

/// k-NN predictions for one `k`.
pub fn knn_predict(
    gallery: &[f32],
    gallery_labels: &[i32],
    queries: &[f32],
    dim: usize,
    k: usize,
    metric: Metric,
) -> Result<Vec<i32>, ProbeError> {
    Ok(knn_predict_many(gallery, gallery_labels, queries, dim, &[k], metric)?.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Brute force in f64 with the same tie rules.
    fn brute(g: &[f32], gl: &[i32], q: &[f32], dim: usize, k: usize, metric: Metric) -> Vec<i32> {
        let prep = |x: &[f32]| -> Vec<Vec<f64>> {
            x.chunks(dim)
                .map(|r| {
                    let v: Vec<f64> = r.iter().map(|&a| a as f64).collect();
                    match metric {
                        Metric::Euclidean => v,
                        Metric::Cosine => {
                            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                            v.iter()
                                .map(|a| if n > 0.0 { a / n } else { 0.0 })
                                .collect()
                        }
                    }
                })
                .collect()
        };
        let (g, q) = (prep(g), prep(q));
        q.iter()
            .map(|qr| {
                let mut d: Vec<(f64, usize)> = g
                    .iter()
                    .enumerate()
                    .map(|(i, gr)| {
                        // |q|^2 + |g|^2 - 2 q.g: ties between equal dot products stay exact.
                        let sq = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
                        let dot: f64 = qr.iter().zip(gr).map(|(a, b)| a * b).sum();
                        (sq(qr) + sq(gr) - 2.0 * dot, i)
                    })
                    .collect();
                d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let top = &d[..k];
                let mut best: Option<(i32, usize, usize)> = None;
                for (rank, &(_, i)) in top.iter().enumerate() {
                    let l = gl[i];
                    let votes = top.iter().filter(|t| gl[t.1] == l).count();
                    let first = top.iter().position(|t| gl[t.1] == l).unwrap();
                    let _ = rank;
                    if best.is_none_or(|b| votes > b.1 || (votes == b.1 && first < b.2)) {
                        best = Some((l, votes, first));
                    }
                }
                best.unwrap().0
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_with_ties_on_both_metrics() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let dim = 5;
        // Small integers: many exact distance ties, all arithmetic exact in f32.
        let g: Vec<f32> = (0..300 * dim)
            .map(|_| rng.random_range(-2..=2) as f32)
            .collect();
        let gl: Vec<i32> = (0..300).map(|_| rng.random_range(0..4)).collect();
        let q: Vec<f32> = (0..150 * dim)
            .map(|_| rng.random_range(-2..=2) as f32)
            .collect();
        for k in [1, 2, 4, 7] {
            assert_eq!(
                knn_predict(&g, &gl, &q, dim, k, Metric::Euclidean).unwrap(),
                brute(&g, &gl, &q, dim, k, Metric::Euclidean),
                "k={k}"
            );
        }
        // Cosine with ties: the gallery holds only +-one-hot vectors (exactly unit length, many
        // duplicates), so every tie is exact in f32 and f64 alike.
        let g: Vec<f32> = (0..300)
            .flat_map(|_| {
                let mut v = vec![0.0f32; dim];
                v[rng.random_range(0..dim)] = if rng.random::<bool>() { 1.0 } else { -1.0 };
                v
            })
            .collect();
        for k in [1, 2, 4, 7] {
            assert_eq!(
                knn_predict(&g, &gl, &q, dim, k, Metric::Cosine).unwrap(),
                brute(&g, &gl, &q, dim, k, Metric::Cosine),
                "k={k}"
            );
        }
        // Random continuous data on the cosine metric: exact agreement.
        let g: Vec<f32> = (0..9000 * 8).map(|_| rng.random::<f32>() - 0.5).collect();
        let gl: Vec<i32> = (0..9000).map(|_| rng.random_range(0..10)).collect();
        let q: Vec<f32> = (0..200 * 8).map(|_| rng.random::<f32>() - 0.5).collect();
        for k in [1, 5] {
            assert_eq!(
                knn_predict(&g, &gl, &q, 8, k, Metric::Cosine).unwrap(),
                brute(&g, &gl, &q, 8, k, Metric::Cosine)
            );
        }
    }

    #[test]
    fn vote_ties_go_to_the_nearest_class() {
        // Neighbours: A (d=1), B (d=2), B (d=3), A (d=4): 2-2 tie, A is nearest.
        let nb = vec![(1.0, 0), (2.0, 1), (3.0, 2), (4.0, 3)];
        assert_eq!(vote(&nb, &[7, 9, 9, 7], 4), 7);
        assert_eq!(vote(&nb, &[7, 9, 9, 7], 3), 9);
    }

    #[test]
    fn errors_for_empty_and_mismatched_inputs() {
        assert!(matches!(
            knn_predict(&[], &[], &[1.0], 1, 1, Metric::Cosine),
            Err(ProbeError::Empty(_))
        ));
        assert!(matches!(
            knn_predict(&[1.0], &[0], &[], 1, 1, Metric::Cosine),
            Err(ProbeError::Empty(_))
        ));
        assert!(knn_predict(&[1.0, 2.0], &[0], &[1.0], 2, 1, Metric::Cosine).is_err());
        assert!(knn_predict(&[1.0, 2.0], &[0, 1], &[1.0], 1, 0, Metric::Cosine).is_err());
    }
}
