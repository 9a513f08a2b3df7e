//! Adam (Kingma & Ba 2015) exactly as burn's `Adam` computes it, each parameter's update done
//! in one pass over its values. Per parameter and step t:
//!
//! m ← β₁·m + (1 − β₁)·g,  v ← β₂·v + (1 − β₂)·g²,
//! θ ← θ − lr · m·c / (√v + ε·√(1 − β₂ᵗ)),  c = √(1 − β₂ᵗ) / (1 − β₁ᵗ).
//!
//! burn's version (the composed form) is 13 elementwise tensor operations per parameter, each a
//! pass over memory and an allocation; on the 2-core CPU that was several milliseconds of a
//! LeNet-5 step. The state is burn's `AdamState`, so checkpoints are the same.

use crate::simd::with_simd;
use crate::tensor::{contiguous, values, values_mut};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, Flex, backend_extension};
use burn::optim::{AdamState, AdaptiveMomentumState, LearningRate};
use burn::tensor::Tensor;
use rayon::prelude::*;

/// β₁, β₂ and ε of Adam (no weight decay, no gradient clipping).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConstants {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
}

impl AdamConstants {
    /// The scalars of step `time` (1 for the first), in f32 as burn's Adam computes them.
    fn step_scalars(&self, lr: LearningRate, time: usize) -> AdamStep {
        let t = time as i32;
        let bias_2 = (1.0 - self.beta_2.powi(t)).sqrt();
        AdamStep {
            lr: lr as f32,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            correction: bias_2 / (1.0 - self.beta_1.powi(t)),
            epsilon: self.epsilon * bias_2,
        }
    }
}

/// One Adam step of `tensor` with gradient `grad` from `state` (none before the first step):
/// the parameter after the step and the new state, as burn's `Adam::step` returns them. Only for
/// tensors on the CPU backend.
pub fn step<const D: usize>(
    constants: AdamConstants,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamState<D>>,
) -> (Tensor<D>, AdamState<D>) {
    let (time, moment_1, moment_2) = match state {
        Some(AdamState { momentum }) => (momentum.time, momentum.moment_1, momentum.moment_2),
        None => (0, grad.zeros_like(), grad.zeros_like()),
    };
    let time = time + 1;
    let out = <Dispatch as AdamBackend>::adam_update(
        AdamTensors {
            param: tensor.into_dispatch(),
            moment_1: moment_1.into_dispatch(),
            moment_2: moment_2.into_dispatch(),
        },
        grad.into_dispatch(),
        constants.step_scalars(lr, time),
    );
    let momentum = AdaptiveMomentumState::new(
        time,
        Tensor::from_dispatch(out.moment_1),
        Tensor::from_dispatch(out.moment_2),
    );
    (Tensor::from_dispatch(out.param), AdamState::new(momentum))
}

/// The scalars of one update: the learning rate and the factors of step t.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta_1: f32,
    pub beta_2: f32,
    /// c = √(1 − β₂ᵗ) / (1 − β₁ᵗ).
    pub correction: f32,
    /// ε·√(1 − β₂ᵗ).
    pub epsilon: f32,
}

/// A parameter with its two moments.
#[derive(ExtensionType)]
pub struct AdamTensors<B: Backend> {
    pub param: FloatTensor<B>,
    pub moment_1: FloatTensor<B>,
    pub moment_2: FloatTensor<B>,
}

#[backend_extension(Flex)]
pub trait AdamBackend: Backend {
    /// One Adam update of `state` with gradient `grad`.
    fn adam_update(
        #[extension_type] state: AdamTensors<Self>,
        grad: FloatTensor<Self>,
        step: AdamStep,
    ) -> AdamTensors<Self>;
}

/// Values per parallel chunk.
const CHUNK: usize = 1 << 14;

impl AdamBackend for Flex {
    fn adam_update(
        state: AdamTensors<Self>,
        grad: FloatTensor<Self>,
        step: AdamStep,
    ) -> AdamTensors<Self> {
        let AdamStep {
            lr,
            beta_1,
            beta_2,
            correction,
            epsilon,
        } = step;
        // In place: the parameter and its moments are usually owned by this update alone (the
        // previous step's outputs); a shared one is copied first (see `values_mut`). Writing
        // new buffers instead cost zeroing 3 × 861,000 values a LeNet-5 Sparse VD step.
        let AdamTensors {
            mut param,
            moment_1: mut m,
            moment_2: mut v,
        } = state;
        let grad = contiguous(&grad);
        let chunks = values_mut(&mut param)
            .par_chunks_mut(CHUNK)
            .zip(values_mut(&mut m).par_chunks_mut(CHUNK))
            .zip(values_mut(&mut v).par_chunks_mut(CHUNK))
            .zip(values(&grad).par_chunks(CHUNK));
        chunks.for_each(|(((param, m), v), g)| {
            with_simd(
                #[inline(always)]
                || {
                    for (((p, m), v), &g) in param.iter_mut().zip(m).zip(v).zip(g) {
                        *m = beta_1 * *m + (1.0 - beta_1) * g;
                        *v = beta_2 * *v + (1.0 - beta_2) * (g * g);
                        *p -= (*m * correction / (v.sqrt() + epsilon)) * lr;
                    }
                },
            );
        });
        AdamTensors {
            param,
            moment_1: m,
            moment_2: v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamConfig, Optimizer};
    use burn::tensor::{Device, Distribution};

    /// Three steps of the one-pass update give burn's Adam's parameters and moments to the bit.
    #[test]
    fn equals_burn_adam() {
        let device = Device::flex();
        let constants = AdamConstants {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
        };
        let burn_adam = AdamConfig::new().with_epsilon(1e-8).build();
        let start = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 1.0), &device);
        let (mut ours, mut theirs) = ((start.clone(), None), (start, None));
        for i in 0..3 {
            let grad = Tensor::<2>::random([300, 70], Distribution::Normal(0.0, 0.1), &device);
            let lr = 1e-3 * (i + 1) as f64;
            ours = {
                let (param, state) = step(constants, lr, ours.0, grad.clone(), ours.1);
                (param, Some(state))
            };
            theirs = burn_adam.step(lr, theirs.0, grad, theirs.1);
            let bits = |t: &Tensor<2>| t.to_data().try_to_vec::<f32>().expect("f32");
            assert_eq!(bits(&ours.0), bits(&theirs.0), "parameters after step {i}");
            let (a, b) = (
                &ours.1.as_ref().expect("state").momentum,
                &theirs.1.as_ref().expect("state").momentum,
            );
            assert_eq!(a.time, b.time);
            assert_eq!(bits(&a.moment_1), bits(&b.moment_1));
            assert_eq!(bits(&a.moment_2), bits(&b.moment_2));
        }
    }
}
