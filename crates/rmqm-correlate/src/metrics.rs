//! The metrics correlate compares: what each measures, which values their authors expect of a
//! better-transferring encoder, and what each costs per image.

use crate::analysis::{StatsRow, Walk};
use rmqm_vocab::Convention;
use std::fmt;

/// Which values of a metric its authors expect of an encoder that transfers better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Higher values: a positive correlation with accuracy is the expected sign.
    Higher,
    /// Lower values: a negative correlation is the expected sign.
    Lower,
}

impl Better {
    /// +1 or -1: the sign a correlation should have if the metric works as claimed.
    pub fn sign(self) -> f64 {
        match self {
            Better::Higher => 1.0,
            Better::Lower => -1.0,
        }
    }
}

impl fmt::Display for Better {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        })
    }
}

/// What a metric is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A noise or PGD walk (its value depends on the walk and the convention).
    Walk,
    /// The clean embeddings alone (the same whatever the walk).
    Clean,
    /// The augment walk's views.
    Augment,
}

/// One metric of the comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricInfo {
    /// Its column in the stats summary.
    pub column: &'static str,
    /// How tables name it.
    pub label: &'static str,
    /// Which values are expected of better transfer.
    pub better: Better,
    /// What it is computed from.
    pub source: Source,
    /// Where the expectation comes from.
    pub basis: &'static str,
}

/// Every metric correlate compares, RMQM first.
pub const METRICS: [MetricInfo; 8] = [
    MetricInfo {
        column: "RMQM",
        label: "RMQM",
        better: Better::Higher,
        source: Source::Walk,
        basis: "the paper: larger, smoother steps transfer better",
    },
    MetricInfo {
        column: "RMQM_weighted",
        label: "weighted RMQM",
        better: Better::Higher,
        source: Source::Walk,
        basis: "the paper, eq. 6 with its weights 0.95, 0.74, 0.11",
    },
    MetricInfo {
        column: "D",
        label: "D",
        better: Better::Higher,
        source: Source::Walk,
        basis: "the paper's ablation: D alone correlates positively (0.27)",
    },
    MetricInfo {
        column: "inv_D_RC",
        label: "1/D_RC",
        better: Better::Higher,
        source: Source::Walk,
        basis: "the paper: small spikes (large 1/D_RC) transfer better",
    },
    MetricInfo {
        column: "inv_P_RC",
        label: "1/P_RC",
        better: Better::Higher,
        source: Source::Walk,
        basis: "the paper: small spikes (large 1/P_RC) transfer better",
    },
    MetricInfo {
        column: "rankme",
        label: "RankMe",
        better: Better::Higher,
        source: Source::Clean,
        basis: "Garrido et al. 2023: higher effective rank, better downstream accuracy",
    },
    MetricInfo {
        column: "alpha_req",
        label: "alpha-ReQ",
        better: Better::Lower,
        source: Source::Clean,
        basis: "Agrawal et al. 2022: best near alpha = 1; above it (as here), slower decay is better",
    },
    MetricInfo {
        column: "lidar",
        label: "LiDAR",
        better: Better::Higher,
        source: Source::Augment,
        basis: "Thilak et al. 2024: higher LiDAR, better linear probe",
    },
];

/// The metric whose column is `column`.
pub fn metric_info(column: &str) -> Option<&'static MetricInfo> {
    METRICS.iter().find(|m| m.column == column)
}

/// What a metric costs per image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Forward passes of the encoder per image.
    pub forward: f64,
    /// Backward passes (to the input) per image.
    pub backward: f64,
    /// Seconds per image on the machine that made the stats (median over models).
    pub seconds: f64,
    /// Whether `seconds` was measured (the walk's own time) or estimated (one pass of the noise
    /// walk, for the metrics of the clean embeddings).
    pub measured: bool,
}

/// Forward and backward passes per image that a walk of `row`'s kind takes (its stats row gives
/// the steps and the method): noise J + 1 forward; PGD J attack steps (forward + backward, one
/// more forward of the augmented view for the self-supervised methods) then J + 1 embeddings;
/// the reference PGD restarts, so level j costs j steps; augment Q + 1 forward.
pub fn passes(row: &StatsRow) -> (f64, f64) {
    let j = row.n_steps;
    let views = if matches!(row.method.as_str(), "triplet-ss" | "ntxent") {
        1.0
    } else {
        0.0
    };
    match row.alteration.as_str() {
        "pgd" => ((j + 1.0) + j * (1.0 + views), j),
        "pgd-reference" => {
            let steps = j * (j + 1.0) / 2.0;
            ((j + 1.0) + steps * (1.0 + views), steps)
        }
        _ => (j + 1.0, 0.0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The cost of `metric` (under `walk` for walk metrics) from the stats rows of every model.
pub fn cost(metric: &MetricInfo, walk: Option<&Walk>, stats: &[StatsRow]) -> Cost {
    let of = |alteration: &str| -> Vec<&StatsRow> {
        stats
            .iter()
            .filter(|r| r.alteration == alteration && r.convention == Convention::Paper)
            .collect()
    };
    let measured = |rows: &[&StatsRow]| -> Cost {
        let forward = rows.iter().map(|r| passes(r).0).collect();
        let backward = rows.iter().map(|r| passes(r).1).collect();
        Cost {
            forward: median(forward),
            backward: median(backward),
            seconds: median(rows.iter().map(|r| r.seconds / r.n_images).collect()),
            measured: true,
        }
    };
    match metric.source {
        Source::Walk => measured(&of(walk.map_or("noise", |w| w.alteration.as_str()))),
        Source::Augment => measured(&of("augment")),
        Source::Clean => {
            let noise = of("noise");
            let per_pass = median(
                noise
                    .iter()
                    .map(|r| r.seconds / r.n_images / (r.n_steps + 1.0))
                    .collect(),
            );
            Cost {
                forward: 1.0,
                backward: 0.0,
                seconds: per_pass,
                measured: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::ModelKey;

    fn row(method: &str, alteration: &str, steps: f64, seconds: f64) -> StatsRow {
        StatsRow {
            key: ModelKey::new("mnist", method),
            method: method.into(),
            dim: 16,
            optimizer: "adam".into(),
            epochs: 7,
            seed: Some(0),
            alteration: alteration.into(),
            convention: Convention::Paper,
            n_images: 100.0,
            n_steps: steps,
            seconds,
            metrics: Default::default(),
        }
    }

    #[test]
    fn passes_and_costs_per_walk() {
        assert_eq!(passes(&row("ntxent", "noise", 100.0, 1.0)), (101.0, 0.0));
        assert_eq!(
            passes(&row("cross-entropy", "pgd", 30.0, 1.0)),
            (61.0, 30.0)
        );
        assert_eq!(passes(&row("ntxent", "pgd", 30.0, 1.0)), (91.0, 30.0));
        assert_eq!(
            passes(&row("cross-entropy", "pgd-reference", 30.0, 1.0)),
            (31.0 + 465.0, 465.0)
        );
        assert_eq!(passes(&row("ntxent", "augment", 10.0, 1.0)), (11.0, 0.0));
        let stats = vec![
            row("a", "noise", 100.0, 10.1),
            row("b", "noise", 100.0, 30.3),
            row("c", "noise", 100.0, 20.2),
            row("a", "augment", 10.0, 1.1),
        ];
        let rmqm = metric_info("RMQM").unwrap();
        let c = cost(rmqm, None, &stats);
        assert!((c.seconds - 0.202).abs() < 1e-12 && c.measured && c.forward == 101.0);
        let rankme = cost(metric_info("rankme").unwrap(), None, &stats);
        assert!((rankme.seconds - 0.002).abs() < 1e-12 && !rankme.measured);
        let lidar = cost(metric_info("lidar").unwrap(), None, &stats);
        assert!((lidar.seconds - 0.011).abs() < 1e-12 && lidar.forward == 11.0);
        assert_eq!(metric_info("alpha_req").unwrap().better.sign(), -1.0);
    }
}
