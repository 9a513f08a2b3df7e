//! The declarative experiment file (`experiments/*.toml`). Unknown keys are errors.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One experiment file: a data set, a net, a protocol, and the variants trained under it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Short name; results go to `results/<name>/<variant>/`.
    pub name: String,
    pub dataset: Dataset,
    pub net: Net,
    pub protocol: Protocol,
    #[serde(rename = "variant")]
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    Mnist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Net {
    /// 784 → 300 → 100 → 10, ReLU.
    Lenet300,
    /// LeNet-5-Caffe: conv 20@5×5, maxpool, conv 50@5×5, maxpool, dense 800 → 500 → 10.
    Lenet5,
}

impl Net {
    pub fn key(self) -> &'static str {
        match self {
            Net::Lenet300 => "lenet300",
            Net::Lenet5 => "lenet5",
        }
    }
}

/// How every variant of the experiment is trained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Weights with log α ≥ threshold are removed at evaluation.
    pub threshold: f64,
    /// Zero weights with log α ≥ threshold in the mean path during training too.
    pub train_clip: bool,
    pub optimizer: Optimizer,
    pub lr_schedule: LrSchedule,
    pub kl_warmup: KlWarmup,
    pub init: Init,
    /// Train on the first N training images only (a shortened run, labelled as such).
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images only (a shortened run, labelled as such).
    pub test_subset: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Base rate until `decay_start_epoch`, then linear to 0 at the last epoch
    /// (`decay_start_epoch = 0` is linear decay over the whole run).
    ConstantThenLinear { decay_start_epoch: usize },
}

/// β = 0 for `zero_epochs`, then linear to 1 over `ramp_epochs`, then 1.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlWarmup {
    pub zero_epochs: usize,
    pub ramp_epochs: usize,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Init {
    /// θ ~ N(0, theta_std²) for dense layers (convolutions start Glorot-uniform).
    pub theta_std: f64,
    /// Initial log σ² of every Sparse VD weight.
    pub log_sigma2: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Folder name under the experiment's results.
    pub name: String,
    pub layer: LayerKind,
    /// The paper's row this variant is compared with.
    pub paper: PaperKey,
    /// Regression tolerance against the paper's row (checked by the tests under `tests/`).
    pub tolerance: Option<Tolerance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Deterministic dense layers (the paper's "original" network).
    Plain,
    /// Sparse VD layers, additive (θ, log σ²) parameterization.
    SparseVd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperKey {
    pub net: String,
    pub method: String,
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
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
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

impl Experiment {
    /// Parse TOML; the message carries line, column and what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Range checks serde cannot express: (field, what was expected).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.protocol;
        let fail = |field: &str, msg: String| Err((field.to_string(), msg));
        if p.epochs == 0 {
            return fail("protocol.epochs", "expected at least 1".into());
        }
        if p.batch_size == 0 {
            return fail("protocol.batch_size", "expected at least 1".into());
        }
        let clip = sparsevd::LOG_ALPHA_CLIP;
        if !(p.threshold > -clip && p.threshold < clip) {
            return fail(
                "protocol.threshold",
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
                "protocol.optimizer.lr",
                format!("expected a positive number, got {lr}"),
            );
        }
        for (field, b) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&b) {
                return fail(
                    &format!("protocol.optimizer.{field}"),
                    format!("expected a value in [0, 1), got {b}"),
                );
            }
        }
        if !is_positive(epsilon) {
            return fail(
                "protocol.optimizer.epsilon",
                format!("expected a positive number, got {epsilon}"),
            );
        }
        let LrSchedule::ConstantThenLinear { decay_start_epoch } = p.lr_schedule;
        if decay_start_epoch > p.epochs {
            return fail(
                "protocol.lr_schedule.decay_start_epoch",
                format!(
                    "expected at most epochs = {}, got {decay_start_epoch}",
                    p.epochs
                ),
            );
        }
        if !is_positive(p.init.theta_std) {
            return fail(
                "protocol.init.theta_std",
                format!("expected a positive number, got {}", p.init.theta_std),
            );
        }
        for (field, n) in [
            ("train_subset", p.train_subset),
            ("test_subset", p.test_subset),
        ] {
            if n == Some(0) {
                return fail(
                    &format!("protocol.{field}"),
                    "expected at least 1 example".into(),
                );
            }
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
        }
        Ok(())
    }

    /// Whether this protocol is shorter than the full data (a subset); epochs are judged by the
    /// caller against the paper protocol.
    pub fn uses_subset(&self) -> bool {
        self.protocol.train_subset.is_some() || self.protocol.test_subset.is_some()
    }
}

fn is_positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}
