//! Finite-difference gradient checks, used by the tests of the models and the losses.

use candle_core::{DType, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// The worst disagreement a gradient check found.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheck {
    /// Entries compared.
    pub checked: usize,
    /// Largest relative error |fd - analytic| / max(|fd|, |analytic|, floor).
    pub max_relative_error: f64,
    /// Where it was: (variable index, entry, analytic, finite difference).
    pub worst: (usize, usize, f64, f64),
}

/// Compares the analytic gradient of `loss` (a scalar) with central finite differences (step `h`)
/// at `samples` random entries of every variable in `vars` (all entries when fewer). Variables
/// should be f64. Relative errors use a floor of `floor` on the denominator.
pub fn check_gradients(
    vars: &[Var],
    loss: &dyn Fn() -> Result<Tensor>,
    samples: usize,
    h: f64,
    floor: f64,
    seed: u64,
) -> Result<GradCheck> {
    let grads = loss()?.backward()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut report = GradCheck {
        checked: 0,
        max_relative_error: 0.0,
        worst: (0, 0, 0.0, 0.0),
    };
    for (vi, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
            None => vec![0.0; var.elem_count()],
        };
        let original = var
            .as_tensor()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let n = original.len();
        let entries: Vec<usize> = if n <= samples {
            (0..n).collect()
        } else {
            (0..samples).map(|_| rng.random_range(0..n)).collect()
        };
        for &i in &entries {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
                loss()?.to_dtype(DType::F64)?.to_scalar::<f64>()
            };
            let fd = (eval(h)? - eval(-h)?) / (2.0 * h);
            let a = analytic[i];
            let rel = (fd - a).abs() / fd.abs().max(a.abs()).max(floor);
            report.checked += 1;
            if rel > report.max_relative_error {
                report.max_relative_error = rel;
                report.worst = (vi, i, a, fd);
            }
        }
        var.set(&Tensor::from_vec(original, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(report)
}
