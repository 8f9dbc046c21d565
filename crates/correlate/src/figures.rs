//! Figures 2-6 from the curves, the stats summaries and the study: per track, averaged over
//! embedding dimensions and per dimension (small multiples), with methods in fixed colours.

use crate::inputs::Curve;
use anyhow::Result;
use rmqm_correlate::plots::{
    ChartText, Line, Panel, ScatterGroup, least_squares, line_chart, panel_chart, scatter_chart,
};
use rmqm_correlate::{ScatterSeries, StatsRow, pearson};
use rmqm_vocab::Convention;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A figure written: its file stem and caption.
pub struct Figure {
    /// File stem (`.png` and `.svg`).
    pub stem: String,
    /// Caption.
    pub caption: String,
}

/// Colour index of each method: the same colour in every figure and panel.
struct Palette(BTreeMap<String, usize>);

impl Palette {
    fn new<'a>(methods: impl Iterator<Item = &'a str>) -> Self {
        let set: BTreeSet<&str> = methods.collect();
        Palette(
            set.into_iter()
                .enumerate()
                .map(|(i, m)| (m.to_string(), i))
                .collect(),
        )
    }
    fn of(&self, method: &str) -> usize {
        self.0.get(method).copied().unwrap_or(0)
    }
}

/// Mean over models of one curve column per step, with the mean of the standard errors as band,
/// one line per method.
fn method_curves(curves: &[&Curve], column: &str, palette: &Palette) -> Vec<Line> {
    let mut by_method: BTreeMap<&str, Vec<&Curve>> = BTreeMap::new();
    for c in curves {
        by_method.entry(&c.method).or_default().push(c);
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
            colour: palette.of(method),
        });
    }
    lines
}

/// What one alteration's figures plot.
struct CurveFigure {
    number: u32,
    stem: &'static str,
    column: &'static str,
    what: &'static str,
    y_label: &'static str,
}

/// Figures 2/3 (distance) and 4 (relative change) of the curves of one track and alteration:
/// averaged over dimensions, and one panel per dimension.
fn curve_figures(
    dir: &Path,
    suffix: &str,
    alteration: &str,
    curves: &[&Curve],
    palette: &Palette,
    out: &mut Vec<Figure>,
) -> Result<()> {
    let pgd = alteration.starts_with("pgd");
    let steps = if pgd {
        "PGD iterations"
    } else {
        "white-noise steps"
    };
    let kinds = [
        CurveFigure {
            number: if pgd { 3 } else { 2 },
            stem: "distance",
            column: "d0",
            what: "normalised distance to the original embedding",
            y_label: "d(φ_0, φ_j)",
        },
        CurveFigure {
            number: 4,
            stem: "relative_change",
            column: "rc0",
            what: "relative change in distance to the original",
            y_label: "|d0_j - d0_(j-1)| / d0_j",
        },
    ];
    let dims: BTreeSet<i64> = curves.iter().map(|c| c.dim).collect();
    for k in kinds {
        let stem = format!("fig{}_{}_{alteration}{suffix}", k.number, k.stem);
        let text = ChartText {
            title: format!("{} ({alteration}{})", k.what, suffix.replace('_', ", ")),
            x_label: format!("step ({steps})"),
            y_label: k.y_label.into(),
            integer_x: true,
        };
        line_chart(
            &dir.join(&stem),
            &text,
            &method_curves(curves, k.column, palette),
        )
        .map_err(anyhow::Error::msg)?;
        out.push(Figure {
            caption: format!(
                "Figure {}: {} vs {steps}, per method, mean over embedding dimensions and optimizers (band: mean standard error over images){}",
                k.number,
                k.what,
                track_note(suffix)
            ),
            stem: stem.clone(),
        });
        let panels: Vec<Panel> = dims
            .iter()
            .map(|&d| {
                let at_dim: Vec<&Curve> = curves.iter().copied().filter(|c| c.dim == d).collect();
                Panel {
                    title: format!("dim {d}"),
                    lines: method_curves(&at_dim, k.column, palette),
                }
            })
            .collect();
        let stem = format!("{stem}_by_dim");
        panel_chart(&dir.join(&stem), &text.title, &text, &panels).map_err(anyhow::Error::msg)?;
        out.push(Figure {
            caption: format!(
                "Figure {} per embedding dimension: {} vs {steps}, one panel per dimension, methods as colours (mean over optimizers){}",
                k.number,
                k.what,
                track_note(suffix)
            ),
            stem,
        });
    }
    Ok(())
}

fn track_note(suffix: &str) -> String {
    if suffix.is_empty() {
        String::new()
    } else {
        format!(" ({} track)", suffix.trim_start_matches('_'))
    }
}

/// Figure 5: RMQM (noise, paper convention) by dimension per method, one chart per optimizer.
fn figure5(
    dir: &Path,
    suffix: &str,
    stats: &[&StatsRow],
    palette: &Palette,
    out: &mut Vec<Figure>,
) -> Result<()> {
    let optimizers: BTreeSet<&str> = stats.iter().map(|r| r.optimizer.as_str()).collect();
    for opt in optimizers {
        let mut by_method: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for r in stats.iter().filter(|r| r.optimizer == opt) {
            by_method
                .entry(&r.method)
                .or_default()
                .push(((r.dim as f64).log2(), r.metric("RMQM")));
        }
        let lines: Vec<Line> = by_method
            .into_iter()
            .map(|(m, mut pts)| {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line {
                    name: m.to_string(),
                    points: pts,
                    band: vec![],
                    markers: true,
                    colour: palette.of(m),
                }
            })
            .collect();
        let stem = format!("fig5_rmqm_by_dim_{opt}{suffix}");
        let text = ChartText {
            title: format!(
                "RMQM (white noise) by embedding dimension, {opt}{}",
                suffix.replace('_', ", ")
            ),
            x_label: "log2(embedding dimension)".into(),
            y_label: "RMQM".into(),
            integer_x: true,
        };
        line_chart(&dir.join(&stem), &text, &lines).map_err(anyhow::Error::msg)?;
        out.push(Figure {
            stem,
            caption: format!(
                "Figure 5: RMQM under white noise for every embedding dimension and method ({opt}){}",
                track_note(suffix)
            ),
        });
    }
    Ok(())
}

/// Figure 6: RMQM vs normalised 1-NN accuracy, one colour per downstream set (across tracks).
fn figure6(dir: &Path, series: &[ScatterSeries], out: &mut Vec<Figure>) -> Result<()> {
    if series.is_empty() {
        return Ok(());
    }
    let groups: Vec<ScatterGroup> = series
        .iter()
        .map(|s| {
            let (x, y): (Vec<f64>, Vec<f64>) = s.points.iter().copied().unzip();
            ScatterGroup {
                name: format!("{} (r = {:.2})", s.downstream, pearson(&x, &y)),
                points: s.points.clone(),
                fit: least_squares(&s.points),
            }
        })
        .collect();
    let stem = "fig6_rmqm_vs_knn".to_string();
    let text = ChartText {
        title: "RMQM vs downstream 1-NN accuracy".into(),
        x_label: "RMQM (white noise, paper convention)".into(),
        y_label: "normalised 1-NN accuracy".into(),
        integer_x: false,
    };
    scatter_chart(&dir.join(&stem), &text, &groups).map_err(anyhow::Error::msg)?;
    out.push(Figure {
        stem,
        caption: "Figure 6: RMQM (white noise) vs normalised 1-NN accuracy per encoder, by downstream dataset".into(),
    });
    Ok(())
}

/// Draws every figure the inputs allow.
pub fn draw_all(
    dir: &Path,
    stats: &[StatsRow],
    curves: &[Curve],
    figure6_series: &[ScatterSeries],
    min_dim: i64,
) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let trained_curves: Vec<&Curve> = curves
        .iter()
        .filter(|c| c.epochs != 0 && c.dim >= min_dim)
        .collect();
    let trained_stats: Vec<&StatsRow> = stats
        .iter()
        .filter(|r| r.epochs != 0 && r.dim >= min_dim)
        .collect();
    let palette = Palette::new(trained_stats.iter().map(|r| r.method.as_str()));
    let tracks: BTreeSet<&str> = trained_stats
        .iter()
        .map(|r| r.key.train_dataset.as_str())
        .chain(trained_curves.iter().map(|c| c.train_dataset.as_str()))
        .collect();
    for &track in &tracks {
        // One track keeps the plain names; several get the track in every name.
        let suffix = if tracks.len() > 1 {
            format!("_{track}")
        } else {
            String::new()
        };
        let mine: Vec<&Curve> = trained_curves
            .iter()
            .copied()
            .filter(|c| c.train_dataset == track)
            .collect();
        let alterations: BTreeSet<&str> = mine.iter().map(|c| c.alteration.as_str()).collect();
        for a in alterations {
            let cs: Vec<&Curve> = mine.iter().copied().filter(|c| c.alteration == a).collect();
            curve_figures(dir, &suffix, a, &cs, &palette, &mut out)?;
        }
        let noise: Vec<&StatsRow> = trained_stats
            .iter()
            .copied()
            .filter(|r| {
                r.key.train_dataset == track
                    && r.alteration == "noise"
                    && r.convention == Convention::Paper
            })
            .collect();
        figure5(dir, &suffix, &noise, &palette, &mut out)?;
    }
    figure6(dir, figure6_series, &mut out)?;
    Ok(out)
}
