//! The declarative experiment file (`experiments/*.toml`). Unknown keys are errors.

use serde::{Deserialize, Serialize};
use sparsevd::{AlphaSharing, LENET300_WIDTHS, LogAlphaInit, LrtVariance};
use std::path::{Path, PathBuf};

/// One experiment file: a data set, a net, a protocol, and the variants trained under it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Short name; results go to `results/<name>/<variant>/`.
    pub name: String,
    pub dataset: Dataset,
    /// CIFAR-10 only; ZCA with regulariser 1e-5 (the paper's) when absent.
    pub preprocessing: Option<Preprocessing>,
    pub net: Net,
    /// Set when the file's protocol is a shortened form of the paper's: how, in words. Every
    /// result of the file is then labelled shortened, with this text in its provenance.
    pub shortened: Option<String>,
    pub protocol: Protocol,
    #[serde(rename = "variant")]
    pub variants: Vec<Variant>,
    /// Each variant's protocol: `protocol` with the variant's own `protocol` table merged over
    /// it (filled in by [`Experiment::parse`]).
    #[serde(skip)]
    pub variant_protocols: Vec<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Preprocessing {
    /// ZCA whitening fitted on the training set.
    Zca { regulariser: f64 },
    /// Per-channel standardisation with the training set's mean and standard deviation.
    PerChannel,
}

/// The data: a built-in name (`dataset = "mnist"`), fetched and checked against its known
/// checksums, or a folder of one's own (`dataset = { idx = "folder" }`), checked for structure,
/// its files' sha256 recorded in provenance. A relative folder is relative to the experiment
/// file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    Mnist,
    Cifar10,
    /// IDX files in MNIST's layout (`datasets::folder::IDX_FILES`): one-channel images of any
    /// size, classes 0 … C − 1; preprocessed as MNIST.
    Idx(PathBuf),
    /// CIFAR-10-style binary batches (`data_batch_1.bin`, … and `test_batch.bin`): 3 × 32 × 32
    /// images of classes 0 … 9; preprocessed as CIFAR-10 (`preprocessing`).
    CifarBinary(PathBuf),
}

impl Dataset {
    pub fn key(&self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::Cifar10 => "cifar10",
            Dataset::Idx(_) => "idx",
            Dataset::CifarBinary(_) => "cifar_binary",
        }
    }

    /// The key, and the folder of a data set of one's own.
    pub fn describe(&self) -> String {
        match self {
            Dataset::Idx(folder) | Dataset::CifarBinary(folder) => {
                format!("{} ({})", self.key(), folder.display())
            }
            builtin => builtin.key().to_string(),
        }
    }

    /// Whether the images are CIFAR-10's kind (3 × 32 × 32, preprocessed as CIFAR-10).
    pub fn is_cifar_like(&self) -> bool {
        matches!(self, Dataset::Cifar10 | Dataset::CifarBinary(_))
    }
}

/// The network: one of the paper's by name, or dense layers of any widths
/// (`net = { mlp = [784, 500, 300, 10] }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Net {
    /// 784 → 300 → 100 → 10, ReLU.
    Lenet300,
    /// LeNet-5-Caffe: conv 20@5×5, maxpool, conv 50@5×5, maxpool, dense 800 → 500 → 10.
    Lenet5,
    /// VGG-like with batch norm for CIFAR-10; each variant names its width multiplier k.
    Vgglike,
    /// Dense layers with ReLU between them: the input width (values per image), the hidden
    /// widths, and the number of outputs (at least the data set's classes).
    Mlp(Vec<usize>),
}

impl Net {
    pub fn key(&self) -> &'static str {
        match self {
            Net::Lenet300 => "lenet300",
            Net::Lenet5 => "lenet5",
            Net::Vgglike => "vgglike",
            Net::Mlp(_) => "mlp",
        }
    }

    /// The key, with an MLP's widths.
    pub fn describe(&self) -> String {
        match self {
            Net::Mlp(widths) => format!("mlp {widths:?}"),
            named => named.key().to_string(),
        }
    }

    /// The image shape `[channels, height, width]` the net takes, or for an MLP the number of
    /// values per image, whatever their shape.
    pub fn input(&self) -> NetInput {
        match self {
            Net::Lenet300 => NetInput::Values(28 * 28),
            Net::Lenet5 => NetInput::Image([1, 28, 28]),
            Net::Vgglike => NetInput::Image([3, 32, 32]),
            Net::Mlp(widths) => NetInput::Values(widths[0]),
        }
    }

    /// The number of outputs (classes it can tell apart).
    pub fn outputs(&self) -> usize {
        match self {
            Net::Mlp(widths) => *widths.last().expect("validated: an MLP has widths"),
            _ => 10,
        }
    }

    /// Whether the net is dense layers only (which take per-layer input dropout).
    pub fn is_mlp(&self) -> bool {
        matches!(self, Net::Lenet300 | Net::Mlp(_))
    }
}

/// What a net takes per image (see [`Net::input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetInput {
    Image([usize; 3]),
    Values(usize),
}

impl NetInput {
    pub fn values(self) -> usize {
        match self {
            NetInput::Image(shape) => shape.iter().product(),
            NetInput::Values(n) => n,
        }
    }
}

/// How every variant of the experiment is trained.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub epochs: usize,
    pub batch_size: usize,
    /// Seed of the run: the weights' initialisation, the batch order, the noise. A protocol
    /// gives `seed` or `seeds`; with `seeds` this is set per run ([`Protocol::for_seed`]).
    #[serde(default)]
    pub seed: u64,
    /// One run per seed, each in its own folder `seed_<n>` (a seed sweep); the tables show the
    /// runs' mean ± std.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    /// Weights with log α ≥ threshold are removed at evaluation.
    pub threshold: f64,
    /// Zero weights with log α ≥ threshold in the mean path during training too.
    pub train_clip: bool,
    /// The variance of Sparse VD layers' LRT sample: `"clipped_alpha"` (the authors' code, the
    /// default) or `"sigma2"` (see [`LrtVariance`] and docs/method.md).
    #[serde(default, skip_serializing_if = "is_default")]
    pub lrt_variance: LrtVariance,
    pub optimizer: Optimizer,
    pub lr_schedule: LrSchedule,
    pub kl_warmup: KlWarmup,
    pub init: Init,
    /// Train on the first N training images only (a shortened run, labelled as such).
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images only (a shortened run, labelled as such).
    pub test_subset: Option<usize>,
    /// λ of an L2 penalty λ·Σθ² added to the mean cross-entropy (0 = none).
    #[serde(default)]
    pub l2: f64,
    /// Replace the training labels by a seeded random permutation of them (test labels stay
    /// true): the random-labels experiment.
    #[serde(default)]
    pub random_labels: bool,
    /// Also evaluate the error on the training set after every epoch (`train_error_pct`).
    #[serde(default)]
    pub evaluate_train_set: bool,
}

impl Protocol {
    /// The seeds this protocol runs under: `seeds`, else the one `seed`.
    pub fn seeds(&self) -> Vec<u64> {
        self.seeds.clone().unwrap_or_else(|| vec![self.seed])
    }

    /// Whether the protocol is a seed sweep (`seeds`), whose runs each have a folder of their own.
    pub fn is_seed_sweep(&self) -> bool {
        self.seeds.is_some()
    }

    /// The protocol of the run under `seed`: a single-seed protocol, as a file with
    /// `seed = <seed>` would give (so that its training-spec hash is that file's).
    pub fn for_seed(&self, seed: u64) -> Protocol {
        Protocol {
            seed,
            seeds: None,
            ..self.clone()
        }
    }
}

/// One training run: variant `variant` (an index into the file's variants) under `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Run {
    pub variant: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        epsilon: f64,
    },
}

/// Learning rate as a function of the epoch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Base rate until `decay_start_epoch`, then linear to 0 at the last epoch
    /// (`decay_start_epoch = 0` is linear decay over the whole run).
    ConstantThenLinear { decay_start_epoch: usize },
}

/// β = 0 for `zero_epochs`, then linear to 1 over `ramp_epochs`, then 1.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KlWarmup {
    pub zero_epochs: usize,
    pub ramp_epochs: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Init {
    /// θ ~ N(0, theta_std²) for the LeNets' dense layers (convolutions start Glorot-uniform,
    /// VGG-like's dense layers Glorot-normal).
    pub theta_std: f64,
    /// Initial log σ² of every Sparse VD weight, also when a variant starts from another's.
    pub log_sigma2: f64,
    /// Initial learned log α of `sparse_vd_log_alpha` and `variational_dropout` layers
    /// (required when a variant has one).
    pub log_alpha: Option<InitialLogAlpha>,
}

/// `init.log_alpha`: one number for every weight, or `"from_log_sigma2"` (per weight, for
/// `sparse_vd_log_alpha`): log α = log σ²₀ − log θ², where the additive posterior starts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(untagged, expecting = "expected a number or \"from_log_sigma2\"")]
pub enum InitialLogAlpha {
    Value(f64),
    Rule(LogAlphaRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogAlphaRule {
    FromLogSigma2,
}

impl Init {
    /// Where a per-weight learned log α starts, if `log_alpha` is set.
    pub fn log_alpha_init(&self) -> Option<LogAlphaInit> {
        self.log_alpha.map(|start| match start {
            InitialLogAlpha::Value(log_alpha) => LogAlphaInit::Constant { log_alpha },
            InitialLogAlpha::Rule(LogAlphaRule::FromLogSigma2) => LogAlphaInit::FromLogSigma2 {
                log_sigma2: self.log_sigma2,
            },
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Folder name under the experiment's results.
    pub name: String,
    pub layer: LayerKind,
    /// The paper's row this variant is compared with; none for an experiment of one's own, whose
    /// tables then show our numbers alone.
    pub paper: Option<PaperKey>,
    /// Regression tolerance against the paper's row (checked by the tests under `tests/`; needs
    /// `paper`).
    pub tolerance: Option<Tolerance>,
    /// Width multiplier k (VGG-like only, where it is required).
    pub width: Option<f64>,
    /// Keep probability p of dropout on the layer inputs (LeNet-300-100's `binary_dropout` and
    /// `gaussian_dropout` layers, where it is required; VGG-like's binary dropout uses the
    /// paper's fixed rates).
    pub keep: Option<Keep>,
    /// Which weights share one learned α (`variational_dropout` layers, where it is required).
    pub alpha: Option<AlphaSharing>,
    /// Start from this variant's final weights (its batch norms too) instead of a fresh
    /// initialisation; log σ² starts at `protocol.init.log_sigma2`.
    pub start_from: Option<String>,
    /// Protocol keys that differ for this variant, e.g. `protocol = { l2 = 1e-5 }`.
    #[serde(rename = "protocol")]
    pub protocol_changes: Option<toml::Table>,
}

/// Keep-probability of dropout: one p for every layer input (`keep = 0.5`), or one per layer
/// input, the image first (`keep = [0.8, 0.5, 0.5]`, Srivastava et al.'s rates).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "expected a probability, or a list of one per layer input, e.g. keep = [0.8, 0.5, 0.5]"
)]
pub enum Keep {
    Every(f64),
    PerLayer(Vec<f64>),
}

impl Keep {
    /// p of each of `layers` layer inputs.
    pub fn per_layer(&self, layers: usize) -> Vec<f64> {
        match self {
            Keep::Every(p) => vec![*p; layers],
            Keep::PerLayer(ps) => ps.clone(),
        }
    }
}

/// The layers of a variant: the links of the dropout family (formulas in `sparsevd::Posterior`
/// and `sparsevd::Dropout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Deterministic dense layers (the paper's "original" network).
    Plain,
    /// Deterministic layers with binary dropout (VGG-like's pretraining net).
    BinaryDropout,
    /// Deterministic layers with Gaussian dropout, α = (1 − p)/p fixed.
    GaussianDropout,
    /// Kingma et al.'s variational dropout: learned α ≤ 1 per unit or per layer, cubic KL.
    VariationalDropout,
    /// Sparse VD, original (θ, log α) parameterization.
    SparseVdLogAlpha,
    /// Sparse VD layers, additive (θ, log σ²) parameterization.
    SparseVd,
}

impl LayerKind {
    /// Whether the weights are variational (noisy in training, with a KL term).
    pub fn is_variational(self) -> bool {
        matches!(
            self,
            LayerKind::VariationalDropout | LayerKind::SparseVdLogAlpha | LayerKind::SparseVd
        )
    }

    /// Whether the layers learn a log α (and so need `init.log_alpha`).
    pub fn learns_log_alpha(self) -> bool {
        matches!(
            self,
            LayerKind::VariationalDropout | LayerKind::SparseVdLogAlpha
        )
    }

    /// Whether the variant's layers take a keep-probability.
    pub fn takes_keep(self) -> bool {
        matches!(self, LayerKind::BinaryDropout | LayerKind::GaussianDropout)
    }

    /// The key written in experiment files.
    pub fn key(self) -> &'static str {
        match self {
            LayerKind::Plain => "plain",
            LayerKind::BinaryDropout => "binary_dropout",
            LayerKind::GaussianDropout => "gaussian_dropout",
            LayerKind::VariationalDropout => "variational_dropout",
            LayerKind::SparseVdLogAlpha => "sparse_vd_log_alpha",
            LayerKind::SparseVd => "sparse_vd",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperKey {
    pub net: String,
    pub method: String,
    /// VGG-like's width multiplier, for the paper's VGG-like rows.
    pub k: Option<f64>,
    /// The paper's data set name when it is not the net's usual one (e.g.
    /// `mnist_random_labels`).
    pub dataset: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Our error may exceed the paper's by at most this many percentage points.
    pub error_pp: f64,
    /// Our compression must be at least this fraction of the paper's.
    pub compression_fraction: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{location} {field}: {message}")]
    Invalid {
        path: PathBuf,
        /// ` line L, column C:` where the value stands in the file (empty if it cannot be found).
        location: String,
        field: String,
        message: String,
    },
}

/// An experiment file as read from disk, with the exact bytes (for the provenance hash).
#[derive(Debug, Clone)]
pub struct LoadedExperiment {
    pub path: PathBuf,
    pub text: String,
    pub spec: Experiment,
}

impl LoadedExperiment {
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let spec = Experiment::parse(&text).map_err(|message| SpecError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        spec.validate()
            .map_err(|(field, message)| SpecError::Invalid {
                path: path.to_path_buf(),
                location: locate(&text, &field)
                    .map(|(line, column)| format!(" line {line}, column {column}:"))
                    .unwrap_or_default(),
                field,
                message,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
            spec,
        })
    }

    /// sha256 of the file's bytes, hex.
    pub fn sha256(&self) -> String {
        crate::provenance::sha256_hex(self.text.as_bytes())
    }

    /// sha256 of what decides how `run` trains ([`TrainingSpec`]): unlike the file's hash it
    /// stays the same when names, comments, paper rows, tolerances or other variants change,
    /// so that such edits leave finished runs current. A seed sweep's run hashes as the file
    /// with that one `seed` would: adding seeds leaves the runs of the old seed current.
    pub fn run_sha256(&self, run: Run) -> String {
        let spec = &self.spec;
        let variant = &spec.variants[run.variant];
        let start_from = spec.source_run(run).map(|source| self.run_sha256(source));
        let protocol = spec.run_protocol(run);
        let training = TrainingSpec {
            dataset: &spec.dataset,
            preprocessing: spec.preprocessing,
            net: &spec.net,
            shortened: spec.shortened.as_deref(),
            protocol: &protocol,
            layer: variant.layer,
            width: variant.width,
            keep: variant.keep.as_ref(),
            alpha: variant.alpha,
            start_from,
        };
        let canonical = toml::Value::try_from(&training)
            .and_then(|value| toml::to_string(&value))
            .expect("a parsed experiment serializes");
        crate::provenance::sha256_hex(canonical.as_bytes())
    }
}

/// Everything of an experiment file that decides how one variant trains: the data set, the net,
/// how the file is shortened, the variant's protocol (its own changes merged), its layers, and
/// the hash of the variant it starts from. Keys at their default are left out, so that a key
/// added later with a default keeps the hashes of earlier runs.
#[derive(Serialize)]
struct TrainingSpec<'a> {
    dataset: &'a Dataset,
    #[serde(skip_serializing_if = "Option::is_none")]
    preprocessing: Option<Preprocessing>,
    net: &'a Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    shortened: Option<&'a str>,
    protocol: &'a Protocol,
    layer: LayerKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep: Option<&'a Keep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha: Option<AlphaSharing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_from: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Experiment {
    /// Parse TOML; the message carries line, column and what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let message = |e: toml::de::Error| e.to_string().trim_end().to_string();
        let mut spec: Self = toml::from_str(text).map_err(message)?;
        let raw: toml::Table = toml::from_str(text).map_err(message)?;
        let base = raw.get("protocol").cloned();
        if let Some(toml::Value::Table(base)) = &base {
            one_seed_key(base, "protocol", text)?;
        }
        spec.protocol.seed = first_seed(&spec.protocol);
        spec.variant_protocols = spec
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| match (&v.protocol_changes, &base) {
                (Some(changes), Some(toml::Value::Table(base))) => {
                    let mut merged = base.clone();
                    // A variant's own `seed` replaces the file's `seeds`, and the other way round.
                    for (key, other) in [("seed", "seeds"), ("seeds", "seed")] {
                        if changes.contains_key(key) {
                            merged.remove(other);
                        }
                    }
                    merge(&mut merged, changes);
                    one_seed_key(&merged, &format!("variant[{i}].protocol"), text)?;
                    Protocol::deserialize(toml::Value::Table(merged))
                        .map_err(|e| {
                            let field = format!("variant[{i}].protocol");
                            let at = locate(text, &field)
                                .map(|(line, column)| format!("line {line}, column {column}: "))
                                .unwrap_or_default();
                            format!("{at}{field}: {}", e.to_string().trim_end())
                        })
                        .map(|mut protocol| {
                            protocol.seed = first_seed(&protocol);
                            protocol
                        })
                }
                _ => Ok(spec.protocol.clone()),
            })
            .collect::<Result<_, _>>()?;
        Ok(spec)
    }

    /// Every run of the file in an order where each run comes after the run it starts from:
    /// each variant once per seed of its protocol.
    pub fn runs(&self) -> Vec<Run> {
        self.stage_order()
            .into_iter()
            .flat_map(|variant| {
                self.protocol_of(variant)
                    .seeds()
                    .into_iter()
                    .map(move |seed| Run { variant, seed })
            })
            .collect()
    }

    /// The protocol `run` trains under (its seed set).
    pub fn run_protocol(&self, run: Run) -> Protocol {
        self.protocol_of(run.variant).for_seed(run.seed)
    }

    /// The run's folder under the experiment's results folder: `<variant>`, or
    /// `<variant>/seed_<n>` in a seed sweep.
    pub fn run_folder(&self, run: Run) -> PathBuf {
        let variant = PathBuf::from(&self.variants[run.variant].name);
        match self.protocol_of(run.variant).is_seed_sweep() {
            true => variant.join(format!("seed_{}", run.seed)),
            false => variant,
        }
    }

    /// The run `run` starts from: the source variant's run under the same seed.
    pub fn source_run(&self, run: Run) -> Option<Run> {
        let source = self.variants[run.variant].start_from.as_deref()?;
        let variant = self
            .variant_index(source)
            .expect("validated: start_from names a variant of the file");
        Some(Run {
            variant,
            seed: run.seed,
        })
    }

    /// The protocol of variant `index` (see [`Experiment::variant_protocols`]).
    pub fn protocol_of(&self, index: usize) -> &Protocol {
        &self.variant_protocols[index]
    }

    /// The index of the variant called `name`.
    pub fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.name == name)
    }

    /// Whether following `start_from` from variant `from` reaches variant `target`.
    fn starts_from_itself(&self, from: usize, target: usize) -> bool {
        let mut at = from;
        for _ in 0..=self.variants.len() {
            if at == target {
                return true;
            }
            match self.variants[at]
                .start_from
                .as_deref()
                .and_then(|s| self.variant_index(s))
            {
                Some(next) => at = next,
                None => return false,
            }
        }
        true
    }

    /// Variant indices in an order where every variant comes after the one it starts from.
    pub fn stage_order(&self) -> Vec<usize> {
        let mut order = Vec::new();
        fn visit(spec: &Experiment, i: usize, order: &mut Vec<usize>) {
            if order.contains(&i) {
                return;
            }
            let source = spec.variants[i].start_from.as_deref();
            if let Some(j) = source.and_then(|s| spec.variant_index(s)) {
                visit(spec, j, order);
            }
            order.push(i);
        }
        for i in 0..self.variants.len() {
            visit(self, i, &mut order);
        }
        order
    }

    /// Range checks serde cannot express: (field, what was expected).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, msg: String| Err((field.to_string(), msg));
        validate_protocol(&self.protocol, "protocol")?;
        for (i, v) in self.variants.iter().enumerate() {
            if v.protocol_changes.is_some() {
                validate_protocol(self.protocol_of(i), &format!("variant[{i}].protocol"))?;
            }
        }
        if self.preprocessing.is_some() && !self.dataset.is_cifar_like() {
            return fail(
                "preprocessing",
                "expected no preprocessing table: it applies to cifar10 and cifar_binary only"
                    .into(),
            );
        }
        if let Net::Mlp(widths) = &self.net
            && (widths.len() < 2 || widths.contains(&0))
        {
            return fail(
                "net.mlp",
                format!(
                    "expected the widths of the input, the hidden layers and the outputs, each at least 1, e.g. [784, 300, 10]; got {widths:?}"
                ),
            );
        }
        if let Some(Preprocessing::Zca { regulariser }) = self.preprocessing
            && !is_positive(regulariser)
        {
            return fail(
                "preprocessing.regulariser",
                format!("expected a positive number, got {regulariser}"),
            );
        }
        if self
            .shortened
            .as_ref()
            .is_some_and(|how| how.trim().is_empty())
        {
            return fail(
                "shortened",
                "expected a description of how the protocol is shortened".into(),
            );
        }
        if self.variants.is_empty() {
            return fail("variant", "expected at least one [[variant]]".into());
        }
        for (i, v) in self.variants.iter().enumerate() {
            if v.name.is_empty() || v.name.contains(['/', '\\']) || v.name.starts_with('.') {
                return fail(
                    &format!("variant[{i}].name"),
                    format!("expected a plain folder name, got {:?}", v.name),
                );
            }
            if self.variants[..i].iter().any(|w| w.name == v.name) {
                return fail(
                    &format!("variant[{i}].name"),
                    format!("duplicate variant name {:?}", v.name),
                );
            }
            if v.tolerance.is_some() && v.paper.is_none() {
                return fail(
                    &format!("variant[{i}].tolerance"),
                    "a tolerance is held against the paper's row: expected paper = { net, method }"
                        .into(),
                );
            }
            match (&self.net, v.width) {
                (Net::Vgglike, None) => {
                    return fail(
                        &format!("variant[{i}]"),
                        "expected a width (VGG-like's multiplier k), e.g. width = 0.25".into(),
                    );
                }
                (Net::Vgglike, Some(k)) if !(k > 0.0 && k <= 4.0) => {
                    return fail(
                        &format!("variant[{i}].width"),
                        format!("expected a multiplier in (0, 4], got {k}"),
                    );
                }
                (Net::Lenet300 | Net::Lenet5 | Net::Mlp(_), Some(_)) => {
                    return fail(
                        &format!("variant[{i}].width"),
                        format!(
                            "expected no width: {} has its widths in the net",
                            self.net.describe()
                        ),
                    );
                }
                _ => {}
            }
            let layer = v.layer.key();
            let defined_here = match v.layer {
                LayerKind::BinaryDropout => self.net != Net::Lenet5,
                LayerKind::GaussianDropout => self.net.is_mlp(),
                _ => true,
            };
            if !defined_here {
                return fail(
                    &format!("variant[{i}].layer"),
                    format!(
                        "{layer} is defined for lenet300 and mlp{}",
                        if v.layer == LayerKind::BinaryDropout {
                            " and vgglike"
                        } else {
                            ""
                        }
                    ),
                );
            }
            // VGG-like's binary dropout has the paper's fixed rates; only LeNet-300-100's
            // dropout layers take a keep-probability.
            let takes_keep = v.layer.takes_keep() && self.net.is_mlp();
            match (takes_keep, &v.keep) {
                (true, None) => {
                    return fail(
                        &format!("variant[{i}]"),
                        "expected keep, the probability p of keeping a value, e.g. keep = 0.5"
                            .into(),
                    );
                }
                (true, Some(keep)) => {
                    let layers = LENET300_WIDTHS.len() - 1;
                    if let Keep::PerLayer(ps) = keep
                        && ps.len() != layers
                    {
                        return fail(
                            &format!("variant[{i}].keep"),
                            format!(
                                "expected one probability per layer input ({layers}), got {}",
                                ps.len()
                            ),
                        );
                    }
                    if let Some(p) = keep
                        .per_layer(layers)
                        .into_iter()
                        .find(|p| !(*p > 0.0 && *p <= 1.0))
                    {
                        return fail(
                            &format!("variant[{i}].keep"),
                            format!("expected a probability in (0, 1], got {p}"),
                        );
                    }
                }
                (false, Some(_)) => {
                    return fail(
                        &format!("variant[{i}].keep"),
                        "expected no keep: it applies to lenet300's binary_dropout and \
                         gaussian_dropout layers only"
                            .into(),
                    );
                }
                (false, None) => {}
            }
            match (v.layer, v.alpha) {
                (LayerKind::VariationalDropout, None) => {
                    return fail(
                        &format!("variant[{i}]"),
                        "expected alpha, which weights share one α: \"per_unit\" or \"per_layer\""
                            .into(),
                    );
                }
                (LayerKind::VariationalDropout, Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    return fail(
                        &format!("variant[{i}].alpha"),
                        format!(
                            "expected no alpha: it applies to variational_dropout layers, not {layer}"
                        ),
                    );
                }
            }
            let init_table = || {
                let changed = v
                    .protocol_changes
                    .as_ref()
                    .is_some_and(|t| t.contains_key("init"));
                if changed {
                    format!("variant[{i}].protocol.init")
                } else {
                    "protocol.init".into()
                }
            };
            match (v.layer, self.protocol_of(i).init.log_alpha) {
                (kind, None) if kind.learns_log_alpha() => {
                    return fail(
                        &init_table(),
                        format!(
                            "expected log_alpha, the initial log α of {layer} layers, e.g. log_alpha = -4.0"
                        ),
                    );
                }
                (LayerKind::VariationalDropout, Some(InitialLogAlpha::Rule(_))) => {
                    return fail(
                        &format!("{}.log_alpha", init_table()),
                        "expected a number: from_log_sigma2 gives each weight its own log α, \
                         and variational_dropout shares one per unit or per layer"
                            .into(),
                    );
                }
                _ => {}
            }
            if let Some(source) = &v.start_from {
                let Some(j) = self.variant_index(source) else {
                    return fail(
                        &format!("variant[{i}].start_from"),
                        format!("expected the name of another variant, got {source:?}"),
                    );
                };
                if self.starts_from_itself(j, i) {
                    return fail(
                        &format!("variant[{i}].start_from"),
                        format!("{source:?} starts, directly or not, from {:?}", v.name),
                    );
                }
                if self.protocol_of(j).seeds() != self.protocol_of(i).seeds()
                    || self.protocol_of(j).is_seed_sweep() != self.protocol_of(i).is_seed_sweep()
                {
                    return fail(
                        &format!("variant[{i}].start_from"),
                        format!(
                            "{source:?} runs under other seeds: each run starts from the run of the same seed, so both need the same `seed` or `seeds`"
                        ),
                    );
                }
                if self.variants[j].width != v.width {
                    return fail(
                        &format!("variant[{i}].start_from"),
                        format!("{source:?} has another width: the weights would not fit"),
                    );
                }
            }
        }
        // Built-in data have known shapes; a folder's are checked when it is read.
        let fits = match (&self.dataset, &self.net) {
            (Dataset::Cifar10, net) => *net == Net::Vgglike || net.input().values() == 3 * 32 * 32,
            (Dataset::Mnist, net) => *net != Net::Vgglike && net.input().values() == 28 * 28,
            (Dataset::Idx(_), net) => *net != Net::Vgglike,
            (Dataset::CifarBinary(_), _) => true,
        };
        if !fits {
            return fail(
                "net",
                format!(
                    "{} is not a net for {}",
                    self.net.describe(),
                    self.dataset.describe()
                ),
            );
        }
        Ok(())
    }
}

/// Checks of one protocol; `prefix` is where it stands in the file (`protocol` or
/// `variant[i].protocol`).
fn validate_protocol(p: &Protocol, prefix: &str) -> Result<(), (String, String)> {
    let fail = |field: &str, msg: String| Err((field.to_string(), msg));
    if p.epochs == 0 {
        return fail(&format!("{prefix}.epochs"), "expected at least 1".into());
    }
    if p.batch_size == 0 {
        return fail(
            &format!("{prefix}.batch_size"),
            "expected at least 1".into(),
        );
    }
    let clip = sparsevd::LOG_ALPHA_CLIP;
    if !(p.threshold > -clip && p.threshold < clip) {
        return fail(
            &format!("{prefix}.threshold"),
            format!(
                "expected a log α inside the clip range (−{clip}, {clip}), got {}",
                p.threshold
            ),
        );
    }
    let Optimizer::Adam {
        lr,
        beta1,
        beta2,
        epsilon,
    } = p.optimizer;
    if !is_positive(lr) {
        return fail(
            &format!("{prefix}.optimizer.lr"),
            format!("expected a positive number, got {lr}"),
        );
    }
    for (field, b) in [("beta1", beta1), ("beta2", beta2)] {
        if !(0.0..1.0).contains(&b) {
            return fail(
                &format!("{prefix}.optimizer.{field}"),
                format!("expected a value in [0, 1), got {b}"),
            );
        }
    }
    if !is_positive(epsilon) {
        return fail(
            &format!("{prefix}.optimizer.epsilon"),
            format!("expected a positive number, got {epsilon}"),
        );
    }
    let LrSchedule::ConstantThenLinear { decay_start_epoch } = p.lr_schedule;
    if decay_start_epoch > p.epochs {
        return fail(
            &format!("{prefix}.lr_schedule.decay_start_epoch"),
            format!(
                "expected at most epochs = {}, got {decay_start_epoch}",
                p.epochs
            ),
        );
    }
    if !is_positive(p.init.theta_std) {
        return fail(
            &format!("{prefix}.init.theta_std"),
            format!("expected a positive number, got {}", p.init.theta_std),
        );
    }
    for (field, n) in [
        ("train_subset", p.train_subset),
        ("test_subset", p.test_subset),
    ] {
        if n == Some(0) {
            return fail(
                &format!("{prefix}.{field}"),
                "expected at least 1 example".into(),
            );
        }
    }
    if let Some(seeds) = &p.seeds {
        let distinct: std::collections::BTreeSet<_> = seeds.iter().collect();
        if seeds.is_empty() || distinct.len() != seeds.len() {
            return fail(
                &format!("{prefix}.seeds"),
                format!(
                    "expected at least one seed, each once, e.g. seeds = [1, 2, 3]; got {seeds:?}"
                ),
            );
        }
    }
    if !(p.l2.is_finite() && p.l2 >= 0.0) {
        return fail(
            &format!("{prefix}.l2"),
            format!("expected a number ≥ 0, got {}", p.l2),
        );
    }
    Ok(())
}

/// That a protocol table gives exactly one of `seed` and `seeds`.
fn one_seed_key(table: &toml::Table, field: &str, text: &str) -> Result<(), String> {
    let at = |key: &str| {
        locate(text, &format!("{field}.{key}"))
            .map(|(line, column)| format!("line {line}, column {column}: "))
            .unwrap_or_default()
    };
    match (table.contains_key("seed"), table.contains_key("seeds")) {
        (true, true) => Err(format!(
            "{}{field}.seeds: expected `seed = N` or `seeds = [N, ...]`, not both",
            at("seeds")
        )),
        (false, false) => Err(format!(
            "{field}: missing field `seed` (or `seeds = [1, 2, 3]` for one run per seed)"
        )),
        _ => Ok(()),
    }
}

/// The seed a sweep's protocol reports where one seed is asked for (its first).
fn first_seed(protocol: &Protocol) -> u64 {
    match &protocol.seeds {
        Some(seeds) => seeds.first().copied().unwrap_or_default(),
        None => protocol.seed,
    }
}

/// `changes` written over `base`, tables merged key by key.
fn merge(base: &mut toml::Table, changes: &toml::Table) {
    for (key, value) in changes {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(change)) => merge(inner, change),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Line and column (1-based) of the value at a dotted path such as `protocol.optimizer.lr` or
/// `variant[1].name`, for error messages.
pub fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable = root.get_ref();
    let mut span = None;
    let parts: Vec<&str> = field.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let value = table.iter().find(|(k, _)| k.get_ref().as_ref() == key)?.1;
        let value = match (value.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => items.get(i)?,
            _ => value,
        };
        span = Some(value.span());
        if i + 1 < parts.len() {
            let DeValue::Table(inner) = value.get_ref() else {
                return None;
            };
            table = inner;
        }
    }
    let offset = span?.start;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

fn is_positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "t"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = 3
batch_size = 100
seed = 1
threshold = 3.0
train_clip = true
optimizer = { kind = "adam", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 1 }
kl_warmup = { zero_epochs = 1, ramp_epochs = 1 }
init = { theta_std = 0.01, log_sigma2 = -10.0 }

[[variant]]
name = "a"
layer = "sparse_vd"
paper = { net = "lenet300", method = "sparse_vd" }
"#;

    /// Load `GOOD` with `from` replaced by `to`; the error message, or "" if it loads.
    fn error_after(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("spec-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, GOOD.replacen(from, to, 1)).unwrap();
        let result = LoadedExperiment::load(&path);
        std::fs::remove_file(&path).unwrap();
        result.err().map(|e| e.to_string()).unwrap_or_default()
    }

    fn assert_error(from: &str, to: &str, expected: &[&str]) {
        let message = error_after(from, to);
        assert!(message.contains("spec-test-"), "names the file: {message}");
        for part in expected {
            assert!(message.contains(part), "expected {part:?} in: {message}");
        }
    }

    #[test]
    fn the_base_file_loads() {
        assert_eq!(error_after("seed = 1", "seed = 1"), "");
    }

    #[test]
    fn a_shortened_file_says_how() {
        let net = "net = \"lenet300\"";
        assert_eq!(
            error_after(net, &format!("{net}\nshortened = \"3 of 200 epochs\"")),
            ""
        );
        assert_error(
            net,
            &format!("{net}\nshortened = \" \""),
            &["shortened", "description"],
        );
        assert_error(
            net,
            &format!("{net}\nshortened = true"),
            &["shortened", "string"],
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_position() {
        assert_error(
            "seed = 1",
            "seed = 1\nsed = 2",
            &["line 9", "unknown field `sed`"],
        );
        assert_error(
            "lr = 1e-3,",
            "lr = 1e-3, momentum = 1,",
            &["line 11", "unknown field `momentum`"],
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        assert_error(
            "epochs = 3",
            "epochs = \"three\"",
            &["line 6", "invalid type", "expected usize"],
        );
        assert_error(
            "train_clip = true",
            "train_clip = 1",
            &["line 10", "invalid type"],
        );
    }

    /// `GOOD` with each `(from, to)` replaced, loaded; the hash of its variant "a".
    fn variant_hash_after(edits: &[(&str, &str)]) -> String {
        let text = edits
            .iter()
            .fold(GOOD.to_string(), |t, (from, to)| t.replacen(from, to, 1));
        let path = std::env::temp_dir().join(format!("hash-test-{}.toml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let exp = LoadedExperiment::load(&path);
        std::fs::remove_file(&path).unwrap();
        let exp = exp.unwrap();
        let variant = exp.spec.variant_index("a").unwrap();
        let first = exp.spec.runs().into_iter().find(|r| r.variant == variant);
        exp.run_sha256(first.unwrap())
    }

    #[test]
    fn variant_hash_follows_what_trains_and_nothing_else() {
        let base = variant_hash_after(&[]);
        let same = [
            ("name = \"t\"", "# a comment\nname = \"t\""),
            (
                "method = \"sparse_vd\" }",
                "method = \"sparse_vd\" }\ntolerance = { error_pp = 0.2, compression_fraction = 0.8 }",
            ),
            (
                "train_clip = true",
                "train_clip = true\nlrt_variance = \"clipped_alpha\"",
            ),
            // The sweep's run of seed 1 is the single-seed file's run.
            ("seed = 1", "seeds = [1, 2]"),
        ];
        for edit in same {
            assert_eq!(variant_hash_after(&[edit]), base, "{edit:?}");
        }
        let changed = [
            ("lr = 1e-3", "lr = 2e-3"),
            (
                "train_clip = true",
                "train_clip = true\nlrt_variance = \"sigma2\"",
            ),
            ("layer = \"sparse_vd\"", "layer = \"plain\""),
            (
                "method = \"sparse_vd\" }",
                "method = \"sparse_vd\" }\nprotocol = { seed = 2 }",
            ),
        ];
        for edit in changed {
            assert_ne!(variant_hash_after(&[edit]), base, "{edit:?}");
        }
    }

    #[test]
    fn seeds_give_one_run_per_seed_each_in_its_own_folder() {
        assert_error(
            "seed = 1",
            "seed = 1\nseeds = [1, 2]",
            &["protocol.seeds", "not both"],
        );
        assert_error(
            "seed = 1",
            "seeds = []",
            &["protocol.seeds", "at least one seed"],
        );
        assert_error(
            "seed = 1",
            "seeds = [3, 3]",
            &["protocol.seeds", "each once"],
        );
        let sweep = GOOD.replacen("seed = 1", "seeds = [3, 1]", 1);
        let exp = Experiment::parse(&sweep).unwrap();
        exp.validate().unwrap();
        let runs = exp.runs();
        assert_eq!(
            runs,
            [
                Run {
                    variant: 0,
                    seed: 3
                },
                Run {
                    variant: 0,
                    seed: 1
                }
            ]
        );
        assert_eq!(exp.run_folder(runs[0]), PathBuf::from("a/seed_3"));
        assert_eq!(exp.run_protocol(runs[0]).seed, 3);
        assert_eq!(exp.run_protocol(runs[0]).seeds, None);
        // A variant's own seed replaces the file's seeds: one run, today's folder.
        let own = sweep.replacen(
            "method = \"sparse_vd\" }",
            "method = \"sparse_vd\" }\nprotocol = { seed = 7 }",
            1,
        );
        let exp = Experiment::parse(&own).unwrap();
        assert_eq!(
            exp.runs(),
            [Run {
                variant: 0,
                seed: 7
            }]
        );
        assert_eq!(exp.run_folder(exp.runs()[0]), PathBuf::from("a"));
        // A stage starts from the run of its own seed, so both need the same seeds.
        let staged = format!(
            "{sweep}\n[[variant]]\nname = \"b\"\nlayer = \"sparse_vd\"\nstart_from = \"a\"\nprotocol = {{ seed = 3 }}\n"
        );
        let exp = Experiment::parse(&staged).unwrap();
        let (field, message) = exp.validate().unwrap_err();
        assert_eq!(field, "variant[1].start_from");
        assert!(message.contains("same `seed` or `seeds`"), "{message}");
    }

    #[test]
    fn a_variant_without_a_paper_row_is_ones_own_and_takes_no_tolerance() {
        let own = "paper = { net = \"lenet300\", method = \"sparse_vd\" }";
        assert_eq!(error_after(own, ""), "");
        assert_error(
            own,
            "tolerance = { error_pp = 0.2, compression_fraction = 0.8 }",
            &["variant[0].tolerance", "paper = { net, method }"],
        );
    }

    #[test]
    fn lrt_variance_names_its_forms() {
        assert_error(
            "train_clip = true",
            "train_clip = true\nlrt_variance = \"sigma\"",
            &[
                "line 11",
                "unknown variant `sigma`",
                "clipped_alpha",
                "sigma2",
            ],
        );
        let parsed = |line: &str| {
            let text = GOOD.replace("train_clip = true", line);
            Experiment::parse(&text).map(|e| e.protocol.lrt_variance)
        };
        assert_eq!(
            parsed("train_clip = true").ok(),
            Some(LrtVariance::ClippedAlpha),
            "the authors' form is the default"
        );
        assert_eq!(
            parsed("train_clip = true\nlrt_variance = \"sigma2\"").ok(),
            Some(LrtVariance::Sigma2)
        );
    }

    #[test]
    fn out_of_range_values_name_key_line_and_expectation() {
        assert_error(
            "lr = 1e-3",
            "lr = -1e-3",
            &["line 11, column 35", "protocol.optimizer.lr", "positive"],
        );
        assert_error(
            "threshold = 3.0",
            "threshold = 9.0",
            &["line 9", "protocol.threshold", "clip range"],
        );
        assert_error(
            "epochs = 3",
            "epochs = 0",
            &["line 6", "protocol.epochs", "at least 1"],
        );
        assert_error(
            "batch_size = 100",
            "batch_size = 0",
            &["protocol.batch_size"],
        );
        assert_error(
            "beta2 = 0.999",
            "beta2 = 1.5",
            &["protocol.optimizer.beta2", "[0, 1)"],
        );
        assert_error(
            "decay_start_epoch = 1",
            "decay_start_epoch = 9",
            &["decay_start_epoch", "at most epochs"],
        );
    }

    #[test]
    fn unknown_net_dataset_and_layer_are_errors() {
        assert_error(
            "net = \"lenet300\"",
            "net = \"resnet\"",
            &["line 3", "unknown variant `resnet`"],
        );
        assert_error(
            "dataset = \"mnist\"",
            "dataset = \"imagenet\"",
            &["line 2", "unknown variant `imagenet`"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"sparse\"",
            &["unknown variant `sparse`"],
        );
    }

    #[test]
    fn dropout_keep_is_required_where_it_applies_only() {
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"binary_dropout\"",
            &["variant[0]", "expected keep"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"binary_dropout\"\nkeep = 1.5",
            &["variant[0].keep", "probability"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"sparse_vd\"\nkeep = 0.5",
            &["variant[0].keep", "expected no keep"],
        );
        assert_eq!(
            error_after(
                "layer = \"sparse_vd\"",
                "layer = \"binary_dropout\"\nkeep = 0.5"
            ),
            ""
        );
    }

    #[test]
    fn keep_is_one_probability_or_one_per_layer_input() {
        let binary = |keep: &str| format!("layer = \"binary_dropout\"\nkeep = {keep}");
        assert_eq!(
            error_after("layer = \"sparse_vd\"", &binary("[0.8, 0.5, 0.5]")),
            ""
        );
        assert_error(
            "layer = \"sparse_vd\"",
            &binary("[0.8, 0.5]"),
            &[
                "variant[0].keep",
                "one probability per layer input (3), got 2",
            ],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            &binary("[0.8, 0.0, 0.5]"),
            &["variant[0].keep", "probability in (0, 1], got 0"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            &binary("\"half\""),
            &["keep", "a list of one per layer input"],
        );
        assert_eq!(
            Keep::PerLayer(vec![0.8, 0.5, 0.5]).per_layer(3),
            vec![0.8, 0.5, 0.5]
        );
        assert_eq!(Keep::Every(0.5).per_layer(3), vec![0.5; 3]);
    }

    #[test]
    fn log_alpha_can_start_where_the_additive_posterior_starts() {
        assert_eq!(
            error_after(
                "log_sigma2 = -10.0 }\n",
                "log_sigma2 = -10.0 }\n\n[[variant]]\nname = \"la\"\nlayer = \"sparse_vd_log_alpha\"\npaper = { net = \"lenet300\", method = \"sparse_vd_log_alpha\" }\nprotocol = { init = { log_alpha = \"from_log_sigma2\" } }\n"
            ),
            ""
        );
        assert_error(
            "log_sigma2 = -10.0 }",
            "log_sigma2 = -10.0, log_alpha = \"from_log_sigma2\" }\n\n[[variant]]\nname = \"vd\"\nlayer = \"variational_dropout\"\nalpha = \"per_layer\"\npaper = { net = \"lenet300\", method = \"variational_dropout\" }",
            &["protocol.init.log_alpha", "expected a number"],
        );
        assert_error(
            "log_sigma2 = -10.0 }",
            "log_sigma2 = -10.0, log_alpha = \"from_theta\" }",
            &["log_alpha", "a number or \"from_log_sigma2\""],
        );
        let init = |log_alpha| Init {
            theta_std: 0.01,
            log_sigma2: -10.0,
            log_alpha,
        };
        assert_eq!(init(None).log_alpha_init(), None);
        assert_eq!(
            init(Some(InitialLogAlpha::Value(-4.0))).log_alpha_init(),
            Some(LogAlphaInit::Constant { log_alpha: -4.0 })
        );
        assert_eq!(
            init(Some(InitialLogAlpha::Rule(LogAlphaRule::FromLogSigma2))).log_alpha_init(),
            Some(LogAlphaInit::FromLogSigma2 { log_sigma2: -10.0 })
        );
    }

    #[test]
    fn dropout_family_layers_need_their_own_fields_only() {
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"gaussian_dropout\"",
            &["variant[0]", "expected keep"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"variational_dropout\"",
            &["variant[0]", "expected alpha", "per_unit"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"sparse_vd\"\nalpha = \"per_unit\"",
            &["variant[0].alpha", "expected no alpha"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"variational_dropout\"\nalpha = \"per_weight\"",
            &["unknown variant `per_weight`", "per_unit"],
        );
        assert_error(
            "layer = \"sparse_vd\"",
            "layer = \"sparse_vd_log_alpha\"",
            &["protocol.init", "expected log_alpha"],
        );
        assert_eq!(
            error_after(
                "log_sigma2 = -10.0 }",
                "log_sigma2 = -10.0, log_alpha = -4.0 }\n\n[[variant]]\nname = \"vd\"\nlayer = \"variational_dropout\"\nalpha = \"per_layer\"\npaper = { net = \"lenet300\", method = \"variational_dropout\" }\n\n[[variant]]\nname = \"gd\"\nlayer = \"gaussian_dropout\"\nkeep = 0.5\npaper = { net = \"lenet300\", method = \"gaussian_dropout\" }"
            ),
            "",
        );
    }

    #[test]
    fn missing_fields_and_duplicate_variants_are_errors() {
        assert_error("seed = 1\n", "", &["missing field `seed`"]);
        let twice = format!(
            "{GOOD}\n[[variant]]\nname = \"a\"\nlayer = \"plain\"\npaper = {{ net = \"lenet300\", method = \"original\" }}\n"
        );
        let path = std::env::temp_dir().join(format!("spec-test-dup-{}.toml", std::process::id()));
        std::fs::write(&path, twice).unwrap();
        let message = LoadedExperiment::load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            message.contains("variant[1].name")
                && message.contains("duplicate")
                && message.contains("line 22"),
            "{message}"
        );
    }

    /// A two-stage VGG-like file: `bd` then `svd` from it, with a protocol change.
    fn stages(extra: &str) -> String {
        GOOD.replace("dataset = \"mnist\"", "dataset = \"cifar10\"")
            .replace("net = \"lenet300\"", "net = \"vgglike\"")
            .replace(
                "[[variant]]\nname = \"a\"\nlayer = \"sparse_vd\"",
                "[[variant]]\nname = \"svd\"\nlayer = \"sparse_vd\"\nwidth = 0.25\nstart_from = \"bd\"\nprotocol = { optimizer = { lr = 1e-5 } }",
            )
            + "\n[[variant]]\nname = \"bd\"\nlayer = \"binary_dropout\"\nwidth = 0.25\npaper = { net = \"vgglike\", method = \"dense\", k = 0.25 }\n"
            + extra
    }

    fn load_text(text: &str) -> Result<LoadedExperiment, String> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("spec-stage-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let result = LoadedExperiment::load(&path);
        std::fs::remove_file(&path).unwrap();
        result.map_err(|e| e.to_string())
    }

    #[test]
    fn stages_run_after_their_source_with_their_own_protocol() {
        let exp = load_text(&stages("")).unwrap();
        let spec = &exp.spec;
        assert_eq!(spec.stage_order(), vec![1, 0]);
        let Optimizer::Adam { lr, beta1, .. } = spec.protocol_of(0).optimizer;
        assert_eq!((lr, beta1), (1e-5, 0.9));
        let Optimizer::Adam { lr, .. } = spec.protocol_of(1).optimizer;
        assert_eq!(lr, 1e-3);
    }

    #[test]
    fn bad_stages_are_errors() {
        let text = stages("");
        let cases = [
            (
                text.replace("lr = 1e-5", "lr = -1.0"),
                vec!["variant[0].protocol.optimizer.lr", "positive"],
            ),
            (
                text.replace("lr = 1e-5", "rate = 1e-5"),
                vec!["line 21", "variant[0].protocol", "unknown field `rate`"],
            ),
            (
                text.replace("start_from = \"bd\"", "start_from = \"nope\""),
                vec!["variant[0].start_from", "another variant", "line 20"],
            ),
            (
                text.replacen("width = 0.25\n", "", 1),
                vec!["variant[0]", "expected a width"],
            ),
            (
                text.replace("width = 0.25\nstart_from", "width = 0.5\nstart_from"),
                vec!["variant[0].start_from", "another width"],
            ),
            (
                stages("start_from = \"svd\"\n"),
                vec!["start_from", "starts, directly or not"],
            ),
            (
                text.replace("net = \"vgglike\"", "net = \"lenet5\""),
                vec!["variant[0].width", "has its widths in the net"],
            ),
        ];
        for (text, expected) in cases {
            let message = load_text(&text).unwrap_err();
            for part in expected {
                assert!(message.contains(part), "expected {part:?} in: {message}");
            }
        }
    }
}
