//! Dense layer: plain (the "original" baseline) or variational.

use crate::mode::{ForwardMode, WeightLayerView};
use crate::ops;
use crate::posterior::Posterior;
use crate::weights::{LinearMap, MapKind, MeanGradient, VariationalWeights};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

#[derive(Config, Debug)]
pub struct DenseConfig {
    pub d_input: usize,
    pub d_output: usize,
    /// Standard deviation of the N(0, std²) initialisation of θ.
    #[config(default = 0.01)]
    pub init_std: f64,
    /// Posterior of the weights; a point posterior makes a plain dense layer.
    #[config(default = "Posterior::Point")]
    pub posterior: Posterior,
}

/// Dense layer `y = x·θ + b`, θ of shape `[d_input, d_output]`, variational unless its
/// posterior is a point
/// (see [`VariationalWeights`] for the training and evaluation formulas).
#[derive(Module, Debug)]
pub struct Dense {
    pub weights: VariationalWeights<2>,
}

impl DenseConfig {
    pub fn init(&self, device: &Device) -> Dense {
        let shape = [self.d_input, self.d_output];
        let theta = Tensor::random(shape, Distribution::Normal(0.0, self.init_std), device);
        Dense {
            weights: VariationalWeights::new(theta, MapKind::Dense, self.posterior),
        }
    }
}

/// A(x, w) = x·w.
pub(crate) struct Matmul;

impl LinearMap<2, 2> for Matmul {
    fn apply(&self, x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
        x.matmul(w)
    }

    /// [`ops::lrt_dense`]: on the CPU backend one fused operation.
    fn lrt_sample(
        &self,
        x: Tensor<2>,
        mean: Tensor<2>,
        variance: Tensor<2>,
        bias: Tensor<1>,
        noise_seed: u64,
        _mean_gradient: MeanGradient,
    ) -> Tensor<2> {
        ops::lrt_dense(x, mean, variance, bias, noise_seed)
    }
}

impl Dense {
    /// Output and this layer's Σ KL (`None` for a plain layer and in evaluation).
    pub fn forward(&self, x: Tensor<2>, mode: ForwardMode) -> (Tensor<2>, Option<Tensor<1>>) {
        self.weights.forward(x, mode, &Matmul)
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

    fn tensor2(values: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
    }

    /// θ, log σ² and bias of a 3 → 2 layer chosen by hand, with log α inside the clip range.
    fn hand_made_layer(device: &Device) -> Dense {
        let theta = [0.5f32, -1.0, 0.25, 2.0, -0.75, 0.1];
        let log_sigma2 = [-1.0f32, -2.0, -3.0, -0.5, -1.5, -4.0];
        Dense {
            weights: VariationalWeights {
                theta: Param::from_tensor(tensor2(&theta, [3, 2], device)),
                log_sigma2: Some(Param::from_tensor(tensor2(&log_sigma2, [3, 2], device))),
                log_alpha: None,
                bias: Param::from_tensor(Tensor::from_data(
                    TensorData::from([0.3f32, -0.2]),
                    device,
                )),
                posterior: Posterior::sparse_vd(-10.0),
                kind: MapKind::Dense,
            },
        }
    }

    #[test]
    fn lrt_samples_have_the_right_mean_and_variance() {
        let device = Device::flex();
        let layer = hand_made_layer(&device);
        let x = [1.0f32, -2.0, 0.5];
        let samples = 40_000;
        let batch: Vec<f32> = x.iter().copied().cycle().take(3 * samples).collect();
        let (out, kl) = layer.forward(
            tensor2(&batch, [samples, 3], &device),
            ForwardMode::Train {
                mask_threshold: None,
                noise_seed: 7,
            },
        );
        assert!(kl.is_some());
        let out: Vec<f32> = host_vec(out);

        let theta = [[0.5f64, -1.0], [0.25, 2.0], [-0.75, 0.1]];
        let sigma2 = [[-1.0f64, -2.0], [-3.0, -0.5], [-1.5, -4.0]].map(|r| r.map(f64::exp));
        let bias = [0.3, -0.2];
        for j in 0..2 {
            let gamma: f64 = (0..3).map(|i| x[i] as f64 * theta[i][j]).sum::<f64>() + bias[j];
            let delta: f64 = (0..3)
                .map(|i| (x[i] as f64).powi(2) * sigma2[i][j])
                .sum::<f64>()
                + 1e-8;
            let column: Vec<f64> = out.iter().skip(j).step_by(2).map(|&v| v as f64).collect();
            let mean = column.iter().sum::<f64>() / samples as f64;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (samples - 1) as f64;
            // Standard errors: √(δ/n) for the mean, δ·√(2/n) for the variance; allow 4 of them.
            let mean_tol = 4.0 * (delta / samples as f64).sqrt();
            let var_tol = 4.0 * delta * (2.0 / samples as f64).sqrt();
            assert!(
                (mean - gamma).abs() < mean_tol,
                "unit {j}: mean {mean} vs γ {gamma}"
            );
            assert!(
                (var - delta).abs() < var_tol,
                "unit {j}: variance {var} vs δ {delta}"
            );
        }
    }

    #[test]
    fn evaluation_is_deterministic_and_masks_high_log_alpha() {
        let device = Device::flex();
        let layer = hand_made_layer(&device);
        // log α = log σ² − log θ²: entry (2, 1) has θ = 0.1, log σ² = −4 → log α ≈ 0.61;
        // a threshold of 0.5 removes it and only it.
        let view = layer.view("d");
        let kept = view.kept(0.5);
        assert_eq!(kept, vec![true, true, true, true, true, false]);
        let x = tensor2(&[1.0, -2.0, 0.5], [1, 3], &device);
        let (out, kl) = layer.forward(x, ForwardMode::Eval { threshold: 0.5 });
        assert!(kl.is_none());
        let out = host_vec(out);
        // Unit 1 without the removed weight: 1·(−1) + (−2)·2 + 0.5·0 − 0.2 = −5.2.
        assert!((out[0] - (0.5 - 0.5 - 0.375 + 0.3)).abs() < 1e-6, "{out:?}");
        assert!((out[1] + 5.2).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn train_clip_zeroes_masked_weights_in_the_mean_path_only() {
        let device = Device::flex();
        let layer = hand_made_layer(&device);
        let x = tensor2(&[1.0, -2.0, 0.5], [1, 3], &device);
        // Same noise ζ for both passes; threshold 0.5 masks θ₃₂ = 0.1 (log α ≈ 0.61) only.
        let run = |mask_threshold| {
            host_vec(
                layer
                    .forward(
                        x.clone(),
                        ForwardMode::Train {
                            mask_threshold,
                            noise_seed: 11,
                        },
                    )
                    .0,
            )
        };
        let (unmasked, masked) = (run(None), run(Some(0.5)));
        assert!((unmasked[0] - masked[0]).abs() < 1e-6);
        // The mean path loses x₃·θ₃₂ = 0.05; the variance path is unchanged.
        assert!(
            (unmasked[1] - masked[1] - 0.05).abs() < 1e-5,
            "{unmasked:?} {masked:?}"
        );
    }

    #[test]
    fn plain_layer_has_no_kl_and_no_noise() {
        let device = Device::flex();
        let mut layer = hand_made_layer(&device);
        layer.weights.posterior = Posterior::Point;
        let x = tensor2(&[1.0, -2.0, 0.5], [1, 3], &device);
        let (a, kl) = layer.forward(
            x.clone(),
            ForwardMode::Train {
                mask_threshold: Some(3.0),
                noise_seed: 1,
            },
        );
        let (b, _) = layer.forward(
            x,
            ForwardMode::Train {
                mask_threshold: Some(3.0),
                noise_seed: 1,
            },
        );
        assert!(kl.is_none());
        assert_eq!(host_vec(a), host_vec(b));
    }
}
