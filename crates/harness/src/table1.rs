//! `results/table1.md` and `results/table1.csv`: every row of the paper's Table 1 with ours
//! beside the rows we reproduce, regenerated from the committed results.

use anyhow::{Context, Result};
use plotting::{Corner, LineFigure, Panel, Series};
use runner::output::{self, write_atomic};
use runner::reference::PaperReference;
use runner::spec::LoadedExperiment;
use std::path::{Path, PathBuf};

/// Table 1's nets in the paper's order, with the experiment file that reproduces each.
const NETS: [(&str, &str, &str); 2] = [
    ("lenet300", "LeNet-300-100", "experiments/lenet300.toml"),
    ("lenet5", "LeNet-5-Caffe", "experiments/lenet5.toml"),
];
const METHODS: [(&str, &str); 5] = [
    ("original", "Original"),
    ("pruning", "Pruning (Han et al.)"),
    ("dns", "DNS (Guo et al.)"),
    ("sws", "SWS (Ullrich et al.)"),
    ("sparse_vd", "Sparse VD"),
];

struct Row {
    net: String,
    method: String,
    source: String,
    error_pct: f64,
    /// % of weights removed per layer, input to output (empty when not reported).
    removed: Vec<f64>,
    compression: Option<f64>,
    /// Our rows over several seeds: (n, std of the error, std of the compression).
    spread: Option<(usize, f64, f64)>,
    note: String,
}

/// Write the table (Markdown and CSV) and its figure of % removed per layer.
pub fn write(repo: &Path, results_dir: &Path, figures_dir: &Path) -> Result<Vec<PathBuf>> {
    let rows = rows(repo, results_dir)?;
    let md_path = results_dir.join("table1.md");
    let csv_path = results_dir.join("table1.csv");
    write_atomic(&md_path, markdown(&rows).as_bytes())?;
    write_atomic(&csv_path, &csv(&rows)?)?;
    let mut written = vec![md_path, csv_path];
    written.extend(removed_per_layer_figure(&rows, figures_dir)?);
    Ok(written)
}

/// Every paper row of Table 1, each followed by ours where we reproduce it.
fn rows(repo: &Path, results_dir: &Path) -> Result<Vec<Row>> {
    let paper = PaperReference::load(&repo.join(runner::reference::PAPER_REFERENCE_FILE))
        .map_err(anyhow::Error::msg)?;
    let mut rows = Vec::new();
    for (net, net_name, file) in NETS {
        let exp = LoadedExperiment::load(&repo.join(file))?;
        for (method, method_name) in METHODS {
            let key = runner::spec::PaperKey {
                net: net.to_string(),
                method: method.to_string(),
                k: None,
                dataset: None,
            };
            if let Some(p) = paper.find(&key) {
                rows.push(Row {
                    net: net_name.into(),
                    method: method_name.into(),
                    source: format!("paper ({})", p.source),
                    error_pct: p.error_pct,
                    removed: p.removed_pct_per_layer.clone().unwrap_or_default(),
                    compression: p.compression,
                    spread: None,
                    note: String::new(),
                });
            }
            for (index, variant) in exp.spec.variants.iter().enumerate() {
                if variant.paper.as_ref().is_none_or(|p| p.method != method) {
                    continue;
                }
                let dir = results_dir.join(&exp.spec.name);
                let runs = runner::seeds::finished_runs(&exp.spec, &dir, index)?;
                rows.push(match runs.mean_summary() {
                    Some(s) => ours(&runs, &s, variant, (net_name, method_name))?,
                    None => Row {
                        net: net_name.into(),
                        method: method_name.into(),
                        source: "ours".into(),
                        error_pct: f64::NAN,
                        removed: Vec::new(),
                        compression: None,
                        spread: None,
                        note: format!("not run yet (`cargo run --release -p harness -- {file}`)"),
                    },
                });
            }
        }
    }
    Ok(rows)
}

/// Our row of a variant from its finished runs (`s`: their mean summary).
fn ours(
    runs: &runner::seeds::VariantRuns,
    s: &output::Summary,
    variant: &runner::spec::Variant,
    (net, method): (&str, &str),
) -> Result<Row> {
    let first = &runs.runs[0].dir;
    let p = output::read_provenance(first).with_context(|| first.display().to_string())?;
    let mut note = if s.shortened {
        format!("SHORTENED run: {}", p.shortened_how)
    } else {
        format!(
            "{} epochs, {}, {} backend, {} threads, {:.0} s of training{}",
            s.epochs,
            runs.seeds_in_words(),
            p.backend,
            p.threads,
            s.wall_time_s,
            if runs.runs.len() > 1 {
                " per run (mean)"
            } else {
                ""
            }
        )
    };
    if variant.layer == runner::spec::LayerKind::SparseVd {
        let form = output::recorded_lrt_variance(first)?;
        note += &format!(", LRT variance {}", form.key());
    }
    let n = runs.runs.len();
    Ok(Row {
        net: net.into(),
        method: method.into(),
        source: "ours".into(),
        error_pct: s.test_error_pct,
        removed: s
            .removed_pct_per_layer
            .split(';')
            .filter_map(|v| v.parse().ok())
            .collect(),
        compression: Some(s.compression),
        spread: (n > 1).then(|| (n, runs.error().std, runs.compression().std)),
        note,
    })
}

/// % of weights removed per layer for every method that reports it, one panel per net, ours
/// drawn beside the paper's rows.
fn removed_per_layer_figure(rows: &[Row], figures_dir: &Path) -> Result<Vec<PathBuf>> {
    // Legends go where each net's lines leave room.
    let corners = [Corner::LowerLeft, Corner::LowerRight];
    let panels = NETS
        .iter()
        .zip(corners)
        .map(|((_, net_name, _), legend)| Panel {
            y_label: format!("{net_name}: % of weights removed"),
            log_y: false,
            series: rows
                .iter()
                // The original nets remove nothing; their all-zero line says nothing here.
                .filter(|r| r.net == *net_name && !r.removed.is_empty() && r.method != "Original")
                .map(|r| Series {
                    label: format!(
                        "{} ({})",
                        r.method,
                        if r.source == "ours" { "ours" } else { "paper" }
                    ),
                    points: r
                        .removed
                        .iter()
                        .enumerate()
                        .map(|(i, &p)| ((i + 1) as f64, p))
                        .collect(),
                    spread: Vec::new(),
                })
                .collect(),
            legend,
        })
        .collect();
    let figure = LineFigure {
        title: "Table 1: % of weights removed per layer".into(),
        x_label: "weight layer, input to output".into(),
        panels,
    };
    crate::figures::write(&figure, figures_dir, "table1_removed_per_layer")
}

fn fmt_error(e: f64) -> String {
    if e.is_nan() {
        "–".into()
    } else {
        format!("{e:.2}")
    }
}

fn fmt_removed(removed: &[f64]) -> String {
    if removed.is_empty() {
        return "–".into();
    }
    removed
        .iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn fmt_compression(c: Option<f64>) -> String {
    c.map_or("–".into(), |c| format!("{c:.1}"))
}

fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "# Table 1: LeNet-300-100 and LeNet-5-Caffe on MNIST\n\n\
         Written by `harness report` from `experiments/paper_reference.toml` (the paper's numbers) and the committed \
         runs under `results/` (ours). Error is test error in %; compression is |W| / |W ≠ 0| over weight layers; \
         % removed is per weight layer, input to output. Our rows over several seeds show mean ± sample standard \
         deviation (their % removed is the mean). Rows marked SHORTENED did not follow the full protocol.\n\n\
         | net | method | source | error % | % removed per layer | compression (×) | notes |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let bold = |s: String| {
            if r.source == "ours" {
                format!("**{s}**")
            } else {
                s
            }
        };
        let (error, compression) = match r.spread {
            Some((_, error_std, compression_std)) => (
                format!("{} ± {error_std:.2}", bold(fmt_error(r.error_pct))),
                format!(
                    "{} ± {compression_std:.1}",
                    bold(fmt_compression(r.compression))
                ),
            ),
            None => (
                bold(fmt_error(r.error_pct)),
                bold(fmt_compression(r.compression)),
            ),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {error} | {} | {compression} | {} |\n",
            r.net,
            r.method,
            r.source,
            fmt_removed(&r.removed),
            r.note
        ));
    }
    md
}

fn csv(rows: &[Row]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "net",
        "method",
        "source",
        "error_pct",
        "removed_pct_per_layer",
        "compression",
        "seeds_n",
        "error_pct_std",
        "compression_std",
        "notes",
    ])?;
    for r in rows {
        let error = if r.error_pct.is_nan() {
            String::new()
        } else {
            format!("{:.2}", r.error_pct)
        };
        let compression = r.compression.map_or(String::new(), |c| format!("{c:.3}"));
        let removed = r
            .removed
            .iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(";");
        let (n, error_std, compression_std) = match r.spread {
            Some((n, e, c)) => (n.to_string(), format!("{e:.3}"), format!("{c:.3}")),
            None => Default::default(),
        };
        w.write_record([
            &r.net,
            &r.method,
            &r.source,
            &error,
            &removed,
            &compression,
            &n,
            &error_std,
            &compression_std,
            &r.note,
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))
}
