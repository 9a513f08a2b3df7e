//! The weights of one layer — θ, optional log σ², bias — and the Sparse VD forward pass that
//! dense and convolutional layers share; they differ only in the linear map applied.

use crate::kl::{KlTerms, log_alpha};
use crate::mode::{ForwardMode, WeightLayerView};
use crate::noise::standard_normal;
use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};

/// Added under the square root of the LRT variance so that its gradient stays finite.
const VARIANCE_EPS: f64 = 1e-8;

/// θ (any shape whose leading or trailing axis is the output unit), log σ² of the same shape
/// (absent for a plain layer), and one bias per output unit.
///
/// With log σ² present this is the Sparse VD posterior q(w_ij) = N(θ_ij, σ²_ij),
/// α_ij = σ²_ij / θ²_ij, log α clipped to [−8, 8]. For a linear map `A` (matmul or convolution):
/// - training (local reparameterization): γ = A(x, θ) + b, δ = A(x ⊙ x, σ²),
///   output γ + √(δ + 1e-8) ⊙ ζ, ζ ~ N(0, 1) per output element (drawn from the mode's noise
///   seed); the bias never enters δ;
/// - evaluation: A(x, θ ⊙ [log α < threshold]) + b, deterministic.
#[derive(Module, Debug)]
pub struct VariationalWeights<const D: usize> {
    pub theta: Param<Tensor<D>>,
    pub log_sigma2: Option<Param<Tensor<D>>>,
    pub bias: Param<Tensor<1>>,
}

impl<const D: usize> VariationalWeights<D> {
    /// Weights with initial θ, zero bias for `units` outputs, and log σ² = `log_sigma2_init`
    /// everywhere (or none).
    pub fn new(theta: Tensor<D>, units: usize, log_sigma2_init: Option<f64>) -> Self {
        let device = theta.device();
        Self {
            log_sigma2: log_sigma2_init
                .map(|v| Param::from_tensor(Tensor::full(theta.shape(), v, &device))),
            bias: Param::from_tensor(Tensor::zeros([units], &device)),
            theta: Param::from_tensor(theta),
        }
    }

    /// Apply the layer whose linear map is `map` (without bias); returns the output and this
    /// layer's Σ KL (`None` for a plain layer and in evaluation). Output axis 1 is the unit axis.
    pub fn forward<const E: usize>(
        &self,
        x: Tensor<E>,
        mode: ForwardMode,
        map: impl Fn(Tensor<E>, Tensor<D>) -> Tensor<E>,
    ) -> (Tensor<E>, Option<Tensor<1>>) {
        let theta = self.theta.val();
        let mut bias_shape = [1; E];
        bias_shape[1] = self.bias.dims()[0];
        let bias = self.bias.val().reshape(bias_shape);
        let Some(log_sigma2) = self.log_sigma2.as_ref().map(Param::val) else {
            return (map(x, theta) + bias, None);
        };
        match mode {
            ForwardMode::Eval { threshold } => {
                let removed = log_alpha(theta.clone(), log_sigma2).greater_equal_elem(threshold);
                let mean = theta.mask_fill(removed, 0.0);
                (map(x, mean) + bias, None)
            }
            ForwardMode::Train {
                mask_threshold,
                noise_seed,
            } => {
                let terms = KlTerms::new(
                    &host_vec(theta.clone().into_data()),
                    &host_vec(log_sigma2.clone().into_data()),
                );
                let mean = match mask_threshold {
                    Some(t) => theta.clone().mask_fill(
                        terms.log_alpha_at_least(t, theta.dims(), &theta.device()),
                        0.0,
                    ),
                    None => theta.clone(),
                };
                let gamma = map(x.clone(), mean) + bias;
                let delta = map(x.square(), log_sigma2.clone().exp());
                let zeta = standard_normal(gamma.dims(), noise_seed, &gamma.device());
                let out = gamma + lrt_std(delta) * zeta;
                (out, Some(terms.into_tensor(theta, log_sigma2)))
            }
        }
    }

    /// Σ θ² (for an L2 penalty).
    pub fn theta_squared(&self) -> Tensor<1> {
        self.theta.val().square().sum()
    }

    /// These weights with θ, log σ² and bias replaced by `view`'s (a saved model), keeping the
    /// structure; an error says what does not match.
    pub fn with_values(self, view: &WeightLayerView) -> Result<Self, String> {
        let device = self.theta.val().device();
        let shape = self.theta.dims();
        if view.shape != shape {
            return Err(format!(
                "{}: shape {:?}, expected {:?}",
                view.name, view.shape, shape
            ));
        }
        if view.log_sigma2.is_some() != self.log_sigma2.is_some() {
            return Err(format!(
                "{}: log_sigma2 {} in the file but {} in the network",
                view.name,
                if view.log_sigma2.is_some() {
                    "present"
                } else {
                    "absent"
                },
                if self.log_sigma2.is_some() {
                    "expected"
                } else {
                    "not expected"
                }
            ));
        }
        if view.bias.len() != self.bias.dims()[0] {
            return Err(format!(
                "{}: {} biases, expected {}",
                view.name,
                view.bias.len(),
                self.bias.dims()[0]
            ));
        }
        let tensor = |values: &[f32]| {
            Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), &device)
        };
        Ok(Self {
            theta: Param::from_tensor(tensor(&view.theta)),
            log_sigma2: view
                .log_sigma2
                .as_deref()
                .map(|v| Param::from_tensor(tensor(v))),
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(view.bias.clone(), [view.bias.len()]),
                &device,
            )),
        })
    }

    /// Copy to the host for counting, saving and plotting.
    pub fn view(&self, name: &str) -> WeightLayerView {
        let theta = self.theta.val();
        let log_sigma2 = self.log_sigma2.as_ref().map(Param::val);
        WeightLayerView {
            name: name.to_string(),
            shape: theta.dims().to_vec(),
            log_alpha: log_sigma2
                .clone()
                .map(|s| host_vec(log_alpha(theta.clone(), s).into_data())),
            log_sigma2: log_sigma2.map(|s| host_vec(s.into_data())),
            theta: host_vec(theta.into_data()),
            bias: host_vec(self.bias.val().into_data()),
        }
    }
}

/// √(δ + 1e-8), differentiated as 1 / (2·√(δ + 1e-8)) from the forward value:
/// √δ̄ + (δ − δ̄) / (2√δ̄) with δ̄ a detached copy (the second term is exactly 0). burn's own
/// `sqrt` backward recomputes the slope with `powf`, 5 % of a LeNet-5 step.
fn lrt_std<const E: usize>(delta: Tensor<E>) -> Tensor<E> {
    let fixed = delta.clone().detach();
    let std = (fixed.clone() + VARIANCE_EPS).sqrt();
    let slope = std.clone().recip() * 0.5;
    std + (delta - fixed) * slope
}

/// Copy device data to a host vector of f32, whatever the backend's float type.
pub(crate) fn host_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32 just above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn lrt_std_has_the_value_and_slope_of_the_square_root() {
        let device = Device::flex().autodiff();
        let values = [0.0f32, 1e-6, 0.25, 4.0];
        let delta = Tensor::<1>::from_data(TensorData::from(values), &device).require_grad();
        let std = lrt_std(delta.clone());
        let grads = (std.clone() * 3.0).sum().backward();
        let std = host_vec(std.into_data());
        let slope = host_vec(delta.grad(&grads).expect("tracked").into_data());
        for (i, &d) in values.iter().enumerate() {
            let root = (d as f64 + VARIANCE_EPS).sqrt();
            assert!(
                (std[i] as f64 - root).abs() <= 1e-6 * root,
                "√ at {d}: {}",
                std[i]
            );
            let want = 3.0 * 0.5 / root;
            assert!(
                (slope[i] as f64 - want).abs() <= 1e-5 * want,
                "slope at {d}: {}",
                slope[i]
            );
        }
    }
}
