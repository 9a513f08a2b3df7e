//! A variant's finished runs across its seeds, and their mean ± standard deviation: what every
//! table shows for a variant whose protocol has `seeds`.

use crate::output::{self, OutputError, Summary};
use crate::spec::{Experiment, Run};
use std::path::{Path, PathBuf};

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for one value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = if values.len() < 2 {
        0.0
    } else {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    Spread { mean, std }
}

/// One finished run of a variant.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub seed: u64,
    pub dir: PathBuf,
    pub summary: Summary,
}

/// The finished runs of one variant, in the order of its seeds.
#[derive(Debug, Clone)]
pub struct VariantRuns {
    /// The seeds the protocol names (one without `seeds`).
    pub seeds_planned: Vec<u64>,
    /// Whether the protocol is a seed sweep: its tables say how many seeds a number is over.
    pub sweep: bool,
    pub runs: Vec<FinishedRun>,
}

/// (seed, folder) of every run of variant `index` of `spec` under `experiment_dir`, finished
/// or not, in the order of its seeds.
pub fn run_dirs(spec: &Experiment, experiment_dir: &Path, index: usize) -> Vec<(u64, PathBuf)> {
    let seeds = spec.protocol_of(index).seeds();
    seeds
        .into_iter()
        .map(|seed| {
            let run = Run {
                variant: index,
                seed,
            };
            (seed, experiment_dir.join(spec.run_folder(run)))
        })
        .collect()
}

/// The finished runs (those with a `summary.csv`) of variant `index` of `spec`, whose results
/// lie under `experiment_dir`.
pub fn finished_runs(
    spec: &Experiment,
    experiment_dir: &Path,
    index: usize,
) -> Result<VariantRuns, OutputError> {
    let protocol = spec.protocol_of(index);
    let mut runs = Vec::new();
    for (seed, dir) in run_dirs(spec, experiment_dir, index) {
        if dir.join(output::SUMMARY_CSV).is_file() {
            let summary = output::read_summary(&dir)?;
            runs.push(FinishedRun { seed, dir, summary });
        }
    }
    Ok(VariantRuns {
        seeds_planned: protocol.seeds(),
        sweep: protocol.is_seed_sweep(),
        runs,
    })
}

impl VariantRuns {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    fn spread_of(&self, value: impl Fn(&Summary) -> f64) -> Spread {
        let values: Vec<f64> = self.runs.iter().map(|r| value(&r.summary)).collect();
        spread(&values)
    }

    pub fn error(&self) -> Spread {
        self.spread_of(|s| s.test_error_pct)
    }

    /// Spread of the compression ratios (the mean is the arithmetic mean of the runs' ratios).
    pub fn compression(&self) -> Spread {
        self.spread_of(|s| s.compression)
    }

    /// The runs' summary with every number the mean over the runs (per-layer % removed too),
    /// shortened if any run is; `None` without finished runs.
    pub fn mean_summary(&self) -> Option<Summary> {
        let first = &self.runs.first()?.summary;
        let removed = self
            .removed_per_layer()
            .iter()
            .map(|s| format!("{:.2}", s.mean))
            .collect::<Vec<_>>()
            .join(";");
        let train: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.summary.train_error_pct)
            .collect();
        Some(Summary {
            shortened: self.runs.iter().any(|r| r.summary.shortened),
            test_error_pct: self.error().mean,
            compression: self.compression().mean,
            removed_pct_per_layer: removed,
            wall_time_s: self.spread_of(|s| s.wall_time_s).mean,
            train_error_pct: (!train.is_empty()).then(|| spread(&train).mean),
            ..first.clone()
        })
    }

    /// % of weights removed per layer, input to output: mean and std over the runs (the first
    /// run's layer count; empty without finished runs).
    pub fn removed_per_layer(&self) -> Vec<Spread> {
        let layers: Vec<Vec<f64>> = self
            .runs
            .iter()
            .map(|r| {
                r.summary
                    .removed_pct_per_layer
                    .split(';')
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .collect();
        let count = layers.first().map_or(0, Vec::len);
        (0..count)
            .map(|l| {
                let per_run: Vec<f64> = layers.iter().filter_map(|r| r.get(l).copied()).collect();
                spread(&per_run)
            })
            .collect()
    }

    /// `2.31` for one run, `2.31 ± 0.07` over several (`decimals` after the point).
    pub fn format(spread: Spread, n: usize, decimals: usize) -> String {
        match n {
            1 => format!("{:.*}", decimals, spread.mean),
            _ => format!("{:.*} ± {:.*}", decimals, spread.mean, decimals, spread.std),
        }
    }

    /// Which seeds the numbers are over: `seed 1`, `seed 1 only (1 of 5 seeds)`, `mean ± std
    /// over 5 seeds (n = 5)`, or `mean ± std over 2 of 5 seeds (n = 2: seeds 1, 2)`.
    pub fn seeds_in_words(&self) -> String {
        let finished: Vec<String> = self.runs.iter().map(|r| r.seed.to_string()).collect();
        let planned = self.seeds_planned.len();
        match (self.sweep, self.runs.len()) {
            (false, _) => format!("seed {}", finished.join(", ")),
            (true, 1) => format!("seed {} only (1 of {planned} seeds)", finished[0]),
            (true, n) if n == planned => format!("mean ± std over {n} seeds (n = {n})"),
            (true, n) => format!(
                "mean ± std over {n} of {planned} seeds (n = {n}: seeds {})",
                finished.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_mean_and_the_sample_standard_deviation() {
        let s = spread(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        // Σ(x − 2.5)² = 5, over n − 1 = 3.
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(
            spread(&[7.0]),
            Spread {
                mean: 7.0,
                std: 0.0
            }
        );
    }

    #[test]
    fn one_run_shows_no_spread() {
        let s = Spread {
            mean: 1.234,
            std: 0.5,
        };
        assert_eq!(VariantRuns::format(s, 1, 2), "1.23");
        assert_eq!(VariantRuns::format(s, 3, 2), "1.23 ± 0.50");
    }
}
