//! Fully connected classifier; LeNet-300-100 is `widths = [784, 300, 100, 10]`.

use crate::dense::{Dense, DenseConfig};
use crate::mode::{ForwardMode, NetOutput, Network, WeightLayerView, add_kl, find_layer};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, activation::relu};

#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Input width, hidden widths, number of classes.
    pub widths: Vec<usize>,
    #[config(default = 0.01)]
    pub init_std: f64,
    /// Initial log σ² of every weight; `None` makes the plain ("original") network.
    pub log_sigma2_init: Option<f64>,
}

/// Dense layers with ReLU between them and none after the last.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Dense>,
}

impl MlpConfig {
    pub fn lenet300(log_sigma2_init: Option<f64>) -> Self {
        Self::new(vec![784, 300, 100, 10]).with_log_sigma2_init(log_sigma2_init)
    }

    pub fn init(&self, device: &Device) -> Mlp {
        let layers = self
            .widths
            .windows(2)
            .map(|w| {
                DenseConfig::new(w[0], w[1])
                    .with_log_sigma2_init(self.log_sigma2_init)
                    .with_init_std(self.init_std)
                    .init(device)
            })
            .collect();
        Mlp { layers }
    }
}

impl Network for Mlp {
    fn forward(&self, input: Tensor<2>, mode: ForwardMode) -> NetOutput {
        let last = self.layers.len() - 1;
        let mut x = input;
        let mut kl: Option<Tensor<1>> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (out, layer_kl) = layer.forward(x, mode.for_layer(i as u64));
            kl = add_kl(kl, layer_kl);
            x = if i == last { out } else { relu(out) };
        }
        NetOutput { logits: x, kl }
    }

    fn weight_layers(&self) -> Vec<WeightLayerView> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, layer)| layer.view(&format!("dense{}", i + 1)))
            .collect()
    }

    fn theta_squared(&self) -> Tensor<1> {
        self.layers
            .iter()
            .map(Dense::theta_squared)
            .reduce(|a, b| a + b)
            .expect("an MLP has at least one layer")
    }

    fn with_weight_layers(self, layers: &[WeightLayerView]) -> Result<Self, String> {
        let layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, dense)| {
                let view = find_layer(layers, &format!("dense{}", i + 1))?;
                Ok(Dense {
                    weights: dense.weights.with_values(view)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Mlp { layers })
    }
}
