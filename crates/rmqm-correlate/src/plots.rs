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
    /// Index of its colour in the palette (the same series keeps its colour across panels).
    pub colour: usize,
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
    /// Ticks at whole numbers on the x axis (steps).
    pub integer_x: bool,
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

/// Font sizes of a chart: full-size figures or the panels of a small-multiples figure.
#[derive(Debug, Clone, Copy)]
struct Fonts {
    title: u32,
    labels: u32,
    axis: u32,
    legend: u32,
}

const FULL: Fonts = Fonts {
    title: 22,
    labels: 14,
    axis: 16,
    legend: 14,
};

const PANEL: Fonts = Fonts {
    title: 17,
    labels: 12,
    axis: 13,
    legend: 11,
};

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &ChartText,
    series: &[Line],
    fonts: Fonts,
    legend: bool,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = range(series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
    }));
    let mut chart = ChartBuilder::on(root)
        .caption(&text.title, ("sans-serif", fonts.title))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    // Whole-number ticks: at most one label per unit of the axis, so the nice steps plotters
    // picks (1, 2, 5, 10, ...) are never fractions.
    let span = (x1 - x0).floor().max(1.0) as usize;
    let integer_format = |x: &f64| format!("{x:.0}");
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&text.x_label)
        .y_desc(&text.y_label)
        .label_style(("sans-serif", fonts.labels))
        .axis_desc_style(("sans-serif", fonts.axis));
    if text.integer_x {
        mesh.x_labels(span.min(10))
            .x_label_formatter(&integer_format);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for s in series {
        let c = colour(s.colour);
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
    if legend {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", fonts.legend))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
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

/// Draws with `draw` into an RGB buffer and writes it as a PNG with the image crate (plotters'
/// own encoder would build a second, older image crate).
fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    let mut buffer = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw(BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area())?;
    image::save_buffer_with_format(
        path,
        &buffer,
        size.0,
        size.1,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Size of every figure in pixels.
const SIZE: (u32, u32) = (900, 600);

fn full_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    text: &ChartText,
    series: &[Line],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    draw_lines(&root, text, series, FULL, true)?;
    root.present().map_err(|e| e.to_string())
}

/// Writes a line chart as `<stem>.png` and `<stem>.svg`.
pub fn line_chart(stem: &Path, text: &ChartText, series: &[Line]) -> Result<(), PlotError> {
    fonts();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    write_png(&png, SIZE, |area| full_lines(area, text, series))?;
    full_lines(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        text,
        series,
    )
}

/// One panel of a small-multiples figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Its lines.
    pub lines: Vec<Line>,
}

/// Panels per row of a small-multiples figure.
const PANEL_COLUMNS: usize = 3;
/// Size of one panel in pixels.
const PANEL_SIZE: (u32, u32) = (520, 380);

fn panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    text: &ChartText,
    panels: &[Panel],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", FULL.title))
        .map_err(|e| e.to_string())?;
    let columns = panels.len().clamp(1, PANEL_COLUMNS);
    let rows = panels.len().div_ceil(columns).max(1);
    for (k, (area, panel)) in root
        .split_evenly((rows, columns))
        .into_iter()
        .zip(panels)
        .enumerate()
    {
        let text = ChartText {
            title: panel.title.clone(),
            ..text.clone()
        };
        draw_lines(&area, &text, &panel.lines, PANEL, k == 0)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes small multiples (one panel per entry of `panels`, three per row, the legend in the
/// first) as `<stem>.png` and `<stem>.svg`; `text` gives the axes of every panel.
pub fn panel_chart(
    stem: &Path,
    title: &str,
    text: &ChartText,
    parts: &[Panel],
) -> Result<(), PlotError> {
    fonts();
    let columns = parts.len().clamp(1, PANEL_COLUMNS) as u32;
    let rows = parts.len().div_ceil(columns as usize).max(1) as u32;
    let size = (columns * PANEL_SIZE.0, rows * PANEL_SIZE.1 + 40);
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    write_png(&png, size, |area| panels(area, title, text, parts))?;
    panels(
        SVGBackend::new(&svg, size).into_drawing_area(),
        title,
        text,
        parts,
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
    write_png(&png, SIZE, |area| draw_scatter(area, text, groups))?;
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

    /// Width and height from a PNG's IHDR chunk.
    fn image_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        let be = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        (be(16), be(20))
    }

    #[test]
    fn step_axes_have_whole_number_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let text = ChartText {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "y".into(),
            integer_x: true,
        };
        let line = Line {
            name: "m".into(),
            points: (0..=6)
                .map(|j| (j as f64, 100.0 + 17.0 * j as f64))
                .collect(),
            band: vec![],
            markers: false,
            colour: 0,
        };
        let stem = dir.path().join("steps");
        line_chart(&stem, &text, &[line]).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        // The texts of the figure; the step axis's tick labels are the numbers below 100 (the
        // y axis runs 100..200): whole numbers only, none of 0.5, 1.5, ...
        let labels: Vec<&str> = svg
            .split("</text>")
            .filter_map(|chunk| chunk.rsplit('>').next())
            .map(str::trim)
            .filter(|t| t.parse::<f64>().is_ok_and(|v| v < 100.0))
            .collect();
        assert!(labels.len() >= 3, "{labels:?}");
        assert!(labels.iter().all(|t| !t.contains('.')), "{labels:?}");
    }

    #[test]
    fn figures_are_valid_non_empty_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let text = ChartText {
            title: "Distance to the original".into(),
            x_label: "step".into(),
            y_label: "d0".into(),
            integer_x: true,
        };
        let series: Vec<Line> = (0..3)
            .map(|k| Line {
                name: format!("method {k}"),
                points: (0..20)
                    .map(|j| (j as f64, (j as f64 * 0.1 * (k + 1) as f64).sin()))
                    .collect(),
                band: (0..20).map(|j| (j as f64, -0.1, 0.1)).collect(),
                markers: k == 0,
                colour: k,
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
        let parts: Vec<Panel> = (0..4)
            .map(|d| Panel {
                title: format!("dim {}", 16 << d),
                lines: series[..2].to_vec(),
            })
            .collect();
        let stem3 = dir.path().join("panels");
        panel_chart(&stem3, "By dimension", &text, &parts).unwrap();
        let svg = std::fs::read_to_string(stem3.with_extension("svg")).unwrap();
        assert!(svg.contains("dim 128") && svg.contains("By dimension"));
        let png = image_size(&stem3.with_extension("png"));
        assert_eq!(png, (3 * PANEL_SIZE.0, 2 * PANEL_SIZE.1 + 40));
        let (a, b) = least_squares(&[(0.0, 1.0), (1.0, 3.0)]).unwrap();
        assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12);
    }
}
