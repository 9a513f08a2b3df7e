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
    /// A spread drawn as a band y ± spread around the line, one value per point (a mean over
    /// seeds with its standard deviation); empty for none.
    pub spread: Vec<f64>,
}

/// One set of axes, sharing the figure's x axis.
#[derive(Debug, Clone)]
pub struct Panel {
    pub y_label: String,
    /// Plot y on a log₁₀ scale (non-positive values are left out).
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Where the legend goes (pick the corner the lines leave empty).
    pub legend: Corner,
}

#[derive(Debug, Clone, Copy)]
pub enum Corner {
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
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
    // One colour per label across all panels, so a variant looks the same everywhere.
    let mut labels: Vec<&str> = Vec::new();
    for series in panels.iter().flat_map(|p| &p.series) {
        if !labels.contains(&series.label.as_str()) {
            labels.push(&series.label);
        }
    }
    let areas = root.split_evenly((panels.len().max(1), 1));
    // A legend only where it names a line no legend above has named: colours are figure-wide,
    // and repeated legends hide the lines they sit on.
    let mut named: Vec<&str> = Vec::new();
    for (area, panel) in areas.iter().zip(panels) {
        let new = panel
            .series
            .iter()
            .any(|s| !named.contains(&s.label.as_str()));
        named.extend(panel.series.iter().map(|s| s.label.as_str()));
        draw_panel(area, panel, &figure.x_label, &labels, new).map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// Series with at most this many points get a marker on each point.
const MARKED_POINTS: usize = 12;

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x_label: &str,
    labels: &[&str],
    with_legend: bool,
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
    // Each band as a polygon: the upper edge left to right, then the lower edge back.
    let bands: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| {
            let edge = |sign: f64| {
                s.points
                    .iter()
                    .zip(&s.spread)
                    .map(move |(&(x, y), &d)| (x, y + sign * d))
                    .filter(|(_, y)| y.is_finite() && (!panel.log_y || *y > 0.0))
                    .map(|(x, y)| (x, transform(y)))
            };
            let mut polygon: Vec<(f64, f64)> = edge(1.0).collect();
            let lower: Vec<(f64, f64)> = edge(-1.0).collect();
            polygon.extend(lower.into_iter().rev());
            polygon
        })
        .collect();
    let all = series.iter().chain(&bands).flatten();
    let (x_min, x_max) = bounds(all.clone().map(|p| p.0));
    let (y_min, y_max) = bounds(all.map(|p| p.1));
    let pad = ((y_max - y_min) * 0.05).max(1e-9);
    // Room for the markers of points on the x bounds.
    let marked = series.iter().any(|points| points.len() <= MARKED_POINTS);
    let x_pad = if marked { (x_max - x_min) * 0.03 } else { 0.0 };
    // Integer x over a short range (layers, say): one tick per integer, not repeated labels.
    let integer_x = series.iter().flatten().all(|p| p.0.fract() == 0.0) && x_max - x_min <= 20.0;
    let x_ticks = if integer_x {
        (x_max - x_min) as usize + 1
    } else {
        10
    };
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min - x_pad)..(x_max + x_pad),
            (y_min - pad)..(y_max + pad),
        )?;
    // Enough decimals to tell neighbouring ticks apart.
    let decimals = (2.0 - (y_max - y_min).max(1e-9).log10().floor()).clamp(0.0, 6.0) as usize;
    let x_decimals = if integer_x {
        0
    } else {
        (1.0 - (x_max - x_min).max(1e-9).log10().floor()).clamp(0.0, 6.0) as usize
    };
    let y_format = |v: &f64| {
        if panel.log_y {
            let value = 10f64.powf(*v);
            if value >= 10.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            }
        } else {
            format!("{v:.decimals$}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_labels(x_ticks)
        .y_desc(&panel.y_label)
        .y_label_formatter(&y_format)
        .x_label_formatter(&|x: &f64| format!("{x:.x_decimals$}"))
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    for ((points, s), band) in series.iter().zip(&panel.series).zip(&bands) {
        let index = labels.iter().position(|l| *l == s.label).unwrap_or(0);
        let color = Palette99::pick(index).to_rgba();
        // A spread over few points (a width sweep, a short run) as error bars, over many as a band.
        if points.len() <= MARKED_POINTS {
            let bars = s.points.iter().zip(&s.spread).filter_map(|(&(x, y), &d)| {
                let (low, high) = (y - d, y + d);
                let valid = |v: f64| v.is_finite() && (!panel.log_y || v > 0.0);
                (valid(low) && valid(high) && d > 0.0).then(|| {
                    PathElement::new(
                        vec![(x, transform(low)), (x, transform(high))],
                        color.stroke_width(2),
                    )
                })
            });
            chart.draw_series(bars)?;
        } else if band.len() > 2 {
            chart.draw_series(std::iter::once(Polygon::new(
                band.clone(),
                color.mix(0.2).filled(),
            )))?;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // A line of one point is invisible, and a few points (a width sweep, a short run) are
        // measurements worth seeing as such.
        if points.len() <= MARKED_POINTS {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    if !with_legend {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT_FAMILY, 14))
        .position(match panel.legend {
            Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
            Corner::UpperRight => SeriesLabelPosition::UpperRight,
            Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
            Corner::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .draw()?;
    Ok(())
}

/// One grid of values drawn as coloured cells (row 0 at the top).
#[derive(Debug, Clone)]
pub struct Grid {
    pub title: String,
    pub rows: usize,
    pub cols: usize,
    /// Row-major, `rows × cols` values.
    pub values: Vec<f64>,
}

/// Grids side by side, all on one colour scale from `min` (white) to `max` (dark blue),
/// with a labelled colour bar. NaN cells mean "removed" and are drawn in orange.
#[derive(Debug, Clone)]
pub struct GridFigure {
    pub title: String,
    pub grids: Vec<Grid>,
    /// Grids per row of the figure.
    pub columns: usize,
    pub min: f64,
    pub max: f64,
    /// What a cell's value means, with unit (shown beside the colour bar).
    pub value_label: String,
    /// Width and height of one grid in pixels.
    pub grid_px: u32,
}

const REMOVED: RGBColor = RGBColor(244, 165, 96);
const COLOUR_BAR: u32 = 120;

fn colour(value: f64, min: f64, max: f64) -> RGBColor {
    if value.is_nan() {
        return REMOVED;
    }
    let t = if max > min {
        ((value - min) / (max - min)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mix = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

impl Figure for GridFigure {
    fn size(&self) -> (u32, u32) {
        let columns = self.columns.max(1);
        let rows = self.grids.len().div_ceil(columns).max(1);
        (
            self.grid_px * columns as u32 + COLOUR_BAR,
            self.grid_px * rows as u32 + 50,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let root = root
            .titled(&self.title, (FONT_FAMILY, 20))
            .map_err(|x| e(&x))?;
        let (width, _) = root.dim_in_pixel();
        let (grids_area, bar_area) = root.split_horizontally(width.saturating_sub(COLOUR_BAR));
        let columns = self.columns.max(1);
        let rows = self.grids.len().div_ceil(columns).max(1);
        for (area, grid) in grids_area
            .split_evenly((rows, columns))
            .iter()
            .zip(&self.grids)
        {
            let area = area
                .titled(&grid.title, (FONT_FAMILY, 14))
                .map_err(|x| e(&x))?;
            let (w, h) = area.dim_in_pixel();
            let cell =
                (w.min(h).saturating_sub(10) as f64 / grid.rows.max(grid.cols) as f64).max(1.0);
            for r in 0..grid.rows {
                for c in 0..grid.cols {
                    let v = grid.values[r * grid.cols + c];
                    let x0 = 5 + (c as f64 * cell) as i32;
                    let y0 = (r as f64 * cell) as i32;
                    let x1 = 5 + ((c + 1) as f64 * cell) as i32;
                    let y1 = ((r + 1) as f64 * cell) as i32;
                    area.draw(&Rectangle::new(
                        [(x0, y0), (x1, y1)],
                        colour(v, self.min, self.max).filled(),
                    ))
                    .map_err(|x| e(&x))?;
                }
            }
        }
        // Colour bar: max at the top, min at the bottom, with the label beside it.
        let (_, bar_h) = bar_area.dim_in_pixel();
        let steps = 50;
        let top = 20;
        let height = bar_h.saturating_sub(90) as i32;
        for i in 0..steps {
            let v = self.max - (self.max - self.min) * i as f64 / (steps - 1) as f64;
            let y0 = top + height * i / steps;
            let y1 = top + height * (i + 1) / steps;
            bar_area
                .draw(&Rectangle::new(
                    [(10, y0), (30, y1)],
                    colour(v, self.min, self.max).filled(),
                ))
                .map_err(|x| e(&x))?;
        }
        let text = |s: String, y: i32| Text::new(s, (34, y), (FONT_FAMILY, 13));
        bar_area
            .draw(&text(format!("{:.3}", self.max), top))
            .map_err(|x| e(&x))?;
        bar_area
            .draw(&text(format!("{:.3}", self.min), top + height - 12))
            .map_err(|x| e(&x))?;
        bar_area
            .draw(&Text::new(
                self.value_label.clone(),
                (4, top + height + 14),
                (FONT_FAMILY, 12),
            ))
            .map_err(|x| e(&x))?;
        if self
            .grids
            .iter()
            .any(|g| g.values.iter().any(|v| v.is_nan()))
        {
            let y = top + height + 34;
            bar_area
                .draw(&Rectangle::new([(10, y), (30, y + 12)], REMOVED.filled()))
                .map_err(|x| e(&x))?;
            bar_area
                .draw(&Text::new("removed", (34, y), (FONT_FAMILY, 12)))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))
    }
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
                        spread: vec![0.5, 0.4, 0.3],
                    }],
                    legend: Corner::UpperRight,
                },
                Panel {
                    y_label: "compression (×)".into(),
                    log_y: true,
                    series: vec![Series {
                        label: "b".into(),
                        points: vec![(1.0, 1.0), (2.0, 10.0), (3.0, f64::INFINITY)],
                        spread: Vec::new(),
                    }],
                    legend: Corner::LowerRight,
                },
            ],
        };
        render(&figure, &stem).unwrap();
        let grid = GridFigure {
            title: "Grid".into(),
            grids: vec![Grid {
                title: "g".into(),
                rows: 2,
                cols: 2,
                values: vec![0.0, 1.0, 2.0, 3.0],
            }],
            columns: 1,
            min: 0.0,
            max: 3.0,
            value_label: "kept".into(),
            grid_px: 100,
        };
        render(&grid, &dir.join("grid")).unwrap();
        assert!(
            std::fs::read_to_string(dir.join("grid.svg"))
                .unwrap()
                .contains("<rect")
        );
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("Test figure") && svg.contains("compression"));
        let png = std::fs::read(stem.with_extension("png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
