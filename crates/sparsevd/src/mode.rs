//! What every network of this crate shares: how a forward pass is run, what it returns, and how
//! its weight layers are shown to the rest of the harness.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

/// How a forward pass treats the variational weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ForwardMode {
    /// Stochastic pass with the local reparameterization trick. With `mask_threshold = Some(t)`
    /// weights with log α ≥ t are zeroed in the mean path ("train clip" of the authors' code).
    /// The noise ζ is a function of `noise_seed` (see [`ForwardMode::for_layer`]).
    Train {
        mask_threshold: Option<f64>,
        noise_seed: u64,
    },
    /// Deterministic pass with the mean weights θ, every weight with log α ≥ `threshold` zeroed.
    Eval { threshold: f64 },
}

/// Noise on a layer's input in training, keeping its mean: the first two links of the dropout
/// family, both with keep-probability p.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Dropout {
    /// x ⊙ m / p, m ~ Bernoulli(p) (Srivastava et al. 2014).
    Binary { keep: f64 },
    /// x ⊙ r, r ~ N(1, α), α = (1 − p)/p: binary dropout's mean and variance.
    Gaussian { keep: f64 },
}

/// Noise streams of dropout masks start here, after the weight layers' streams.
const DROPOUT_STREAMS: u64 = 1000;

impl ForwardMode {
    /// `dropout` of `x` in training (mask number `index` of the network); `x` unchanged in
    /// evaluation.
    pub fn dropout<const D: usize>(self, x: Tensor<D>, dropout: Dropout, index: u64) -> Tensor<D> {
        let ForwardMode::Train { noise_seed, .. } = self.for_layer(DROPOUT_STREAMS + index) else {
            return x;
        };
        match dropout {
            Dropout::Binary { keep } => crate::ops::binary_dropout(x, keep, noise_seed),
            Dropout::Gaussian { keep } => crate::ops::gaussian_dropout(x, keep, noise_seed),
        }
    }

    /// The mode for the network's weight layer number `index`: in training, a noise seed of its
    /// own, so that no two layers draw the same ζ.
    pub fn for_layer(self, index: u64) -> Self {
        match self {
            ForwardMode::Train {
                mask_threshold,
                noise_seed,
            } => ForwardMode::Train {
                mask_threshold,
                noise_seed: crate::ops::mix(noise_seed, index),
            },
            eval => eval,
        }
    }
}

/// Logits, and Σ KL over the Sparse VD layers (`None` for a net without any, and in evaluation).
pub struct NetOutput {
    pub logits: Tensor<2>,
    pub kl: Option<Tensor<1>>,
}

/// A weight layer copied to the host, for counting, saving and plotting.
#[derive(Debug, Clone)]
pub struct WeightLayerView {
    /// Stable name, also the prefix of its tensors in saved models (e.g. `dense1`).
    pub name: String,
    /// Shape of θ and log σ²: `[d_in, d_out]` for dense, `[out, in, kh, kw]` for conv.
    pub shape: Vec<usize>,
    pub theta: Vec<f32>,
    /// `None` for a plain (non-variational) layer.
    pub log_sigma2: Option<Vec<f32>>,
    /// Clipped log α, computed on the device exactly as the forward pass does.
    pub log_alpha: Option<Vec<f32>>,
    pub bias: Vec<f32>,
}

impl WeightLayerView {
    /// Whether each weight survives evaluation at `threshold` (true = kept).
    pub fn kept(&self, threshold: f64) -> Vec<bool> {
        match &self.log_alpha {
            Some(log_alpha) => log_alpha.iter().map(|&a| (a as f64) < threshold).collect(),
            None => self.theta.iter().map(|&t| t != 0.0).collect(),
        }
    }

    /// The plain layer that evaluation at `threshold` amounts to: removed weights set to 0,
    /// no log σ² (the "dense masked model" that sparse inference is compared with).
    pub fn masked(&self, threshold: f64) -> WeightLayerView {
        let kept = self.kept(threshold);
        WeightLayerView {
            theta: self
                .theta
                .iter()
                .zip(&kept)
                .map(|(&t, &k)| if k { t } else { 0.0 })
                .collect(),
            log_sigma2: None,
            log_alpha: None,
            ..self.clone()
        }
    }
}

/// A batch-norm layer copied to the host, for saving and restoring. Not a weight layer: it is
/// not counted in compression.
#[derive(Debug, Clone, PartialEq)]
pub struct NormLayerView {
    pub name: String,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

/// One layer of a network's evaluation pass, described for running it outside burn (sparse
/// inference): a weight layer by its saved name (dense, or a stride-1 convolution without
/// padding, told apart by the rank of θ), ReLU, or 2×2 max pooling with stride 2. A dense layer
/// after a convolution reads its output flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalLayer {
    Weights(String),
    Relu,
    MaxPool2x2,
}

/// A network's evaluation pass as a list of layers on images of shape `[channels, height,
/// width]`: what it computes, without its weights (those are the saved [`WeightLayerView`]s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalLayers {
    pub input: [usize; 3],
    pub layers: Vec<EvalLayer>,
}

/// A classifier the runner can train and evaluate. Input is a batch of flattened images.
pub trait Network: Module + Clone {
    fn forward(&self, input: Tensor<2>, mode: ForwardMode) -> NetOutput;
    /// The weight layers, input to output, named as in saved models.
    fn weight_layers(&self) -> Vec<WeightLayerView>;
    /// This network with its weights replaced by `layers` (as read from a saved model).
    fn with_weight_layers(self, layers: &[WeightLayerView]) -> Result<Self, String>;
    /// Σ θ² over every weight layer (the L2 penalty of binary-dropout training).
    fn theta_squared(&self) -> Tensor<1>;
    /// The evaluation pass as a layer list, where every layer is one [`EvalLayer`] can
    /// describe (`None` otherwise: VGG-like's padding and batch norm).
    fn eval_layers(&self) -> Option<EvalLayers> {
        None
    }
    /// The batch-norm layers, input to output (none for the LeNets).
    fn norm_layers(&self) -> Vec<NormLayerView> {
        Vec::new()
    }
    /// This network with its batch-norm layers replaced by `layers`.
    fn with_norm_layers(self, layers: &[NormLayerView]) -> Result<Self, String> {
        match layers {
            [] => Ok(self),
            [first, ..] => Err(format!("{}: this network has no batch norm", first.name)),
        }
    }
}

/// The view named `name` among `layers`, or an error naming it.
pub(crate) fn find_layer<'a>(
    layers: &'a [WeightLayerView],
    name: &str,
) -> Result<&'a WeightLayerView, String> {
    layers
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| format!("layer {name} missing from the saved model"))
}

/// Σ KL of two parts of a network, either of which may have none.
pub(crate) fn add_kl(a: Option<Tensor<1>>, b: Option<Tensor<1>>) -> Option<Tensor<1>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}
