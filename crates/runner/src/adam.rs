//! Adam (Kingma & Ba 2015) exactly as burn's `Adam` computes it, per parameter and step t:
//!
//! m ← β₁·m + (1 − β₁)·g,  v ← β₂·v + (1 − β₂)·g²,
//! θ ← θ − lr · m·c / (√v + ε·√(1 − β₂ᵗ)),  c = √(1 − β₂ᵗ) / (1 − β₁ᵗ).
//!
//! The update is `sparsevd::ops::adam_step`: on the CPU backend one pass over each parameter's
//! values, elsewhere burn's `Adam`. The state is burn's `AdamState`, so checkpoints are the same.

use burn::optim::{Adam, AdamConfig, AdamState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};
use sparsevd::ops::{AdamConstants, adam_step};

/// Adam with β₁, β₂ and ε (no weight decay, no gradient clipping).
#[derive(Clone)]
pub struct FusedAdam {
    constants: AdamConstants,
    /// burn's Adam with the same constants: the composed form.
    composed: Adam,
}

impl FusedAdam {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32) -> Self {
        let composed = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .build();
        Self {
            constants: AdamConstants {
                beta_1,
                beta_2,
                epsilon,
            },
            composed,
        }
    }

    /// This optimizer for every parameter of a module.
    pub fn into_module_optimizer(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        adam_step(&self.composed, self.constants, lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}
