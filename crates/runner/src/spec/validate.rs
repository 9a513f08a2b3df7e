//! The checks of an experiment file that serde cannot express: ranges, fields that depend on
//! the layer or the net, stages.

use super::{
    Dataset, Experiment, InitialLogAlpha, Keep, LayerKind, LrSchedule, Net, Optimizer,
    Preprocessing, Protocol,
};
use sparsevd::LENET300_WIDTHS;

impl Experiment {
    /// Range checks serde cannot express: (field, what was expected).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, msg: String| Err((field.to_string(), msg));
        validate_protocol(&self.protocol, "protocol")?;
        for (i, v) in self.variants.iter().enumerate() {
            if v.protocol_changes.is_some() {
                validate_protocol(self.protocol_of(i), &format!("variant[{i}].protocol"))?;
            }
        }
        if self.preprocessing.is_some() && !self.dataset.is_cifar_like() {
            return fail(
                "preprocessing",
                "expected no preprocessing table: it applies to cifar10 and cifar_binary only"
                    .into(),
            );
        }
        if let Net::Mlp(widths) = &self.net
            && (widths.len() < 2 || widths.contains(&0))
        {
            return fail(
                "net.mlp",
                format!(
                    "expected the widths of the input, the hidden layers and the outputs, each at least 1, e.g. [784, 300, 10]; got {widths:?}"
                ),
            );
        }
        if let Some(Preprocessing::Zca { regulariser }) = self.preprocessing
            && !is_positive(regulariser)
        {
            return fail(
                "preprocessing.regulariser",
                format!("expected a positive number, got {regulariser}"),
            );
        }
        if self
            .shortened
            .as_ref()
            .is_some_and(|how| how.trim().is_empty())
        {
            return fail(
                "shortened",
                "expected a description of how the protocol is shortened".into(),
            );
        }
        if self.variants.is_empty() {
            return fail("variant", "expected at least one [[variant]]".into());
        }
        for i in 0..self.variants.len() {
            self.validate_variant(i)?;
            self.validate_stage(i)?;
        }
        // Built-in data have known shapes; a folder's are checked when it is read.
        let fits = match (&self.dataset, &self.net) {
            (Dataset::Cifar10, net) => *net == Net::Vgglike || net.input().values() == 3 * 32 * 32,
            (Dataset::Mnist, net) => *net != Net::Vgglike && net.input().values() == 28 * 28,
            (Dataset::Idx(_), net) => *net != Net::Vgglike,
            (Dataset::CifarBinary(_), _) => true,
        };
        if !fits {
            return fail(
                "net",
                format!(
                    "{} is not a net for {}",
                    self.net.describe(),
                    self.dataset.describe()
                ),
            );
        }
        Ok(())
    }

    /// The checks of variant `i` on its own: name, paper row, width, layer fields, init.
    fn validate_variant(&self, i: usize) -> Result<(), (String, String)> {
        let fail = |field: &str, msg: String| Err((field.to_string(), msg));
        let v = &self.variants[i];
        if v.name.is_empty() || v.name.contains(['/', '\\']) || v.name.starts_with('.') {
            return fail(
                &format!("variant[{i}].name"),
                format!("expected a plain folder name, got {:?}", v.name),
            );
        }
        if self.variants[..i].iter().any(|w| w.name == v.name) {
            return fail(
                &format!("variant[{i}].name"),
                format!("duplicate variant name {:?}", v.name),
            );
        }
        if v.tolerance.is_some() && v.paper.is_none() {
            return fail(
                &format!("variant[{i}].tolerance"),
                "a tolerance is held against the paper's row: expected paper = { net, method }"
                    .into(),
            );
        }
        match (&self.net, v.width) {
            (Net::Vgglike, None) => {
                return fail(
                    &format!("variant[{i}]"),
                    "expected a width (VGG-like's multiplier k), e.g. width = 0.25".into(),
                );
            }
            (Net::Vgglike, Some(k)) if !(k > 0.0 && k <= 4.0) => {
                return fail(
                    &format!("variant[{i}].width"),
                    format!("expected a multiplier in (0, 4], got {k}"),
                );
            }
            (Net::Lenet300 | Net::Lenet5 | Net::Mlp(_), Some(_)) => {
                return fail(
                    &format!("variant[{i}].width"),
                    format!(
                        "expected no width: {} has its widths in the net",
                        self.net.describe()
                    ),
                );
            }
            _ => {}
        }
        let layer = v.layer.key();
        let defined_here = match v.layer {
            LayerKind::BinaryDropout => self.net != Net::Lenet5,
            LayerKind::GaussianDropout => self.net.is_mlp(),
            _ => true,
        };
        if !defined_here {
            return fail(
                &format!("variant[{i}].layer"),
                format!(
                    "{layer} is defined for lenet300 and mlp{}",
                    if v.layer == LayerKind::BinaryDropout {
                        " and vgglike"
                    } else {
                        ""
                    }
                ),
            );
        }
        // VGG-like's binary dropout has the paper's fixed rates; only LeNet-300-100's
        // dropout layers take a keep-probability.
        let takes_keep = v.layer.takes_keep() && self.net.is_mlp();
        match (takes_keep, &v.keep) {
            (true, None) => {
                return fail(
                    &format!("variant[{i}]"),
                    "expected keep, the probability p of keeping a value, e.g. keep = 0.5".into(),
                );
            }
            (true, Some(keep)) => {
                let layers = LENET300_WIDTHS.len() - 1;
                if let Keep::PerLayer(ps) = keep
                    && ps.len() != layers
                {
                    return fail(
                        &format!("variant[{i}].keep"),
                        format!(
                            "expected one probability per layer input ({layers}), got {}",
                            ps.len()
                        ),
                    );
                }
                if let Some(p) = keep
                    .per_layer(layers)
                    .into_iter()
                    .find(|p| !(*p > 0.0 && *p <= 1.0))
                {
                    return fail(
                        &format!("variant[{i}].keep"),
                        format!("expected a probability in (0, 1], got {p}"),
                    );
                }
            }
            (false, Some(_)) => {
                return fail(
                    &format!("variant[{i}].keep"),
                    "expected no keep: it applies to lenet300's binary_dropout and \
                     gaussian_dropout layers only"
                        .into(),
                );
            }
            (false, None) => {}
        }
        match (v.layer, v.alpha) {
            (LayerKind::VariationalDropout, None) => {
                return fail(
                    &format!("variant[{i}]"),
                    "expected alpha, which weights share one α: \"per_unit\" or \"per_layer\""
                        .into(),
                );
            }
            (LayerKind::VariationalDropout, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return fail(
                    &format!("variant[{i}].alpha"),
                    format!(
                        "expected no alpha: it applies to variational_dropout layers, not {layer}"
                    ),
                );
            }
        }
        let init_table = || {
            let changed = v
                .protocol_changes
                .as_ref()
                .is_some_and(|t| t.contains_key("init"));
            if changed {
                format!("variant[{i}].protocol.init")
            } else {
                "protocol.init".into()
            }
        };
        match (v.layer, self.protocol_of(i).init.log_alpha) {
            (kind, None) if kind.learns_log_alpha() => {
                return fail(
                    &init_table(),
                    format!(
                        "expected log_alpha, the initial log α of {layer} layers, e.g. log_alpha = -4.0"
                    ),
                );
            }
            (LayerKind::VariationalDropout, Some(InitialLogAlpha::Rule(_))) => {
                return fail(
                    &format!("{}.log_alpha", init_table()),
                    "expected a number: from_log_sigma2 gives each weight its own log α, \
                     and variational_dropout shares one per unit or per layer"
                        .into(),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// That variant `i`'s `start_from` names another variant whose runs it can start from:
    /// no cycle, the same seeds, the same width.
    fn validate_stage(&self, i: usize) -> Result<(), (String, String)> {
        let fail = |field: &str, msg: String| Err((field.to_string(), msg));
        let v = &self.variants[i];
        if let Some(source) = &v.start_from {
            let Some(j) = self.variant_index(source) else {
                return fail(
                    &format!("variant[{i}].start_from"),
                    format!("expected the name of another variant, got {source:?}"),
                );
            };
            if self.starts_from_itself(j, i) {
                return fail(
                    &format!("variant[{i}].start_from"),
                    format!("{source:?} starts, directly or not, from {:?}", v.name),
                );
            }
            if self.protocol_of(j).seeds() != self.protocol_of(i).seeds()
                || self.protocol_of(j).is_seed_sweep() != self.protocol_of(i).is_seed_sweep()
            {
                return fail(
                    &format!("variant[{i}].start_from"),
                    format!(
                        "{source:?} runs under other seeds: each run starts from the run of the same seed, so both need the same `seed` or `seeds`"
                    ),
                );
            }
            if self.variants[j].width != v.width {
                return fail(
                    &format!("variant[{i}].start_from"),
                    format!("{source:?} has another width: the weights would not fit"),
                );
            }
        }
        Ok(())
    }
}

/// Checks of one protocol; `prefix` is where it stands in the file (`protocol` or
/// `variant[i].protocol`).
fn validate_protocol(p: &Protocol, prefix: &str) -> Result<(), (String, String)> {
    let fail = |field: &str, msg: String| Err((field.to_string(), msg));
    if p.epochs == 0 {
        return fail(&format!("{prefix}.epochs"), "expected at least 1".into());
    }
    if p.batch_size == 0 {
        return fail(
            &format!("{prefix}.batch_size"),
            "expected at least 1".into(),
        );
    }
    let clip = sparsevd::LOG_ALPHA_CLIP;
    if !(p.threshold > -clip && p.threshold < clip) {
        return fail(
            &format!("{prefix}.threshold"),
            format!(
                "expected a log α inside the clip range (−{clip}, {clip}), got {}",
                p.threshold
            ),
        );
    }
    let Optimizer::Adam {
        lr,
        beta1,
        beta2,
        epsilon,
    } = p.optimizer;
    if !is_positive(lr) {
        return fail(
            &format!("{prefix}.optimizer.lr"),
            format!("expected a positive number, got {lr}"),
        );
    }
    for (field, b) in [("beta1", beta1), ("beta2", beta2)] {
        if !(0.0..1.0).contains(&b) {
            return fail(
                &format!("{prefix}.optimizer.{field}"),
                format!("expected a value in [0, 1), got {b}"),
            );
        }
    }
    if !is_positive(epsilon) {
        return fail(
            &format!("{prefix}.optimizer.epsilon"),
            format!("expected a positive number, got {epsilon}"),
        );
    }
    let LrSchedule::ConstantThenLinear { decay_start_epoch } = p.lr_schedule;
    if decay_start_epoch > p.epochs {
        return fail(
            &format!("{prefix}.lr_schedule.decay_start_epoch"),
            format!(
                "expected at most epochs = {}, got {decay_start_epoch}",
                p.epochs
            ),
        );
    }
    if !is_positive(p.init.theta_std) {
        return fail(
            &format!("{prefix}.init.theta_std"),
            format!("expected a positive number, got {}", p.init.theta_std),
        );
    }
    for (field, n) in [
        ("train_subset", p.train_subset),
        ("test_subset", p.test_subset),
    ] {
        if n == Some(0) {
            return fail(
                &format!("{prefix}.{field}"),
                "expected at least 1 example".into(),
            );
        }
    }
    if let Some(seeds) = &p.seeds {
        let distinct: std::collections::BTreeSet<_> = seeds.iter().collect();
        if seeds.is_empty() || distinct.len() != seeds.len() {
            return fail(
                &format!("{prefix}.seeds"),
                format!(
                    "expected at least one seed, each once, e.g. seeds = [1, 2, 3]; got {seeds:?}"
                ),
            );
        }
    }
    if !(p.l2.is_finite() && p.l2 >= 0.0) {
        return fail(
            &format!("{prefix}.l2"),
            format!("expected a number ≥ 0, got {}", p.l2),
        );
    }
    Ok(())
}

fn is_positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}
