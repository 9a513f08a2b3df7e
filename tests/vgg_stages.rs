//! Integration test: the two VGG-like stages on real CIFAR-10 (a subset, one epoch each): the
//! binary-dropout net trains first, Sparse VD starts from its final weights, and a finished
//! stage is reused rather than retrained.

mod common;

use runner::output;
use runner::spec::LoadedExperiment;

const EXPERIMENT: &str = r#"name = "vgg_stages"
dataset = "cifar10"
net = "vgglike"
preprocessing = { kind = "per_channel" }

[protocol]
epochs = 1
batch_size = 50
seed = 2
threshold = 3.0
train_clip = false
optimizer = { kind = "adam", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 1 }
kl_warmup = { zero_epochs = 0, ramp_epochs = 1 }
init = { theta_std = 0.01, log_sigma2 = -15.0 }
l2 = 1e-5
train_subset = 300
test_subset = 200

[[variant]]
name = "sparse_vd"
layer = "sparse_vd"
width = 0.25
start_from = "bd"
protocol = { l2 = 0.0, optimizer = { lr = 1e-5 } }
paper = { net = "vgglike", method = "sparse_vd", k = 0.25 }

[[variant]]
name = "bd"
layer = "binary_dropout"
width = 0.25
paper = { net = "vgglike", method = "dense", k = 0.25 }
"#;

#[test]
fn sparse_vd_stage_starts_from_the_pretrained_stage() {
    let (work, path) = common::scratch("vgg_stages", "run", EXPERIMENT);
    let exp = LoadedExperiment::load(&path).unwrap();
    let options = common::options(&work);
    let summaries = runner::run_experiment(&exp, &options).unwrap();
    assert_eq!(summaries.len(), 2);
    assert!(
        summaries
            .iter()
            .all(|s| s.shortened && s.dataset == "cifar10")
    );

    let results = work.join("results/vgg_stages");
    let bd = output::read_model(&results.join("bd")).unwrap();
    let svd = output::read_model(&results.join("sparse_vd")).unwrap();
    assert_eq!(bd.len(), 15);
    assert!(bd.iter().all(|l| l.log_sigma2.is_none()));
    // One epoch at lr 1e-5 (6 Adam steps of at most ~1e-5 each) keeps θ next to the
    // pretrained values; a fresh initialisation would be ~0.1 away.
    for (a, b) in bd.iter().zip(&svd) {
        let moved = a
            .theta
            .iter()
            .zip(&b.theta)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            moved < 1e-3,
            "{}: θ moved {moved} from the pretrained start",
            a.name
        );
        let log_sigma2 = b.log_sigma2.as_ref().expect("Sparse VD layer");
        assert!(log_sigma2.iter().all(|&s| (-15.1..-14.9).contains(&s)));
    }
    assert_eq!(
        output::read_model_and_norms(&results.join("bd"))
            .unwrap()
            .1
            .len(),
        14,
        "batch norms are saved"
    );

    // Running the experiment again retrains nothing.
    let before = std::fs::metadata(results.join("bd").join(output::SUMMARY_CSV))
        .unwrap()
        .modified()
        .unwrap();
    runner::run_experiment(&exp, &options).unwrap();
    let after = std::fs::metadata(results.join("bd").join(output::SUMMARY_CSV))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a finished stage is reused");
    std::fs::remove_dir_all(&work).unwrap();
}
