//! Downstream probes on frozen embeddings: exact k-NN (cosine or Euclidean) as blocked matrix
//! products across cores, and a deterministic multinomial logistic-regression linear probe.

mod knn;
mod linear;

pub use knn::{Metric, knn_predict, knn_predict_many, normalise_rows};
pub use linear::{LinearProbe, LinearProbeConfig, LinearProbeReport, fit_linear_probe};

/// Errors of the probes: empty inputs and mismatched sizes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// A split has no rows.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Train and test (or data and labels) disagree on a size.
    #[error("{0}")]
    Mismatch(String),
}

/// Fraction of `predicted` equal to `truth`.
pub fn accuracy(predicted: &[i32], truth: &[i32]) -> f64 {
    if truth.is_empty() {
        return f64::NAN;
    }
    predicted.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}
