//! LeNet-5-Caffe: conv 20@5×5 → ReLU → maxpool 2 → conv 50@5×5 → ReLU → maxpool 2 →
//! dense 800 → 500 → ReLU → dense 500 → 10 (430,500 weights).

use crate::conv::{Conv2d, Conv2dConfig};
use crate::dense::{Dense, DenseConfig};
use crate::mode::{
    EvalLayer, EvalLayers, ForwardMode, NetOutput, Network, WeightLayerView, add_kl, find_layer,
};
use crate::ops::max_pool_2x2;
use crate::posterior::Posterior;
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, activation::relu};

#[derive(Config, Debug)]
pub struct LeNet5Config {
    /// Standard deviation of the N(0, std²) initialisation of the dense layers' θ.
    #[config(default = 0.01)]
    pub dense_init_std: f64,
    /// Posterior of every weight; a point posterior makes the plain ("original") network.
    #[config(default = "Posterior::Point")]
    pub posterior: Posterior,
}

#[derive(Module, Debug)]
pub struct LeNet5 {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub dense1: Dense,
    pub dense2: Dense,
}

impl LeNet5Config {
    pub fn init(&self, device: &Device) -> LeNet5 {
        let s = self.posterior;
        let dense = |i, o| {
            DenseConfig::new(i, o)
                .with_init_std(self.dense_init_std)
                .with_posterior(s)
                .init(device)
        };
        LeNet5 {
            conv1: Conv2dConfig::new(1, 20, 5).with_posterior(s).init(device),
            conv2: Conv2dConfig::new(20, 50, 5).with_posterior(s).init(device),
            dense1: dense(800, 500),
            dense2: dense(500, 10),
        }
    }
}

impl Network for LeNet5 {
    fn forward(&self, input: Tensor<2>, mode: ForwardMode) -> NetOutput {
        let batch = input.dims()[0];
        let x = input.reshape([batch, 1, 28, 28]);
        let (x, kl1) = self.conv1.forward(x, mode.for_layer(0));
        // max_pool(ReLU(x)) = ReLU(max_pool(x)), gradients included (the same winner gets the
        // gradient): pooling first applies ReLU, forward and backward, to a quarter of the values.
        let (x, kl2) = self.conv2.forward(relu(max_pool_2x2(x)), mode.for_layer(1));
        let x = relu(max_pool_2x2(x)).reshape([batch, 800]);
        let (x, kl3) = self.dense1.forward(x, mode.for_layer(2));
        let (logits, kl4) = self.dense2.forward(relu(x), mode.for_layer(3));
        let kl = [kl2, kl3, kl4].into_iter().fold(kl1, add_kl);
        NetOutput { logits, kl }
    }

    fn weight_layers(&self) -> Vec<WeightLayerView> {
        vec![
            self.conv1.view("conv1"),
            self.conv2.view("conv2"),
            self.dense1.view("dense1"),
            self.dense2.view("dense2"),
        ]
    }

    /// [`Network::forward`]'s layers in its order.
    fn eval_layers(&self) -> Option<EvalLayers> {
        use EvalLayer::{MaxPool2x2, Relu, Weights};
        let weights = |name: &str| Weights(name.to_string());
        Some(EvalLayers {
            input: [1, 28, 28],
            layers: vec![
                weights("conv1"),
                MaxPool2x2,
                Relu,
                weights("conv2"),
                MaxPool2x2,
                Relu,
                weights("dense1"),
                Relu,
                weights("dense2"),
            ],
        })
    }

    fn theta_squared(&self) -> Tensor<1> {
        self.conv1.theta_squared()
            + self.conv2.theta_squared()
            + self.dense1.theta_squared()
            + self.dense2.theta_squared()
    }

    fn with_weight_layers(self, layers: &[WeightLayerView]) -> Result<Self, String> {
        let conv = |c: Conv2d, name| -> Result<Conv2d, String> {
            Ok(Conv2d {
                weights: c.weights.with_values(find_layer(layers, name)?)?,
                padding: c.padding,
            })
        };
        let dense = |d: Dense, name| -> Result<Dense, String> {
            Ok(Dense {
                weights: d.weights.with_values(find_layer(layers, name)?)?,
            })
        };
        Ok(LeNet5 {
            conv1: conv(self.conv1, "conv1")?,
            conv2: conv(self.conv2, "conv2")?,
            dense1: dense(self.dense1, "dense1")?,
            dense2: dense(self.dense2, "dense2")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_paper_weight_count_and_output_shape() {
        let device = Device::flex();
        let net = LeNet5Config::new()
            .with_posterior(Posterior::sparse_vd(-10.0))
            .init(&device);
        let weights: usize = net.weight_layers().iter().map(|l| l.theta.len()).sum();
        assert_eq!(weights, 430_500);
        let out = net.forward(
            Tensor::zeros([3, 784], &device),
            ForwardMode::Train {
                mask_threshold: Some(3.0),
                noise_seed: 1,
            },
        );
        assert_eq!(out.logits.dims(), [3, 10]);
        assert!(out.kl.is_some());
    }
}
