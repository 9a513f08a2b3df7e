//! Dense layer: plain (the "original" baseline) or Sparse VD.

use crate::kl::{kl_approx, log_alpha};
use crate::mode::{ForwardMode, WeightLayerView};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

/// Added under the square root of the LRT variance so that its gradient stays finite.
const VARIANCE_EPS: f64 = 1e-8;

#[derive(Config, Debug)]
pub struct DenseConfig {
    pub d_input: usize,
    pub d_output: usize,
    /// Standard deviation of the N(0, std²) initialisation of θ.
    #[config(default = 0.01)]
    pub init_std: f64,
    /// Initial log σ² of every weight; `None` makes a plain dense layer.
    pub log_sigma2_init: Option<f64>,
}

/// Dense layer `y = x·θ + b` with θ of shape `[d_input, d_output]`.
///
/// With log σ² present it is the Sparse VD layer, posterior q(w_ij) = N(θ_ij, σ²_ij),
/// α_ij = σ²_ij / θ²_ij. Training samples pre-activations by the local reparameterization trick:
/// γ = x·θ + b, δ = (x ⊙ x)·σ², output γ + √(δ + 1e-8) ⊙ ζ with ζ ~ N(0, 1) per example and unit.
/// The bias never enters δ. Evaluation is deterministic: γ with θ_ij zeroed where
/// log α_ij ≥ threshold.
#[derive(Module, Debug)]
pub struct Dense {
    pub theta: Param<Tensor<2>>,
    pub log_sigma2: Option<Param<Tensor<2>>>,
    pub bias: Param<Tensor<1>>,
}

impl DenseConfig {
    pub fn init(&self, device: &Device) -> Dense {
        let shape = [self.d_input, self.d_output];
        let theta = Tensor::random(shape, Distribution::Normal(0.0, self.init_std), device);
        Dense {
            theta: Param::from_tensor(theta),
            log_sigma2: self
                .log_sigma2_init
                .map(|v| Param::from_tensor(Tensor::full(shape, v, device))),
            bias: Param::from_tensor(Tensor::zeros([self.d_output], device)),
        }
    }
}

impl Dense {
    /// Output and this layer's Σ KL (`None` for a plain layer and in evaluation).
    pub fn forward(&self, x: Tensor<2>, mode: ForwardMode) -> (Tensor<2>, Option<Tensor<1>>) {
        let theta = self.theta.val();
        let bias = self.bias.val().unsqueeze::<2>();
        let Some(log_sigma2) = self.log_sigma2.as_ref().map(Param::val) else {
            return (x.matmul(theta) + bias, None);
        };
        let log_alpha = log_alpha(theta.clone(), log_sigma2.clone());
        match mode {
            ForwardMode::Eval { threshold } => {
                let mean = theta.mask_fill(log_alpha.greater_equal_elem(threshold), 0.0);
                (x.matmul(mean) + bias, None)
            }
            ForwardMode::Train { mask_threshold } => {
                let mean = match mask_threshold {
                    Some(t) => theta.mask_fill(log_alpha.clone().greater_equal_elem(t), 0.0),
                    None => theta,
                };
                let gamma = x.clone().matmul(mean) + bias;
                let delta = x.square().matmul(log_sigma2.exp());
                let zeta = gamma.random_like(Distribution::Normal(0.0, 1.0));
                let out = gamma + (delta + VARIANCE_EPS).sqrt() * zeta;
                (out, Some(kl_approx(log_alpha)))
            }
        }
    }

    pub fn view(&self, name: &str) -> WeightLayerView {
        let host = |t: Tensor<2>| host_vec(t.into_data());
        let theta = self.theta.val();
        let log_sigma2 = self.log_sigma2.as_ref().map(Param::val);
        WeightLayerView {
            name: name.to_string(),
            shape: theta.dims().to_vec(),
            log_alpha: log_sigma2
                .clone()
                .map(|s| host(log_alpha(theta.clone(), s))),
            log_sigma2: log_sigma2.map(host),
            theta: host(theta),
            bias: host_vec(self.bias.val().into_data()),
        }
    }
}

/// Copy device data to a host vector of f32, whatever the backend's float type.
pub(crate) fn host_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32 just above")
}
