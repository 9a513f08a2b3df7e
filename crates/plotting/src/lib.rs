//! Figures for reports. Callers hand over plain numbers (series of points, grids of values);
//! this crate draws them with plotters and writes each figure as SVG and PNG.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Figures embed DejaVu Sans so that PNG text renders the same on any machine.
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";
const PANEL_HEIGHT: u32 = 300;
const WIDTH: u32 = 900;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// One line: a label for the legend and its (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One set of axes, sharing the figure's x axis.
#[derive(Debug, Clone)]
pub struct Panel {
    pub y_label: String,
    /// Plot y on a log₁₀ scale (non-positive values are left out).
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Panels stacked vertically under one title.
#[derive(Debug, Clone)]
pub struct LineFigure {
    pub title: String,
    pub x_label: String,
    pub panels: Vec<Panel>,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to be valid; a failure would only lose PNG text.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    /// Size in pixels (SVG and PNG alike).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Write `figure` to `<stem>.svg` and `<stem>.png`, each atomically (temporary file, rename).
pub fn render<F: Figure>(figure: &F, stem: &Path) -> Result<(), PlotError> {
    let size = figure.size();
    register_font();
    let svg_path = stem.with_extension("svg");
    let png_path = stem.with_extension("png");
    let err = |path: &Path, message: String| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        figure.draw(root).map_err(|m| err(&svg_path, m))?;
    }
    let tmp_svg = svg_path.with_extension("svg.tmp");
    std::fs::write(&tmp_svg, svg).map_err(|e| err(&tmp_svg, e.to_string()))?;
    std::fs::rename(&tmp_svg, &svg_path).map_err(|e| err(&svg_path, e.to_string()))?;

    let tmp_png = png_path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp_png, size).into_drawing_area();
        figure.draw(root).map_err(|m| err(&png_path, m))?;
    }
    std::fs::rename(&tmp_png, &png_path).map_err(|e| err(&png_path, e.to_string()))
}

impl Figure for LineFigure {
    fn size(&self) -> (u32, u32) {
        let drawn = self.panels.iter().filter(|p| !p.series.is_empty()).count();
        (WIDTH, PANEL_HEIGHT * drawn.max(1) as u32 + 40)
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_lines(root, self)
    }
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figure: &LineFigure,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root
        .titled(&figure.title, (FONT_FAMILY, 22))
        .map_err(|x| e(&x))?;
    let panels: Vec<&Panel> = figure
        .panels
        .iter()
        .filter(|p| !p.series.is_empty())
        .collect();
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel, &figure.x_label).map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x_label: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let transform = |y: f64| if panel.log_y { y.log10() } else { y };
    let series: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(_, y)| y.is_finite() && (!panel.log_y || *y > 0.0))
                .map(|&(x, y)| (x, transform(y)))
                .collect()
        })
        .collect();
    let all = series.iter().flatten();
    let (x_min, x_max) = bounds(all.clone().map(|p| p.0));
    let (y_min, y_max) = bounds(all.map(|p| p.1));
    let pad = ((y_max - y_min) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, (y_min - pad)..(y_max + pad))?;
    let y_format = |v: &f64| {
        if panel.log_y {
            let value = 10f64.powf(*v);
            if value >= 10.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            }
        } else {
            format!("{v:.2}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .y_label_formatter(&y_format)
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    for (i, (points, s)) in series.iter().zip(&panel.series).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT_FAMILY, 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// Smallest and largest value, widened to a non-empty range.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("plotting-{}", std::process::id()));
        let stem = dir.join("curves");
        let figure = LineFigure {
            title: "Test figure".into(),
            x_label: "epoch".into(),
            panels: vec![
                Panel {
                    y_label: "error (%)".into(),
                    log_y: false,
                    series: vec![Series {
                        label: "a".into(),
                        points: vec![(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)],
                    }],
                },
                Panel {
                    y_label: "compression (×)".into(),
                    log_y: true,
                    series: vec![Series {
                        label: "b".into(),
                        points: vec![(1.0, 1.0), (2.0, 10.0), (3.0, f64::INFINITY)],
                    }],
                },
            ],
        };
        render(&figure, &stem).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("Test figure") && svg.contains("compression"));
        let png = std::fs::read(stem.with_extension("png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
