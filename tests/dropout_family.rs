//! Integration test: every link of the dropout family (binary dropout with one keep-probability
//! per layer input, Gaussian dropout, Kingma's variational dropout per layer and per unit, Sparse
//! VD (θ, log α) started where the additive posterior starts) trains briefly on real MNIST (a
//! subset), learns, keeps the constraints of its posterior in the trained weights, and evaluates
//! the same from its saved model.

mod common;

use runner::output;
use runner::spec::LoadedExperiment;

const EXPERIMENT: &str = r#"name = "family_short"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = 4
batch_size = 100
seed = 2
threshold = 3.0
train_clip = true
optimizer = { kind = "adam", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 3 }
kl_warmup = { zero_epochs = 0, ramp_epochs = 2 }
init = { theta_std = 0.01, log_sigma2 = -10.0, log_alpha = -4.0 }
train_subset = 10000
test_subset = 2000

[[variant]]
name = "binary_dropout"
layer = "binary_dropout"
keep = [0.8, 0.5, 0.5]
paper = { net = "lenet300", method = "binary_dropout" }

[[variant]]
name = "gaussian_dropout"
layer = "gaussian_dropout"
keep = 0.5
paper = { net = "lenet300", method = "gaussian_dropout" }

[[variant]]
name = "vd_per_layer"
layer = "variational_dropout"
alpha = "per_layer"
paper = { net = "lenet300", method = "variational_dropout" }

[[variant]]
name = "vd_per_unit"
layer = "variational_dropout"
alpha = "per_unit"
paper = { net = "lenet300", method = "variational_dropout" }

[[variant]]
name = "sparse_vd_log_alpha"
layer = "sparse_vd_log_alpha"
paper = { net = "lenet300", method = "sparse_vd_log_alpha" }
protocol = { init = { log_alpha = "from_log_sigma2" } }
"#;

#[test]
fn every_dropout_family_layer_learns_on_real_mnist() {
    let (work, path) = common::scratch("family_short", "learn", EXPERIMENT);
    let exp = LoadedExperiment::load(&path).unwrap();
    let options = common::options(&work);
    let summaries = runner::run_experiment(&exp, &options).unwrap();
    assert_eq!(summaries.len(), exp.spec.variants.len());
    for s in &summaries {
        println!(
            "{}: test error {:.2}%, compression {:.1}×",
            s.variant, s.test_error_pct, s.compression
        );
        // "Learns" is judged against chance (90 % error), with room for the spread between
        // noise draws: over seeds 1–5 these 4-epoch runs gave 9.05–9.80 % (binary dropout) and
        // 9.45–10.60 % (Gaussian dropout, with either normal sampler: Ziggurat or Box–Muller).
        assert!(
            s.test_error_pct < 12.0,
            "{}: test error {:.2}% after 4 epochs (chance is 90%)",
            s.variant,
            s.test_error_pct
        );
        let variant = exp.spec.variant_index(&s.variant).unwrap();
        let seed = exp.spec.protocol_of(variant).seed;
        let run = runner::spec::Run { variant, seed };
        let saved = runner::evaluate_saved(&exp, run, &options, &[3.0]).unwrap();
        assert_eq!(
            saved[0].1.error_pct, s.test_error_pct,
            "{}: the saved model evaluates differently",
            s.variant
        );
    }

    let dir = |variant: &str| work.join("results/family_short").join(variant);
    // Kingma's variational dropout keeps α ≤ 1 (log α ≤ 0), so it removes nothing; one α per
    // layer or per output unit (a dense layer's column), and training moved them off the
    // initial −4.
    for (variant, per_unit) in [("vd_per_layer", false), ("vd_per_unit", true)] {
        let summary = output::read_summary(&dir(variant)).unwrap();
        assert_eq!(summary.compression, 1.0, "{variant}");
        for layer in output::read_model(&dir(variant)).unwrap() {
            let log_alpha = layer.log_alpha.expect("variational layers save log α");
            assert!(log_alpha.iter().all(|&a| a <= 0.0), "{variant}: α > 1");
            let units = layer.shape[1];
            let distinct = |values: &[f32]| {
                let mut v = values.to_vec();
                v.sort_by(f32::total_cmp);
                v.dedup();
                v.len()
            };
            let first_row = &log_alpha[..units];
            assert_eq!(
                distinct(&log_alpha),
                distinct(first_row),
                "{variant}/{}: α differs within a column",
                layer.name
            );
            let want = if per_unit { units.min(2) } else { 1 };
            assert!(
                distinct(first_row) >= want && (per_unit || distinct(first_row) == 1),
                "{variant}/{}: {} distinct α over {units} units",
                layer.name,
                distinct(first_row)
            );
            assert!(
                log_alpha.iter().any(|&a| (a + 4.0).abs() > 1e-3),
                "{variant}/{}: log α never left its initial value",
                layer.name
            );
        }
    }
    // Plain layers with input noise save no noise parameter.
    for variant in ["binary_dropout", "gaussian_dropout"] {
        for layer in output::read_model(&dir(variant)).unwrap() {
            assert!(layer.log_alpha.is_none() && layer.log_sigma2.is_none());
        }
    }
    std::fs::remove_dir_all(&work).unwrap();
}
