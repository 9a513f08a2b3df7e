//! The training loop: minibatch Adam on (N/M)·Σ CE + β·Σ KL, with evaluation after every epoch.

use crate::adam::FusedAdam;
use crate::rng::{derive_seed, permutation};
use crate::schedule::{kl_weight, learning_rate};
use crate::spec::{Optimizer, Protocol};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::log_softmax};
use datasets::Split;
use metrics::LayerCount;
use sparsevd::{ForwardMode, Network};

/// Seeds of independent random streams, derived from the experiment's seed.
pub(crate) const STREAM_INIT: u64 = 1;
const STREAM_SHUFFLE: u64 = 2;
const STREAM_NOISE: u64 = 3;
pub(crate) const STREAM_LABELS: u64 = 4;

/// Test images per evaluation batch (memory, not results, depends on it).
const EVAL_BATCH: usize = 1000;

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
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "non-finite {what} at epoch {epoch}, step {step}: the run is stopped and no summary is written"
    )]
    NonFinite {
        what: String,
        epoch: usize,
        step: usize,
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
        let classes: Vec<i64> = logits
            .argmax(1)
            .into_data()
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

/// Mean cross-entropy and Σ KL of a step, read before the update.
#[derive(Debug, Clone, Copy)]
pub struct StepLosses {
    pub ce: f64,
    pub kl: f64,
}

/// One Adam step on N·(mean CE + λ·Σθ²) + β·Σ KL for `batch` (λ = 0 leaves out the penalty).
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
        ce: ce.into_scalar::<f32>() as f64,
        kl: out.kl.map_or(0.0, |kl| kl.into_scalar::<f32>() as f64),
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
        let (mut loss_sum, mut data_sum, mut last_kl) = (0.0, 0.0, 0.0);
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
            let objective = losses.ce + beta * losses.kl / n as f64;
            if !objective.is_finite() {
                let layer = first_non_finite_layer(&model).map_or(String::new(), |l| {
                    format!("; first non-finite parameter in layer {l}")
                });
                return Err(TrainError::NonFinite {
                    what: format!("loss (CE {}, KL {}){layer}", losses.ce, losses.kl),
                    epoch: epoch + 1,
                    step: step + 1,
                });
            }
            loss_sum += objective;
            data_sum += losses.ce;
            last_kl = losses.kl;
            progress.step(objective);
        }
        if let Some(layer) = first_non_finite_layer(&model) {
            return Err(TrainError::NonFinite {
                what: format!("parameter in layer {layer}"),
                epoch: epoch + 1,
                step: steps,
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
            train_loss: loss_sum / steps as f64,
            data_term: data_sum / steps as f64,
            kl: last_kl,
            test_error_pct: eval.error_pct,
            train_error_pct,
            compression: metrics::compression_ratio(&eval.layers),
            removed_pct_per_layer: eval.layers.iter().map(LayerCount::removed_pct).collect(),
            seconds: started.elapsed().as_secs_f64(),
        };
        progress.finish_epoch(&record);
        on_epoch(&record, &model, &optimizer).map_err(TrainError::Callback)?;
    }
    progress.finish();
    Ok(model)
}

fn first_non_finite_layer<N: Network>(model: &N) -> Option<String> {
    model.weight_layers().into_iter().find_map(|l| {
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        let ok = finite(&l.theta) && finite(&l.bias) && l.log_sigma2.as_deref().is_none_or(finite);
        (!ok).then_some(l.name)
    })
}
