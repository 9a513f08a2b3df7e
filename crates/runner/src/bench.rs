//! Training-step throughput of any variant of an experiment file on any device: the net, width
//! and layers of the variant, its protocol's batch size, Adam, random inputs of the net's input
//! shape (so that no data is needed: the same command runs on a machine with only the binary).

use crate::spec::{LoadedExperiment, Net};
use crate::train::{Batch, StepSettings, optimizer, train_step};
use crate::{WithNetwork, with_network};
use burn::tensor::{Device, Distribution, Tensor};
use sparsevd::Network;
use std::time::Instant;

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchSettings {
    /// Steps run before timing (compilation of GPU kernels, autotuning, Adam's state).
    pub warmup: usize,
    /// Steps timed, each on its own and waited for.
    pub steps: usize,
}

/// The timing of one variant's training step.
#[derive(Debug, Clone)]
pub struct StepTiming {
    /// `<net>[_k<width>]_<layer>`, e.g. `vgglike_k1.0_sparse_vd`: the names of the PyTorch
    /// reference (`crates/runner/benches/pytorch_reference.py`) without its `step_` prefix.
    pub bench: String,
    pub batch: usize,
    pub steps: usize,
    pub median_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
}

impl StepTiming {
    pub fn steps_per_second(&self) -> f64 {
        1000.0 / self.median_ms
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{file}: no variant named {name:?} (the file has: {known})")]
    UnknownVariant {
        file: String,
        name: String,
        known: String,
    },
    #[error("the device failed while timing {bench}: {message}")]
    Device { bench: String, message: String },
}

/// The name of a variant's bench.
fn bench_name(net: &Net, width: Option<f64>, layer: &str) -> String {
    match width {
        Some(k) => format!("{}_k{k:?}_{layer}", net.key()),
        None => format!("{}_{layer}", net.key()),
    }
}

/// Times the training step of the variant `name` of `exp` on `device`.
pub fn time_variant(
    exp: &LoadedExperiment,
    name: &str,
    settings: BenchSettings,
    device: &Device,
) -> Result<StepTiming, BenchError> {
    let spec = &exp.spec;
    let index = spec
        .variant_index(name)
        .ok_or_else(|| BenchError::UnknownVariant {
            file: exp.path.display().to_string(),
            name: name.to_string(),
            known: spec
                .variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let variant = &spec.variants[index];
    let protocol = spec.protocol_of(index);
    let job = TimeSteps {
        bench: bench_name(&spec.net, variant.width, variant.layer.key()),
        pixels: spec.net.input().values(),
        batch: protocol.batch_size,
        step: StepSettings {
            train_size: 50_000,
            beta: 1.0,
            lr: 1e-3,
            mask_threshold: protocol.train_clip.then_some(protocol.threshold),
            noise_seed: protocol.seed,
            l2: protocol.l2,
        },
        optimizer: protocol.optimizer.clone(),
        settings,
        device,
    };
    with_network(&spec.net, variant, protocol, device, job)
}

struct TimeSteps<'a> {
    bench: String,
    pixels: usize,
    batch: usize,
    step: StepSettings,
    optimizer: crate::spec::Optimizer,
    settings: BenchSettings,
    device: &'a Device,
}

impl WithNetwork for TimeSteps<'_> {
    type Output = Result<StepTiming, BenchError>;

    fn run<N: Network>(self, model: N) -> Self::Output {
        let device = self.device;
        let sync = || {
            device.sync().map_err(|e| BenchError::Device {
                bench: self.bench.clone(),
                message: format!("{e:?}"),
            })
        };
        let mut optimizer = optimizer(&self.optimizer);
        let batch = || Batch {
            x: Tensor::random(
                [self.batch, self.pixels],
                Distribution::Normal(0.0, 1.0),
                device,
            ),
            y: Tensor::random([self.batch], Distribution::Uniform(0.0, 10.0), device),
        };
        let mut model = model;
        for _ in 0..self.settings.warmup {
            model = train_step(model, &mut optimizer, batch(), &self.step).0;
        }
        sync()?;
        let mut ms = Vec::with_capacity(self.settings.steps);
        for _ in 0..self.settings.steps {
            let batch = batch();
            sync()?;
            let started = Instant::now();
            model = train_step(model, &mut optimizer, batch, &self.step).0;
            sync()?;
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let mean_ms = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        ms.sort_by(f64::total_cmp);
        Ok(StepTiming {
            bench: self.bench,
            batch: self.batch,
            steps: ms.len(),
            median_ms: ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
            mean_ms,
            min_ms: ms.first().copied().unwrap_or(f64::NAN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_names_match_the_pytorch_reference() {
        assert_eq!(
            bench_name(&Net::Vgglike, Some(1.0), "sparse_vd"),
            "vgglike_k1.0_sparse_vd"
        );
        assert_eq!(
            bench_name(&Net::Vgglike, Some(0.25), "binary_dropout"),
            "vgglike_k0.25_binary_dropout"
        );
        assert_eq!(
            bench_name(&Net::Lenet5, None, "sparse_vd"),
            "lenet5_sparse_vd"
        );
    }
}
