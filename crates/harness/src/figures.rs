//! Figures regenerated from the results on disk (never from memory of a run), so that a fresh
//! clone can redraw every figure from the committed files.

use anyhow::{Context, Result};
use plotting::{LineFigure, Panel, Series};
use runner::output;
use runner::spec::LoadedExperiment;
use std::path::{Path, PathBuf};

/// Per-epoch test error, compression and KL weight β of every finished variant.
pub fn training_curves(
    exp: &LoadedExperiment,
    results_dir: &Path,
    figures_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut error = Vec::new();
    let mut compression = Vec::new();
    let mut beta = Vec::new();
    let mut shortened = false;
    for variant in &exp.spec.variants {
        let dir = results_dir.join(&exp.spec.name).join(&variant.name);
        if !dir.join(output::EPOCHS_CSV).is_file() {
            continue;
        }
        let table = output::read_epochs(&dir)?;
        shortened |= output::read_provenance(&dir)
            .map(|p| p.shortened)
            .unwrap_or(true);
        let epochs = table
            .column("epoch")
            .context("epochs.csv has no epoch column")?;
        let series = |column: &str| -> Result<Series> {
            let values = table
                .column(column)
                .with_context(|| format!("{}: no {column} column", dir.display()))?;
            Ok(Series {
                label: variant.name.clone(),
                points: epochs.iter().copied().zip(values).collect(),
            })
        };
        error.push(series("test_error_pct")?);
        compression.push(series("compression")?);
        if variant.layer == runner::spec::LayerKind::SparseVd {
            beta.push(series("beta")?);
        }
    }
    if error.is_empty() {
        return Ok(Vec::new());
    }
    let label = if shortened {
        " (includes shortened runs)"
    } else {
        ""
    };
    let figure = LineFigure {
        title: format!("{}: training curves{label}", exp.spec.name),
        x_label: "epoch".into(),
        panels: vec![
            Panel {
                y_label: "test error (%)".into(),
                log_y: true,
                series: error,
            },
            Panel {
                y_label: "compression |W| / |W≠0| (×)".into(),
                log_y: true,
                series: compression,
            },
            Panel {
                y_label: "KL weight β".into(),
                log_y: false,
                series: beta,
            },
        ],
    };
    let stem = figures_dir.join(format!("{}_training", exp.spec.name));
    plotting::render(&figure, &stem)?;
    Ok(vec![stem.with_extension("svg"), stem.with_extension("png")])
}
