//! Accumulators that turn per-image terms into the summary of each convention and the per-step curves.

use crate::ImageTerms;
use std::fmt;
use std::str::FromStr;

pub use rmqm_vocab::Convention;

/// The weights of the weighted RMQM (eq. 6): ln(1 + w1 D + w2 / D_RC + w3 / P_RC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Weight of D.
    pub distance: f64,
    /// Weight of 1/D_RC.
    pub inverse_d_rc: f64,
    /// Weight of 1/P_RC.
    pub inverse_p_rc: f64,
}

impl Default for Weights {
    /// The paper's fitted weights 0.95, 0.74, 0.11.
    fn default() -> Self {
        Weights {
            distance: 0.95,
            inverse_d_rc: 0.74,
            inverse_p_rc: 0.11,
        }
    }
}

impl FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Result<Vec<f64>, _> = s.split(',').map(|x| x.trim().parse::<f64>()).collect();
        match v {
            Ok(v) if v.len() == 3 && v.iter().all(|x| x.is_finite()) => Ok(Weights {
                distance: v[0],
                inverse_d_rc: v[1],
                inverse_p_rc: v[2],
            }),
            _ => Err(format!("weights must be three numbers w1,w2,w3, got {s:?}")),
        }
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{}",
            self.distance, self.inverse_d_rc, self.inverse_p_rc
        )
    }
}

/// One convention's summary over a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct ConventionSummary {
    /// Which convention.
    pub convention: Convention,
    /// D: mean over images and steps of d0_j.
    pub d: f64,
    /// Mean over images and steps of dp_j.
    pub mean_dp: f64,
    /// The distance term inside RMQM: D (paper) or D + mean dp (reference).
    pub distance_term: f64,
    /// D_RC (paper) or the mean |pct change| of d0 (reference).
    pub d_rc: f64,
    /// P_RC (paper) or the mean |pct change| of dp (reference).
    pub p_rc: f64,
    /// ln(1 + distance_term + 1/D_RC + 1/P_RC).
    pub rmqm: f64,
    /// ln(1 + w1 distance_term + w2/D_RC + w3/P_RC).
    pub rmqm_weighted: f64,
    /// Images measured.
    pub n_images: u64,
    /// J, the number of alteration steps (steps are 0..=J).
    pub n_steps: u64,
    /// Paper: D_RC terms that were 0/0 (counted as 0).
    pub d_rc_zero_over_zero: u64,
    /// Paper: D_RC terms x/0 left out.
    pub d_rc_left_out: u64,
    /// Paper: P_RC terms that were 0/0.
    pub p_rc_zero_over_zero: u64,
    /// Paper: P_RC terms x/0 left out.
    pub p_rc_left_out: u64,
    /// Reference: images dropped from the D_RC (spike_orig) average.
    pub d_rc_dropped_images: u64,
    /// Reference: images dropped from the P_RC (spike_prev) average.
    pub p_rc_dropped_images: u64,
}

/// Running sums over images for both conventions; mergeable, so images can be processed in parallel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsAccumulator {
    n: u64,
    n_steps: u64,
    sum_d: f64,
    sum_dp: f64,
    sum_d_rc: f64,
    sum_p_rc: f64,
    d_zz: u64,
    d_lo: u64,
    p_zz: u64,
    p_lo: u64,
    n_orig: u64,
    sum_orig: f64,
    n_prev: u64,
    sum_prev: f64,
}

impl StatsAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image.
    pub fn add(&mut self, t: &ImageTerms) {
        self.n += 1;
        self.n_steps = (t.d0.len() - 1) as u64;
        self.sum_d += t.paper.d;
        self.sum_dp += t.reference.mean_dp;
        self.sum_d_rc += t.paper.d_rc;
        self.sum_p_rc += t.paper.p_rc;
        self.d_zz += t.paper.d_rc_zero_over_zero as u64;
        self.d_lo += t.paper.d_rc_left_out as u64;
        self.p_zz += t.paper.p_rc_zero_over_zero as u64;
        self.p_lo += t.paper.p_rc_left_out as u64;
        if let Some(s) = t.reference.spike_orig {
            self.n_orig += 1;
            self.sum_orig += s;
        }
        if let Some(s) = t.reference.spike_prev {
            self.n_prev += 1;
            self.sum_prev += s;
        }
    }

    /// Adds everything another accumulator has seen.
    pub fn merge(&mut self, o: &StatsAccumulator) {
        self.n += o.n;
        self.n_steps = self.n_steps.max(o.n_steps);
        self.sum_d += o.sum_d;
        self.sum_dp += o.sum_dp;
        self.sum_d_rc += o.sum_d_rc;
        self.sum_p_rc += o.sum_p_rc;
        self.d_zz += o.d_zz;
        self.d_lo += o.d_lo;
        self.p_zz += o.p_zz;
        self.p_lo += o.p_lo;
        self.n_orig += o.n_orig;
        self.sum_orig += o.sum_orig;
        self.n_prev += o.n_prev;
        self.sum_prev += o.sum_prev;
    }

    /// Images added.
    pub fn n_images(&self) -> u64 {
        self.n
    }

    /// The summary under `convention` with `weights` for the weighted RMQM.
    pub fn summary(&self, convention: Convention, weights: &Weights) -> ConventionSummary {
        let n = self.n as f64;
        let d = self.sum_d / n;
        let mean_dp = self.sum_dp / n;
        let (distance_term, d_rc, p_rc) = match convention {
            Convention::Paper => (d, self.sum_d_rc / n, self.sum_p_rc / n),
            Convention::Reference => (
                d + mean_dp,
                self.sum_orig / self.n_orig as f64,
                self.sum_prev / self.n_prev as f64,
            ),
        };
        let rmqm = (1.0 + distance_term + 1.0 / d_rc + 1.0 / p_rc).ln();
        let rmqm_weighted = (1.0
            + weights.distance * distance_term
            + weights.inverse_d_rc / d_rc
            + weights.inverse_p_rc / p_rc)
            .ln();
        let paper = convention == Convention::Paper;
        ConventionSummary {
            convention,
            d,
            mean_dp,
            distance_term,
            d_rc,
            p_rc,
            rmqm,
            rmqm_weighted,
            n_images: self.n,
            n_steps: self.n_steps,
            d_rc_zero_over_zero: if paper { self.d_zz } else { 0 },
            d_rc_left_out: if paper { self.d_lo } else { 0 },
            p_rc_zero_over_zero: if paper { self.p_zz } else { 0 },
            p_rc_left_out: if paper { self.p_lo } else { 0 },
            d_rc_dropped_images: if paper { 0 } else { self.n - self.n_orig },
            p_rc_dropped_images: if paper { 0 } else { self.n - self.n_prev },
        }
    }
}

/// Mean and standard error of one curve at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Values that entered (terms with a zero denominator are left out).
    pub n: u64,
    /// Mean over images.
    pub mean: f64,
    /// Standard error of the mean (sample sd / sqrt(n)); NaN for n < 2.
    pub se: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Moments {
    n: u64,
    sum: f64,
    sum_sq: f64,
}

impl Moments {
    fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }
    fn merge(&mut self, o: &Moments) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
    }
    fn point(&self) -> CurvePoint {
        let n = self.n as f64;
        let mean = if self.n > 0 { self.sum / n } else { f64::NAN };
        let se = if self.n > 1 {
            let var = ((self.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0);
            (var / n).sqrt()
        } else {
            f64::NAN
        };
        CurvePoint {
            n: self.n,
            mean,
            se,
        }
    }
}

/// The curves per step j: d0_j, dp_j, the paper's relative changes |d0_j - d0_{j-1}|/d0_j and
/// |dp_j - dp_{j-1}|/dp_j, and the reference's |pct change| of d0 and dp.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurveAccumulator {
    d0: Vec<Moments>,
    dp: Vec<Moments>,
    rc0: Vec<Moments>,
    rcp: Vec<Moments>,
    pct0: Vec<Moments>,
    pctp: Vec<Moments>,
}

/// The six curves' names, in the order [`CurveAccumulator::points`] returns them.
pub const CURVE_NAMES: [&str; 6] = ["d0", "dp", "rc0", "rcp", "pct0", "pctp"];

impl CurveAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, n: usize) {
        for v in [
            &mut self.d0,
            &mut self.dp,
            &mut self.rc0,
            &mut self.rcp,
            &mut self.pct0,
            &mut self.pctp,
        ] {
            if v.len() < n {
                v.resize(n, Moments::default());
            }
        }
    }

    /// Adds one image's distances.
    pub fn add(&mut self, t: &ImageTerms) {
        let n = t.d0.len();
        self.ensure(n);
        self.d0[0].add(0.0);
        for j in 1..n {
            self.d0[j].add(t.d0[j]);
            self.dp[j].add(t.dp[j]);
            let num = (t.d0[j] - t.d0[j - 1]).abs();
            if t.d0[j] > 0.0 {
                self.rc0[j].add(num / t.d0[j]);
            } else if num == 0.0 {
                self.rc0[j].add(0.0);
            }
            if j >= 2 {
                let num = (t.dp[j] - t.dp[j - 1]).abs();
                if t.dp[j] > 0.0 {
                    self.rcp[j].add(num / t.dp[j]);
                } else if num == 0.0 {
                    self.rcp[j].add(0.0);
                }
                let s0 = t.d0[j] / t.d0[j - 1] - 1.0;
                if s0.is_finite() {
                    self.pct0[j].add(s0.abs());
                }
                let sp = t.dp[j] / t.dp[j - 1] - 1.0;
                if sp.is_finite() {
                    self.pctp[j].add(sp.abs());
                }
            }
        }
    }

    /// Adds everything another accumulator has seen.
    pub fn merge(&mut self, o: &CurveAccumulator) {
        self.ensure(o.d0.len());
        let pairs = [
            (&mut self.d0, &o.d0),
            (&mut self.dp, &o.dp),
            (&mut self.rc0, &o.rc0),
            (&mut self.rcp, &o.rcp),
            (&mut self.pct0, &o.pct0),
            (&mut self.pctp, &o.pctp),
        ];
        for (a, b) in pairs {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
        }
    }

    /// Number of steps (J + 1).
    pub fn len(&self) -> usize {
        self.d0.len()
    }

    /// True before any image was added.
    pub fn is_empty(&self) -> bool {
        self.d0.is_empty()
    }

    /// The six curves' points at step `j`, in [`CURVE_NAMES`] order.
    pub fn points(&self, j: usize) -> [CurvePoint; 6] {
        [
            self.d0[j].point(),
            self.dp[j].point(),
            self.rc0[j].point(),
            self.rcp[j].point(),
            self.pct0[j].point(),
            self.pctp[j].point(),
        ]
    }
}
