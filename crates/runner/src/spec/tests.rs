//! Tests of the experiment schema: parsing, validation messages, hashes, runs.

use super::*;

const GOOD: &str = r#"name = "t"
dataset = "mnist"
net = "lenet300"

[protocol]
epochs = 3
batch_size = 100
seed = 1
threshold = 3.0
train_clip = true
optimizer = { kind = "adam", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }
lr_schedule = { kind = "constant_then_linear", decay_start_epoch = 1 }
kl_warmup = { zero_epochs = 1, ramp_epochs = 1 }
init = { theta_std = 0.01, log_sigma2 = -10.0 }

[[variant]]
name = "a"
layer = "sparse_vd"
paper = { net = "lenet300", method = "sparse_vd" }
"#;

/// Load `GOOD` with `from` replaced by `to`; the error message, or "" if it loads.
fn error_after(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("spec-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, GOOD.replacen(from, to, 1)).unwrap();
    let result = LoadedExperiment::load(&path);
    std::fs::remove_file(&path).unwrap();
    result.err().map(|e| e.to_string()).unwrap_or_default()
}

fn assert_error(from: &str, to: &str, expected: &[&str]) {
    let message = error_after(from, to);
    assert!(message.contains("spec-test-"), "names the file: {message}");
    for part in expected {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
}

#[test]
fn the_base_file_loads() {
    assert_eq!(error_after("seed = 1", "seed = 1"), "");
}

#[test]
fn a_shortened_file_says_how() {
    let net = "net = \"lenet300\"";
    assert_eq!(
        error_after(net, &format!("{net}\nshortened = \"3 of 200 epochs\"")),
        ""
    );
    assert_error(
        net,
        &format!("{net}\nshortened = \" \""),
        &["shortened", "description"],
    );
    assert_error(
        net,
        &format!("{net}\nshortened = true"),
        &["shortened", "string"],
    );
}

#[test]
fn unknown_keys_are_errors_with_their_position() {
    assert_error(
        "seed = 1",
        "seed = 1\nsed = 2",
        &["line 9", "unknown field `sed`"],
    );
    assert_error(
        "lr = 1e-3,",
        "lr = 1e-3, momentum = 1,",
        &["line 11", "unknown field `momentum`"],
    );
}

#[test]
fn wrong_types_are_errors() {
    assert_error(
        "epochs = 3",
        "epochs = \"three\"",
        &["line 6", "invalid type", "expected usize"],
    );
    assert_error(
        "train_clip = true",
        "train_clip = 1",
        &["line 10", "invalid type"],
    );
}

/// `GOOD` with each `(from, to)` replaced, loaded; the hash of its variant "a".
fn variant_hash_after(edits: &[(&str, &str)]) -> String {
    let text = edits
        .iter()
        .fold(GOOD.to_string(), |t, (from, to)| t.replacen(from, to, 1));
    let path = std::env::temp_dir().join(format!("hash-test-{}.toml", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let exp = LoadedExperiment::load(&path);
    std::fs::remove_file(&path).unwrap();
    let exp = exp.unwrap();
    let variant = exp.spec.variant_index("a").unwrap();
    let first = exp.spec.runs().into_iter().find(|r| r.variant == variant);
    exp.run_sha256(first.unwrap())
}

#[test]
fn variant_hash_follows_what_trains_and_nothing_else() {
    let base = variant_hash_after(&[]);
    let same = [
        ("name = \"t\"", "# a comment\nname = \"t\""),
        (
            "method = \"sparse_vd\" }",
            "method = \"sparse_vd\" }\ntolerance = { error_pp = 0.2, compression_fraction = 0.8 }",
        ),
        (
            "train_clip = true",
            "train_clip = true\nlrt_variance = \"clipped_alpha\"",
        ),
        // The sweep's run of seed 1 is the single-seed file's run.
        ("seed = 1", "seeds = [1, 2]"),
    ];
    for edit in same {
        assert_eq!(variant_hash_after(&[edit]), base, "{edit:?}");
    }
    let changed = [
        ("lr = 1e-3", "lr = 2e-3"),
        (
            "train_clip = true",
            "train_clip = true\nlrt_variance = \"sigma2\"",
        ),
        ("layer = \"sparse_vd\"", "layer = \"plain\""),
        (
            "method = \"sparse_vd\" }",
            "method = \"sparse_vd\" }\nprotocol = { seed = 2 }",
        ),
    ];
    for edit in changed {
        assert_ne!(variant_hash_after(&[edit]), base, "{edit:?}");
    }
}

#[test]
fn seeds_give_one_run_per_seed_each_in_its_own_folder() {
    assert_error(
        "seed = 1",
        "seed = 1\nseeds = [1, 2]",
        &["protocol.seeds", "not both"],
    );
    assert_error(
        "seed = 1",
        "seeds = []",
        &["protocol.seeds", "at least one seed"],
    );
    assert_error(
        "seed = 1",
        "seeds = [3, 3]",
        &["protocol.seeds", "each once"],
    );
    let sweep = GOOD.replacen("seed = 1", "seeds = [3, 1]", 1);
    let exp = Experiment::parse(&sweep).unwrap();
    exp.validate().unwrap();
    let runs = exp.runs();
    assert_eq!(
        runs,
        [
            Run {
                variant: 0,
                seed: 3
            },
            Run {
                variant: 0,
                seed: 1
            }
        ]
    );
    assert_eq!(exp.run_folder(runs[0]), PathBuf::from("a/seed_3"));
    assert_eq!(exp.run_protocol(runs[0]).seed, 3);
    assert_eq!(exp.run_protocol(runs[0]).seeds, None);
    // A variant's own seed replaces the file's seeds: one run, today's folder.
    let own = sweep.replacen(
        "method = \"sparse_vd\" }",
        "method = \"sparse_vd\" }\nprotocol = { seed = 7 }",
        1,
    );
    let exp = Experiment::parse(&own).unwrap();
    assert_eq!(
        exp.runs(),
        [Run {
            variant: 0,
            seed: 7
        }]
    );
    assert_eq!(exp.run_folder(exp.runs()[0]), PathBuf::from("a"));
    // A stage starts from the run of its own seed, so both need the same seeds.
    let staged = format!(
        "{sweep}\n[[variant]]\nname = \"b\"\nlayer = \"sparse_vd\"\nstart_from = \"a\"\nprotocol = {{ seed = 3 }}\n"
    );
    let exp = Experiment::parse(&staged).unwrap();
    let (field, message) = exp.validate().unwrap_err();
    assert_eq!(field, "variant[1].start_from");
    assert!(message.contains("same `seed` or `seeds`"), "{message}");
}

#[test]
fn a_variant_without_a_paper_row_is_ones_own_and_takes_no_tolerance() {
    let own = "paper = { net = \"lenet300\", method = \"sparse_vd\" }";
    assert_eq!(error_after(own, ""), "");
    assert_error(
        own,
        "tolerance = { error_pp = 0.2, compression_fraction = 0.8 }",
        &["variant[0].tolerance", "paper = { net, method }"],
    );
}

#[test]
fn lrt_variance_names_its_forms() {
    assert_error(
        "train_clip = true",
        "train_clip = true\nlrt_variance = \"sigma\"",
        &[
            "line 11",
            "unknown variant `sigma`",
            "clipped_alpha",
            "sigma2",
        ],
    );
    let parsed = |line: &str| {
        let text = GOOD.replace("train_clip = true", line);
        Experiment::parse(&text).map(|e| e.protocol.lrt_variance)
    };
    assert_eq!(
        parsed("train_clip = true").ok(),
        Some(LrtVariance::ClippedAlpha),
        "the authors' form is the default"
    );
    assert_eq!(
        parsed("train_clip = true\nlrt_variance = \"sigma2\"").ok(),
        Some(LrtVariance::Sigma2)
    );
}

#[test]
fn out_of_range_values_name_key_line_and_expectation() {
    assert_error(
        "lr = 1e-3",
        "lr = -1e-3",
        &["line 11, column 35", "protocol.optimizer.lr", "positive"],
    );
    assert_error(
        "threshold = 3.0",
        "threshold = 9.0",
        &["line 9", "protocol.threshold", "clip range"],
    );
    assert_error(
        "epochs = 3",
        "epochs = 0",
        &["line 6", "protocol.epochs", "at least 1"],
    );
    assert_error(
        "batch_size = 100",
        "batch_size = 0",
        &["protocol.batch_size"],
    );
    assert_error(
        "beta2 = 0.999",
        "beta2 = 1.5",
        &["protocol.optimizer.beta2", "[0, 1)"],
    );
    assert_error(
        "decay_start_epoch = 1",
        "decay_start_epoch = 9",
        &["decay_start_epoch", "at most epochs"],
    );
}

#[test]
fn unknown_net_dataset_and_layer_are_errors() {
    assert_error(
        "net = \"lenet300\"",
        "net = \"resnet\"",
        &["line 3", "unknown variant `resnet`"],
    );
    assert_error(
        "dataset = \"mnist\"",
        "dataset = \"imagenet\"",
        &["line 2", "unknown variant `imagenet`"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"sparse\"",
        &["unknown variant `sparse`"],
    );
}

#[test]
fn dropout_keep_is_required_where_it_applies_only() {
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"binary_dropout\"",
        &["variant[0]", "expected keep"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"binary_dropout\"\nkeep = 1.5",
        &["variant[0].keep", "probability"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"sparse_vd\"\nkeep = 0.5",
        &["variant[0].keep", "expected no keep"],
    );
    assert_eq!(
        error_after(
            "layer = \"sparse_vd\"",
            "layer = \"binary_dropout\"\nkeep = 0.5"
        ),
        ""
    );
}

#[test]
fn keep_is_one_probability_or_one_per_layer_input() {
    let binary = |keep: &str| format!("layer = \"binary_dropout\"\nkeep = {keep}");
    assert_eq!(
        error_after("layer = \"sparse_vd\"", &binary("[0.8, 0.5, 0.5]")),
        ""
    );
    assert_error(
        "layer = \"sparse_vd\"",
        &binary("[0.8, 0.5]"),
        &[
            "variant[0].keep",
            "one probability per layer input (3), got 2",
        ],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        &binary("[0.8, 0.0, 0.5]"),
        &["variant[0].keep", "probability in (0, 1], got 0"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        &binary("\"half\""),
        &["keep", "a list of one per layer input"],
    );
    assert_eq!(
        Keep::PerLayer(vec![0.8, 0.5, 0.5]).per_layer(3),
        vec![0.8, 0.5, 0.5]
    );
    assert_eq!(Keep::Every(0.5).per_layer(3), vec![0.5; 3]);
}

#[test]
fn log_alpha_can_start_where_the_additive_posterior_starts() {
    assert_eq!(
        error_after(
            "log_sigma2 = -10.0 }\n",
            "log_sigma2 = -10.0 }\n\n[[variant]]\nname = \"la\"\nlayer = \"sparse_vd_log_alpha\"\npaper = { net = \"lenet300\", method = \"sparse_vd_log_alpha\" }\nprotocol = { init = { log_alpha = \"from_log_sigma2\" } }\n"
        ),
        ""
    );
    assert_error(
        "log_sigma2 = -10.0 }",
        "log_sigma2 = -10.0, log_alpha = \"from_log_sigma2\" }\n\n[[variant]]\nname = \"vd\"\nlayer = \"variational_dropout\"\nalpha = \"per_layer\"\npaper = { net = \"lenet300\", method = \"variational_dropout\" }",
        &["protocol.init.log_alpha", "expected a number"],
    );
    assert_error(
        "log_sigma2 = -10.0 }",
        "log_sigma2 = -10.0, log_alpha = \"from_theta\" }",
        &["log_alpha", "a number or \"from_log_sigma2\""],
    );
    let init = |log_alpha| Init {
        theta_std: 0.01,
        log_sigma2: -10.0,
        log_alpha,
    };
    assert_eq!(init(None).log_alpha_init(), None);
    assert_eq!(
        init(Some(InitialLogAlpha::Value(-4.0))).log_alpha_init(),
        Some(LogAlphaInit::Constant { log_alpha: -4.0 })
    );
    assert_eq!(
        init(Some(InitialLogAlpha::Rule(LogAlphaRule::FromLogSigma2))).log_alpha_init(),
        Some(LogAlphaInit::FromLogSigma2 { log_sigma2: -10.0 })
    );
}

#[test]
fn dropout_family_layers_need_their_own_fields_only() {
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"gaussian_dropout\"",
        &["variant[0]", "expected keep"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"variational_dropout\"",
        &["variant[0]", "expected alpha", "per_unit"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"sparse_vd\"\nalpha = \"per_unit\"",
        &["variant[0].alpha", "expected no alpha"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"variational_dropout\"\nalpha = \"per_weight\"",
        &["unknown variant `per_weight`", "per_unit"],
    );
    assert_error(
        "layer = \"sparse_vd\"",
        "layer = \"sparse_vd_log_alpha\"",
        &["protocol.init", "expected log_alpha"],
    );
    assert_eq!(
        error_after(
            "log_sigma2 = -10.0 }",
            "log_sigma2 = -10.0, log_alpha = -4.0 }\n\n[[variant]]\nname = \"vd\"\nlayer = \"variational_dropout\"\nalpha = \"per_layer\"\npaper = { net = \"lenet300\", method = \"variational_dropout\" }\n\n[[variant]]\nname = \"gd\"\nlayer = \"gaussian_dropout\"\nkeep = 0.5\npaper = { net = \"lenet300\", method = \"gaussian_dropout\" }"
        ),
        "",
    );
}

#[test]
fn missing_fields_and_duplicate_variants_are_errors() {
    assert_error("seed = 1\n", "", &["missing field `seed`"]);
    let twice = format!(
        "{GOOD}\n[[variant]]\nname = \"a\"\nlayer = \"plain\"\npaper = {{ net = \"lenet300\", method = \"original\" }}\n"
    );
    let path = std::env::temp_dir().join(format!("spec-test-dup-{}.toml", std::process::id()));
    std::fs::write(&path, twice).unwrap();
    let message = LoadedExperiment::load(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        message.contains("variant[1].name")
            && message.contains("duplicate")
            && message.contains("line 22"),
        "{message}"
    );
}

/// A two-stage VGG-like file: `bd` then `svd` from it, with a protocol change.
fn stages(extra: &str) -> String {
    GOOD.replace("dataset = \"mnist\"", "dataset = \"cifar10\"")
        .replace("net = \"lenet300\"", "net = \"vgglike\"")
        .replace(
            "[[variant]]\nname = \"a\"\nlayer = \"sparse_vd\"",
            "[[variant]]\nname = \"svd\"\nlayer = \"sparse_vd\"\nwidth = 0.25\nstart_from = \"bd\"\nprotocol = { optimizer = { lr = 1e-5 } }",
        )
        + "\n[[variant]]\nname = \"bd\"\nlayer = \"binary_dropout\"\nwidth = 0.25\npaper = { net = \"vgglike\", method = \"dense\", k = 0.25 }\n"
        + extra
}

fn load_text(text: &str) -> Result<LoadedExperiment, String> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("spec-stage-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let result = LoadedExperiment::load(&path);
    std::fs::remove_file(&path).unwrap();
    result.map_err(|e| e.to_string())
}

#[test]
fn stages_run_after_their_source_with_their_own_protocol() {
    let exp = load_text(&stages("")).unwrap();
    let spec = &exp.spec;
    assert_eq!(spec.stage_order(), vec![1, 0]);
    let Optimizer::Adam { lr, beta1, .. } = spec.protocol_of(0).optimizer;
    assert_eq!((lr, beta1), (1e-5, 0.9));
    let Optimizer::Adam { lr, .. } = spec.protocol_of(1).optimizer;
    assert_eq!(lr, 1e-3);
}

#[test]
fn bad_stages_are_errors() {
    let text = stages("");
    let cases = [
        (
            text.replace("lr = 1e-5", "lr = -1.0"),
            vec!["variant[0].protocol.optimizer.lr", "positive"],
        ),
        (
            text.replace("lr = 1e-5", "rate = 1e-5"),
            vec!["line 21", "variant[0].protocol", "unknown field `rate`"],
        ),
        (
            text.replace("start_from = \"bd\"", "start_from = \"nope\""),
            vec!["variant[0].start_from", "another variant", "line 20"],
        ),
        (
            text.replacen("width = 0.25\n", "", 1),
            vec!["variant[0]", "expected a width"],
        ),
        (
            text.replace("width = 0.25\nstart_from", "width = 0.5\nstart_from"),
            vec!["variant[0].start_from", "another width"],
        ),
        (
            stages("start_from = \"svd\"\n"),
            vec!["start_from", "starts, directly or not"],
        ),
        (
            text.replace("net = \"vgglike\"", "net = \"lenet5\""),
            vec!["variant[0].width", "has its widths in the net"],
        ),
    ];
    for (text, expected) in cases {
        let message = load_text(&text).unwrap_err();
        for part in expected {
            assert!(message.contains(part), "expected {part:?} in: {message}");
        }
    }
}
