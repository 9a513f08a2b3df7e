//! `harness eval`: re-evaluate a saved model at one threshold or over a sweep of thresholds
//! (the error-vs-compression trade-off).

use anyhow::{Context, Result};
use plotting::{Corner, LineFigure, Panel, Series};
use runner::output::write_atomic;
use runner::spec::LoadedExperiment;
use std::path::Path;

/// Thresholds of the sweep: log α from −2 to 7.5 in steps of 0.5 (inside the clip range).
fn sweep_thresholds() -> Vec<f64> {
    (0..20).map(|i| -2.0 + 0.5 * i as f64).collect()
}

pub fn run(
    exp: &LoadedExperiment,
    variant_name: &str,
    seed: Option<u64>,
    threshold: Option<f64>,
    sweep: bool,
    options: &runner::RunOptions,
    figures_dir: &Path,
) -> Result<()> {
    let variant = exp
        .spec
        .variant_index(variant_name)
        .with_context(|| format!("{}: no variant {variant_name}", exp.path.display()))?;
    let seeds = exp.spec.protocol_of(variant).seeds();
    let seed = seed.unwrap_or(seeds[0]);
    anyhow::ensure!(
        seeds.contains(&seed),
        "--seed {seed}: {variant_name} runs under seeds {seeds:?}"
    );
    let run = runner::spec::Run { variant, seed };
    let thresholds = if sweep {
        sweep_thresholds()
    } else {
        vec![threshold.unwrap_or(exp.spec.protocol.threshold)]
    };
    let results = runner::evaluate_saved(exp, run, options, &thresholds)?;
    println!("threshold  test error %  compression ×  % removed per layer");
    let mut csv = String::from("threshold,test_error_pct,compression\n");
    for (t, e) in &results {
        let compression = metrics::compression_ratio(&e.layers);
        let removed: Vec<String> = e
            .layers
            .iter()
            .map(|l| format!("{:.1}", l.removed_pct()))
            .collect();
        println!(
            "{t:>9.2}  {:>12.2}  {compression:>13.1}  {}",
            e.error_pct,
            removed.join(" / ")
        );
        csv.push_str(&format!("{t},{:.2},{compression:.3}\n", e.error_pct));
    }
    if !sweep {
        return Ok(());
    }
    let dir = options
        .results_dir
        .join(&exp.spec.name)
        .join(exp.spec.run_folder(run));
    let csv_path = dir.join("threshold_sweep.csv");
    write_atomic(&csv_path, csv.as_bytes())?;
    println!("wrote {}", csv_path.display());
    let series = |label: &str, f: &dyn Fn(&runner::train::Evaluation) -> f64| Series {
        label: label.into(),
        points: results.iter().map(|(t, e)| (*t, f(e))).collect(),
        spread: Vec::new(),
    };
    // A seed sweep's runs each get their own figure.
    let run_name = match exp.spec.protocol_of(variant).is_seed_sweep() {
        true => format!("{variant_name}_seed_{seed}"),
        false => variant_name.to_string(),
    };
    let figure = LineFigure {
        title: format!(
            "{} / {run_name}: error and compression against the log α threshold (training used {})",
            exp.spec.name, exp.spec.protocol.threshold
        ),
        x_label: "threshold on log α (weights with log α ≥ threshold removed)".into(),
        panels: vec![
            Panel {
                y_label: "test error (%)".into(),
                log_y: true,
                series: vec![series(variant_name, &|e| e.error_pct)],
                legend: Corner::UpperRight,
            },
            Panel {
                y_label: "compression (×)".into(),
                log_y: true,
                series: vec![series(variant_name, &|e| {
                    metrics::compression_ratio(&e.layers)
                })],
                legend: Corner::UpperRight,
            },
        ],
    };
    let stem = figures_dir.join(format!("{}_{run_name}_threshold_sweep", exp.spec.name));
    plotting::render(&figure, &stem)?;
    println!("wrote {}", stem.with_extension("svg").display());
    Ok(())
}
