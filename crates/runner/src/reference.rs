//! The paper's numbers, carried by the project as `experiments/paper_reference.toml`.

use crate::spec::PaperKey;
use serde::Deserialize;
use std::path::Path;

/// One row of the paper's results (Table 1, the VGG-like figure, the poster).
#[derive(Debug, Clone, Deserialize)]
pub struct PaperResult {
    pub net: String,
    pub dataset: String,
    pub method: String,
    pub k: Option<f64>,
    pub error_pct: f64,
    pub compression: Option<f64>,
    pub removed_pct_per_layer: Option<Vec<f64>>,
    pub train_accuracy_pct: Option<f64>,
    pub removed_pct: Option<f64>,
    pub source: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaperReference {
    #[serde(rename = "result")]
    pub results: Vec<PaperResult>,
}

/// The reference file's path inside the repository.
pub const PAPER_REFERENCE_FILE: &str = "experiments/paper_reference.toml";

impl PaperReference {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The row a variant's `paper = { ... }` key names: `net`, `method`, width `k` (VGG-like)
    /// and `dataset` (the net's usual data set when absent).
    pub fn find(&self, key: &PaperKey) -> Option<&PaperResult> {
        self.results.iter().find(|r| {
            r.net == key.net
                && r.method == key.method
                && r.k == key.k
                && match &key.dataset {
                    Some(dataset) => &r.dataset == dataset,
                    None => !r.dataset.contains("random"),
                }
        })
    }
}
