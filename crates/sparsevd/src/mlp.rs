//! Fully connected classifier; LeNet-300-100 is `widths = [784, 300, 100, 10]`.

use crate::dense::{Dense, DenseConfig};
use crate::mode::{
    Dropout, EvalLayer, EvalLayers, ForwardMode, NetOutput, Network, WeightLayerView, add_kl,
    find_layer,
};
use crate::posterior::Posterior;
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, activation::relu};

#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Input width, hidden widths, number of classes.
    pub widths: Vec<usize>,
    #[config(default = 0.01)]
    pub init_std: f64,
    /// Posterior of every weight; a point posterior makes the plain ("original") network.
    #[config(default = "Posterior::Point")]
    pub posterior: Posterior,
    /// Dropout on each layer's input in training (Srivastava et al.'s dropout net, binary or
    /// Gaussian), one per layer; empty for none.
    #[config(default = "Vec::new()")]
    pub dropout: Vec<Dropout>,
}

/// Dense layers with ReLU between them and none after the last; optionally dropout on each
/// layer's input (training only, see [`Dropout`]).
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Dense>,
    /// One per layer input, or empty.
    #[module(skip)]
    pub dropout: Vec<Dropout>,
}

/// The saved name of weight layer `index` (from 0): `dense1`, `dense2`, ….
fn layer_name(index: usize) -> String {
    format!("dense{}", index + 1)
}

/// LeNet-300-100's widths: input, hidden, classes.
pub const LENET300_WIDTHS: [usize; 4] = [784, 300, 100, 10];

impl MlpConfig {
    pub fn lenet300(posterior: Posterior) -> Self {
        Self::new(LENET300_WIDTHS.to_vec()).with_posterior(posterior)
    }

    pub fn init(&self, device: &Device) -> Mlp {
        let layers: Vec<Dense> = self
            .widths
            .windows(2)
            .map(|w| {
                DenseConfig::new(w[0], w[1])
                    .with_posterior(self.posterior)
                    .with_init_std(self.init_std)
                    .init(device)
            })
            .collect();
        assert!(
            self.dropout.is_empty() || self.dropout.len() == layers.len(),
            "one dropout per layer input or none: {} for {} layers",
            self.dropout.len(),
            layers.len()
        );
        Mlp {
            layers,
            dropout: self.dropout.clone(),
        }
    }
}

impl Network for Mlp {
    fn forward(&self, input: Tensor<2>, mode: ForwardMode) -> NetOutput {
        let last = self.layers.len() - 1;
        let mut x = input;
        let mut kl: Option<Tensor<1>> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(&dropout) = self.dropout.get(i) {
                x = mode.dropout(x, dropout, i as u64);
            }
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
            .map(|(i, layer)| layer.view(&layer_name(i)))
            .collect()
    }

    /// Dropout is training-only, so evaluation is the dense layers with ReLU between them.
    fn eval_layers(&self) -> Option<EvalLayers> {
        let d_input = self.layers.first()?.weights.theta.dims()[0];
        let mut layers = Vec::new();
        for i in 0..self.layers.len() {
            if i > 0 {
                layers.push(EvalLayer::Relu);
            }
            layers.push(EvalLayer::Weights(layer_name(i)));
        }
        Some(EvalLayers {
            input: [d_input, 1, 1],
            layers,
        })
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
                let view = find_layer(layers, &layer_name(i))?;
                Ok(Dense {
                    weights: dense.weights.with_values(view)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Mlp { layers, ..self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::host_vec;

    #[test]
    fn dropout_acts_in_training_only() {
        let device = Device::flex();
        let plain = MlpConfig::new(vec![20, 30, 5]).init(&device);
        let dropped = Mlp {
            dropout: vec![Dropout::Binary { keep: 0.5 }; 2],
            ..plain.clone()
        };
        let x = Tensor::<2>::ones([4, 20], &device);
        let run = |net: &Mlp, mode| host_vec(net.forward(x.clone(), mode).logits);
        let eval = ForwardMode::Eval { threshold: 3.0 };
        assert_eq!(run(&plain, eval), run(&dropped, eval));
        let train = |noise_seed| ForwardMode::Train {
            mask_threshold: None,
            noise_seed,
        };
        assert_eq!(
            run(&plain, train(1)),
            run(&plain, train(2)),
            "no noise without dropout"
        );
        assert_eq!(run(&dropped, train(1)), run(&dropped, train(1)));
        assert_ne!(run(&dropped, train(1)), run(&dropped, train(2)));
        assert_ne!(run(&dropped, train(1)), run(&plain, train(1)));
    }
}
