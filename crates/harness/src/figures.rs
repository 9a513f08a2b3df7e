//! Figures regenerated from the results on disk (never from memory of a run), so that a fresh
//! clone can redraw every figure from the committed files.

use anyhow::{Context, Result};
use plotting::{Corner, LineFigure, Panel, Series};
use runner::output;
use runner::spec::{LayerKind, LoadedExperiment, Net, Variant};
use std::path::{Path, PathBuf};

/// One variant's per-epoch tables (one per seed run that has one), labelled for a legend.
struct Curves {
    label: String,
    /// The first run's folder, for messages.
    dir: PathBuf,
    tables: Vec<output::EpochTable>,
}

impl Curves {
    /// `column` against the epoch, with `f` applied to each value: the mean over the runs, with
    /// their standard deviation as a band when there are several (over the epochs all have).
    fn series(&self, column: &str, f: impl Fn(f64) -> f64) -> Result<Series> {
        let epochs = self.tables[0]
            .column("epoch")
            .context("epochs.csv has no epoch column")?;
        let columns = self
            .tables
            .iter()
            .map(|t| {
                t.column(column)
                    .with_context(|| format!("{}: no {column} column", self.dir.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let common = columns.iter().map(Vec::len).min().unwrap_or(0);
        let (mut points, mut spread) = (Vec::new(), Vec::new());
        for (i, &epoch) in epochs.iter().enumerate().take(common) {
            let values: Vec<f64> = columns.iter().map(|c| f(c[i])).collect();
            let s = runner::seeds::spread(&values);
            points.push((epoch, s.mean));
            if columns.len() > 1 {
                spread.push(s.std);
            }
        }
        Ok(Series {
            label: self.label.clone(),
            points,
            spread,
        })
    }

    fn has_column(&self, column: &str) -> bool {
        self.tables[0].column(column).is_some()
    }
}

/// The curves of the variants of `exp` that `wanted` picks and that have an `epochs.csv`
/// (unfinished ones labelled "(in progress)"; a seed sweep's as mean ± std over its runs), and
/// whether any of them is a shortened run.
fn variant_curves<'a>(
    exp: &'a LoadedExperiment,
    results_dir: &Path,
    wanted: impl Fn(&Variant) -> bool,
) -> Result<(Vec<(&'a Variant, Curves)>, bool)> {
    let spec = &exp.spec;
    let mut curves = Vec::new();
    let mut shortened = false;
    for (index, variant) in spec.variants.iter().enumerate().filter(|(_, v)| wanted(v)) {
        let dirs: Vec<PathBuf> =
            runner::seeds::run_dirs(spec, &results_dir.join(&spec.name), index)
                .into_iter()
                .map(|(_, dir)| dir)
                .filter(|dir| dir.join(output::EPOCHS_CSV).is_file())
                .collect();
        let Some(first) = dirs.first().cloned() else {
            continue;
        };
        let tables = dirs
            .iter()
            .map(|dir| output::read_epochs(dir))
            .collect::<Result<Vec<_>, _>>()?;
        // A run without a summary has not finished (it may be training now, or resumable).
        let finished = dirs
            .iter()
            .filter(|dir| dir.join(output::SUMMARY_CSV).is_file())
            .count();
        shortened |= dirs
            .iter()
            .any(|dir| output::read_provenance(dir).is_ok_and(|p| p.shortened));
        let mut label = variant.name.clone();
        if spec.protocol_of(index).is_seed_sweep() {
            label += &format!(" (mean ± std, n = {})", dirs.len());
        }
        if finished < dirs.len() {
            label += " (in progress)";
        }
        curves.push((
            variant,
            Curves {
                label,
                dir: first,
                tables,
            },
        ));
    }
    Ok((curves, shortened))
}

fn shortened_label(shortened: bool) -> &'static str {
    if shortened {
        " (includes shortened runs)"
    } else {
        ""
    }
}

/// Per-epoch test error (and training-set error where evaluated), compression and KL weight β
/// of every variant.
pub fn training_curves(
    exp: &LoadedExperiment,
    results_dir: &Path,
    figures_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let (curves, shortened) = variant_curves(exp, results_dir, |_| true)?;
    if curves.is_empty() {
        return Ok(Vec::new());
    }
    let (mut error, mut compression, mut beta) = (Vec::new(), Vec::new(), Vec::new());
    let mut train_error = Vec::new();
    for (variant, c) in &curves {
        error.push(c.series("test_error_pct", |v| v)?);
        // Only runs that evaluate the training set (random labels) have this column.
        if c.has_column("train_error_pct") {
            train_error.push(c.series("train_error_pct", |v| v)?);
        }
        compression.push(c.series("compression", |v| v)?);
        if variant.layer.is_variational() {
            beta.push(c.series("beta", |v| v)?);
        }
    }
    let mut figure = LineFigure {
        title: format!(
            "{}: training curves{}",
            exp.spec.name,
            shortened_label(shortened)
        ),
        x_label: "epoch".into(),
        panels: vec![
            error_panel(error),
            compression_panel(compression),
            Panel {
                y_label: "KL weight β".into(),
                log_y: false,
                series: beta,
                legend: Corner::LowerRight,
            },
        ],
    };
    if !train_error.is_empty() {
        figure.panels.insert(
            1,
            Panel {
                y_label: "training-set error (%)".into(),
                log_y: false,
                series: train_error,
                legend: Corner::LowerRight,
            },
        );
    }
    write(&figure, figures_dir, &format!("{}_training", exp.spec.name))
}

/// The paper's parameterization study: training loss, sparsity (% of weights removed) and test
/// error per epoch of Sparse VD in the original (θ, log α) and the additive (θ, log σ²)
/// parameterization. Only for experiments that have both.
pub fn parameterization(
    exp: &LoadedExperiment,
    results_dir: &Path,
    figures_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let studied = [LayerKind::SparseVdLogAlpha, LayerKind::SparseVd];
    if !studied
        .iter()
        .all(|kind| exp.spec.variants.iter().any(|v| v.layer == *kind))
    {
        return Ok(Vec::new());
    }
    let (curves, shortened) = variant_curves(exp, results_dir, |v| studied.contains(&v.layer))?;
    if curves.is_empty() {
        return Ok(Vec::new());
    }
    let (mut loss, mut sparsity, mut error) = (Vec::new(), Vec::new(), Vec::new());
    for (_, c) in &curves {
        loss.push(c.series("train_loss", |v| v)?);
        sparsity.push(c.series("compression", |v| 100.0 - 100.0 / v)?);
        error.push(c.series("test_error_pct", |v| v)?);
    }
    let figure = LineFigure {
        title: format!(
            "{}: Sparse VD, (θ, log α) vs additive (θ, log σ²){}",
            exp.spec.name,
            shortened_label(shortened)
        ),
        x_label: "epoch".into(),
        panels: vec![
            Panel {
                y_label: "training loss (per example)".into(),
                log_y: true,
                series: loss,
                legend: Corner::UpperRight,
            },
            Panel {
                y_label: "weights removed (%)".into(),
                log_y: false,
                series: sparsity,
                legend: Corner::LowerRight,
            },
            error_panel(error),
        ],
    };
    write(
        &figure,
        figures_dir,
        &format!("{}_parameterization", exp.spec.name),
    )
}

/// Write `figure` as `<figures_dir>/<name>.svg` and `.png`; returns both paths.
pub fn write(
    figure: &impl plotting::Figure,
    figures_dir: &Path,
    name: &str,
) -> Result<Vec<PathBuf>> {
    let stem = figures_dir.join(name);
    plotting::render(figure, &stem)?;
    Ok(vec![stem.with_extension("svg"), stem.with_extension("png")])
}

/// Test error per series, on a log axis.
fn error_panel(series: Vec<Series>) -> Panel {
    Panel {
        y_label: "test error (%)".into(),
        log_y: true,
        series,
        legend: Corner::UpperRight,
    }
}

/// Compression per series, on a log axis.
fn compression_panel(series: Vec<Series>) -> Panel {
    Panel {
        y_label: "compression |W| / |W≠0| (×)".into(),
        log_y: true,
        series,
        legend: Corner::LowerRight,
    }
}

/// The paper's KL figure: −KL from the sigmoid approximation, from Kingma et al.'s cubic
/// (for α ≤ 1), and estimated by Monte Carlo, over log α ∈ [−8, 8].
pub fn kl_approximation(figures_dir: &Path) -> Result<Vec<PathBuf>> {
    let normals = sparsevd::normal_lattice(1_000_000);
    let grid: Vec<f64> = (0..=160).map(|i| -8.0 + 0.1 * i as f64).collect();
    let series = |label: &str, f: &dyn Fn(f64) -> f64, max_log_alpha: f64| Series {
        label: label.into(),
        points: grid
            .iter()
            .filter(|&&a| a <= max_log_alpha)
            .map(|&a| (a, f(a)))
            .collect(),
        spread: Vec::new(),
    };
    let mc = |a: f64| sparsevd::neg_kl_monte_carlo(a, &normals);
    let sigmoid = |a: f64| -sparsevd::kl_approx_value(a);
    const MC: &str = "Monte Carlo estimate (10⁶ samples)";
    const SIGMOID: &str = "sigmoid approximation (Molchanov et al.)";
    const CUBIC: &str = "cubic approximation (Kingma et al.), α ≤ 1";
    let figure = LineFigure {
        title: "Approximations of −KL(q ‖ log-uniform prior)".into(),
        x_label: "log α".into(),
        panels: vec![
            Panel {
                y_label: "−KL (nats per weight)".into(),
                log_y: false,
                series: vec![
                    series(MC, &mc, 8.0),
                    series(SIGMOID, &sigmoid, 8.0),
                    series(CUBIC, &sparsevd::neg_kl_kingma, 0.0),
                ],
                legend: Corner::LowerRight,
            },
            Panel {
                y_label: "approximation − Monte Carlo (nats)".into(),
                log_y: false,
                series: vec![
                    series(SIGMOID, &|a| sigmoid(a) - mc(a), 8.0),
                    series(CUBIC, &|a| sparsevd::neg_kl_kingma(a) - mc(a), 0.0),
                ],
                legend: Corner::UpperRight,
            },
        ],
    };
    write(&figure, figures_dir, "kl_approximation")
}

/// First-layer masks of every finished Sparse VD variant: for LeNet-300-100 how many of each
/// input pixel's 300 outgoing weights survive (a 28×28 image); for LeNet-5 each 5×5 filter of
/// the first convolution with its removed weights shown as 0. Other nets get none, and their
/// models are not read: shortened VGG-like runs do not commit theirs.
pub fn first_layer_masks(
    exp: &LoadedExperiment,
    results_dir: &Path,
    figures_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if !matches!(exp.spec.net, Net::Lenet300 | Net::Lenet5) {
        return Ok(written);
    }
    for (index, variant) in exp.spec.variants.iter().enumerate() {
        if variant.layer != LayerKind::SparseVd {
            continue;
        }
        // A seed sweep's first finished run stands for the variant.
        let runs =
            runner::seeds::finished_runs(&exp.spec, &results_dir.join(&exp.spec.name), index)?;
        let Some(dir) = runs.runs.first().map(|r| r.dir.clone()) else {
            continue;
        };
        let layers = output::read_model(&dir)?;
        let first = layers.first().context("model has no layers")?;
        let kept = first.kept(exp.spec.protocol.threshold);
        let figure = match *first.shape.as_slice() {
            [inputs, outputs] if inputs == 28 * 28 => {
                let counts: Vec<f64> = (0..inputs)
                    .map(|i| {
                        kept[i * outputs..(i + 1) * outputs]
                            .iter()
                            .filter(|&&k| k)
                            .count() as f64
                    })
                    .collect();
                let used = counts.iter().filter(|&&c| c > 0.0).count();
                plotting::GridFigure {
                    title: format!(
                        "{} / {}{}: first-layer weights kept per input pixel",
                        exp.spec.name,
                        variant.name,
                        match runs.sweep {
                            true => format!(" (seed {})", runs.runs[0].seed),
                            false => String::new(),
                        }
                    ),
                    grids: vec![plotting::Grid {
                        title: format!("{used} of 784 pixels keep at least one weight"),
                        rows: 28,
                        cols: 28,
                        values: counts.clone(),
                    }],
                    columns: 1,
                    min: 0.0,
                    max: counts.iter().copied().fold(1.0, f64::max),
                    value_label: format!("kept of {outputs}"),
                    grid_px: 520,
                }
            }
            [filters, 1, kh, kw] => {
                let grids: Vec<plotting::Grid> = (0..filters)
                    .map(|f| {
                        let range = f * kh * kw..(f + 1) * kh * kw;
                        let values = first.theta[range.clone()]
                            .iter()
                            .zip(&kept[range])
                            .map(|(&t, &k)| if k { t.abs() as f64 } else { f64::NAN })
                            .collect::<Vec<_>>();
                        let n = values.iter().filter(|v| !v.is_nan()).count();
                        plotting::Grid {
                            title: format!("filter {} ({n} kept)", f + 1),
                            rows: kh,
                            cols: kw,
                            values,
                        }
                    })
                    .collect();
                let max = grids
                    .iter()
                    .flat_map(|g| g.values.iter().copied())
                    .fold(1e-6, f64::max);
                plotting::GridFigure {
                    title: format!(
                        "{} / {}: first-layer 5×5 filters, |θ| of kept weights",
                        exp.spec.name, variant.name
                    ),
                    grids,
                    columns: 5,
                    min: 0.0,
                    max,
                    value_label: "|θ|".into(),
                    grid_px: 190,
                }
            }
            // The paper draws first-layer masks for the LeNets only (28×28 inputs, 1-channel
            // filters); other nets get none.
            _ => continue,
        };
        let name = format!("{}_{}_first_layer", exp.spec.name, variant.name);
        written.extend(write(&figure, figures_dir, &name)?);
    }
    Ok(written)
}

/// % of weights removed in each weight layer, input to output, for every variant whose finished
/// runs removed any (a seed sweep's mean with its std as a band): where the net was pruned
/// hardest. The paper's claim for VGG-like is that the later, wider layers are.
pub fn removed_per_layer(
    exp: &LoadedExperiment,
    results_dir: &Path,
    figures_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let dir = results_dir.join(&exp.spec.name);
    let mut series = Vec::new();
    let mut shortened = false;
    for index in 0..exp.spec.variants.len() {
        let runs = runner::seeds::finished_runs(&exp.spec, &dir, index)?;
        let removed = runs.removed_per_layer();
        if removed.iter().all(|s| s.mean == 0.0) {
            continue;
        }
        shortened |= runs.runs.iter().any(|r| r.summary.shortened);
        let mut label = exp.spec.variants[index].name.clone();
        if runs.sweep {
            label += &format!(" (mean ± std, n = {})", runs.runs.len());
        }
        series.push(Series {
            label,
            points: (1..)
                .map(f64::from)
                .zip(removed.iter().map(|s| s.mean))
                .collect(),
            spread: match runs.runs.len() {
                1 => Vec::new(),
                _ => removed.iter().map(|s| s.std).collect(),
            },
        });
    }
    if series.is_empty() {
        return Ok(Vec::new());
    }
    let figure = LineFigure {
        title: format!(
            "{}: % of weights removed per layer{}",
            exp.spec.name,
            shortened_label(shortened)
        ),
        x_label: "weight layer, input to output".into(),
        panels: vec![Panel {
            y_label: "% of weights removed".into(),
            log_y: false,
            series,
            legend: Corner::UpperLeft,
        }],
    };
    write(
        &figure,
        figures_dir,
        &format!("{}_removed_per_layer", exp.spec.name),
    )
}

/// The paper's VGG-like figure: test error of the binary-dropout (dense) net and of Sparse VD,
/// and Sparse VD's compression, against the width multiplier k; ours from the finished variants
/// beside the paper's values (read off its figure). Nothing for other nets or random-label runs.
pub fn width_sweep(
    exp: &LoadedExperiment,
    results_dir: &Path,
    figures_dir: &Path,
) -> Result<Vec<PathBuf>> {
    // The paper's figure is VGG-like on the true CIFAR-10 labels; with random labels there is no
    // error-against-width curve to compare with.
    if exp.spec.net != runner::spec::Net::Vgglike || exp.spec.protocol.random_labels {
        return Ok(Vec::new());
    }
    let paper = runner::paper_reference_of(exp)?;
    let (mut error, mut compression) = (Vec::new(), Vec::new());
    let mut shortened = false;
    let mut ours_finished = false;
    for (method, name) in [("dense", "binary dropout"), ("sparse_vd", "Sparse VD")] {
        // Per width, ours (a seed sweep's mean, with its std) and the paper's.
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for (index, variant) in exp.spec.variants.iter().enumerate() {
            if variant.paper.as_ref().is_none_or(|p| p.method != method) {
                continue;
            }
            let k = variant.width.unwrap_or_default();
            if let Some(r) = variant.paper.as_ref().and_then(|key| paper.find(key)) {
                let exact = |mean| runner::seeds::Spread { mean, std: 0.0 };
                theirs.push((k, exact(r.error_pct), exact(r.compression.unwrap_or(1.0))));
            }
            let dir = results_dir.join(&exp.spec.name);
            let runs = runner::seeds::finished_runs(&exp.spec, &dir, index)?;
            if let Some(summary) = runs.mean_summary() {
                shortened |= summary.shortened;
                ours.push((k, runs.error(), runs.compression()));
            }
        }
        ours_finished |= !ours.is_empty();
        type Point = (f64, runner::seeds::Spread, runner::seeds::Spread);
        for (who, points) in [("ours", &ours), ("paper", &theirs)] {
            let series = |y: fn(&Point) -> runner::seeds::Spread| Series {
                label: format!("{name} ({who})"),
                points: points.iter().map(|p| (p.0, y(p).mean)).collect(),
                spread: match who {
                    "ours" => points.iter().map(|p| y(p).std).collect(),
                    _ => Vec::new(),
                },
            };
            if !points.is_empty() {
                error.push(series(|p| p.1));
                if method == "sparse_vd" {
                    compression.push(series(|p| p.2));
                }
            }
        }
    }
    let status = match (ours_finished, shortened) {
        (false, _) => " (paper only: no run of ours yet)",
        (true, true) => " (ours include shortened runs)",
        (true, false) => "",
    };
    let figure = LineFigure {
        title: format!(
            "{}: error and compression vs width k{status}",
            exp.spec.name
        ),
        x_label: "width multiplier k".into(),
        panels: vec![
            Panel {
                y_label: "test error (%)".into(),
                log_y: false,
                series: error,
                legend: Corner::UpperRight,
            },
            compression_panel(compression),
        ],
    };
    write(
        &figure,
        figures_dir,
        &format!("{}_width_sweep", exp.spec.name),
    )
}
