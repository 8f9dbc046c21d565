//! Label-free peer metrics on the clean embeddings (step 0): RankMe (Garrido et al. 2023) and
//! alpha-ReQ (Agrawal et al. 2022), from a streamed Gram matrix.

use rmqm_linalg::{add_gram_f64, symmetric_eigenvalues};

/// Rows buffered before a rank-k update of the Gram matrix.
const BUFFER_ROWS: usize = 256;

/// Streams embeddings (raw, not normalised) into their Gram matrix and sum, in f64.
#[derive(Debug, Clone)]
pub struct SpectrumAccumulator {
    dim: usize,
    n: u64,
    gram: Vec<f64>,
    sum: Vec<f64>,
    buffer: Vec<f64>,
}

/// The alpha-ReQ fit: slope of the eigenspectrum on log-log axes and its R^2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaReq {
    /// alpha = minus the slope of ln(lambda_r) against ln(r).
    pub alpha: f64,
    /// Weighted R^2 of the fit.
    pub r_squared: f64,
}

/// The label-free peer metrics of one set of embeddings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpectrumPeers {
    /// RankMe (from the singular values).
    pub rankme: f64,
    /// alpha-ReQ (from the covariance eigenvalues).
    pub alpha_req: AlphaReq,
}

impl SpectrumAccumulator {
    /// An empty accumulator for `dim`-dimensional embeddings.
    pub fn new(dim: usize) -> Self {
        SpectrumAccumulator {
            dim,
            n: 0,
            gram: vec![0.0; dim * dim],
            sum: vec![0.0; dim],
            buffer: Vec::with_capacity(BUFFER_ROWS * dim),
        }
    }

    /// Adds one embedding.
    pub fn add(&mut self, row: &[f32]) {
        assert_eq!(row.len(), self.dim);
        self.n += 1;
        for (s, &v) in self.sum.iter_mut().zip(row) {
            *s += v as f64;
        }
        self.buffer.extend(row.iter().map(|&v| v as f64));
        if self.buffer.len() == BUFFER_ROWS * self.dim {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let rows = self.buffer.len() / self.dim;
        if rows > 0 {
            add_gram_f64(&mut self.gram, &self.buffer, rows, self.dim);
            self.buffer.clear();
        }
    }

    /// Embeddings added.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Singular values of the N x dim embedding matrix, descending.
    pub fn singular_values(&mut self) -> Vec<f64> {
        self.flush();
        self.gram_singular_values()
    }

    fn gram_singular_values(&self) -> Vec<f64> {
        symmetric_eigenvalues(&self.gram, self.dim)
            .into_iter()
            .map(|e| e.max(0.0).sqrt())
            .collect()
    }

    /// Eigenvalues of the covariance matrix (divided by N), descending.
    pub fn covariance_eigenvalues(&mut self) -> Vec<f64> {
        self.flush();
        self.gram_covariance_eigenvalues()
    }

    fn gram_covariance_eigenvalues(&self) -> Vec<f64> {
        let n = self.n as f64;
        let d = self.dim;
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] = (self.gram[i * d + j] - self.sum[i] * self.sum[j] / n) / n;
            }
        }
        symmetric_eigenvalues(&cov, d)
    }

    /// RankMe and alpha-ReQ of the embeddings added so far, their two eigenproblems solved on two
    /// threads of the pool.
    pub fn peers(&mut self) -> SpectrumPeers {
        self.flush();
        let (singular_values, covariance_eigenvalues) = rayon::join(
            || self.gram_singular_values(),
            || self.gram_covariance_eigenvalues(),
        );
        SpectrumPeers {
            rankme: rankme(&singular_values),
            alpha_req: alpha_req(&covariance_eigenvalues),
        }
    }

    /// RankMe of the embeddings added so far.
    pub fn rankme(&mut self) -> f64 {
        rankme(&self.singular_values())
    }

    /// alpha-ReQ of the embeddings added so far.
    pub fn alpha_req(&mut self) -> AlphaReq {
        alpha_req(&self.covariance_eigenvalues())
    }
}

/// RankMe: exp of the entropy of p_k = s_k / sum(s) + 1e-7 over the singular values `s`.
pub fn rankme(singular_values: &[f64]) -> f64 {
    let total: f64 = singular_values.iter().sum();
    if total <= 0.0 {
        return f64::NAN;
    }
    let entropy: f64 = singular_values
        .iter()
        .map(|&s| {
            let p = s / total + 1e-7;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// alpha-ReQ: least squares of ln(lambda_r) on ln(r) over ranks r = 5..=min(100, n), weighted 1/r,
/// over the descending eigenvalues `eigenvalues` (non-positive ones skipped); alpha = -slope.
/// NaN when fewer than three ranks are usable.
pub fn alpha_req(eigenvalues: &[f64]) -> AlphaReq {
    let last = eigenvalues.len().min(100);
    let points: Vec<(f64, f64, f64)> = (5..=last)
        .filter(|&r| eigenvalues[r - 1] > 0.0)
        .map(|r| ((r as f64).ln(), eigenvalues[r - 1].ln(), 1.0 / r as f64))
        .collect();
    if points.len() < 3 {
        return AlphaReq {
            alpha: f64::NAN,
            r_squared: f64::NAN,
        };
    }
    let sw: f64 = points.iter().map(|p| p.2).sum();
    let mx = points.iter().map(|p| p.2 * p.0).sum::<f64>() / sw;
    let my = points.iter().map(|p| p.2 * p.1).sum::<f64>() / sw;
    let sxx: f64 = points.iter().map(|p| p.2 * (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| p.2 * (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| p.2 * (p.1 - my).powi(2)).sum();
    let slope = sxy / sxx;
    let r_squared = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        1.0
    };
    AlphaReq {
        alpha: -slope,
        r_squared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rankme_of_an_isotropic_matrix_is_its_dim() {
        // Rows cycle through the standard basis: the Gram matrix is a multiple of the identity.
        let dim = 32;
        let mut acc = SpectrumAccumulator::new(dim);
        for i in 0..dim * 40 {
            let mut row = vec![0.0f32; dim];
            row[i % dim] = 2.5;
            acc.add(&row);
        }
        let r = acc.rankme();
        assert!((r - dim as f64).abs() / (dim as f64) < 0.01, "{r}");
        // Random Gaussian rows are nearly isotropic.
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut acc = SpectrumAccumulator::new(16);
        for _ in 0..60_000 {
            let row: Vec<f32> = (0..16).map(|_| StandardNormal.sample(&mut rng)).collect();
            acc.add(&row);
        }
        let r = acc.rankme();
        assert!((r - 16.0).abs() / 16.0 < 0.01, "{r}");
        // Both metrics at once (two threads) equal each alone.
        let peers = acc.peers();
        assert_eq!(peers.rankme.to_bits(), r.to_bits());
        assert_eq!(peers.alpha_req, acc.alpha_req());
        // A rank-one matrix has RankMe near 1.
        let mut acc = SpectrumAccumulator::new(8);
        for i in 0..100 {
            acc.add(&[i as f32; 8]);
        }
        assert!(acc.rankme() < 1.01);
    }

    #[test]
    fn alpha_req_recovers_a_power_law() {
        let eig: Vec<f64> = (1..=200).map(|r| 3.0 * (r as f64).powf(-1.3)).collect();
        let a = alpha_req(&eig);
        assert!((a.alpha - 1.3).abs() < 1e-9, "{a:?}");
        assert!((a.r_squared - 1.0).abs() < 1e-9);
        assert!(alpha_req(&[1.0, 0.5, 0.2]).alpha.is_nan());
    }
}
