//! The training loop: minibatch Adam on (N/M)·Σ CE + β·Σ KL, with evaluation after every epoch.

use crate::adam::FusedAdam;
use crate::rng::{derive_seed, permutation};
use crate::schedule::{kl_weight, learning_rate};
use crate::spec::{Optimizer, Protocol};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::log_softmax};
use datasets::Split;
use metrics::LayerCount;
use sparsevd::ops::{host_kernels, read_back};
use sparsevd::{ForwardMode, Network};

/// Seeds of independent random streams, derived from the experiment's seed.
pub(crate) const STREAM_INIT: u64 = 1;
const STREAM_SHUFFLE: u64 = 2;
const STREAM_NOISE: u64 = 3;
pub(crate) const STREAM_LABELS: u64 = 4;

/// Test images per evaluation batch (memory, not results, depends on it).
const EVAL_BATCH: usize = 1000;

/// In composed execution, the steps between two reads of the running loss (for the progress
/// line and the check for a non-finite loss); each read waits for the device.
const STEPS_PER_LOSS_READ: usize = 50;

/// What one epoch did, as written to the per-epoch CSV.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochRecord {
    /// 1-based: the number of epochs completed.
    pub epoch: usize,
    pub lr: f64,
    pub beta: f64,
    /// Mean over the epoch's steps of the objective divided by N: mean CE + β·Σ KL / N.
    pub train_loss: f64,
    /// Mean cross-entropy per training example.
    pub data_term: f64,
    /// Σ KL over all weights at the epoch's last step (0 for plain nets).
    pub kl: f64,
    pub test_error_pct: f64,
    /// Error on the training set (its labels as trained on), when the protocol asks for it.
    pub train_error_pct: Option<f64>,
    pub compression: f64,
    /// % of weights removed per weight layer, input to output.
    #[serde(skip)]
    pub removed_pct_per_layer: Vec<f64>,
    pub seconds: f64,
    /// Training steps per second of the epoch's training part (evaluation excluded); `None` in
    /// records read back from files written before the column.
    pub steps_per_second: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "non-finite {what} at epoch {epoch}, {step}: the run is stopped and no summary is written"
    )]
    NonFinite {
        what: String,
        epoch: usize,
        /// The step, or the steps within which it happened when the loss is read every few steps.
        step: String,
    },
    #[error("training stopped by the epoch callback: {0}")]
    Callback(String),
}

/// Evaluation of a model on a test split: error and per-layer surviving weights.
pub struct Evaluation {
    pub error_pct: f64,
    pub layers: Vec<LayerCount>,
}

/// Deterministic evaluation with masked mean weights, in batches.
pub fn evaluate<N: Network>(
    model: &N,
    test: &Split,
    threshold: f64,
    device: &Device,
) -> Evaluation {
    let model = model.valid();
    let pixels = test.images.len() / test.len().max(1);
    let predictions = predict(&model, &test.images, pixels, threshold, EVAL_BATCH, device);
    let layers = model
        .weight_layers()
        .iter()
        .map(|l| LayerCount::from_mask(&l.kept(threshold)))
        .collect();
    Evaluation {
        error_pct: metrics::error_pct(&predictions, &test.labels),
        layers,
    }
}

/// Predicted classes of `images` (rows of `pixels` values) by the deterministic masked forward
/// pass, `batch` images at a time. Pass a model without autodiff (`Module::valid`).
pub fn predict<N: Network>(
    model: &N,
    images: &[f32],
    pixels: usize,
    threshold: f64,
    batch: usize,
    device: &Device,
) -> Vec<u8> {
    let mut predictions = Vec::with_capacity(images.len() / pixels);
    for chunk in images.chunks(batch * pixels) {
        let x = Tensor::<2>::from_data(
            TensorData::new(chunk.to_vec(), [chunk.len() / pixels, pixels]),
            device,
        );
        let logits = model.forward(x, ForwardMode::Eval { threshold }).logits;
        let classes: Vec<i64> = read_back(logits.argmax(1))
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("converted to i64 just above");
        predictions.extend(classes.into_iter().map(|c| c as u8));
    }
    predictions
}

/// Adam as the experiment file configures it.
pub fn optimizer(config: &Optimizer) -> ModuleOptimizer {
    let Optimizer::Adam {
        beta1,
        beta2,
        epsilon,
        ..
    } = *config;
    FusedAdam::new(beta1 as f32, beta2 as f32, epsilon as f32).into_module_optimizer()
}

/// A minibatch on the device: flattened images `[m, pixels]` and labels `[m]`.
pub struct Batch {
    pub x: Tensor<2>,
    pub y: Tensor<1, Int>,
}

impl Batch {
    /// Gather the examples `indices` of `split` into one batch.
    pub fn gather(split: &Split, indices: &[usize], device: &Device) -> Self {
        let pixels = split.images.len() / split.len();
        let mut images = Vec::with_capacity(indices.len() * pixels);
        for &i in indices {
            images.extend_from_slice(&split.images[i * pixels..(i + 1) * pixels]);
        }
        let labels: Vec<i64> = indices.iter().map(|&i| split.labels[i] as i64).collect();
        Self {
            x: Tensor::from_data(TensorData::new(images, [indices.len(), pixels]), device),
            y: Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        }
    }
}

/// The scalars of one optimisation step.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    /// N, the training-set size: the data term is (N/M)·Σ CE = N · mean CE.
    pub train_size: usize,
    /// KL weight β.
    pub beta: f64,
    pub lr: f64,
    /// Zero weights with log α ≥ this in the mean path ("train clip").
    pub mask_threshold: Option<f64>,
    /// Seed of the step's noise (LRT, dropout).
    pub noise_seed: u64,
    /// λ of the L2 penalty λ·Σθ² added to the mean cross-entropy.
    pub l2: f64,
}

/// Mean cross-entropy and Σ KL of a step, before the update, on the device (detached from the
/// graph); `kl` is `None` for a net without variational layers.
#[derive(Debug, Clone)]
pub struct StepLosses {
    pub ce: Tensor<1>,
    pub kl: Option<Tensor<1>>,
}

/// One Adam step on N·(mean CE + λ·Σθ²) + β·Σ KL for `batch` (λ = 0 leaves out the penalty).
/// Nothing is read back to the host: in composed execution the step stays on the device.
pub fn train_step<N: Network>(
    model: N,
    optimizer: &mut ModuleOptimizer,
    batch: Batch,
    s: &StepSettings,
) -> (N, StepLosses) {
    let m = batch.y.dims()[0];
    let out = model.forward(
        batch.x,
        ForwardMode::Train {
            mask_threshold: s.mask_threshold,
            noise_seed: s.noise_seed,
        },
    );
    let ce = log_softmax(out.logits, 1)
        .gather(1, batch.y.reshape([m, 1]))
        .mean()
        .neg();
    let mut loss = ce.clone() * s.train_size as f64;
    if let Some(kl) = out.kl.clone() {
        loss = loss + kl * s.beta;
    }
    if s.l2 > 0.0 {
        loss = loss + model.theta_squared() * (s.l2 * s.train_size as f64);
    }
    let losses = StepLosses {
        ce: ce.detach(),
        kl: out.kl.map(Tensor::detach),
    };
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optimizer.step(s.lr, model, grads), losses)
}

/// Everything the loop needs besides the model and the data.
pub struct TrainSettings<'a> {
    pub protocol: &'a Protocol,
    pub device: &'a Device,
    /// Epochs already done (a resumed run starts after them).
    pub start_epoch: usize,
}

/// Train `model` with `optimizer` from `settings.start_epoch` to the protocol's last epoch,
/// calling `on_epoch` with each epoch's record, the model and the optimizer after it (to write
/// results and checkpoints as the run goes).
pub fn train<N: Network>(
    mut model: N,
    mut optimizer: ModuleOptimizer,
    train: &Split,
    test: &Split,
    settings: &TrainSettings<'_>,
    mut on_epoch: impl FnMut(&EpochRecord, &N, &ModuleOptimizer) -> Result<(), String>,
) -> Result<N, TrainError> {
    let p = settings.protocol;
    let device = settings.device;
    let Optimizer::Adam { lr: base_lr, .. } = p.optimizer;
    let n = train.len();
    let m = p.batch_size;
    let steps = n / m; // the last partial batch is dropped, as in the paper's code
    let mask_threshold = p.train_clip.then_some(p.threshold);
    let progress = crate::progress::EpochBar::new(p.epochs, steps);

    for epoch in settings.start_epoch..p.epochs {
        let started = std::time::Instant::now();
        let lr = learning_rate(&p.lr_schedule, base_lr, epoch, p.epochs);
        let beta = kl_weight(&p.kl_warmup, epoch);
        let order = permutation(n, derive_seed(p.seed, STREAM_SHUFFLE, epoch as u64));
        // The device's own noise generator (composed execution) restarts from the run's seed
        // and the epoch, so that a resumed run draws what an uninterrupted one would.
        device.seed(derive_seed(p.seed, STREAM_NOISE, epoch as u64));
        let mut tally = LossTally::new(host_kernels(device));
        progress.start_epoch(epoch);
        for step in 0..steps {
            let batch = Batch::gather(train, &order[step * m..(step + 1) * m], device);
            let global_step = (epoch * steps + step) as u64;
            let settings = StepSettings {
                train_size: n,
                beta,
                lr,
                mask_threshold,
                noise_seed: derive_seed(p.seed, STREAM_NOISE, global_step),
                l2: p.l2,
            };
            let (next, losses) = train_step(model, &mut optimizer, batch, &settings);
            model = next;
            let last = step + 1 == steps;
            let read = tally.add(losses, beta, n, last);
            if let Some(read) = read.as_ref().filter(|r| !r.mean_objective.is_finite()) {
                let layer = first_non_finite_layer(&model).map_or(String::new(), |l| {
                    format!("; first non-finite parameter in layer {l}")
                });
                return Err(TrainError::NonFinite {
                    what: format!("loss{} {}{layer}", read.what, read.mean_objective),
                    epoch: epoch + 1,
                    step: read.steps.clone(),
                });
            }
            progress.step(read.map(|r| r.mean_objective));
        }
        let training_seconds = started.elapsed().as_secs_f64();
        let totals = tally.totals();
        if let Some(layer) = first_non_finite_layer(&model) {
            return Err(TrainError::NonFinite {
                what: format!("parameter in layer {layer}"),
                epoch: epoch + 1,
                step: format!("step {steps}"),
            });
        }
        let eval = evaluate(&model, test, p.threshold, device);
        let train_error_pct = p
            .evaluate_train_set
            .then(|| evaluate(&model, train, p.threshold, device).error_pct);
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            beta,
            train_loss: totals.objective / steps as f64,
            data_term: totals.data / steps as f64,
            kl: totals.last_kl,
            test_error_pct: eval.error_pct,
            train_error_pct,
            compression: metrics::compression_ratio(&eval.layers),
            removed_pct_per_layer: eval.layers.iter().map(LayerCount::removed_pct).collect(),
            seconds: started.elapsed().as_secs_f64(),
            steps_per_second: Some(steps as f64 / training_seconds),
        };
        progress.finish_epoch(&record);
        on_epoch(&record, &model, &optimizer).map_err(TrainError::Callback)?;
    }
    progress.finish();
    Ok(model)
}

/// The step losses of one epoch, summed where they are computed. With the host kernels each
/// step's losses are read as they come (on the CPU there is nothing to wait for), summed in
/// f64, and a non-finite one is caught at its step. In composed execution they are summed on
/// the device and read every [`STEPS_PER_LOSS_READ`] steps and at the epoch's end: a step itself
/// reads nothing back.
struct LossTally {
    on_host: bool,
    steps: usize,
    /// The sums, read step by step (host kernels).
    host: LossTotals,
    /// The objective's sum, the data term's sum and the last KL, on the device (composed).
    device: [Option<Tensor<1>>; 3],
}

/// A read of the running objective.
struct LossRead {
    /// Mean of the epoch's step objectives so far (a non-finite step's own value on the host).
    mean_objective: f64,
    /// What the value is, for an error message.
    what: String,
    /// Which step or steps it covers, for an error message.
    steps: String,
}

/// The sums of one epoch.
#[derive(Default)]
struct LossTotals {
    objective: f64,
    data: f64,
    last_kl: f64,
}

impl LossTally {
    fn new(on_host: bool) -> Self {
        Self {
            on_host,
            steps: 0,
            host: LossTotals::default(),
            device: [None, None, None],
        }
    }

    /// Add a step's losses, its objective being CE + β·KL / N; returns the running mean
    /// objective when it was read (every step on the host; every few steps and at the `last`
    /// step of the epoch on the device).
    fn add(&mut self, losses: StepLosses, beta: f64, n: usize, last: bool) -> Option<LossRead> {
        self.steps += 1;
        let steps = self.steps;
        if self.on_host {
            let ce = read_scalar(losses.ce);
            let kl = losses.kl.map_or(0.0, read_scalar);
            let step_objective = ce + beta * kl / n as f64;
            let sums = &mut self.host;
            sums.objective += step_objective;
            sums.data += ce;
            sums.last_kl = kl;
            return Some(LossRead {
                mean_objective: match step_objective.is_finite() {
                    true => sums.objective / steps as f64,
                    false => step_objective,
                },
                what: format!(" (CE {ce}, KL {kl}):"),
                steps: format!("step {steps}"),
            });
        }
        let step_objective = match &losses.kl {
            Some(kl) => losses.ce.clone() + kl.clone() * (beta / n as f64),
            None => losses.ce.clone(),
        };
        let [objective, data, last_kl] = &mut self.device;
        for (total, value) in [(&mut *objective, step_objective), (data, losses.ce)] {
            *total = Some(match total.take() {
                Some(t) => t + value,
                None => value,
            });
        }
        *last_kl = losses.kl;
        if !(last || steps.is_multiple_of(STEPS_PER_LOSS_READ)) {
            return None;
        }
        let first = (steps - 1) / STEPS_PER_LOSS_READ * STEPS_PER_LOSS_READ + 1;
        Some(LossRead {
            mean_objective: objective.clone().map_or(f64::NAN, read_scalar) / steps as f64,
            what: " (mean so far):".to_string(),
            steps: format!("steps {first}–{steps}"),
        })
    }

    fn totals(self) -> LossTotals {
        if self.on_host {
            return self.host;
        }
        let [objective, data, last_kl] = self.device.map(|t| t.map_or(0.0, read_scalar));
        LossTotals {
            objective,
            data,
            last_kl,
        }
    }
}

/// The value of a one-element tensor, as f64 (NaN if it cannot be read as a number).
fn read_scalar(t: Tensor<1>) -> f64 {
    read_back(t)
        .convert::<f64>()
        .as_slice::<f64>()
        .map_or(f64::NAN, |v| v[0])
}

fn first_non_finite_layer<N: Network>(model: &N) -> Option<String> {
    model.weight_layers().into_iter().find_map(|l| {
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        let ok = finite(&l.theta) && finite(&l.bias) && l.log_sigma2.as_deref().is_none_or(finite);
        (!ok).then_some(l.name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use sparsevd::ops::{compose_on_this_thread, read_backs};
    use sparsevd::{
        AlphaSharing, Dropout, LeNet5Config, LogAlphaInit, MlpConfig, Posterior, VggLikeConfig,
    };

    fn adam() -> Optimizer {
        Optimizer::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }

    fn settings(mask_threshold: Option<f64>) -> StepSettings {
        StepSettings {
            train_size: 60_000,
            beta: 0.5,
            lr: 1e-3,
            mask_threshold,
            noise_seed: 7,
            l2: 0.0,
        }
    }

    /// Tensors read back to the host by three training steps of `model` (the first creates
    /// Adam's state, so it is counted too) on `pixels`-value random images.
    fn read_backs_in_steps<N: Network>(model: N, pixels: usize, batch: usize) -> u64 {
        let device = Device::flex().autodiff();
        let mut optimizer = optimizer(&adam());
        let before = read_backs();
        let mut model = model;
        for _ in 0..3 {
            let batch = Batch {
                x: Tensor::random([batch, pixels], Distribution::Normal(0.0, 0.3), &device),
                y: Tensor::random([batch], Distribution::Uniform(0.0, 10.0), &device),
            };
            model = train_step(model, &mut optimizer, batch, &settings(Some(3.0))).0;
        }
        read_backs() - before
    }

    /// The generic path (every backend but the CPU's) keeps a training step on the device: no
    /// tensor comes back to the host, for every layer kind of the dropout family and each net.
    /// The same steps with the CPU's host kernels do read back (the host KL pass reads θ and
    /// log σ²), which shows that the count sees a read inside a step.
    #[test]
    fn a_composed_training_step_reads_nothing_back() {
        let device = Device::flex().autodiff();
        let sparse_vd = Posterior::sparse_vd(-10.0);
        let posteriors = [
            sparse_vd,
            Posterior::SparseVdLogAlpha {
                log_alpha_init: LogAlphaInit::Constant { log_alpha: -4.0 },
            },
            Posterior::VariationalDropout {
                log_alpha_init: -4.0,
                sharing: AlphaSharing::PerUnit,
            },
        ];
        let dropout = [
            Dropout::Binary { keep: 0.8 },
            Dropout::Gaussian { keep: 0.8 },
        ];
        let lenet300 = |posterior| MlpConfig::lenet300(posterior).init(&device);
        {
            let _composed = compose_on_this_thread();
            for posterior in posteriors {
                assert_eq!(
                    read_backs_in_steps(lenet300(posterior), 784, 16),
                    0,
                    "{posterior:?}"
                );
            }
            for d in dropout {
                let net = MlpConfig::lenet300(Posterior::Point)
                    .with_dropout(vec![d; 3])
                    .init(&device);
                assert_eq!(read_backs_in_steps(net, 784, 16), 0, "{d:?}");
            }
            let lenet5 = LeNet5Config::new().with_posterior(sparse_vd).init(&device);
            assert_eq!(read_backs_in_steps(lenet5, 784, 8), 0, "LeNet-5");
            for (posterior, dropout) in [(Posterior::Point, true), (sparse_vd, false)] {
                let vgg = VggLikeConfig::new(0.25)
                    .with_posterior(posterior)
                    .with_dropout(dropout)
                    .init(&device);
                assert_eq!(read_backs_in_steps(vgg, 3 * 32 * 32, 4), 0, "VGG-like");
            }
        }
        assert!(read_backs_in_steps(lenet300(sparse_vd), 784, 16) > 0);
    }
}
