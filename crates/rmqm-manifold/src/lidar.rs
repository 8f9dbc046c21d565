//! LiDAR (Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL
//! Architectures", ICLR 2024): the effective rank of the linear discriminant analysis matrix of
//! surrogate classes, each class the embeddings of augmented views of one image.
//!
//! For n images with Q views each (raw embeddings, the clean image not among them):
//! Sigma_b = covariance of the n class means (divisor n - 1); Sigma_w = the mean over classes of the
//! within-class covariance (divisor n (Q - 1) in total) + delta I; lambda = eigenvalues of
//! Sigma_w^(-1/2) Sigma_b Sigma_w^(-1/2); p_k = (lambda_k + eps) / sum_j (lambda_j + eps);
//! LiDAR = exp(-sum_k p_k ln p_k). Streamed: memory O(dim^2) whatever n.

use rmqm_linalg::{add_gram_f64, symmetric_eigen, symmetric_eigenvalues};

/// Rows buffered before a rank-k update of a scatter matrix.
const BUFFER_ROWS: usize = 256;

/// LiDAR's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LidarConfig {
    /// delta: added to the diagonal of Sigma_w (1e-4 by default).
    pub delta: f64,
    /// eps: added to every eigenvalue before the entropy (1e-8 by default).
    pub eps: f64,
    /// n: the images (surrogate classes) that enter, the first n of the stream (1,000 by default).
    pub max_images: usize,
}

impl Default for LidarConfig {
    /// delta 1e-4, eps 1e-8, n 1,000.
    fn default() -> Self {
        LidarConfig {
            delta: 1e-4,
            eps: 1e-8,
            max_images: 1000,
        }
    }
}

/// A LiDAR value and what it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Lidar {
    /// exp of the entropy of the normalised eigenvalues.
    pub value: f64,
    /// Images (surrogate classes) that entered.
    pub images: u64,
    /// Views per image.
    pub views: usize,
    /// Eigenvalues of Sigma_w^(-1/2) Sigma_b Sigma_w^(-1/2), descending.
    pub eigenvalues: Vec<f64>,
}

/// Why LiDAR cannot be computed from what was added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct LidarError(pub String);

/// One rank-k-updated scatter matrix (sum of x x^T over added rows), in f64.
#[derive(Debug, Clone)]
struct Scatter {
    dim: usize,
    gram: Vec<f64>,
    buffer: Vec<f64>,
}

impl Scatter {
    fn new(dim: usize) -> Self {
        Scatter {
            dim,
            gram: vec![0.0; dim * dim],
            buffer: Vec::with_capacity(BUFFER_ROWS * dim),
        }
    }

    fn add(&mut self, row: impl Iterator<Item = f64>) {
        self.buffer.extend(row);
        if self.buffer.len() >= BUFFER_ROWS * self.dim {
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

    fn finish(mut self) -> Vec<f64> {
        self.flush();
        self.gram
    }
}

/// Streams the views of each image into the within- and between-class scatter.
#[derive(Debug, Clone)]
pub struct LidarAccumulator {
    dim: usize,
    config: LidarConfig,
    views: Option<usize>,
    images: u64,
    /// The first class mean: every mean is shifted by it, so the between-class scatter does not
    /// lose precision to a large common offset.
    shift: Option<Vec<f64>>,
    mean_sum: Vec<f64>,
    within: Scatter,
    between: Scatter,
}

impl LidarAccumulator {
    /// An empty accumulator for `dim`-dimensional embeddings.
    pub fn new(dim: usize, config: LidarConfig) -> Self {
        LidarAccumulator {
            dim,
            config,
            views: None,
            images: 0,
            shift: None,
            mean_sum: vec![0.0; dim],
            within: Scatter::new(dim),
            between: Scatter::new(dim),
        }
    }

    /// Whether another image would still enter (the first `max_images` do).
    pub fn wants_more(&self) -> bool {
        self.images < self.config.max_images as u64
    }

    /// Images added so far.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Adds one image's Q views (`views` holds Q * dim raw values, view-major). Every image must
    /// have the same Q >= 2; images past `max_images` are ignored.
    pub fn add_image(&mut self, views: &[f32]) -> Result<(), LidarError> {
        let d = self.dim;
        if views.is_empty() || !views.len().is_multiple_of(d) {
            return Err(LidarError(format!(
                "{} values are not whole {d}-dimensional views",
                views.len()
            )));
        }
        let q = views.len() / d;
        if q < 2 {
            return Err(LidarError(format!(
                "an image has {q} view: LiDAR needs at least 2 views per image"
            )));
        }
        match self.views {
            Some(expected) if expected != q => {
                return Err(LidarError(format!(
                    "an image has {q} views but the first had {expected}"
                )));
            }
            _ => self.views = Some(q),
        }
        if !self.wants_more() {
            return Ok(());
        }
        let mut mean = vec![0.0f64; d];
        for view in views.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(view) {
                *m += v as f64;
            }
        }
        for m in &mut mean {
            *m /= q as f64;
        }
        for view in views.chunks_exact(d) {
            self.within
                .add(view.iter().zip(&mean).map(|(&v, &m)| v as f64 - m));
        }
        let shift = self.shift.get_or_insert_with(|| mean.clone());
        for ((s, &m), &k) in self.mean_sum.iter_mut().zip(&mean).zip(shift.iter()) {
            *s += m - k;
        }
        self.between
            .add(mean.iter().zip(shift.iter()).map(|(&m, &k)| m - k));
        self.images += 1;
        Ok(())
    }

    /// LiDAR of the images added.
    pub fn finish(self) -> Result<Lidar, LidarError> {
        let (d, n) = (self.dim, self.images);
        if n < 2 {
            return Err(LidarError(format!(
                "LiDAR needs at least 2 images (surrogate classes), got {n}"
            )));
        }
        let q = self.views.unwrap_or(0);
        let nf = n as f64;
        let mut sigma_b = self.between.finish();
        for i in 0..d {
            for j in 0..d {
                let v = &mut sigma_b[i * d + j];
                *v = (*v - self.mean_sum[i] * self.mean_sum[j] / nf) / (nf - 1.0);
            }
        }
        let mut sigma_w = self.within.finish();
        let divisor = nf * (q as f64 - 1.0);
        for (k, v) in sigma_w.iter_mut().enumerate() {
            *v /= divisor;
            if k % (d + 1) == 0 {
                *v += self.config.delta;
            }
        }
        let eigenvalues = discriminant_eigenvalues(&sigma_b, &sigma_w, d);
        Ok(Lidar {
            value: effective_rank(&eigenvalues, self.config.eps),
            images: n,
            views: q,
            eigenvalues,
        })
    }
}

/// Eigenvalues of Sigma_w^(-1/2) Sigma_b Sigma_w^(-1/2), descending (`sigma_w` positive definite).
pub fn discriminant_eigenvalues(sigma_b: &[f64], sigma_w: &[f64], d: usize) -> Vec<f64> {
    let w = symmetric_eigen(sigma_w, d);
    // S = U diag(w^-1/2) U^T.
    let inv_sqrt: Vec<f64> = w
        .values
        .iter()
        .map(|&v| 1.0 / v.max(f64::MIN_POSITIVE).sqrt())
        .collect();
    let mut s = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            s[i * d + j] = (0..d)
                .map(|k| w.vectors[i * d + k] * inv_sqrt[k] * w.vectors[j * d + k])
                .sum();
        }
    }
    let sb = mat_mul(&mat_mul(&s, sigma_b, d), &s, d);
    // Symmetrise against rounding before the symmetric solver.
    let mut m = sb.clone();
    for i in 0..d {
        for j in 0..d {
            m[i * d + j] = 0.5 * (sb[i * d + j] + sb[j * d + i]);
        }
    }
    symmetric_eigenvalues(&m, d)
}

fn mat_mul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// exp(-sum_k p_k ln p_k) with p_k = (lambda_k + eps) / sum_j (lambda_j + eps).
pub fn effective_rank(eigenvalues: &[f64], eps: f64) -> f64 {
    let shifted: Vec<f64> = eigenvalues.iter().map(|&l| l.max(0.0) + eps).collect();
    let total: f64 = shifted.iter().sum();
    if total <= 0.0 {
        return f64::NAN;
    }
    let entropy: f64 = shifted
        .iter()
        .map(|&v| {
            let p = v / total;
            if p > 0.0 { -p * p.ln() } else { 0.0 }
        })
        .sum();
    entropy.exp()
}

/// LiDAR computed directly from every class's views held in memory (the definition, for tests):
/// `classes[i]` holds Q * dim values of image i's views.
pub fn lidar_dense(classes: &[Vec<f32>], dim: usize, config: &LidarConfig) -> f64 {
    let n = classes.len();
    let q = classes[0].len() / dim;
    let means: Vec<Vec<f64>> = classes
        .iter()
        .map(|c| {
            (0..dim)
                .map(|k| (0..q).map(|v| c[v * dim + k] as f64).sum::<f64>() / q as f64)
                .collect()
        })
        .collect();
    let grand: Vec<f64> = (0..dim)
        .map(|k| means.iter().map(|m| m[k]).sum::<f64>() / n as f64)
        .collect();
    let mut sigma_b = vec![0.0; dim * dim];
    let mut sigma_w = vec![0.0; dim * dim];
    for (c, m) in classes.iter().zip(&means) {
        for i in 0..dim {
            for j in 0..dim {
                sigma_b[i * dim + j] += (m[i] - grand[i]) * (m[j] - grand[j]) / (n as f64 - 1.0);
                let within: f64 = (0..q)
                    .map(|v| (c[v * dim + i] as f64 - m[i]) * (c[v * dim + j] as f64 - m[j]))
                    .sum();
                sigma_w[i * dim + j] += within / (q as f64 - 1.0) / n as f64;
            }
        }
    }
    for i in 0..dim {
        sigma_w[i * dim + i] += config.delta;
    }
    effective_rank(
        &discriminant_eigenvalues(&sigma_b, &sigma_w, dim),
        config.eps,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    /// n clusters of q views in `dim` dimensions: centres spread by `spread`, views by `noise`.
    fn clusters(
        n: usize,
        q: usize,
        dim: usize,
        spread: f32,
        noise: f32,
        seed: u64,
    ) -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut g = || -> f32 { StandardNormal.sample(&mut rng) };
        (0..n)
            .map(|_| {
                let centre: Vec<f32> = (0..dim).map(|_| 3.0 + spread * g()).collect();
                (0..q)
                    .flat_map(|_| centre.iter().map(|c| c + noise * g()).collect::<Vec<_>>())
                    .collect()
            })
            .collect()
    }

    fn streamed(classes: &[Vec<f32>], dim: usize, config: LidarConfig) -> Lidar {
        let mut acc = LidarAccumulator::new(dim, config);
        for c in classes {
            acc.add_image(c).unwrap();
        }
        acc.finish().unwrap()
    }

    #[test]
    fn streaming_equals_the_dense_definition() {
        let config = LidarConfig::default();
        for (n, q, dim) in [(7, 3, 5), (40, 10, 12), (300, 4, 9)] {
            let c = clusters(n, q, dim, 1.0, 0.5, n as u64);
            let s = streamed(&c, dim, config).value;
            let d = lidar_dense(&c, dim, &config);
            assert!(
                (s - d).abs() < 1e-9 * d,
                "n {n} q {q} dim {dim}: {s} vs {d}"
            );
            assert!(s > 1.0 && s <= dim as f64 + 1e-9, "{s}");
        }
    }

    #[test]
    fn tight_separated_clusters_give_n_minus_one_directions() {
        // n tight clusters at 10 e_i in d >= n dimensions: Sigma_b has n - 1 equal non-zero
        // eigenvalues, all far above the within-class noise, so LiDAR is n - 1.
        let (n, q, dim) = (6, 8, 16);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let c: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..q * dim)
                    .map(|k| {
                        let noise: f32 = StandardNormal.sample(&mut rng);
                        let centre = if k % dim == i { 10.0 } else { 0.0 };
                        centre + 1e-3 * noise
                    })
                    .collect()
            })
            .collect();
        let l = streamed(&c, dim, LidarConfig::default());
        let big = l.eigenvalues.iter().filter(|&&e| e > 1.0).count();
        assert_eq!(big, n - 1, "{:?}", l.eigenvalues);
        assert!(
            (l.value - (n - 1) as f64).abs() < 0.05,
            "LiDAR {} for {n} clusters",
            l.value
        );
    }

    #[test]
    fn invariant_to_an_orthogonal_rotation() {
        let (n, q, dim) = (50, 5, 6);
        let c = clusters(n, q, dim, 1.0, 0.7, 4);
        // A rotation: product of Givens rotations in planes (0,1), (2,4), (3,5), (1,5).
        let rotate = |v: &[f32]| -> Vec<f32> {
            let mut x: Vec<f64> = v.iter().map(|&a| a as f64).collect();
            for (a, b, t) in [(0, 1, 0.7f64), (2, 4, -1.1), (3, 5, 2.3), (1, 5, 0.4)] {
                let (ca, sa) = (t.cos(), t.sin());
                let (xa, xb) = (x[a], x[b]);
                x[a] = ca * xa - sa * xb;
                x[b] = sa * xa + ca * xb;
            }
            x.into_iter().map(|a| a as f32).collect()
        };
        let rotated: Vec<Vec<f32>> = c
            .iter()
            .map(|views| views.chunks(dim).flat_map(rotate).collect())
            .collect();
        // delta I is rotation invariant too, so the values agree to rounding.
        let a = streamed(&c, dim, LidarConfig::default()).value;
        let b = streamed(&rotated, dim, LidarConfig::default()).value;
        assert!((a - b).abs() < 1e-5 * a, "{a} vs {b}");
    }

    #[test]
    fn only_the_first_n_images_enter_and_bad_input_is_refused() {
        let dim = 4;
        let c = clusters(30, 3, dim, 1.0, 0.3, 2);
        let first = streamed(&c[..10], dim, LidarConfig::default());
        let capped = streamed(
            &c,
            dim,
            LidarConfig {
                max_images: 10,
                ..LidarConfig::default()
            },
        );
        assert_eq!(capped, first);
        assert_eq!(capped.images, 10);
        let mut acc = LidarAccumulator::new(dim, LidarConfig::default());
        assert!(
            acc.add_image(&c[0][..dim])
                .unwrap_err()
                .0
                .contains("at least 2 views")
        );
        acc.add_image(&c[0]).unwrap();
        assert!(acc.finish().unwrap_err().0.contains("at least 2 images"));
        let mut acc = LidarAccumulator::new(dim, LidarConfig::default());
        acc.add_image(&c[0]).unwrap();
        assert!(
            acc.add_image(&c[1][..2 * dim])
                .unwrap_err()
                .0
                .contains("first had 3")
        );
    }
}
