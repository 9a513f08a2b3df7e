//! Runs experiments: reads an experiment file, trains each run (variant × seed) in stage order,
//! writes its results. The experiment schema is `spec`, the data `data`, the network factory
//! `network`, one run's training and recording `record`.

#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod adam;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod lock;
pub mod network;
pub mod output;
pub mod progress;
pub mod provenance;
pub mod record;
pub mod reference;
pub mod rng;
pub mod schedule;
pub mod seeds;
pub mod spec;
pub mod train;

pub use data::{Data, load_data};
pub use network::{WithNetwork, on_pool_worker, with_network};

use burn::tensor::Device;
use data::{subset, training_split};
use datasets::Split;
use output::Summary;
use record::{VariantJob, run_variant};
use reference::{PAPER_REFERENCE_FILE, PaperReference};
use sparsevd::{Network, WeightLayerView};
use spec::{Experiment, LayerKind, LoadedExperiment, Run};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    #[error("variant {variant}: {source}")]
    Train {
        variant: String,
        source: train::TrainError,
    },
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("{0}")]
    Reference(String),
    #[error("--variant {0}: no such variant in the experiment file (it has: {1})")]
    UnknownVariant(String, String),
    #[error("--seed {0}: no selected variant runs under this seed (their seeds: {1})")]
    UnknownSeed(u64, String),
    #[error(
        "{0}: the checkpoint there was written for another protocol (experiment file, epochs or seed changed); use --force to start over"
    )]
    StaleCheckpoint(PathBuf),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("{file}: net: {message}")]
    DataDoesNotFit { file: String, message: String },
}

/// How to run, beyond what the experiment file says.
pub struct RunOptions {
    pub device: Device,
    /// Backend name for provenance, e.g. "flex".
    pub backend: String,
    /// The device in words for provenance, e.g. "CPU: AMD EPYC" or a GPU's name.
    pub device_description: String,
    pub data_dir: PathBuf,
    /// Results go to `<results_dir>/<experiment name>/<variant>/` (and `seed_<n>/` below it in a
    /// seed sweep).
    pub results_dir: PathBuf,
    /// Run only these variants (all when empty).
    pub only_variants: Vec<String>,
    /// Run only under these seeds (every seed of the protocol when empty).
    pub only_seeds: Vec<u64>,
    /// Retrain a variant whose results already exist.
    pub force: bool,
    /// Train for this many epochs instead of the protocol's (a shortened run, labelled so).
    pub epochs: Option<usize>,
}

/// The paper's numbers for the rows `exp`'s variants name; none are read when no variant names
/// one (an experiment of one's own needs no reference file).
pub fn paper_reference_of(exp: &LoadedExperiment) -> Result<PaperReference, RunError> {
    if exp.spec.variants.iter().all(|v| v.paper.is_none()) {
        return Ok(PaperReference::default());
    }
    paper_reference_file(&exp.path)
}

/// The paper's numbers shipped with the project: the reference file beside the experiment file,
/// else the repository's.
fn paper_reference_file(experiment: &Path) -> Result<PaperReference, RunError> {
    let beside = experiment
        .parent()
        .unwrap_or(Path::new("."))
        .join("paper_reference.toml");
    let path = if beside.is_file() {
        beside
    } else {
        PathBuf::from(PAPER_REFERENCE_FILE)
    };
    PaperReference::load(&path).map_err(RunError::Reference)
}

pub fn experiment_dir(exp: &LoadedExperiment, options: &RunOptions) -> PathBuf {
    options.results_dir.join(&exp.spec.name)
}

/// Train every selected run of the experiment (each variant under each of its seeds) and write
/// its results, then the comparison.
pub fn run_experiment(
    exp: &LoadedExperiment,
    options: &RunOptions,
) -> Result<Vec<Summary>, RunError> {
    let spec = &exp.spec;
    let selected = selected_runs(spec, &options.only_variants, &options.only_seeds)?;
    let paper = paper_reference_of(exp)?;
    cpu::prepare_for_training();
    let data = load_data(exp, &options.data_dir)?;
    let dir = experiment_dir(exp, options);
    // Taken before training: the tree may change while a long run goes on.
    let commit = provenance::git_commit(exp.path.parent().unwrap_or(Path::new(".")));
    for run in spec.runs().into_iter().filter(|r| selected.contains(r)) {
        let variant = &spec.variants[run.variant];
        let run_dir = dir.join(spec.run_folder(run));
        let _lock = lock::VariantLock::acquire(&run_dir)?;
        // --force retrains the runs asked for, not the finished stages they start from.
        let forced =
            options.force && is_named(run, spec, &options.only_variants, &options.only_seeds);
        if forced {
            output::clear_variant(&run_dir)?;
        } else if run_dir.join(output::SUMMARY_CSV).is_file() {
            eprintln!(
                "{}: finished results exist in {}; not retraining (--force --variant {} retrains it)",
                variant.name,
                run_dir.display(),
                variant.name
            );
            continue;
        }
        let mut protocol = spec.run_protocol(run);
        if let Some(epochs) = options.epochs {
            protocol.epochs = epochs;
        }
        eprintln!(
            "== {} / {} =={}",
            spec.name,
            variant.name,
            match spec.protocol_of(run.variant).is_seed_sweep() {
                true => format!(" seed {} ==", run.seed),
                false => String::new(),
            }
        );
        run_variant(&VariantJob {
            exp,
            run,
            variant,
            planned_epochs: spec.protocol_of(run.variant).epochs,
            protocol: &protocol,
            train: training_split(&data.train, &protocol),
            test: subset(&data.test, protocol.test_subset),
            dir: &run_dir,
            source_dir: spec.source_run(run).map(|s| dir.join(spec.run_folder(s))),
            data_files: &data.files,
            paper: &paper,
            commit: &commit,
            options,
        })?;
    }
    write_comparison(exp, &dir, &paper)
}

/// Whether the command line's `--variant`s and `--seed`s name `run` (none of either names
/// every run).
pub fn is_named(run: Run, spec: &Experiment, variants: &[String], seeds: &[u64]) -> bool {
    let name = &spec.variants[run.variant].name;
    (variants.is_empty() || variants.contains(name))
        && (seeds.is_empty() || seeds.contains(&run.seed))
}

/// The runs to train: those of the variants and seeds named on the command line (all when
/// none), and the runs they start from, recursively (a finished one is reused, not retrained).
pub fn selected_runs(
    spec: &Experiment,
    variants: &[String],
    seeds: &[u64],
) -> Result<Vec<Run>, RunError> {
    let names: Vec<&str> = spec.variants.iter().map(|v| v.name.as_str()).collect();
    if let Some(bad) = variants.iter().find(|v| !names.contains(&v.as_str())) {
        return Err(RunError::UnknownVariant(bad.clone(), names.join(", ")));
    }
    let runs = spec.runs();
    // The seeds the named variants run under.
    let known: std::collections::BTreeSet<u64> = runs
        .iter()
        .filter(|&&r| is_named(r, spec, variants, &[]))
        .map(|r| r.seed)
        .collect();
    if let Some(&bad) = seeds.iter().find(|s| !known.contains(s)) {
        let known: Vec<String> = known.iter().map(u64::to_string).collect();
        return Err(RunError::UnknownSeed(bad, known.join(", ")));
    }
    let mut selected: Vec<Run> = runs
        .into_iter()
        .filter(|&r| is_named(r, spec, variants, seeds))
        .collect();
    let mut k = 0;
    while k < selected.len() {
        if let Some(source) = spec.source_run(selected[k])
            && !selected.contains(&source)
        {
            selected.push(source);
        }
        k += 1;
    }
    Ok(selected)
}

/// Error and compression of the saved model of `run` at each threshold, on the test set its
/// summary was computed on.
pub fn evaluate_saved(
    exp: &LoadedExperiment,
    run: Run,
    options: &RunOptions,
    thresholds: &[f64],
) -> Result<Vec<(f64, train::Evaluation)>, RunError> {
    struct Eval<'a> {
        layers: Vec<WeightLayerView>,
        norms: Vec<sparsevd::NormLayerView>,
        test: &'a Split,
        thresholds: &'a [f64],
        device: &'a Device,
        dir: PathBuf,
    }
    impl WithNetwork for Eval<'_> {
        type Output = Result<Vec<(f64, train::Evaluation)>, RunError>;
        fn run<N: Network>(self, model: N) -> Self::Output {
            let model = model
                .with_weight_layers(&self.layers)
                .and_then(|m| m.with_norm_layers(&self.norms))
                .map_err(|m| {
                    RunError::Output(output::OutputError::Read {
                        path: self.dir.join(output::MODEL_SAFETENSORS),
                        message: m,
                    })
                })?;
            Ok(self
                .thresholds
                .iter()
                .map(|&t| (t, train::evaluate(&model, self.test, t, self.device)))
                .collect())
        }
    }
    let variant = &exp.spec.variants[run.variant];
    let dir = experiment_dir(exp, options).join(exp.spec.run_folder(run));
    let (layers, norms) = output::read_model_and_norms(&dir)?;
    let data = load_data(exp, &options.data_dir)?;
    let mut protocol = exp.spec.run_protocol(run);
    // The variance form the model was trained with decides its log α's ε (sparsevd::LrtVariance).
    if variant.layer == LayerKind::SparseVd {
        protocol.lrt_variance = output::recorded_lrt_variance(&dir)?;
    }
    let eval = Eval {
        layers,
        norms,
        test: &subset(&data.test, protocol.test_subset),
        thresholds,
        device: &options.device,
        dir,
    };
    on_pool_worker(|| with_network(&exp.spec.net, variant, &protocol, &options.device, eval))
}

/// Record the training-spec hash ([`LoadedExperiment::run_sha256`]) in the provenance of each
/// finished run of `exp` under `results_dir` that has none and whose experiment-file hash is the
/// file's now, so that the spec the run trained under is exactly the one hashed. A Sparse VD run
/// whose provenance does not name its LRT variance form (it trained before the key, with σ²) is
/// stamped only if the file asks for σ² too. Returns one line per run: what was done or why not.
pub fn stamp_variant_hashes(
    exp: &LoadedExperiment,
    results_dir: &Path,
) -> Result<Vec<String>, RunError> {
    let mut lines = Vec::new();
    for run in exp.spec.runs() {
        let variant = &exp.spec.variants[run.variant];
        let dir = results_dir
            .join(&exp.spec.name)
            .join(exp.spec.run_folder(run));
        if !dir.join(output::SUMMARY_CSV).is_file() {
            lines.push(format!("{}: not finished, nothing to stamp", dir.display()));
            continue;
        }
        let mut provenance = output::read_provenance(&dir)?;
        let form = exp.spec.protocol_of(run.variant).lrt_variance.key();
        let line = if provenance.variant_sha256.is_some() {
            "already has its training-spec hash".to_string()
        } else if provenance.experiment_sha256 != exp.sha256() {
            "trained under another version of the file: rerun it instead".to_string()
        } else if variant.layer == LayerKind::SparseVd && provenance.lrt_variance_key() != form {
            format!(
                "trained with lrt_variance = {}, the file now says {form}: rerun it",
                provenance.lrt_variance_key()
            )
        } else {
            provenance.variant_sha256 = Some(exp.run_sha256(run));
            output::write_provenance(&dir, &provenance)?;
            "stamped".to_string()
        };
        lines.push(format!("{}: {line}", dir.display()));
    }
    Ok(lines)
}

/// Rewrite `results_dir/<experiment>/comparison.md` from the finished variants on disk (after a
/// change to the table's columns, without retraining).
pub fn rewrite_comparison(
    exp: &LoadedExperiment,
    results_dir: &Path,
) -> Result<Vec<Summary>, RunError> {
    let paper = paper_reference_of(exp)?;
    write_comparison(exp, &results_dir.join(&exp.spec.name), &paper)
}

/// Rewrite the experiment's comparison table from the finished runs on disk (a seed sweep's
/// variant as the mean ± std of its runs); returns each variant's mean summary.
fn write_comparison(
    exp: &LoadedExperiment,
    dir: &Path,
    paper: &PaperReference,
) -> Result<Vec<Summary>, RunError> {
    let mut rows = Vec::new();
    for (index, variant) in exp.spec.variants.iter().enumerate() {
        let runs = seeds::finished_runs(&exp.spec, dir, index)?;
        if runs.is_empty() {
            continue;
        }
        let reference = variant.paper.as_ref().and_then(|key| paper.find(key));
        rows.push((runs, reference.cloned()));
    }
    if !rows.is_empty() {
        output::write_comparison(dir, &exp.spec.name, &rows)?;
    }
    Ok(rows.iter().filter_map(|(r, _)| r.mean_summary()).collect())
}
