//! Training one run and recording it: resume from its checkpoint or start from the run it
//! starts from, train, and write every result file with its provenance.

use crate::network::{WithNetwork, on_pool_worker, posterior, with_network};
use crate::output::{self, Summary};
use crate::provenance::{self, Provenance};
use crate::reference::PaperReference;
use crate::spec::{self, LayerKind, LoadedExperiment, Run, Variant};
use crate::{RunError, RunOptions, checkpoint, train};
use datasets::Split;
use sparsevd::{LrtVariance, Network, Posterior, WeightLayerView};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// One variant to train, with everything it is trained and recorded with.
pub(crate) struct VariantJob<'a> {
    pub(crate) exp: &'a LoadedExperiment,
    pub(crate) run: Run,
    pub(crate) variant: &'a Variant,
    /// Epochs in the file's protocol for this variant.
    pub(crate) planned_epochs: usize,
    /// The variant's protocol with command-line overrides applied.
    pub(crate) protocol: &'a spec::Protocol,
    pub(crate) train: Cow<'a, Split>,
    pub(crate) test: Cow<'a, Split>,
    pub(crate) dir: &'a Path,
    /// The folder of the run this one starts from.
    pub(crate) source_dir: Option<PathBuf>,
    /// (file name, sha256) of a data set read from a folder.
    pub(crate) data_files: &'a [(String, String)],
    pub(crate) paper: &'a PaperReference,
    pub(crate) commit: &'a str,
    pub(crate) options: &'a RunOptions,
}

impl WithNetwork for &VariantJob<'_> {
    type Output = Result<(), RunError>;
    fn run<N: Network>(self, model: N) -> Self::Output {
        train_and_record(self, model)
    }
}

pub(crate) fn run_variant(job: &VariantJob<'_>) -> Result<(), RunError> {
    on_pool_worker(|| {
        with_network(
            &job.exp.spec.net,
            job.variant,
            job.protocol,
            &job.options.device,
            job,
        )
    })
}

/// Train `model` as the job says and write every result file.
fn train_and_record<N: Network>(job: &VariantJob<'_>, model: N) -> Result<(), RunError> {
    let VariantJob {
        exp,
        variant,
        planned_epochs,
        protocol,
        dir,
        paper,
        commit,
        options,
        ..
    } = *job;
    let (train_split, test_split) = (job.train.as_ref(), job.test.as_ref());
    let spec = &exp.spec;
    let device = &options.device;
    let started = provenance::now_rfc3339();
    let layer_names: Vec<String> = model.weight_layers().into_iter().map(|l| l.name).collect();
    let mut state = checkpoint::CheckpointState {
        epochs_completed: 0,
        epochs_planned: protocol.epochs,
        experiment_sha256: exp.sha256(),
        seed: protocol.seed,
    };
    let (mut model, mut optimizer) = (model, train::optimizer(&protocol.optimizer));
    let mut records = Vec::new();
    if let Some(saved) = checkpoint::read_state(dir)? {
        if (saved.epochs_planned, &saved.experiment_sha256, saved.seed)
            != (state.epochs_planned, &state.experiment_sha256, state.seed)
        {
            return Err(RunError::StaleCheckpoint(dir.to_path_buf()));
        }
        (model, optimizer) = checkpoint::load(dir, &saved, model, optimizer)?;
        records = output::read_epoch_records(dir)?;
        records.truncate(saved.epochs_completed);
        eprintln!(
            "resuming from the checkpoint after epoch {} in {}",
            saved.epochs_completed,
            dir.display()
        );
        state = saved;
    } else if let Some(source) = &job.source_dir {
        model = start_from(model, source, variant, protocol)?;
    }
    let resumed_after_epoch = state.epochs_completed;
    let mut shortened_how: Vec<String> = spec.shortened.iter().cloned().collect();
    if protocol.epochs < planned_epochs {
        shortened_how.push(format!("{} of {planned_epochs} epochs", protocol.epochs));
    }
    if let Some(n) = protocol.train_subset {
        shortened_how.push(format!("first {n} training images"));
    }
    if let Some(n) = protocol.test_subset {
        shortened_how.push(format!("first {n} test images"));
    }
    // Written after every epoch with `finished` empty, so that a run cut short (a time limit on
    // a lent GPU, a crash) still says where its epochs came from; rewritten when it finishes.
    let provenance_after = |records: &[train::EpochRecord], finished: String| {
        // Σ epoch times (training and evaluation) over every segment of a resumed run.
        let wall: f64 = records.iter().map(|r| r.seconds).sum();
        Provenance {
            experiment_file: exp.path.display().to_string(),
            experiment_sha256: exp.sha256(),
            variant_sha256: Some(exp.run_sha256(job.run)),
            variant: variant.name.clone(),
            commit: commit.to_string(),
            backend: options.backend.clone(),
            device: options.device_description.clone(),
            threads: provenance::threads(),
            seed: protocol.seed,
            epochs_planned: planned_epochs,
            epochs_completed: records.last().map_or(0, |r| r.epoch),
            shortened: !shortened_how.is_empty(),
            shortened_how: shortened_how.join(", "),
            train_examples: train_split.len(),
            test_examples: test_split.len(),
            wall_time_s: wall,
            mean_epoch_s: wall / records.len().max(1) as f64,
            resumed_after_epoch,
            lrt_variance: (variant.layer == LayerKind::SparseVd)
                .then(|| protocol.lrt_variance.key().to_string()),
            data_sha256: job.data_files.iter().cloned().collect(),
            started: started.clone(),
            finished,
            harness_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    };
    let settings = train::TrainSettings {
        protocol,
        device,
        start_epoch: state.epochs_completed,
    };
    let model = train::train(
        model,
        optimizer,
        train_split,
        test_split,
        &settings,
        |record, model, optimizer| {
            records.push(record.clone());
            output::write_epochs(dir, &layer_names, &records).map_err(|e| e.to_string())?;
            output::write_provenance(dir, &provenance_after(&records, String::new()))
                .map_err(|e| e.to_string())?;
            state.epochs_completed = record.epoch;
            checkpoint::save(dir, model, optimizer, &state).map_err(|e| e.to_string())
        },
    )
    .map_err(|source| RunError::Train {
        variant: variant.name.clone(),
        source,
    })?;

    let last = records.last().expect("at least one epoch is validated");
    let provenance = provenance_after(&records, provenance::now_rfc3339());
    let reference = variant.paper.as_ref().and_then(|key| paper.find(key));
    let summary = Summary {
        experiment: spec.name.clone(),
        variant: variant.name.clone(),
        net: spec.net.key().to_string(),
        dataset: spec.dataset.describe(),
        epochs: last.epoch,
        shortened: provenance.shortened,
        test_error_pct: last.test_error_pct,
        compression: last.compression,
        removed_pct_per_layer: last
            .removed_pct_per_layer
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(";"),
        paper_error_pct: reference.map(|r| r.error_pct),
        paper_compression: reference.and_then(|r| r.compression),
        wall_time_s: provenance.wall_time_s,
        train_error_pct: last.train_error_pct,
    };
    // How to read log α back from the file: the rule of the variance form (sparsevd::LrtVariance).
    let log_alpha_rule = match (variant.layer, protocol.lrt_variance) {
        (LayerKind::SparseVd, LrtVariance::ClippedAlpha) => {
            "; lrt_variance=clipped_alpha; log_alpha = clip(log_sigma2 - log(theta^2 + eps), -8, 8), eps = 0 in dense and 1e-8 in conv layers"
        }
        (LayerKind::SparseVd, LrtVariance::Sigma2) => {
            "; lrt_variance=sigma2; log_alpha = clip(log_sigma2 - log(theta^2 + 1e-8), -8, 8)"
        }
        _ => "",
    };
    let description = format!(
        "experiment={}; variant={}; net={}; threshold={}{log_alpha_rule}; dense theta and log_sigma2 are [d_in, d_out], y = x @ theta + bias; conv theta and log_sigma2 are [out, in, kh, kw]",
        spec.name,
        variant.name,
        spec.net.describe(),
        protocol.threshold,
    );
    let metadata = [("harness", description)];
    output::write_model(dir, &model.weight_layers(), &model.norm_layers(), &metadata)?;
    output::write_provenance(dir, &provenance)?;
    // The summary is written last: its presence marks a finished run.
    output::write_summary(dir, &summary)?;
    checkpoint::remove(dir);
    Ok(())
}

/// `model` with the final weights (and batch norms) of the finished variant in `source_dir`,
/// the noise parameter of `variant`'s layers (log σ² or log α) at the protocol's initial value.
fn start_from<N: Network>(
    model: N,
    source_dir: &Path,
    variant: &Variant,
    protocol: &spec::Protocol,
) -> Result<N, RunError> {
    let missing = |message: String| {
        RunError::Output(output::OutputError::Read {
            path: source_dir.join(output::MODEL_SAFETENSORS),
            message,
        })
    };
    if !source_dir.join(output::SUMMARY_CSV).is_file() {
        return Err(missing(
            "the variant this one starts from has not finished".into(),
        ));
    }
    let (layers, norms) = output::read_model_and_norms(source_dir)?;
    let layers: Vec<WeightLayerView> = layers
        .into_iter()
        .map(|view| {
            let fill = |v: f64| Some(vec![v as f32; view.theta.len()]);
            let (log_sigma2, log_alpha) = match posterior(variant, protocol) {
                Posterior::Point => (None, None),
                Posterior::SparseVd {
                    log_sigma2_init, ..
                } => (fill(log_sigma2_init), None),
                Posterior::SparseVdLogAlpha { log_alpha_init } => {
                    (None, Some(log_alpha_init.values(&view.theta)))
                }
                Posterior::VariationalDropout { log_alpha_init, .. } => {
                    (None, fill(log_alpha_init))
                }
            };
            WeightLayerView {
                log_sigma2,
                log_alpha,
                ..view
            }
        })
        .collect();
    eprintln!(
        "starting from the final weights in {}",
        source_dir.display()
    );
    model
        .with_weight_layers(&layers)
        .and_then(|m| m.with_norm_layers(&norms))
        .map_err(missing)
}
