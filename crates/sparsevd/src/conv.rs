//! 2-D convolution layer: plain or variational, sharing [`VariationalWeights`] with the dense layer.

use crate::mode::{ForwardMode, WeightLayerView};
use crate::ops;
use crate::posterior::Posterior;
use crate::weights::{LinearMap, MapKind, MeanGradient, VariationalWeights};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

#[derive(Config, Debug)]
pub struct Conv2dConfig {
    pub channels_in: usize,
    pub channels_out: usize,
    pub kernel: usize,
    /// Zero padding on every side (0 = "valid").
    #[config(default = 0)]
    pub padding: usize,
    /// Posterior of the weights; a point posterior makes a plain convolution.
    #[config(default = "Posterior::Point")]
    pub posterior: Posterior,
}

/// Convolution with stride 1: γ = conv(x, θ) + b, θ of shape `[out, in, k, k]`; variational
/// training adds √(conv(x ⊙ x, σ²) + 1e-8) ⊙ ζ (see [`VariationalWeights`]).
/// θ starts Glorot-uniform: U(−a, a), a = √(6 / (in·k² + out·k²)).
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weights: VariationalWeights<4>,
    pub padding: usize,
}

impl Conv2dConfig {
    pub fn init(&self, device: &Device) -> Conv2d {
        let k2 = self.kernel * self.kernel;
        let bound = (6.0 / ((self.channels_in + self.channels_out) * k2) as f64).sqrt();
        let shape = [
            self.channels_out,
            self.channels_in,
            self.kernel,
            self.kernel,
        ];
        let theta = Tensor::random(shape, Distribution::Uniform(-bound, bound), device);
        Conv2d {
            weights: VariationalWeights::new(theta, MapKind::Convolution, self.posterior),
            padding: self.padding,
        }
    }
}

/// A(x, w) = conv(x, w), stride 1, `padding` zeros on every side.
pub(crate) struct Convolution {
    pub padding: usize,
}

impl Convolution {
    /// burn's options for this convolution.
    pub(crate) fn options(&self) -> ConvOptions<2> {
        ConvOptions::new([1, 1], [self.padding; 2], [1, 1], 1)
    }
}

impl LinearMap<4, 4> for Convolution {
    fn apply(&self, x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
        conv2d(x, w, None, self.options())
    }

    /// [`ops::conv2d`]: the bias added inside the convolution.
    fn apply_with_bias(&self, x: Tensor<4>, w: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
        ops::conv2d(x, w, bias, self.padding)
    }

    /// [`ops::lrt_conv2d`]: on the CPU backend one fused operation.
    fn lrt_sample(
        &self,
        x: Tensor<4>,
        mean: Tensor<4>,
        variance: Tensor<4>,
        bias: Tensor<1>,
        noise_seed: u64,
        mean_gradient: MeanGradient,
    ) -> Tensor<4> {
        ops::lrt_conv2d(
            x,
            mean,
            variance,
            bias,
            self.padding,
            noise_seed,
            mean_gradient,
        )
    }
}

impl Conv2d {
    pub fn forward(&self, x: Tensor<4>, mode: ForwardMode) -> (Tensor<4>, Option<Tensor<1>>) {
        let map = Convolution {
            padding: self.padding,
        };
        self.weights.forward(x, mode, &map)
    }

    pub fn view(&self, name: &str) -> WeightLayerView {
        self.weights.view(name)
    }

    pub fn theta_squared(&self) -> Tensor<1> {
        self.weights.theta_squared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::host_vec;
    use burn::module::Param;
    use burn::tensor::TensorData;

    #[test]
    fn lrt_conv_variance_is_the_convolution_of_squares_with_sigma2() {
        let device = Device::flex();
        // One 2×2 filter on a 2×2 image: a single output pixel, so moments are easy to state.
        let theta = [0.5f32, -1.0, 0.25, 2.0];
        let log_sigma2 = [-1.0f32, -2.0, -3.0, -0.5];
        let layer = Conv2d {
            weights: VariationalWeights {
                theta: Param::from_tensor(Tensor::from_data(
                    TensorData::new(theta.to_vec(), [1, 1, 2, 2]),
                    &device,
                )),
                log_sigma2: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(log_sigma2.to_vec(), [1, 1, 2, 2]),
                    &device,
                ))),
                log_alpha: None,
                bias: Param::from_tensor(Tensor::from_data(TensorData::from([0.1f32]), &device)),
                posterior: Posterior::sparse_vd(-10.0),
                kind: MapKind::Convolution,
            },
            padding: 0,
        };
        let x = [1.0f32, -2.0, 0.5, 3.0];
        let n = 40_000;
        let batch: Vec<f32> = x.iter().copied().cycle().take(4 * n).collect();
        let input = Tensor::from_data(TensorData::new(batch, [n, 1, 2, 2]), &device);
        let (out, kl) = layer.forward(
            input,
            ForwardMode::Train {
                mask_threshold: None,
                noise_seed: 7,
            },
        );
        assert!(kl.is_some());
        let out: Vec<f64> = host_vec(out).into_iter().map(f64::from).collect();
        let gamma: f64 = x
            .iter()
            .zip(theta)
            .map(|(a, t)| (a * t) as f64)
            .sum::<f64>()
            + 0.1;
        let delta: f64 = x
            .iter()
            .zip(log_sigma2)
            .map(|(a, s)| (a * a) as f64 * (s as f64).exp())
            .sum();
        let mean = out.iter().sum::<f64>() / n as f64;
        let var = out.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        assert!(
            (mean - gamma).abs() < 4.0 * (delta / n as f64).sqrt(),
            "{mean} vs {gamma}"
        );
        assert!(
            (var - delta).abs() < 4.0 * delta * (2.0 / n as f64).sqrt(),
            "{var} vs {delta}"
        );
    }

    #[test]
    fn glorot_uniform_bound_and_valid_output_shape() {
        let device = Device::flex();
        let layer = Conv2dConfig::new(1, 20, 5)
            .with_posterior(Posterior::sparse_vd(-10.0))
            .init(&device);
        let bound = (6.0f32 / (21.0 * 25.0)).sqrt();
        assert!(layer.view("c").theta.iter().all(|t| t.abs() <= bound));
        let (out, _) = layer.forward(
            Tensor::zeros([2, 1, 28, 28], &device),
            ForwardMode::Eval { threshold: 3.0 },
        );
        assert_eq!(out.dims(), [2, 20, 24, 24]);
    }
}
