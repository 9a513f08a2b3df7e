//! The files a run writes. Every file is written atomically (temporary file, then rename), so a
//! crash never leaves a half-written result.

use crate::provenance::Provenance;
use crate::reference::PaperResult;
use crate::seeds::VariantRuns;
use crate::train::EpochRecord;
use serde::{Deserialize, Serialize};
use sparsevd::kl::additive_rules;
use sparsevd::weights::MapKind;
use sparsevd::{LrtVariance, NormLayerView, WeightLayerView};
use std::path::{Path, PathBuf};

pub const EPOCHS_CSV: &str = "epochs.csv";
pub const SUMMARY_CSV: &str = "summary.csv";
pub const PROVENANCE_TOML: &str = "provenance.toml";
pub const MODEL_SAFETENSORS: &str = "model.safetensors";
pub const COMPARISON_MD: &str = "comparison.md";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> OutputError {
    OutputError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Write `bytes` to `path` via a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| write_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| write_err(path, e))
}

fn csv_bytes(header: &[String], rows: &[Vec<String>]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        w.write_record(row)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// `epochs.csv`: one row per completed epoch, rewritten whole after each epoch.
pub fn write_epochs(
    dir: &Path,
    layer_names: &[String],
    records: &[EpochRecord],
) -> Result<(), OutputError> {
    let mut header: Vec<String> = [
        "epoch",
        "lr",
        "beta",
        "train_loss",
        "data_term",
        "kl",
        "test_error_pct",
        "compression",
    ]
    .map(String::from)
    .to_vec();
    // Only runs that evaluate the training set have the column.
    let train_error = records.iter().any(|r| r.train_error_pct.is_some());
    if train_error {
        header.push("train_error_pct".into());
    }
    header.extend(layer_names.iter().map(|n| format!("removed_pct_{n}")));
    header.push("seconds".into());
    header.push("steps_per_second".into());
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut row = vec![
                r.epoch.to_string(),
                format!("{:e}", r.lr),
                format!("{:.6}", r.beta),
                format!("{:.6}", r.train_loss),
                format!("{:.6}", r.data_term),
                format!("{:.3}", r.kl),
                format!("{:.2}", r.test_error_pct),
                format!("{:.3}", r.compression),
            ];
            if train_error {
                row.push(format!("{:.2}", r.train_error_pct.unwrap_or(f64::NAN)));
            }
            row.extend(r.removed_pct_per_layer.iter().map(|p| format!("{p:.3}")));
            row.push(format!("{:.2}", r.seconds));
            row.push(format!("{:.2}", r.steps_per_second.unwrap_or(f64::NAN)));
            row
        })
        .collect();
    let path = dir.join(EPOCHS_CSV);
    let bytes = csv_bytes(&header, &rows).map_err(|e| write_err(&path, e))?;
    write_atomic(&path, &bytes)
}

/// One finished run, as in `summary.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub experiment: String,
    pub variant: String,
    pub net: String,
    pub dataset: String,
    pub epochs: usize,
    pub shortened: bool,
    pub test_error_pct: f64,
    pub compression: f64,
    /// Per-layer % removed, input to output, separated by ';'.
    pub removed_pct_per_layer: String,
    pub paper_error_pct: Option<f64>,
    pub paper_compression: Option<f64>,
    pub wall_time_s: f64,
    /// Final error on the training set, when the protocol evaluates it.
    #[serde(default)]
    pub train_error_pct: Option<f64>,
}

pub fn write_summary(dir: &Path, summary: &Summary) -> Result<(), OutputError> {
    let path = dir.join(SUMMARY_CSV);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.serialize(summary).map_err(|e| write_err(&path, e))?;
    let bytes = w
        .into_inner()
        .map_err(|e| write_err(&path, e.into_error()))?;
    write_atomic(&path, &bytes)
}

pub fn read_summary(dir: &Path) -> Result<Summary, OutputError> {
    let path = dir.join(SUMMARY_CSV);
    let read_err = |m: String| OutputError::Read {
        path: path.clone(),
        message: m,
    };
    let mut r = csv::Reader::from_path(&path).map_err(|e| read_err(e.to_string()))?;
    r.deserialize()
        .next()
        .ok_or_else(|| read_err("no data row".into()))?
        .map_err(|e| read_err(e.to_string()))
}

pub fn write_provenance(dir: &Path, provenance: &Provenance) -> Result<(), OutputError> {
    let path = dir.join(PROVENANCE_TOML);
    let text = toml::to_string(provenance).map_err(|e| write_err(&path, e))?;
    write_atomic(&path, text.as_bytes())
}

pub fn read_provenance(dir: &Path) -> Result<Provenance, OutputError> {
    let path = dir.join(PROVENANCE_TOML);
    let text = std::fs::read_to_string(&path).map_err(|e| OutputError::Read {
        path: path.clone(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| OutputError::Read {
        path,
        message: e.to_string(),
    })
}

/// The LRT variance form the model in `dir` was trained with, as its provenance records it;
/// provenance from before the form was a protocol key has none, and those runs used σ². A folder
/// without provenance (a model copied elsewhere) is read as the default form.
pub fn recorded_lrt_variance(dir: &Path) -> Result<LrtVariance, OutputError> {
    let path = dir.join(PROVENANCE_TOML);
    if !path.is_file() {
        return Ok(LrtVariance::default());
    }
    let provenance = read_provenance(dir)?;
    let key = provenance.lrt_variance_key();
    LrtVariance::from_key(key).ok_or_else(|| OutputError::Read {
        path,
        message: format!("lrt_variance = \"{key}\": expected \"clipped_alpha\" or \"sigma2\""),
    })
}

/// `model.safetensors`: per weight layer `<name>.theta`, `<name>.log_sigma2` (Sparse VD only),
/// `<name>.log_alpha` (clipped, one per weight; layers that learn log α only) and `<name>.bias`,
/// float32, θ, log σ² and log α shaped `[d_in, d_out]` for dense layers; per
/// batch-norm layer `<name>.gamma`, `.beta`, `.running_mean`, `.running_var`.
pub fn write_model(
    dir: &Path,
    layers: &[WeightLayerView],
    norms: &[NormLayerView],
    metadata: &[(&str, String)],
) -> Result<(), OutputError> {
    let path = dir.join(MODEL_SAFETENSORS);
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for n in norms {
        for (part, values) in [
            ("gamma", &n.gamma),
            ("beta", &n.beta),
            ("running_mean", &n.running_mean),
            ("running_var", &n.running_var),
        ] {
            named.push((
                format!("{}.{part}", n.name),
                vec![values.len()],
                bytes(values),
            ));
        }
    }
    for l in layers {
        named.push((
            format!("{}.theta", l.name),
            l.shape.clone(),
            bytes(&l.theta),
        ));
        match (&l.log_sigma2, &l.log_alpha) {
            (Some(s), _) => {
                named.push((format!("{}.log_sigma2", l.name), l.shape.clone(), bytes(s)))
            }
            (None, Some(a)) => {
                named.push((format!("{}.log_alpha", l.name), l.shape.clone(), bytes(a)))
            }
            (None, None) => {}
        }
        named.push((
            format!("{}.bias", l.name),
            vec![l.bias.len()],
            bytes(&l.bias),
        ));
    }
    let views = named
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| write_err(&path, e))?;
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let bytes =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| write_err(&path, e))?;
    write_atomic(&path, &bytes)
}

/// `comparison.md`: every finished variant of an experiment beside the paper's row; a seed
/// sweep's variant as the mean ± std over its finished runs, with n.
pub fn write_comparison(
    experiment_dir: &Path,
    title: &str,
    rows: &[(VariantRuns, Option<PaperResult>)],
) -> Result<(), OutputError> {
    // An experiment of one's own (no variant names a paper row) gets our columns alone.
    let with_paper = rows.iter().any(|(_, paper)| paper.is_some());
    let mut md = match with_paper {
        true => format!("# {title}: ours beside the paper\n\n"),
        false => format!("# {title}\n\n"),
    };
    md.push_str("Written by the harness from the runs' `summary.csv` files. Error is test error in %; compression is |W| / |W ≠ 0| over weight layers. A variant run under several seeds shows mean ± sample standard deviation over its finished runs (n of them); its % removed and s / epoch are means.\n\n");
    let summaries: Vec<Summary> = rows
        .iter()
        .filter_map(|(runs, _)| runs.mean_summary())
        .collect();
    // Runs that evaluated the training set (random labels) also get train and test accuracy and
    // the share of all weights removed, as the paper reports them.
    let with_train = summaries.iter().any(|s| s.train_error_pct.is_some());
    let with_seeds = rows.iter().any(|(runs, _)| runs.sweep);
    let mut header = vec![
        "variant",
        "epochs",
        "seeds",
        "ours: error %",
        "paper: error %",
        "ours: compression",
        "paper: compression",
        "ours: % removed per layer",
        "paper: % removed per layer",
        "ours: s / epoch",
    ];
    if with_train {
        header.extend([
            "ours: train accuracy %",
            "paper: train accuracy %",
            "ours: test accuracy %",
            "paper: test accuracy %",
            "ours: % removed",
            "paper: % removed",
        ]);
    }
    let shown: Vec<bool> = header
        .iter()
        .map(|name| (with_paper || !name.starts_with("paper:")) && (with_seeds || *name != "seeds"))
        .collect();
    let header = shown_columns(&header, &shown);
    md.push_str(&format!("| {} |\n", header.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    let number = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let times = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}×"));
    for ((runs, paper), s) in rows.iter().zip(&summaries) {
        let n = runs.runs.len();
        let epochs = if s.shortened {
            format!("{} (shortened run)", s.epochs)
        } else {
            s.epochs.to_string()
        };
        let paper_layers = paper
            .as_ref()
            .and_then(|p| p.removed_pct_per_layer.as_ref())
            .map_or("–".to_string(), |v| {
                v.iter()
                    .map(|x| format!("{x}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            });
        let mut cells = vec![
            s.variant.clone(),
            epochs,
            match runs.sweep {
                true => format!("n = {n} of {}", runs.seeds_planned.len()),
                false => format!("seed {}", runs.seeds_planned[0]),
            },
            VariantRuns::format(runs.error(), n, 2),
            number(paper.as_ref().map(|p| p.error_pct)),
            format!("{}×", VariantRuns::format(runs.compression(), n, 1)),
            times(paper.as_ref().and_then(|p| p.compression)),
            s.removed_pct_per_layer.replace(';', " / "),
            paper_layers,
            format!("{:.1}", s.wall_time_s / s.epochs.max(1) as f64),
        ];
        if with_train {
            cells.extend([
                number(s.train_error_pct.map(|e| 100.0 - e)),
                number(paper.as_ref().and_then(|p| p.train_accuracy_pct)),
                number(Some(100.0 - s.test_error_pct)),
                number(paper.as_ref().map(|p| 100.0 - p.error_pct)),
                number(Some(100.0 - 100.0 / s.compression)),
                number(paper.as_ref().and_then(|p| p.removed_pct)),
            ]);
        }
        md.push_str(&format!(
            "| {} |\n",
            shown_columns(&cells, &shown).join(" | ")
        ));
    }
    write_atomic(&experiment_dir.join(COMPARISON_MD), md.as_bytes())
}

/// The cells of the columns that `shown` keeps.
fn shown_columns<T: Clone>(cells: &[T], shown: &[bool]) -> Vec<T> {
    cells
        .iter()
        .zip(shown)
        .filter(|(_, shown)| **shown)
        .map(|(cell, _)| cell.clone())
        .collect()
}

/// Delete a variant's results and checkpoint (for `--force`).
pub fn clear_variant(dir: &Path) -> Result<(), OutputError> {
    for name in [EPOCHS_CSV, SUMMARY_CSV, PROVENANCE_TOML, MODEL_SAFETENSORS] {
        let path = dir.join(name);
        if path.is_file() {
            std::fs::remove_file(&path).map_err(|e| write_err(&path, e))?;
        }
    }
    crate::checkpoint::remove(dir);
    Ok(())
}

/// The per-epoch records of `epochs.csv`, for a resumed run.
pub fn read_epoch_records(dir: &Path) -> Result<Vec<EpochRecord>, OutputError> {
    let table = read_epochs(dir)?;
    let path = dir.join(EPOCHS_CSV);
    let column = |name: &str| {
        table.column(name).ok_or_else(|| OutputError::Read {
            path: path.clone(),
            message: format!("no column {name}"),
        })
    };
    let removed: Vec<usize> = (0..table.header.len())
        .filter(|&i| table.header[i].starts_with("removed_pct_"))
        .collect();
    let (epoch, lr, beta, loss, data, kl, error, compression, seconds) = (
        column("epoch")?,
        column("lr")?,
        column("beta")?,
        column("train_loss")?,
        column("data_term")?,
        column("kl")?,
        column("test_error_pct")?,
        column("compression")?,
        column("seconds")?,
    );
    let train_error = table.column("train_error_pct");
    let steps_per_second = table.column("steps_per_second");
    Ok((0..table.rows.len())
        .map(|i| EpochRecord {
            epoch: epoch[i] as usize,
            lr: lr[i],
            beta: beta[i],
            train_loss: loss[i],
            data_term: data[i],
            kl: kl[i],
            test_error_pct: error[i],
            train_error_pct: train_error.as_ref().map(|c| c[i]),
            compression: compression[i],
            removed_pct_per_layer: removed.iter().map(|&c| table.rows[i][c]).collect(),
            seconds: seconds[i],
            steps_per_second: steps_per_second.as_ref().map(|c| c[i]),
        })
        .collect())
}

/// `epochs.csv` read back: its header and numeric rows.
#[derive(Debug, Clone)]
pub struct EpochTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

impl EpochTable {
    /// One column by name (`None` if the file has no such column).
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        let i = self.header.iter().position(|h| h == name)?;
        Some(self.rows.iter().map(|r| r[i]).collect())
    }
}

pub fn read_epochs(dir: &Path) -> Result<EpochTable, OutputError> {
    let path = dir.join(EPOCHS_CSV);
    let read_err = |m: String| OutputError::Read {
        path: path.clone(),
        message: m,
    };
    let mut r = csv::Reader::from_path(&path).map_err(|e| read_err(e.to_string()))?;
    let header: Vec<String> = r
        .headers()
        .map_err(|e| read_err(e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    let mut rows = Vec::new();
    for (line, record) in r.records().enumerate() {
        let record = record.map_err(|e| read_err(e.to_string()))?;
        let row = record
            .iter()
            .map(|v| v.parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_err(format!("row {}: {e}", line + 2)))?;
        rows.push(row);
    }
    Ok(EpochTable { header, rows })
}

/// A tensor's shape and its values.
type ShapedFloats = (Vec<usize>, Vec<f32>);

/// The float32 tensor `name`, if the file has it.
fn float_tensor(
    tensors: &safetensors::SafeTensors<'_>,
    name: &str,
) -> Result<Option<ShapedFloats>, String> {
    let Ok(view) = tensors.tensor(name) else {
        return Ok(None);
    };
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "{name}: expected float32, found {:?}",
            view.dtype()
        ));
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Some((view.shape().to_vec(), values)))
}

/// Open `dir`'s `model.safetensors` and hand its tensors to `read`; any failure becomes a read
/// error naming the file.
fn with_model_file<T>(
    dir: &Path,
    read: impl FnOnce(&safetensors::SafeTensors<'_>) -> Result<T, String>,
) -> Result<T, OutputError> {
    let path = dir.join(MODEL_SAFETENSORS);
    let bytes = std::fs::read(&path).map_err(|e| e.to_string());
    bytes
        .and_then(|bytes| {
            let tensors =
                safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
            read(&tensors)
        })
        .map_err(|message| OutputError::Read { path, message })
}

/// Names of the layers whose tensor `<name>.<suffix>` is in the file, ordered by
/// `(is a later kind, number in the name)`.
fn layer_names(
    tensors: &safetensors::SafeTensors<'_>,
    suffix: &str,
    later_kind: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut names: Vec<String> = tensors
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix(suffix).map(String::from))
        .collect();
    names.sort_by_key(|n| {
        let number = n.trim_start_matches(|c: char| !c.is_ascii_digit());
        (later_kind(n), number.parse::<u32>().unwrap_or(0))
    });
    names
}

/// Read a `model.safetensors` written by [`write_model`] back into layer views, input to
/// output (convolutions before dense layers, then by number). log α is recomputed on the host
/// from log σ² with the formula of the forward pass under the form the model was trained with
/// ([`recorded_lrt_variance`]), or read from `<name>.log_alpha` for layers that learn it.
pub fn read_model(dir: &Path) -> Result<Vec<WeightLayerView>, OutputError> {
    let form = recorded_lrt_variance(dir)?;
    with_model_file(dir, |tensors| weight_views(tensors, form))
}

/// The weight layers and the batch-norm layers (none for a net without batch norm) of a
/// `model.safetensors`, from one read of the file.
pub fn read_model_and_norms(
    dir: &Path,
) -> Result<(Vec<WeightLayerView>, Vec<NormLayerView>), OutputError> {
    let form = recorded_lrt_variance(dir)?;
    with_model_file(dir, |tensors| {
        Ok((weight_views(tensors, form)?, norm_views(tensors)?))
    })
}

fn weight_views(
    tensors: &safetensors::SafeTensors<'_>,
    form: LrtVariance,
) -> Result<Vec<WeightLayerView>, String> {
    let floats = |name: &str| float_tensor(tensors, name);
    layer_names(tensors, ".theta", |n| !n.starts_with("conv"))
        .into_iter()
        .map(|name| {
            let (shape, theta) = floats(&format!("{name}.theta"))?.expect("listed above");
            let log_sigma2 = floats(&format!("{name}.log_sigma2"))?.map(|(_, v)| v);
            let bias = floats(&format!("{name}.bias"))?
                .ok_or_else(|| format!("{name}.bias missing"))?
                .1;
            let clip = sparsevd::LOG_ALPHA_CLIP as f32;
            let kind = match name.starts_with("conv") {
                true => MapKind::Convolution,
                false => MapKind::Dense,
            };
            let eps = additive_rules(form, kind).forward_eps;
            let log_alpha = match &log_sigma2 {
                Some(s) => Some(
                    s.iter()
                        .zip(&theta)
                        .map(|(s, t)| {
                            (s - (t * t + eps).max(f32::MIN_POSITIVE).ln()).clamp(-clip, clip)
                        })
                        .collect(),
                ),
                None => floats(&format!("{name}.log_alpha"))?.map(|(_, v)| v),
            };
            Ok(WeightLayerView {
                name,
                shape,
                theta,
                log_sigma2,
                log_alpha,
                bias,
            })
        })
        .collect()
}

/// Batch-norm layers, input to output.
fn norm_views(tensors: &safetensors::SafeTensors<'_>) -> Result<Vec<NormLayerView>, String> {
    layer_names(tensors, ".running_mean", |n| n.contains("dense"))
        .into_iter()
        .map(|name| {
            let part = |p: &str| -> Result<Vec<f32>, String> {
                float_tensor(tensors, &format!("{name}.{p}"))?
                    .map(|(_, v)| v)
                    .ok_or_else(|| format!("{name}.{p} missing"))
            };
            Ok(NormLayerView {
                gamma: part("gamma")?,
                beta: part("beta")?,
                running_mean: part("running_mean")?,
                running_var: part("running_var")?,
                name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::FinishedRun;

    /// `summaries` as the finished runs of seeds 1, 2, ... of a variant with three seeds (a
    /// sweep) or one.
    fn runs(summaries: &[Summary], sweep: bool) -> VariantRuns {
        VariantRuns {
            seeds_planned: if sweep { vec![1, 2, 3] } else { vec![1] },
            sweep,
            runs: summaries
                .iter()
                .zip(1..)
                .map(|(summary, seed)| FinishedRun {
                    seed,
                    dir: PathBuf::new(),
                    summary: summary.clone(),
                })
                .collect(),
        }
    }

    fn summary(error: f64, compression: f64, removed: &str) -> Summary {
        Summary {
            experiment: "e".into(),
            variant: "sparse_vd".into(),
            net: "lenet300".into(),
            dataset: "mnist".into(),
            epochs: 200,
            shortened: false,
            test_error_pct: error,
            compression,
            removed_pct_per_layer: removed.into(),
            paper_error_pct: None,
            paper_compression: None,
            wall_time_s: 100.0,
            train_error_pct: None,
        }
    }

    /// Two of three seeds finished: mean ± sample std of error and compression, mean % removed
    /// per layer, and how many runs the numbers are over.
    #[test]
    fn a_seed_sweep_shows_mean_and_spread_with_n() {
        let dir = std::env::temp_dir().join(format!("comparison-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = [(
            runs(
                &[
                    summary(1.7, 100.0, "99.00;98.00"),
                    summary(1.9, 110.0, "98.00;97.00"),
                ],
                true,
            ),
            None,
        )];
        write_comparison(&dir, "e", &rows).unwrap();
        let md = std::fs::read_to_string(dir.join(COMPARISON_MD)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // std of (1.7, 1.9) = 0.1414…, of (100, 110) = 7.07…
        let row = md.lines().find(|l| l.starts_with("| sparse_vd")).unwrap();
        assert!(row.contains("| n = 2 of 3 |"), "{row}");
        assert!(row.contains("| 1.80 ± 0.14 |"), "{row}");
        assert!(row.contains("| 105.0 ± 7.1× |"), "{row}");
        assert!(row.contains("| 98.50 / 97.50 |"), "{row}");
    }

    /// A random-labels row: train and test accuracy (100 − error) and the share removed, ours
    /// beside the paper's.
    #[test]
    fn a_random_labels_comparison_shows_train_and_test_accuracy() {
        let dir = std::env::temp_dir().join(format!("comparison-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours = Summary {
            experiment: "rl".into(),
            variant: "sparse_vd".into(),
            net: "lenet300".into(),
            dataset: "mnist".into(),
            epochs: 200,
            shortened: false,
            test_error_pct: 88.5,
            compression: 4.0,
            removed_pct_per_layer: "75.00;75.00".into(),
            paper_error_pct: Some(90.0),
            paper_compression: None,
            wall_time_s: 400.0,
            train_error_pct: Some(87.75),
        };
        let paper = PaperResult {
            net: "lenet300".into(),
            dataset: "mnist_random_labels".into(),
            method: "sparse_vd".into(),
            k: None,
            error_pct: 90.0,
            compression: None,
            removed_pct_per_layer: None,
            train_accuracy_pct: Some(10.0),
            removed_pct: Some(100.0),
            source: "poster".into(),
        };
        write_comparison(
            &dir,
            "rl",
            &[(runs(std::slice::from_ref(&ours), false), Some(paper))],
        )
        .unwrap();
        let md = std::fs::read_to_string(dir.join(COMPARISON_MD)).unwrap();
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        let cells = |line: &str| -> Vec<String> {
            line.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        // Without a paper row (an experiment of one's own) only our columns remain.
        write_comparison(&dir, "own", &[(runs(&[ours], false), None)]).unwrap();
        let own = std::fs::read_to_string(dir.join(COMPARISON_MD)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let own_lines: Vec<&str> = own.lines().filter(|l| l.starts_with('|')).collect();
        let (own_header, own_row) = (cells(own_lines[0]), cells(own_lines[2]));
        assert!(own_header.iter().all(|h| !h.starts_with("paper")), "{own}");
        assert_eq!(own_header.len(), own_row.len());
        assert!(own_header.contains(&"ours: train accuracy %".to_string()));
        let (header, row) = (cells(lines[0]), cells(lines[2]));
        let column = |name: &str| {
            let i = header.iter().position(|h| h == name).expect(name);
            row[i].clone()
        };
        assert_eq!(column("ours: train accuracy %"), "12.25");
        assert_eq!(column("paper: train accuracy %"), "10.00");
        assert_eq!(column("ours: test accuracy %"), "11.50");
        assert_eq!(column("paper: test accuracy %"), "10.00");
        assert_eq!(column("ours: % removed"), "75.00");
        assert_eq!(column("paper: % removed"), "100.00");
    }
}
