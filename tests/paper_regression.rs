//! Regression tests: the committed results under `results/` hold against the paper's numbers
//! within the tolerances their experiment files declare, carry provenance, and were produced
//! from the experiment file now in the tree (same sha256), so they cannot silently go stale. A
//! variant run under several seeds is held by the mean over its finished runs.

use runner::output;
use runner::seeds::{FinishedRun, VariantRuns};
use runner::spec::{LoadedExperiment, Run};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every experiment file of the project (the paper's reference file is not one).
fn experiments() -> Vec<LoadedExperiment> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("experiments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml") && !p.ends_with("paper_reference.toml")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| LoadedExperiment::load(p).unwrap())
        .collect()
}

fn experiment_dir(exp: &LoadedExperiment) -> PathBuf {
    repo().join("results").join(&exp.spec.name)
}

/// The committed finished runs of variant `index`.
fn committed(exp: &LoadedExperiment, index: usize) -> VariantRuns {
    runner::seeds::finished_runs(&exp.spec, &experiment_dir(exp), index).unwrap()
}

/// Check the committed runs of variant `index`: each run's provenance, then the mean over the
/// runs against the paper within the variant's tolerance. Returns what is wrong, if anything.
fn check_variant(exp: &LoadedExperiment, index: usize, runs: &VariantRuns) -> Vec<String> {
    let variant = &exp.spec.variants[index];
    let mut problems = Vec::new();
    for FinishedRun { seed, dir, summary } in &runs.runs {
        let run = Run {
            variant: index,
            seed: *seed,
        };
        match output::read_provenance(dir) {
            Err(e) => problems.push(e.to_string()),
            Ok(p) => {
                if let Some(why) = p.stale_against(exp, run) {
                    problems.push(format!("{}: {why}; rerun the experiment", dir.display()));
                }
                if p.commit.is_empty()
                    || p.backend.is_empty()
                    || p.device.is_empty()
                    || p.finished.is_empty()
                {
                    problems.push(format!("{}: provenance is incomplete", dir.display()));
                }
                if p.seed != *seed {
                    problems.push(format!(
                        "{}: provenance says seed {}, the folder is seed {seed}'s",
                        dir.display(),
                        p.seed
                    ));
                }
                if p.epochs_completed != summary.epochs {
                    problems.push(format!(
                        "{}: provenance and summary disagree on epochs",
                        dir.display()
                    ));
                }
            }
        }
    }
    let Some(summary) = runs.mean_summary() else {
        return problems;
    };
    let dir = experiment_dir(exp).join(&variant.name);
    let dir = match runs.runs.len() {
        1 => runs.runs[0].dir.clone(),
        n => PathBuf::from(format!("{} (mean of {n} seeds)", dir.display())),
    };
    let Some(tolerance) = variant.tolerance else {
        return problems;
    };
    if summary.shortened {
        problems.push(format!(
            "{}: a shortened run cannot stand for the paper protocol",
            dir.display()
        ));
    }
    if let Some(paper_error) = summary.paper_error_pct
        && summary.test_error_pct > paper_error + tolerance.error_pp
    {
        problems.push(format!(
            "{}: test error {:.2}% exceeds the paper's {:.2}% + {} pp",
            dir.display(),
            summary.test_error_pct,
            paper_error,
            tolerance.error_pp
        ));
    }
    if let Some(paper_compression) = summary.paper_compression
        && summary.compression < tolerance.compression_fraction * paper_compression
    {
        problems.push(format!(
            "{}: compression {:.1}× is below {} × the paper's {:.0}×",
            dir.display(),
            summary.compression,
            tolerance.compression_fraction,
            paper_compression
        ));
    }
    problems
}

#[test]
fn committed_results_hold_against_the_paper() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for exp in experiments() {
        for (index, variant) in exp.spec.variants.iter().enumerate() {
            let runs = committed(&exp, index);
            if runs.is_empty() {
                if variant.tolerance.is_some() {
                    eprintln!(
                        "{}/{}: not run yet; nothing to hold against the paper",
                        exp.spec.name, variant.name
                    );
                }
                continue;
            }
            checked += runs.runs.len();
            problems.extend(check_variant(&exp, index, &runs));
        }
    }
    assert!(checked > 0, "no committed results found under results/");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_edited_worse_result_fails_the_check() {
    // Copy a committed Sparse VD result, make its error worse, and check it is caught.
    let (exp, index, mut runs) = experiments()
        .into_iter()
        .find_map(|e| {
            let index = (0..e.spec.variants.len()).find(|&i| {
                e.spec.variants[i].tolerance.is_some() && !committed(&e, i).is_empty()
            })?;
            let runs = committed(&e, index);
            Some((e, index, runs))
        })
        .expect("a committed result with a tolerance");
    let tmp = std::env::temp_dir().join(format!("regression-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = runs.runs[0].dir.clone();
    for f in [output::SUMMARY_CSV, output::PROVENANCE_TOML] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    runs.runs.truncate(1);
    runs.runs[0].dir = tmp.clone();
    assert!(check_variant(&exp, index, &runs).is_empty());
    let mut summary = runs.runs[0].summary.clone();
    summary.test_error_pct += 1.0;
    runs.runs[0].summary = summary.clone();
    assert!(
        !check_variant(&exp, index, &runs).is_empty(),
        "a 1 pp worse error must fail"
    );
    summary.test_error_pct -= 1.0;
    summary.compression /= 10.0;
    runs.runs[0].summary = summary;
    assert!(
        !check_variant(&exp, index, &runs).is_empty(),
        "10× less compression must fail"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn saved_models_reproduce_their_summaries() {
    // An independent path to the committed numbers: reload each saved model, evaluate it on the
    // real test set at the protocol's threshold, and compare with its summary.csv.
    let mut checked = 0;
    for exp in experiments() {
        for run in exp.spec.runs() {
            let dir = experiment_dir(&exp).join(exp.spec.run_folder(run));
            if !dir.join(output::SUMMARY_CSV).is_file() {
                continue;
            }
            let summary = output::read_summary(&dir).unwrap();
            if summary.shortened {
                continue;
            }
            let options = runner::RunOptions {
                device: burn::tensor::Device::flex(),
                backend: "flex".into(),
                device_description: "CPU (test)".into(),
                data_dir: datasets::data_dir(None),
                results_dir: repo().join("results"),
                only_variants: vec![],
                only_seeds: vec![],
                force: false,
                epochs: None,
            };
            let threshold = exp.spec.protocol.threshold;
            let (_, eval) = runner::evaluate_saved(&exp, run, &options, &[threshold])
                .unwrap()
                .remove(0);
            let compression = metrics::compression_ratio(&eval.layers);
            assert!(
                (eval.error_pct - summary.test_error_pct).abs() < 0.005,
                "{}: reloaded model has {:.2}% error, summary says {:.2}%",
                dir.display(),
                eval.error_pct,
                summary.test_error_pct
            );
            assert!(
                (compression - summary.compression).abs() / summary.compression < 1e-3,
                "{}: reloaded model compresses {compression:.2}×, summary says {:.2}×",
                dir.display(),
                summary.compression
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no committed full-protocol result to re-evaluate"
    );
}
