//! Figures 2-6 from the stats summaries and curves.

use crate::inputs::Curve;
use anyhow::Result;
use rmqm_correlate::plots::{
    ChartText, Line, ScatterGroup, least_squares, line_chart, scatter_chart,
};
use rmqm_correlate::{StatsRow, pearson};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Mean over models of one curve column per step, with the mean of the standard errors as band.
fn method_curves(curves: &[&Curve], column: &str) -> Vec<Line> {
    let mut by_method: BTreeMap<String, Vec<&Curve>> = BTreeMap::new();
    for c in curves {
        by_method.entry(c.method.clone()).or_default().push(c);
    }
    let mut lines = Vec::new();
    for (method, cs) in by_method {
        let steps = cs.iter().map(|c| c.step.len()).min().unwrap_or(0);
        let mut points = Vec::new();
        let mut band = Vec::new();
        for j in 0..steps {
            let vals: Vec<(f64, f64)> = cs
                .iter()
                .map(|c| {
                    (
                        c.values[&format!("{column}_mean")][j],
                        c.values[&format!("{column}_se")][j],
                    )
                })
                .filter(|v| v.0.is_finite())
                .collect();
            if vals.is_empty() {
                continue;
            }
            let m = vals.iter().map(|v| v.0).sum::<f64>() / vals.len() as f64;
            let se: Vec<f64> = vals.iter().map(|v| v.1).filter(|v| v.is_finite()).collect();
            let se = if se.is_empty() {
                0.0
            } else {
                se.iter().sum::<f64>() / se.len() as f64
            };
            let x = cs[0].step[j];
            points.push((x, m));
            band.push((x, m - se, m + se));
        }
        lines.push(Line {
            name: format!("{method} ({} models)", cs.len()),
            points,
            band,
            markers: false,
        });
    }
    lines
}

/// Draws every figure the inputs allow; returns (file stem, caption) of each.
pub fn draw_all(
    dir: &Path,
    stats: &[StatsRow],
    curves: &[Curve],
    fig6: &[(String, Vec<(f64, f64)>)],
    min_dim: i64,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let trained: Vec<&Curve> = curves
        .iter()
        .filter(|c| c.epochs != 0 && c.dim >= min_dim)
        .collect();
    let alterations: BTreeSet<String> = trained.iter().map(|c| c.alteration.clone()).collect();
    for a in &alterations {
        let cs: Vec<&Curve> = trained
            .iter()
            .copied()
            .filter(|c| &c.alteration == a)
            .collect();
        let (num, what) = if a == "pgd" {
            (3, "PGD iterations")
        } else {
            (2, "white-noise steps")
        };
        let stem = format!("fig{num}_distance_{a}");
        let caption = format!(
            "Figure {num}: normalised distance to the original embedding vs {what}, per method (mean ± standard error)"
        );
        let text = ChartText {
            title: format!("Distance to the original ({a})"),
            x_label: format!("step ({what})"),
            y_label: "d(φ_0, φ_j)".into(),
        };
        line_chart(&dir.join(&stem), &text, &method_curves(&cs, "d0"))
            .map_err(anyhow::Error::msg)?;
        out.push((stem, caption));
        let stem = format!("fig4_relative_change_{a}");
        let caption = format!(
            "Figure 4: relative change in distance to the original vs {what}, per method (mean ± standard error)"
        );
        let text = ChartText {
            title: format!("Relative change of the distance to the original ({a})"),
            x_label: format!("step ({what})"),
            y_label: "|d0_j - d0_(j-1)| / d0_j".into(),
        };
        line_chart(&dir.join(&stem), &text, &method_curves(&cs, "rc0"))
            .map_err(anyhow::Error::msg)?;
        out.push((stem, caption));
    }
    // Figure 5: RMQM (noise, paper convention) by dimension, per method; one chart per optimizer.
    let noise: Vec<&StatsRow> = stats
        .iter()
        .filter(|r| {
            r.alteration == "noise" && r.convention == "paper" && r.epochs != 0 && r.dim >= min_dim
        })
        .collect();
    let optimizers: BTreeSet<String> = noise.iter().map(|r| r.optimizer.clone()).collect();
    for opt in &optimizers {
        let mut by_method: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in noise.iter().filter(|r| &r.optimizer == opt) {
            by_method
                .entry(r.method.clone())
                .or_default()
                .push(((r.dim as f64).log2(), r.metrics["RMQM"]));
        }
        let lines: Vec<Line> = by_method
            .into_iter()
            .map(|(m, mut pts)| {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line {
                    name: m,
                    points: pts,
                    band: vec![],
                    markers: true,
                }
            })
            .collect();
        let stem = format!("fig5_rmqm_by_dim_{opt}");
        let caption = format!(
            "Figure 5: RMQM under white noise for every embedding dimension and method ({opt})"
        );
        let text = ChartText {
            title: format!("RMQM (white noise) by embedding dimension, {opt}"),
            x_label: "log2(embedding dimension)".into(),
            y_label: "RMQM".into(),
        };
        line_chart(&dir.join(&stem), &text, &lines).map_err(anyhow::Error::msg)?;
        out.push((stem, caption));
    }
    // Figure 6: RMQM vs normalised 1-NN accuracy, coloured by downstream set, fitted lines, r in the legend.
    if !fig6.is_empty() {
        let groups: Vec<ScatterGroup> = fig6
            .iter()
            .map(|(name, pts)| {
                let (x, y): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
                ScatterGroup {
                    name: format!("{name} (r = {:.2})", pearson(&x, &y)),
                    points: pts.clone(),
                    fit: least_squares(pts),
                }
            })
            .collect();
        let stem = "fig6_rmqm_vs_knn".to_string();
        let caption = "Figure 6: RMQM (white noise) vs normalised 1-NN accuracy per encoder, by downstream dataset".to_string();
        let text = ChartText {
            title: "RMQM vs downstream 1-NN accuracy".into(),
            x_label: "RMQM (white noise, paper convention)".into(),
            y_label: "normalised 1-NN accuracy".into(),
        };
        scatter_chart(&dir.join(&stem), &text, &groups).map_err(anyhow::Error::msg)?;
        out.push((stem, caption));
    }
    Ok(out)
}
