//! Figures as PNG and SVG with plotters. The font (DejaVu Sans) is compiled in, so nothing depends
//! on the fonts installed where the report is made.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// A drawing error, as text.
pub type PlotError = String;

static FONTS: Once = Once::new();

/// Registers the bundled font for "sans-serif" (once per process).
fn fonts() {
    FONTS.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// The colours series are drawn in, in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line of a line chart, with an optional band (lower, upper) around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend entry.
    pub name: String,
    /// (x, y) points in x order.
    pub points: Vec<(f64, f64)>,
    /// (x, lower, upper) of a shaded band, e.g. mean -+ standard error.
    pub band: Vec<(f64, f64, f64)>,
    /// Draw a marker at every point (for short series, where a lone point has no line).
    pub markers: bool,
}

/// One group of a scatter chart, with an optional fitted line y = a + b x.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterGroup {
    /// Legend entry.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// (intercept, slope) of a least-squares line to draw over the points' x range.
    pub fit: Option<(f64, f64)>,
}

/// Titles and axes of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartText {
    /// Title above the chart.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    text: &ChartText,
    series: &[Line],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = range(series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
    }));
    let mut chart = ChartBuilder::on(&root)
        .caption(&text.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(&text.x_label)
        .y_desc(&text.y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        if !s.band.is_empty() {
            let mut poly: Vec<(f64, f64)> = s
                .band
                .iter()
                .filter(|b| b.1.is_finite() && b.2.is_finite())
                .map(|b| (b.0, b.2))
                .collect();
            poly.extend(
                s.band
                    .iter()
                    .rev()
                    .filter(|b| b.1.is_finite() && b.2.is_finite())
                    .map(|b| (b.0, b.1)),
            );
            chart
                .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.2).filled())))
                .map_err(|e| e.to_string())?;
        }
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if s.markers {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(plotters::series::LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn draw_scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    text: &ChartText,
    groups: &[ScatterGroup],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (x0, x1) = range(groups.iter().flat_map(|g| g.points.iter().map(|p| p.0)));
    let (y0, y1) = range(groups.iter().flat_map(|g| g.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&root)
        .caption(&text.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(&text.x_label)
        .y_desc(&text.y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, g) in groups.iter().enumerate() {
        let c = colour(i);
        let pts: Vec<(f64, f64)> = g
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| e.to_string())?
            .label(&g.name)
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
        if let Some((a, b)) = g.fit {
            let (lo, hi) = range(pts.iter().map(|p| p.0));
            chart
                .draw_series(plotters::series::LineSeries::new(
                    vec![(lo, a + b * lo), (hi, a + b * hi)],
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Size of every figure in pixels.
const SIZE: (u32, u32) = (900, 600);

/// Writes a line chart as `<stem>.png` and `<stem>.svg`.
pub fn line_chart(stem: &Path, text: &ChartText, series: &[Line]) -> Result<(), PlotError> {
    fonts();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw_lines(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        text,
        series,
    )?;
    draw_lines(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        text,
        series,
    )
}

/// Writes a scatter chart as `<stem>.png` and `<stem>.svg`.
pub fn scatter_chart(
    stem: &Path,
    text: &ChartText,
    groups: &[ScatterGroup],
) -> Result<(), PlotError> {
    fonts();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw_scatter(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        text,
        groups,
    )?;
    draw_scatter(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        text,
        groups,
    )
}

/// Least-squares (intercept, slope) of y on x; `None` with fewer than two distinct x.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let pts: Vec<&(f64, f64)> = points
        .iter()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return None;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    Some((my - b * mx, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_valid_non_empty_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let text = ChartText {
            title: "Distance to the original".into(),
            x_label: "step".into(),
            y_label: "d0".into(),
        };
        let series: Vec<Line> = (0..3)
            .map(|k| Line {
                name: format!("method {k}"),
                points: (0..20)
                    .map(|j| (j as f64, (j as f64 * 0.1 * (k + 1) as f64).sin()))
                    .collect(),
                band: (0..20).map(|j| (j as f64, -0.1, 0.1)).collect(),
                markers: k == 0,
            })
            .collect();
        let stem = dir.path().join("fig");
        line_chart(&stem, &text, &series).unwrap();
        let png = std::fs::read(stem.with_extension("png")).unwrap();
        assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("method 2") && svg.contains("</svg>"));
        let groups = vec![ScatterGroup {
            name: "kmnist".into(),
            points: vec![(1.0, 2.0), (2.0, 3.5), (3.0, 4.1)],
            fit: least_squares(&[(1.0, 2.0), (2.0, 3.5), (3.0, 4.1)]),
        }];
        let stem2 = dir.path().join("scatter");
        scatter_chart(&stem2, &text, &groups).unwrap();
        assert!(
            std::fs::metadata(stem2.with_extension("png"))
                .unwrap()
                .len()
                > 1000
        );
        let (a, b) = least_squares(&[(0.0, 1.0), (1.0, 3.0)]).unwrap();
        assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12);
    }
}
