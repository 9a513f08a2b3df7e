//! The training-spec hash of a run: what decides how it trains, and nothing else.

use super::{Dataset, Keep, LayerKind, LoadedExperiment, Net, Preprocessing, Protocol, Run};
use serde::Serialize;
use sparsevd::AlphaSharing;

impl LoadedExperiment {
    /// sha256 of what decides how `run` trains (the `TrainingSpec`): unlike the file's hash it
    /// stays the same when names, comments, paper rows, tolerances or other variants change,
    /// so that such edits leave finished runs current. A seed sweep's run hashes as the file
    /// with that one `seed` would: adding seeds leaves the runs of the old seed current.
    pub fn run_sha256(&self, run: Run) -> String {
        let spec = &self.spec;
        let variant = &spec.variants[run.variant];
        let start_from = spec.source_run(run).map(|source| self.run_sha256(source));
        let protocol = spec.run_protocol(run);
        let training = TrainingSpec {
            dataset: &spec.dataset,
            preprocessing: spec.preprocessing,
            net: &spec.net,
            shortened: spec.shortened.as_deref(),
            protocol: &protocol,
            layer: variant.layer,
            width: variant.width,
            keep: variant.keep.as_ref(),
            alpha: variant.alpha,
            start_from,
        };
        let canonical = toml::Value::try_from(&training)
            .and_then(|value| toml::to_string(&value))
            .expect("a parsed experiment serializes");
        crate::provenance::sha256_hex(canonical.as_bytes())
    }
}

/// Everything of an experiment file that decides how one variant trains: the data set, the net,
/// how the file is shortened, the variant's protocol (its own changes merged), its layers, and
/// the hash of the variant it starts from. Keys at their default are left out, so that a key
/// added later with a default keeps the hashes of earlier runs.
#[derive(Serialize)]
struct TrainingSpec<'a> {
    dataset: &'a Dataset,
    #[serde(skip_serializing_if = "Option::is_none")]
    preprocessing: Option<Preprocessing>,
    net: &'a Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    shortened: Option<&'a str>,
    protocol: &'a Protocol,
    layer: LayerKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep: Option<&'a Keep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha: Option<AlphaSharing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_from: Option<String>,
}
