//! VGG-like for CIFAR-10 (Zagoruyko's CIFAR VGG with batch norm), width multiplier k:
//! [conv 3×3 pad 1 → BN(ε = 1e-3) → ReLU] with widths 64, 64, M, 128, 128, M, 256×3, M, 512×3,
//! M, 512×3, M (M = 2×2 max-pool), then dense 512k → 512k → BN → ReLU → dense 512k → 10; every
//! width is int(c·k). 937,392 weights at k = 0.25, 14,977,728 at k = 1.
//!
//! Three variants share this structure: plain, binary dropout (the pretraining net: drop 0.3
//! after the first conv, 0.4 after every conv that is followed by another conv, 0.5 after the
//! dense + BN, as in sparse-vd.md), and Sparse VD (every conv and dense layer, no dropout).

use crate::conv::{Conv2d, Conv2dConfig};
use crate::dense::{Dense, DenseConfig};
use crate::mode::{
    Dropout, ForwardMode, NetOutput, Network, NormLayerView, WeightLayerView, add_kl, find_layer,
};
use crate::ops::{batch_norm_relu, max_pool_2x2};
use crate::posterior::Posterior;
use crate::weights::host_vec;
use burn::config::Config;
use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor, TensorData};

/// The layer plan at k = 1: a conv's output width, or `None` for a 2×2 max-pool.
const PLAN: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];
const DENSE_WIDTH: usize = 512;
const INPUT_CHANNELS: usize = 3;
const INPUT_SIDE: usize = 32;
const CLASSES: usize = 10;
const BN_EPSILON: f64 = 1e-3;

#[derive(Config, Debug)]
pub struct VggLikeConfig {
    /// Width multiplier k: every layer width c becomes int(c·k).
    pub width: f64,
    /// Posterior of every weight; a point posterior makes a plain network.
    #[config(default = "Posterior::Point")]
    pub posterior: Posterior,
    /// Binary dropout of the pretraining net.
    #[config(default = false)]
    pub dropout: bool,
}

#[derive(Module, Debug)]
pub struct VggLike {
    pub convs: Vec<Conv2d>,
    pub conv_norms: Vec<BatchNorm>,
    pub dense1: Dense,
    pub dense_norm: BatchNorm,
    pub dense2: Dense,
    pub dropout: bool,
}

/// int(c·k), at least 1.
fn scaled(c: usize, k: f64) -> usize {
    ((c as f64 * k) as usize).max(1)
}

impl VggLikeConfig {
    pub fn init(&self, device: &Device) -> VggLike {
        let s = self.posterior;
        let norm = |features| {
            BatchNormConfig::new(features)
                .with_epsilon(BN_EPSILON)
                .init(device)
        };
        let mut channels = INPUT_CHANNELS;
        let (mut convs, mut conv_norms) = (Vec::new(), Vec::new());
        for width in PLAN.iter().flatten() {
            let out = scaled(*width, self.width);
            convs.push(
                Conv2dConfig::new(channels, out, 3)
                    .with_padding(1)
                    .with_posterior(s)
                    .init(device),
            );
            conv_norms.push(norm(out));
            channels = out;
        }
        let hidden = scaled(DENSE_WIDTH, self.width);
        // Glorot-normal θ for the dense layers: std √(2 / (fan_in + fan_out)).
        let dense = |i: usize, o: usize| {
            DenseConfig::new(i, o)
                .with_init_std((2.0 / (i + o) as f64).sqrt())
                .with_posterior(s)
                .init(device)
        };
        VggLike {
            convs,
            conv_norms,
            dense1: dense(channels, hidden),
            dense_norm: norm(hidden),
            dense2: dense(hidden, CLASSES),
            dropout: self.dropout,
        }
    }
}

impl VggLike {
    /// Binary dropout of rate `drop` in training when this is the dropout net; identity
    /// otherwise. `index` tells the masks of different positions apart.
    fn drop<const D: usize>(
        &self,
        x: Tensor<D>,
        drop: f64,
        mode: ForwardMode,
        index: u64,
    ) -> Tensor<D> {
        if self.dropout {
            mode.dropout(x, Dropout::Binary { keep: 1.0 - drop }, index)
        } else {
            x
        }
    }

    fn norm_names(&self) -> impl Iterator<Item = String> {
        (1..=self.conv_norms.len())
            .map(|i| format!("bn{i}"))
            .chain(["bn_dense".to_string()])
    }
}

impl Network for VggLike {
    fn forward(&self, input: Tensor<2>, mode: ForwardMode) -> NetOutput {
        let batch = input.dims()[0];
        let mut x = input.reshape([batch, INPUT_CHANNELS, INPUT_SIDE, INPUT_SIDE]);
        let mut kl = None;
        let mut conv = 0;
        for (step, width) in PLAN.iter().enumerate() {
            if width.is_none() {
                x = max_pool_2x2(x);
                continue;
            }
            let (y, layer_kl) = self.convs[conv].forward(x, mode.for_layer(conv as u64));
            kl = add_kl(kl, layer_kl);
            x = batch_norm_relu(&self.conv_norms[conv], y);
            if PLAN.get(step + 1).is_some_and(Option::is_some) {
                let rate = if conv == 0 { 0.3 } else { 0.4 };
                x = self.drop(x, rate, mode, conv as u64);
            }
            conv += 1;
        }
        let x = x.reshape([batch, self.dense1.weights.theta.dims()[0]]);
        let layers = self.convs.len() as u64;
        let (x, kl1) = self.dense1.forward(x, mode.for_layer(layers));
        let x = self.drop(batch_norm_relu(&self.dense_norm, x), 0.5, mode, layers);
        let (logits, kl2) = self.dense2.forward(x, mode.for_layer(layers + 1));
        let kl = [kl1, kl2].into_iter().fold(kl, add_kl);
        NetOutput { logits, kl }
    }

    fn weight_layers(&self) -> Vec<WeightLayerView> {
        let convs = self
            .convs
            .iter()
            .enumerate()
            .map(|(i, c)| c.view(&format!("conv{}", i + 1)));
        convs
            .chain([self.dense1.view("dense1"), self.dense2.view("dense2")])
            .collect()
    }

    fn with_weight_layers(self, layers: &[WeightLayerView]) -> Result<Self, String> {
        let convs = self
            .convs
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(Conv2d {
                    weights: c
                        .weights
                        .with_values(find_layer(layers, &format!("conv{}", i + 1))?)?,
                    padding: c.padding,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let dense = |d: Dense, name| -> Result<Dense, String> {
            Ok(Dense {
                weights: d.weights.with_values(find_layer(layers, name)?)?,
            })
        };
        Ok(VggLike {
            convs,
            dense1: dense(self.dense1, "dense1")?,
            dense2: dense(self.dense2, "dense2")?,
            ..self
        })
    }

    fn theta_squared(&self) -> Tensor<1> {
        self.convs
            .iter()
            .map(Conv2d::theta_squared)
            .chain([self.dense1.theta_squared(), self.dense2.theta_squared()])
            .reduce(|a, b| a + b)
            .expect("VGG-like has weight layers")
    }

    fn norm_layers(&self) -> Vec<NormLayerView> {
        self.conv_norms
            .iter()
            .chain([&self.dense_norm])
            .zip(self.norm_names())
            .map(|(bn, name)| NormLayerView {
                name,
                gamma: host_vec(bn.gamma.val()),
                beta: host_vec(bn.beta.val()),
                running_mean: host_vec(bn.running_mean.value()),
                running_var: host_vec(bn.running_var.value()),
            })
            .collect()
    }

    fn with_norm_layers(self, layers: &[NormLayerView]) -> Result<Self, String> {
        let names: Vec<String> = self.norm_names().collect();
        let restore = |bn: BatchNorm, name: &str| -> Result<BatchNorm, String> {
            let view = layers
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| format!("batch norm {name} missing from the saved model"))?;
            let features = bn.gamma.dims()[0];
            let device = bn.gamma.val().device();
            let vector = |what: &str, v: &[f32]| -> Result<Tensor<1>, String> {
                if v.len() != features {
                    return Err(format!(
                        "{name}.{what}: {} values, expected {features}",
                        v.len()
                    ));
                }
                Ok(Tensor::from_data(
                    TensorData::new(v.to_vec(), [features]),
                    &device,
                ))
            };
            Ok(BatchNorm {
                gamma: Param::from_tensor(vector("gamma", &view.gamma)?),
                beta: Param::from_tensor(vector("beta", &view.beta)?),
                running_mean: RunningState::new(vector("running_mean", &view.running_mean)?),
                running_var: RunningState::new(vector("running_var", &view.running_var)?),
                ..bn
            })
        };
        let conv_norms = self
            .conv_norms
            .into_iter()
            .zip(&names)
            .map(|(bn, name)| restore(bn, name))
            .collect::<Result<Vec<_>, String>>()?;
        let dense_norm = restore(self.dense_norm, "bn_dense")?;
        Ok(VggLike {
            conv_norms,
            dense_norm,
            ..self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_paper_weight_count_and_output_shape() {
        let device = Device::flex();
        let net = VggLikeConfig::new(0.25)
            .with_posterior(Posterior::sparse_vd(-15.0))
            .init(&device);
        let weights: usize = net.weight_layers().iter().map(|l| l.theta.len()).sum();
        assert_eq!(weights, 937_392);
        let out = net.forward(
            Tensor::zeros([2, 3072], &device),
            ForwardMode::Train {
                mask_threshold: None,
                noise_seed: 1,
            },
        );
        assert_eq!(out.logits.dims(), [2, 10]);
        assert!(out.kl.is_some());
        assert_eq!(net.norm_layers().len(), 14);
    }

    #[test]
    fn layer_widths_scale_with_k() {
        let device = Device::flex();
        let net = VggLikeConfig::new(1.5).init(&device);
        let shapes: Vec<Vec<usize>> = net
            .weight_layers()
            .iter()
            .map(|l| l.shape.clone())
            .collect();
        assert_eq!(shapes[0], [96, 3, 3, 3]);
        assert_eq!(shapes[12], [768, 768, 3, 3]);
        assert_eq!(shapes[13], [768, 768]);
        assert_eq!(shapes[14], [768, 10]);
    }

    #[test]
    fn saved_norm_layers_restore() {
        let device = Device::flex();
        let net = VggLikeConfig::new(0.25).init(&device);
        let mut views = net.norm_layers();
        views[3].running_var[0] = 7.0;
        views[13].gamma[1] = -2.0;
        let restored = net.clone().with_norm_layers(&views).unwrap();
        assert_eq!(restored.norm_layers(), views);
        views.pop();
        assert!(net.with_norm_layers(&views).is_err());
    }
}
