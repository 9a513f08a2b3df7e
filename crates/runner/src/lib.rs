//! Runs experiments: reads an experiment file, trains each variant, writes its results.

pub mod checkpoint;
pub mod cpu;
pub mod lock;
pub mod output;
pub mod progress;
pub mod provenance;
pub mod reference;
pub mod rng;
pub mod schedule;
pub mod spec;
pub mod train;

use burn::tensor::Device;
use datasets::Mnist;
use output::Summary;
use provenance::Provenance;
use reference::{PAPER_REFERENCE_FILE, PaperReference};
use sparsevd::{LeNet5Config, MlpConfig, Network};
use spec::{Dataset, LayerKind, LoadedExperiment, Net, Variant};
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
    #[error(
        "{0}: the checkpoint there was written for another protocol (experiment file, epochs or seed changed); use --force to start over"
    )]
    StaleCheckpoint(PathBuf),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
}

/// How to run, beyond what the experiment file says.
pub struct RunOptions {
    pub device: Device,
    /// Backend name for provenance, e.g. "flex".
    pub backend: String,
    /// The device in words for provenance, e.g. "CPU: <model>" or a GPU's name.
    pub device_description: String,
    pub data_dir: PathBuf,
    /// Results go to `<results_dir>/<experiment name>/<variant>/`.
    pub results_dir: PathBuf,
    /// Run only these variants (all when empty).
    pub only_variants: Vec<String>,
    /// Retrain a variant whose results already exist.
    pub force: bool,
    /// Train for this many epochs instead of the protocol's (a shortened run, labelled so).
    pub epochs: Option<usize>,
}

/// The paper's numbers shipped with the project, found beside the experiment file.
pub fn paper_reference_for(experiment: &Path) -> Result<PaperReference, RunError> {
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

/// Train every selected variant of the experiment and write its results, then the comparison.
pub fn run_experiment(
    exp: &LoadedExperiment,
    options: &RunOptions,
) -> Result<Vec<Summary>, RunError> {
    let spec = &exp.spec;
    let names: Vec<&str> = spec.variants.iter().map(|v| v.name.as_str()).collect();
    if let Some(bad) = options
        .only_variants
        .iter()
        .find(|v| !names.contains(&v.as_str()))
    {
        return Err(RunError::UnknownVariant(bad.clone(), names.join(", ")));
    }
    let paper = paper_reference_for(&exp.path)?;
    cpu::prepare_for_training();
    let Dataset::Mnist = spec.dataset;
    let mut data = Mnist::load(&options.data_dir)?;
    if let Some(n) = spec.protocol.train_subset {
        data.train = data.train.truncated(n);
    }
    if let Some(n) = spec.protocol.test_subset {
        data.test = data.test.truncated(n);
    }
    let mut protocol = spec.protocol.clone();
    if let Some(epochs) = options.epochs {
        protocol.epochs = epochs;
    }
    let dir = experiment_dir(exp, options);
    // Taken before training: the tree may change while a long run goes on.
    let commit = provenance::git_commit(exp.path.parent().unwrap_or(Path::new(".")));
    for variant in &spec.variants {
        if !options.only_variants.is_empty() && !options.only_variants.contains(&variant.name) {
            continue;
        }
        let variant_dir = dir.join(&variant.name);
        let _lock = lock::VariantLock::acquire(&variant_dir)?;
        if options.force {
            output::clear_variant(&variant_dir)?;
        } else if variant_dir.join(output::SUMMARY_CSV).is_file() {
            eprintln!(
                "{}: finished results exist in {}; not retraining (use --force to overwrite)",
                variant.name,
                variant_dir.display()
            );
            continue;
        }
        eprintln!("== {} / {} ==", spec.name, variant.name);
        run_variant(&VariantJob {
            exp,
            variant,
            protocol: &protocol,
            data: &data,
            dir: &variant_dir,
            paper: &paper,
            commit: &commit,
            options,
        })?;
    }
    write_comparison(exp, &dir, &paper)
}

/// One variant to train, with everything it is trained and recorded with.
struct VariantJob<'a> {
    exp: &'a LoadedExperiment,
    variant: &'a Variant,
    /// The file's protocol with command-line overrides applied.
    protocol: &'a spec::Protocol,
    data: &'a Mnist,
    dir: &'a Path,
    paper: &'a PaperReference,
    commit: &'a str,
    options: &'a RunOptions,
}

/// Work to do with a freshly initialised network, whichever net the experiment names.
pub trait WithNetwork {
    type Output;
    fn run<N: Network>(self, model: N) -> Self::Output;
}

/// Initialise the experiment's net (seeded, with the variant's layers) and hand it to `job`.
pub fn with_network<J: WithNetwork>(
    net: Net,
    layer: LayerKind,
    protocol: &spec::Protocol,
    device: &Device,
    job: J,
) -> J::Output {
    device.seed(rng::derive_seed(protocol.seed, train::STREAM_INIT, 0));
    let log_sigma2 = (layer == LayerKind::SparseVd).then_some(protocol.init.log_sigma2);
    match net {
        Net::Lenet300 => job.run(
            MlpConfig::lenet300(log_sigma2)
                .with_init_std(protocol.init.theta_std)
                .init(device),
        ),
        Net::Lenet5 => job.run(
            LeNet5Config::new()
                .with_dense_init_std(protocol.init.theta_std)
                .with_log_sigma2_init(log_sigma2)
                .init(device),
        ),
    }
}

impl WithNetwork for &VariantJob<'_> {
    type Output = Result<(), RunError>;
    fn run<N: Network>(self, model: N) -> Self::Output {
        train_and_record(self, model)
    }
}

fn run_variant(job: &VariantJob<'_>) -> Result<(), RunError> {
    with_network(
        job.exp.spec.net,
        job.variant.layer,
        job.protocol,
        &job.options.device,
        job,
    )
}

/// Error and compression of a saved model at each threshold, on the full test set.
pub fn evaluate_saved(
    exp: &LoadedExperiment,
    variant: &Variant,
    options: &RunOptions,
    thresholds: &[f64],
) -> Result<Vec<(f64, train::Evaluation)>, RunError> {
    struct Eval<'a> {
        layers: Vec<sparsevd::WeightLayerView>,
        test: &'a datasets::Split,
        thresholds: &'a [f64],
        device: &'a Device,
        dir: PathBuf,
    }
    impl WithNetwork for Eval<'_> {
        type Output = Result<Vec<(f64, train::Evaluation)>, RunError>;
        fn run<N: Network>(self, model: N) -> Self::Output {
            let model = model.with_weight_layers(&self.layers).map_err(|m| {
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
    let dir = experiment_dir(exp, options).join(&variant.name);
    let layers = output::read_model(&dir)?;
    let Dataset::Mnist = exp.spec.dataset;
    let data = Mnist::load(&options.data_dir)?;
    let eval = Eval {
        layers,
        test: &data.test,
        thresholds,
        device: &options.device,
        dir,
    };
    with_network(
        exp.spec.net,
        variant.layer,
        &exp.spec.protocol,
        &options.device,
        eval,
    )
}

/// Train `model` as the job says and write every result file.
fn train_and_record<N: Network>(job: &VariantJob<'_>, model: N) -> Result<(), RunError> {
    let VariantJob {
        exp,
        variant,
        protocol,
        data,
        dir,
        paper,
        commit,
        options,
    } = *job;
    let spec = &exp.spec;
    let device = &options.device;
    let started = provenance::now_rfc3339();
    let layer_names: Vec<String> = model.weight_layers().into_iter().map(|l| l.name).collect();
    let mut state = checkpoint::CheckpointState {
        epochs_completed: 0,
        epochs_planned: protocol.epochs,
        experiment_sha256: exp.sha256(),
        seed: protocol.seed,
    };
    let (mut model, mut optimizer) = (model, train::optimizer(&protocol.optimizer));
    let mut records = Vec::new();
    if let Some(saved) = checkpoint::read_state(dir)? {
        if (saved.epochs_planned, &saved.experiment_sha256, saved.seed)
            != (state.epochs_planned, &state.experiment_sha256, state.seed)
        {
            return Err(RunError::StaleCheckpoint(dir.to_path_buf()));
        }
        (model, optimizer) = checkpoint::load(dir, &saved, model, optimizer)?;
        records = output::read_epoch_records(dir)?;
        records.truncate(saved.epochs_completed);
        eprintln!(
            "resuming from the checkpoint after epoch {} in {}",
            saved.epochs_completed,
            dir.display()
        );
        state = saved;
    }
    let resumed_after_epoch = state.epochs_completed;
    let settings = train::TrainSettings {
        protocol,
        device,
        start_epoch: state.epochs_completed,
    };
    let model = train::train(
        model,
        optimizer,
        &data.train,
        &data.test,
        &settings,
        |record, model, optimizer| {
            records.push(record.clone());
            output::write_epochs(dir, &layer_names, &records).map_err(|e| e.to_string())?;
            state.epochs_completed = record.epoch;
            checkpoint::save(dir, model, optimizer, &state).map_err(|e| e.to_string())
        },
    )
    .map_err(|source| RunError::Train {
        variant: variant.name.clone(),
        source,
    })?;

    let last = records.last().expect("at least one epoch is validated");
    // Σ epoch times (training and evaluation) over every segment of a resumed run.
    let wall: f64 = records.iter().map(|r| r.seconds).sum();
    let mut shortened_how = Vec::new();
    if protocol.epochs < spec.protocol.epochs {
        shortened_how.push(format!(
            "{} of {} epochs",
            protocol.epochs, spec.protocol.epochs
        ));
    }
    if let Some(n) = protocol.train_subset {
        shortened_how.push(format!("first {n} training images"));
    }
    if let Some(n) = protocol.test_subset {
        shortened_how.push(format!("first {n} test images"));
    }
    let reference = paper.find(&variant.paper.net, &variant.paper.method);
    let summary = Summary {
        experiment: spec.name.clone(),
        variant: variant.name.clone(),
        net: spec.net.key().to_string(),
        dataset: "mnist".to_string(),
        epochs: last.epoch,
        shortened: !shortened_how.is_empty(),
        test_error_pct: last.test_error_pct,
        compression: last.compression,
        removed_pct_per_layer: last
            .removed_pct_per_layer
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(";"),
        paper_error_pct: reference.map(|r| r.error_pct),
        paper_compression: reference.and_then(|r| r.compression),
        wall_time_s: wall,
    };
    let provenance = Provenance {
        experiment_file: exp.path.display().to_string(),
        experiment_sha256: exp.sha256(),
        variant: variant.name.clone(),
        commit: commit.to_string(),
        backend: options.backend.clone(),
        device: options.device_description.clone(),
        threads: provenance::threads(),
        seed: protocol.seed,
        epochs_planned: spec.protocol.epochs,
        epochs_completed: last.epoch,
        shortened: summary.shortened,
        shortened_how: shortened_how.join(", "),
        train_examples: data.train.len(),
        test_examples: data.test.len(),
        wall_time_s: wall,
        mean_epoch_s: wall / records.len() as f64,
        resumed_after_epoch,
        started,
        finished: provenance::now_rfc3339(),
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let description = format!(
        "experiment={}; variant={}; net={}; threshold={}; dense theta and log_sigma2 are [d_in, d_out], y = x @ theta + bias; conv theta and log_sigma2 are [out, in, kh, kw]",
        spec.name,
        variant.name,
        spec.net.key(),
        protocol.threshold
    );
    let metadata = [("harness", description)];
    output::write_model(dir, &model.weight_layers(), &metadata)?;
    output::write_provenance(dir, &provenance)?;
    // The summary is written last: its presence marks a finished run.
    output::write_summary(dir, &summary)?;
    checkpoint::remove(dir);
    Ok(())
}

/// Rewrite the experiment's comparison table from the finished variants on disk.
fn write_comparison(
    exp: &LoadedExperiment,
    dir: &Path,
    paper: &PaperReference,
) -> Result<Vec<Summary>, RunError> {
    let mut rows = Vec::new();
    for variant in &exp.spec.variants {
        let variant_dir = dir.join(&variant.name);
        if !variant_dir.join(output::SUMMARY_CSV).is_file() {
            continue;
        }
        let summary = output::read_summary(&variant_dir)?;
        rows.push((
            summary,
            paper
                .find(&variant.paper.net, &variant.paper.method)
                .cloned(),
        ));
    }
    if !rows.is_empty() {
        output::write_comparison(dir, &exp.spec.name, &rows)?;
    }
    Ok(rows.into_iter().map(|(s, _)| s).collect())
}
