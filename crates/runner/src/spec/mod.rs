//! The declarative experiment file (`experiments/*.toml`). Unknown keys are errors.

mod hash;
mod parse;
#[cfg(test)]
mod tests;
mod validate;

pub use parse::locate;

use serde::{Deserialize, Serialize};
use sparsevd::{AlphaSharing, LogAlphaInit, LrtVariance};
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
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
impl Experiment {
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
}
