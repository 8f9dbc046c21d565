//! The per-image terms of both conventions.

/// Terms of one image under the paper's printed equations (2)-(4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperTerms {
    /// (1/J) sum_{j=1..J} d0_j.
    pub d: f64,
    /// (1/J) sum_{j=1..J} |d0_j - d0_{j-1}| / d0_j, with d0_0 = 0.
    pub d_rc: f64,
    /// (1/J) sum_{j=2..J} |dp_j - dp_{j-1}| / dp_j.
    pub p_rc: f64,
    /// D_RC terms that were 0/0 (counted as 0).
    pub d_rc_zero_over_zero: u32,
    /// D_RC terms x/0 with x > 0 (left out of the sum, which is still divided by J).
    pub d_rc_left_out: u32,
    /// P_RC terms that were 0/0.
    pub p_rc_zero_over_zero: u32,
    /// P_RC terms x/0 with x > 0, left out.
    pub p_rc_left_out: u32,
}

/// Terms of one image as the authors' public code computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceTerms {
    /// mean_{j=1..J} d0_j.
    pub mean_d0: f64,
    /// mean_{j=1..J} dp_j.
    pub mean_dp: f64,
    /// mean_{j=2..J} |d0_j / d0_{j-1} - 1|; `None` when any term is infinite or NaN (image dropped).
    pub spike_orig: Option<f64>,
    /// mean_{j=2..J} |dp_j / dp_{j-1} - 1|; `None` when dropped.
    pub spike_prev: Option<f64>,
}

/// Everything measured on one image's trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTerms {
    /// The image's id.
    pub image_id: u32,
    /// The image's label.
    pub label: i32,
    /// d0_j for j = 0..=J (d0_0 = 0).
    pub d0: Vec<f64>,
    /// dp_j for j = 0..=J (dp_0 = 0 by convention; undefined).
    pub dp: Vec<f64>,
    /// Paper convention.
    pub paper: PaperTerms,
    /// Reference convention.
    pub reference: ReferenceTerms,
}

/// The relative change |a - b| / a with the zero-denominator rule: 0/0 = 0, x/0 = None (left out).
fn relative_change(a: f64, b: f64) -> Result<f64, ()> {
    let num = (a - b).abs();
    if a > 0.0 {
        Ok(num / a)
    } else if num == 0.0 {
        Ok(0.0)
    } else {
        Err(())
    }
}

fn normalise(row: &[f32]) -> Vec<f64> {
    let norm = row
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    // A zero vector stays zero: it has no direction.
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    row.iter().map(|&v| v as f64 * inv).collect()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Computes one image's terms from its J+1 raw embeddings (`rows`, step-major, `dim` each); J >= 2.
pub fn image_terms(image_id: u32, label: i32, rows: &[f32], dim: usize) -> ImageTerms {
    let n = rows.len() / dim;
    assert!(n >= 3, "a trajectory needs steps 0..J with J >= 2");
    let j_max = n - 1;
    let normed: Vec<Vec<f64>> = rows.chunks_exact(dim).map(normalise).collect();
    let mut d0 = vec![0.0; n];
    let mut dp = vec![0.0; n];
    for j in 1..n {
        d0[j] = distance(&normed[0], &normed[j]);
        dp[j] = distance(&normed[j - 1], &normed[j]);
    }
    let jf = j_max as f64;

    // Paper convention.
    let d = d0[1..].iter().sum::<f64>() / jf;
    let (mut d_rc_sum, mut d_zz, mut d_lo) = (0.0, 0, 0);
    for j in 1..n {
        match relative_change(d0[j], d0[j - 1]) {
            Ok(v) => {
                if d0[j] == 0.0 {
                    d_zz += 1;
                }
                d_rc_sum += v;
            }
            Err(()) => d_lo += 1,
        }
    }
    let (mut p_rc_sum, mut p_zz, mut p_lo) = (0.0, 0, 0);
    for j in 2..n {
        match relative_change(dp[j], dp[j - 1]) {
            Ok(v) => {
                if dp[j] == 0.0 {
                    p_zz += 1;
                }
                p_rc_sum += v;
            }
            Err(()) => p_lo += 1,
        }
    }
    let paper = PaperTerms {
        d,
        d_rc: d_rc_sum / jf,
        p_rc: p_rc_sum / jf,
        d_rc_zero_over_zero: d_zz,
        d_rc_left_out: d_lo,
        p_rc_zero_over_zero: p_zz,
        p_rc_left_out: p_lo,
    };

    // Reference convention: pandas pct_change along j = 1..J, then mean of |.|; any inf/NaN drops the image.
    let pct_mean = |s: &[f64]| -> Option<f64> {
        let mut sum = 0.0;
        for j in 2..n {
            let v = s[j] / s[j - 1] - 1.0;
            if !v.is_finite() {
                return None;
            }
            sum += v.abs();
        }
        Some(sum / (n - 2) as f64)
    };
    let reference = ReferenceTerms {
        mean_d0: d,
        mean_dp: dp[1..].iter().sum::<f64>() / jf,
        spike_orig: pct_mean(&d0),
        spike_prev: pct_mean(&dp),
    };
    ImageTerms {
        image_id,
        label,
        d0,
        dp,
        paper,
        reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors on a great circle at angles j*delta: a walk with constant steps.
    fn arc(n: usize, delta: f64, scale: f32) -> Vec<f32> {
        (0..n)
            .flat_map(|j| {
                let t = j as f64 * delta;
                [(t.cos() as f32) * scale, (t.sin() as f32) * scale, 0.0]
            })
            .collect()
    }

    #[test]
    fn constant_steps_on_an_arc_have_closed_forms() {
        let (n, delta) = (11, 0.05);
        let t = image_terms(3, 1, &arc(n, delta, 5.0), 3);
        let jf = (n - 1) as f64;
        let chord = |k: f64| 2.0 * (k * delta / 2.0).sin();
        let d: f64 = (1..n).map(|j| chord(j as f64)).sum::<f64>() / jf;
        let d_rc: f64 = (1..n)
            .map(|j| (chord(j as f64) - chord(j as f64 - 1.0)).abs() / chord(j as f64))
            .sum::<f64>()
            / jf;
        assert!((t.paper.d - d).abs() < 1e-6, "{} {}", t.paper.d, d);
        assert!((t.paper.d_rc - d_rc).abs() < 1e-6);
        assert!(
            t.paper.p_rc.abs() < 1e-5,
            "constant steps: no spikes, {}",
            t.paper.p_rc
        );
        assert!((t.reference.mean_dp - chord(1.0)).abs() < 1e-6);
        let spike: f64 = (2..n)
            .map(|j| (chord(j as f64) / chord(j as f64 - 1.0) - 1.0).abs())
            .sum::<f64>()
            / (jf - 1.0);
        assert!((t.reference.spike_orig.unwrap() - spike).abs() < 1e-6);
        assert!(t.reference.spike_prev.unwrap() < 1e-5);
    }
}
