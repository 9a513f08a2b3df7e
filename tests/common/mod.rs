//! Set-up shared by the integration tests: a short LeNet-300-100 Sparse VD experiment on a
//! subset of real MNIST, written to a scratch folder with the paper's numbers beside it.

use std::path::PathBuf;

/// The paper's protocol shortened to what a test can afford.
#[allow(dead_code)] // not every test binary trains LeNet-300-100
pub struct ShortRun {
    pub name: &'static str,
    pub epochs: usize,
    pub seed: u64,
    pub lr: f64,
    pub decay_start_epoch: usize,
    pub kl_zero_epochs: usize,
    pub kl_ramp_epochs: usize,
    pub train_subset: usize,
    pub test_subset: Option<usize>,
}

#[allow(dead_code)]
impl ShortRun {
    pub fn toml(&self) -> String {
        let test_subset = self
            .test_subset
            .map_or(String::new(), |n| format!("test_subset = {n}\n"));
        format!(
            r#"name = "{name}"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = {epochs}
batch_size = 100
seed = {seed}
threshold = 3.0
train_clip = true
optimizer = {{ kind = "adam", lr = {lr:e}, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }}
lr_schedule = {{ kind = "constant_then_linear", decay_start_epoch = {decay} }}
kl_warmup = {{ zero_epochs = {zero}, ramp_epochs = {ramp} }}
init = {{ theta_std = 0.01, log_sigma2 = -10.0 }}
train_subset = {train}
{test_subset}
[[variant]]
name = "sparse_vd"
layer = "sparse_vd"
paper = {{ net = "lenet300", method = "sparse_vd" }}
"#,
            name = self.name,
            epochs = self.epochs,
            seed = self.seed,
            lr = self.lr,
            decay = self.decay_start_epoch,
            zero = self.kl_zero_epochs,
            ramp = self.kl_ramp_epochs,
            train = self.train_subset,
        )
    }

    /// A fresh scratch folder holding this experiment (see [`scratch`]).
    pub fn scratch(&self, tag: &str) -> (PathBuf, PathBuf) {
        scratch(self.name, tag, &self.toml())
    }
}

/// A fresh scratch folder `<tmp>/harness-<name>-<tag>-<pid>` holding `experiments/<name>.toml`
/// (with `toml` as its text) and the paper's reference file; returns (folder, experiment file).
#[allow(dead_code)] // not every test binary writes its own experiment
pub fn scratch(name: &str, tag: &str, toml: &str) -> (PathBuf, PathBuf) {
    let work = std::env::temp_dir().join(format!("harness-{name}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let experiments = work.join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("experiments/paper_reference.toml"),
        experiments.join("paper_reference.toml"),
    )
    .unwrap();
    let path = experiments.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    (work, path)
}

/// Run options for the flex CPU backend, results under `work/results`.
#[allow(dead_code)] // not every test binary runs in-process
pub fn options(work: &std::path::Path) -> runner::RunOptions {
    runner::RunOptions {
        device: burn::tensor::Device::flex().autodiff(),
        backend: "flex".into(),
        device_description: "CPU (test)".into(),
        data_dir: datasets::data_dir(None),
        results_dir: work.join("results"),
        only_variants: vec![],
        only_seeds: vec![],
        force: false,
        epochs: None,
    }
}
