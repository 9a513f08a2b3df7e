//! Runs experiments: reads an experiment file, trains each variant, writes its results.

#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod adam;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod lock;
pub mod output;
pub mod progress;
pub mod provenance;
pub mod reference;
pub mod rng;
pub mod schedule;
pub mod seeds;
pub mod spec;
pub mod train;

use burn::tensor::Device;
use datasets::{Cifar10, Mnist, Split};
use output::Summary;
use provenance::Provenance;
use reference::{PAPER_REFERENCE_FILE, PaperReference};
use sparsevd::{
    Dropout, LENET300_WIDTHS, LeNet5Config, LrtVariance, MlpConfig, Network, Posterior,
    VggLikeConfig, WeightLayerView,
};
use spec::{Dataset, Experiment, LayerKind, LoadedExperiment, Net, Preprocessing, Run, Variant};
use std::borrow::Cow;
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
    /// The device in words for provenance, e.g. "CPU: <model>" or a GPU's name.
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
        let forced = options.force && is_named(run, spec, options);
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

/// Whether the command line names `run` (no `--variant` or `--seed` names every run).
pub fn is_named(run: Run, spec: &Experiment, options: &RunOptions) -> bool {
    let name = &spec.variants[run.variant].name;
    (options.only_variants.is_empty() || options.only_variants.contains(name))
        && (options.only_seeds.is_empty() || options.only_seeds.contains(&run.seed))
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
    let named =
        |run: &Run| variants.is_empty() || variants.contains(&spec.variants[run.variant].name);
    if let Some(&bad) = seeds
        .iter()
        .find(|&&seed| !spec.runs().iter().any(|r| named(r) && r.seed == seed))
    {
        let known: std::collections::BTreeSet<u64> = spec
            .runs()
            .iter()
            .filter(|r| named(r))
            .map(|r| r.seed)
            .collect();
        let known: Vec<String> = known.iter().map(u64::to_string).collect();
        return Err(RunError::UnknownSeed(bad, known.join(", ")));
    }
    let mut selected: Vec<Run> = spec
        .runs()
        .into_iter()
        .filter(|r| named(r) && (seeds.is_empty() || seeds.contains(&r.seed)))
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

/// An experiment's data, preprocessed, both splits whole.
pub struct Data {
    pub train: Split,
    pub test: Split,
    /// (file name, sha256) of a data set read from a folder; empty for the built-in ones, which
    /// are held to their known checksums.
    pub files: Vec<(String, String)>,
}

/// Load (fetching the built-in ones on first use) the experiment's data set, and check that its
/// images and classes fit the net.
pub fn load_data(exp: &LoadedExperiment, data_dir: &Path) -> Result<Data, RunError> {
    let spec = &exp.spec;
    let preprocessing = match spec.preprocessing {
        None => datasets::Preprocessing::Zca { regulariser: 1e-5 },
        Some(Preprocessing::Zca { regulariser }) => datasets::Preprocessing::Zca { regulariser },
        Some(Preprocessing::PerChannel) => datasets::Preprocessing::PerChannel,
    };
    let folder = |f: &Path| exp.path.parent().unwrap_or(Path::new(".")).join(f);
    let data = match &spec.dataset {
        Dataset::Mnist => {
            let mnist = Mnist::load(data_dir)?;
            Data {
                train: mnist.train,
                test: mnist.test,
                files: Vec::new(),
            }
        }
        Dataset::Cifar10 => {
            let cifar = Cifar10::load(data_dir, preprocessing)?;
            Data {
                train: cifar.train,
                test: cifar.test,
                files: Vec::new(),
            }
        }
        Dataset::Idx(f) => from_folder(datasets::folder::load_idx(&folder(f))?),
        Dataset::CifarBinary(f) => from_folder(datasets::folder::load_cifar_binary(
            &folder(f),
            preprocessing,
            data_dir,
        )?),
    };
    check_data_fits(exp, &data)?;
    Ok(data)
}

fn from_folder(data: datasets::FolderData) -> Data {
    Data {
        train: data.train,
        test: data.test,
        files: data.files,
    }
}

/// That the net takes the data's images and has an output for each of its classes.
fn check_data_fits(exp: &LoadedExperiment, data: &Data) -> Result<(), RunError> {
    let net = &exp.spec.net;
    let shape = data.train.image_shape;
    let [c, h, w] = shape;
    let values = c * h * w;
    let fail = |message: String| {
        Err(RunError::DataDoesNotFit {
            file: exp.path.display().to_string(),
            message,
        })
    };
    match net.input() {
        spec::NetInput::Image(wanted) if wanted != shape => {
            return fail(format!(
                "{} takes {}×{}×{} images, but {} holds {c}×{h}×{w} images",
                net.describe(),
                wanted[0],
                wanted[1],
                wanted[2],
                exp.spec.dataset.describe()
            ));
        }
        spec::NetInput::Values(wanted) if wanted != values => {
            return fail(format!(
                "{} takes {wanted} values per image, but {} holds {c}×{h}×{w} = {values}",
                net.describe(),
                exp.spec.dataset.describe()
            ));
        }
        _ => {}
    }
    let classes = data
        .train
        .labels
        .iter()
        .chain(&data.test.labels)
        .max()
        .map_or(0, |&m| m as usize + 1);
    if classes > net.outputs() {
        return fail(format!(
            "{} has {} outputs, but {} has {classes} classes",
            net.describe(),
            net.outputs(),
            exp.spec.dataset.describe()
        ));
    }
    Ok(())
}

/// The training examples a variant trains on: the protocol's subset, with the labels replaced
/// by a seeded permutation of themselves for a random-labels run.
fn training_split<'a>(train: &'a Split, protocol: &spec::Protocol) -> Cow<'a, Split> {
    let split = subset(train, protocol.train_subset);
    if !protocol.random_labels {
        return split;
    }
    let mut split = split.into_owned();
    let order = rng::permutation(
        split.len(),
        rng::derive_seed(protocol.seed, train::STREAM_LABELS, 0),
    );
    split.labels = order.iter().map(|&i| split.labels[i]).collect();
    Cow::Owned(split)
}

/// The first `n` examples of `split` (all of it without `n`), copied only when shortened.
fn subset(split: &Split, n: Option<usize>) -> Cow<'_, Split> {
    match n {
        Some(n) if n < split.len() => Cow::Owned(split.clone().truncated(n)),
        _ => Cow::Borrowed(split),
    }
}

/// One variant to train, with everything it is trained and recorded with.
struct VariantJob<'a> {
    exp: &'a LoadedExperiment,
    run: Run,
    variant: &'a Variant,
    /// Epochs in the file's protocol for this variant.
    planned_epochs: usize,
    /// The variant's protocol with command-line overrides applied.
    protocol: &'a spec::Protocol,
    train: Cow<'a, Split>,
    test: Cow<'a, Split>,
    dir: &'a Path,
    /// The folder of the run this one starts from.
    source_dir: Option<PathBuf>,
    /// (file name, sha256) of a data set read from a folder.
    data_files: &'a [(String, String)],
    paper: &'a PaperReference,
    commit: &'a str,
    options: &'a RunOptions,
}

/// Work to do with a freshly initialised network, whichever net the experiment names.
pub trait WithNetwork {
    type Output;
    fn run<N: Network>(self, model: N) -> Self::Output;
}

/// Initialise the experiment's net (seeded, with the variant's layers and width) and hand it
/// to `job`.
pub fn with_network<J: WithNetwork>(
    net: &Net,
    variant: &Variant,
    protocol: &spec::Protocol,
    device: &Device,
    job: J,
) -> J::Output {
    device.seed(rng::derive_seed(protocol.seed, train::STREAM_INIT, 0));
    let posterior = posterior(variant, protocol);
    match net {
        Net::Lenet300 => job.run(
            MlpConfig::lenet300(posterior)
                .with_init_std(protocol.init.theta_std)
                .with_dropout(input_dropout(variant, LENET300_WIDTHS.len() - 1))
                .init(device),
        ),
        Net::Mlp(widths) => job.run(
            MlpConfig::new(widths.clone())
                .with_posterior(posterior)
                .with_init_std(protocol.init.theta_std)
                .with_dropout(input_dropout(variant, widths.len() - 1))
                .init(device),
        ),
        Net::Lenet5 => job.run(
            LeNet5Config::new()
                .with_dense_init_std(protocol.init.theta_std)
                .with_posterior(posterior)
                .init(device),
        ),
        Net::Vgglike => job.run(
            VggLikeConfig::new(
                variant
                    .width
                    .expect("validated: VGG-like variants have a width"),
            )
            .with_posterior(posterior)
            .with_dropout(variant.layer == LayerKind::BinaryDropout)
            .init(device),
        ),
    }
}

/// The posterior of the weights of `variant`'s layers under `protocol`.
fn posterior(variant: &Variant, protocol: &spec::Protocol) -> Posterior {
    let init = &protocol.init;
    const VALIDATED: &str = "validated: layers that learn log α have a valid init.log_alpha";
    match variant.layer {
        LayerKind::Plain | LayerKind::BinaryDropout | LayerKind::GaussianDropout => {
            Posterior::Point
        }
        LayerKind::VariationalDropout => Posterior::VariationalDropout {
            log_alpha_init: match init.log_alpha {
                Some(spec::InitialLogAlpha::Value(log_alpha)) => log_alpha,
                _ => unreachable!("{VALIDATED}"),
            },
            sharing: variant
                .alpha
                .expect("validated: variational_dropout layers have alpha"),
        },
        LayerKind::SparseVdLogAlpha => Posterior::SparseVdLogAlpha {
            log_alpha_init: init.log_alpha_init().expect(VALIDATED),
        },
        LayerKind::SparseVd => Posterior::SparseVd {
            log_sigma2_init: init.log_sigma2,
            variance: protocol.lrt_variance,
        },
    }
}

/// The dropout on each input of the `layers` dense layers of an MLP variant (empty for none).
fn input_dropout(variant: &Variant, layers: usize) -> Vec<Dropout> {
    let Some(keep) = &variant.keep else {
        return Vec::new();
    };
    let dropout: fn(f64) -> Dropout = match variant.layer {
        LayerKind::BinaryDropout => |keep| Dropout::Binary { keep },
        LayerKind::GaussianDropout => |keep| Dropout::Gaussian { keep },
        _ => return Vec::new(),
    };
    keep.per_layer(layers).into_iter().map(dropout).collect()
}

impl WithNetwork for &VariantJob<'_> {
    type Output = Result<(), RunError>;
    fn run<N: Network>(self, model: N) -> Self::Output {
        train_and_record(self, model)
    }
}

fn run_variant(job: &VariantJob<'_>) -> Result<(), RunError> {
    on_pool_worker(|| {
        with_network(
            &job.exp.spec.net,
            job.variant,
            job.protocol,
            &job.options.device,
            job,
        )
    })
}

/// Run `work` on a worker of rayon's pool, which then takes part in every parallel operation it
/// starts. From the main thread, each operation woke the pool's threads and put the main thread
/// to sleep until they finished: three threads on two cores, and two thread switches per
/// operation. Same results (models byte-identical after training); measured per epoch
/// (2 threads, alternated runs): LeNet-300-100 Sparse VD 3.48 s against 4.52 s, LeNet-5
/// original 22.8 and 20.7 s against 24.5 and 22.0 s.
/// The calling thread's choice of composed operations ([`sparsevd::ops::compose_on_this_thread`])
/// goes along.
pub fn on_pool_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let composed = sparsevd::ops::composed_on_this_thread();
    rayon::scope(|_| {
        let _composed = composed.then(sparsevd::ops::compose_on_this_thread);
        work()
    })
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

/// Train `model` as the job says and write every result file.
fn train_and_record<N: Network>(job: &VariantJob<'_>, model: N) -> Result<(), RunError> {
    let VariantJob {
        exp,
        variant,
        planned_epochs,
        protocol,
        dir,
        paper,
        commit,
        options,
        ..
    } = *job;
    let (train_split, test_split) = (job.train.as_ref(), job.test.as_ref());
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
    } else if let Some(source) = &job.source_dir {
        model = start_from(model, source, variant, protocol)?;
    }
    let resumed_after_epoch = state.epochs_completed;
    let mut shortened_how: Vec<String> = spec.shortened.iter().cloned().collect();
    if protocol.epochs < planned_epochs {
        shortened_how.push(format!("{} of {planned_epochs} epochs", protocol.epochs));
    }
    if let Some(n) = protocol.train_subset {
        shortened_how.push(format!("first {n} training images"));
    }
    if let Some(n) = protocol.test_subset {
        shortened_how.push(format!("first {n} test images"));
    }
    // Written after every epoch with `finished` empty, so that a run cut short (a time limit on
    // a lent GPU, a crash) still says where its epochs came from; rewritten when it finishes.
    let provenance_after = |records: &[train::EpochRecord], finished: String| {
        // Σ epoch times (training and evaluation) over every segment of a resumed run.
        let wall: f64 = records.iter().map(|r| r.seconds).sum();
        Provenance {
            experiment_file: exp.path.display().to_string(),
            experiment_sha256: exp.sha256(),
            variant_sha256: Some(exp.run_sha256(job.run)),
            variant: variant.name.clone(),
            commit: commit.to_string(),
            backend: options.backend.clone(),
            device: options.device_description.clone(),
            threads: provenance::threads(),
            seed: protocol.seed,
            epochs_planned: planned_epochs,
            epochs_completed: records.last().map_or(0, |r| r.epoch),
            shortened: !shortened_how.is_empty(),
            shortened_how: shortened_how.join(", "),
            train_examples: train_split.len(),
            test_examples: test_split.len(),
            wall_time_s: wall,
            mean_epoch_s: wall / records.len().max(1) as f64,
            resumed_after_epoch,
            lrt_variance: (variant.layer == LayerKind::SparseVd)
                .then(|| protocol.lrt_variance.key().to_string()),
            data_sha256: job.data_files.iter().cloned().collect(),
            started: started.clone(),
            finished,
            harness_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    };
    let settings = train::TrainSettings {
        protocol,
        device,
        start_epoch: state.epochs_completed,
    };
    let model = train::train(
        model,
        optimizer,
        train_split,
        test_split,
        &settings,
        |record, model, optimizer| {
            records.push(record.clone());
            output::write_epochs(dir, &layer_names, &records).map_err(|e| e.to_string())?;
            output::write_provenance(dir, &provenance_after(&records, String::new()))
                .map_err(|e| e.to_string())?;
            state.epochs_completed = record.epoch;
            checkpoint::save(dir, model, optimizer, &state).map_err(|e| e.to_string())
        },
    )
    .map_err(|source| RunError::Train {
        variant: variant.name.clone(),
        source,
    })?;

    let last = records.last().expect("at least one epoch is validated");
    let provenance = provenance_after(&records, provenance::now_rfc3339());
    let reference = variant.paper.as_ref().and_then(|key| paper.find(key));
    let summary = Summary {
        experiment: spec.name.clone(),
        variant: variant.name.clone(),
        net: spec.net.key().to_string(),
        dataset: spec.dataset.describe(),
        epochs: last.epoch,
        shortened: provenance.shortened,
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
        wall_time_s: provenance.wall_time_s,
        train_error_pct: last.train_error_pct,
    };
    // How to read log α back from the file: the rule of the variance form (sparsevd::LrtVariance).
    let log_alpha_rule = match (variant.layer, protocol.lrt_variance) {
        (LayerKind::SparseVd, LrtVariance::ClippedAlpha) => {
            "; lrt_variance=clipped_alpha; log_alpha = clip(log_sigma2 - log(theta^2 + eps), -8, 8), eps = 0 in dense and 1e-8 in conv layers"
        }
        (LayerKind::SparseVd, LrtVariance::Sigma2) => {
            "; lrt_variance=sigma2; log_alpha = clip(log_sigma2 - log(theta^2 + 1e-8), -8, 8)"
        }
        _ => "",
    };
    let description = format!(
        "experiment={}; variant={}; net={}; threshold={}{log_alpha_rule}; dense theta and log_sigma2 are [d_in, d_out], y = x @ theta + bias; conv theta and log_sigma2 are [out, in, kh, kw]",
        spec.name,
        variant.name,
        spec.net.describe(),
        protocol.threshold,
    );
    let metadata = [("harness", description)];
    output::write_model(dir, &model.weight_layers(), &model.norm_layers(), &metadata)?;
    output::write_provenance(dir, &provenance)?;
    // The summary is written last: its presence marks a finished run.
    output::write_summary(dir, &summary)?;
    checkpoint::remove(dir);
    Ok(())
}

/// `model` with the final weights (and batch norms) of the finished variant in `source_dir`,
/// the noise parameter of `variant`'s layers (log σ² or log α) at the protocol's initial value.
fn start_from<N: Network>(
    model: N,
    source_dir: &Path,
    variant: &Variant,
    protocol: &spec::Protocol,
) -> Result<N, RunError> {
    let missing = |message: String| {
        RunError::Output(output::OutputError::Read {
            path: source_dir.join(output::MODEL_SAFETENSORS),
            message,
        })
    };
    if !source_dir.join(output::SUMMARY_CSV).is_file() {
        return Err(missing(
            "the variant this one starts from has not finished".into(),
        ));
    }
    let (layers, norms) = output::read_model_and_norms(source_dir)?;
    let layers: Vec<WeightLayerView> = layers
        .into_iter()
        .map(|view| {
            let fill = |v: f64| Some(vec![v as f32; view.theta.len()]);
            let (log_sigma2, log_alpha) = match posterior(variant, protocol) {
                Posterior::Point => (None, None),
                Posterior::SparseVd {
                    log_sigma2_init, ..
                } => (fill(log_sigma2_init), None),
                Posterior::SparseVdLogAlpha { log_alpha_init } => {
                    (None, Some(log_alpha_init.values(&view.theta)))
                }
                Posterior::VariationalDropout { log_alpha_init, .. } => {
                    (None, fill(log_alpha_init))
                }
            };
            WeightLayerView {
                log_sigma2,
                log_alpha,
                ..view
            }
        })
        .collect();
    eprintln!(
        "starting from the final weights in {}",
        source_dir.display()
    );
    model
        .with_weight_layers(&layers)
        .and_then(|m| m.with_norm_layers(&norms))
        .map_err(missing)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_labels_are_a_seeded_permutation_of_the_training_labels() {
        let exp = spec::Experiment::parse(include_str!("../../../experiments/random_labels.toml"))
            .expect("the committed experiment file");
        let train = Split {
            images: vec![0.0; 1000],
            labels: (0..1000).map(|i| (i % 10) as u8).collect(),
            image_shape: [1, 1, 1],
        };
        let permuted = training_split(&train, exp.protocol_of(0));
        let again = training_split(&train, exp.protocol_of(0));
        assert_eq!(permuted.labels, again.labels, "a function of the seed");
        let moved = permuted
            .labels
            .iter()
            .zip(&train.labels)
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 800, "only {moved} of 1000 labels changed");
        let mut sorted = permuted.labels.clone();
        sorted.sort_unstable();
        let mut original = train.labels.clone();
        original.sort_unstable();
        assert_eq!(sorted, original, "the same labels, reassigned");
        let mut kept = exp.protocol_of(0).clone();
        kept.random_labels = false;
        assert_eq!(training_split(&train, &kept).labels, train.labels);
    }
}
