//! `results/REPORT.md`: every table and figure of the committed results in one document, ours
//! beside the paper's, with each run's protocol and provenance in short. Plain Markdown whose
//! images are relative links, so that a code-hosting site renders it without extra tools.

use anyhow::Result;
use runner::output::{self, write_atomic};
use runner::spec::{LoadedExperiment, Protocol};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

pub const REPORT_MD: &str = "REPORT.md";

/// One experiment file and the figures `harness report` drew for it.
pub struct Section {
    pub exp: LoadedExperiment,
    pub figures: Vec<PathBuf>,
}

/// Write `results_dir/REPORT.md`: Table 1 (`table1.md` and its figures), then each experiment's
/// comparison table, protocol, runs and figures, then `other_figures`.
pub fn write(
    results_dir: &Path,
    table1_figures: &[PathBuf],
    sections: &[Section],
    other_figures: &[PathBuf],
) -> Result<PathBuf> {
    let mut md = String::from("# Sparse VD: our results beside the paper's\n\n");
    md.push_str(
        "Written by `harness report` from the committed results (`results/`) and figures \
         (`figures/`). Error is test error in %; compression is |W| / |W ≠ 0| over weight \
         layers. Runs marked shortened did not follow the full protocol. The method and the \
         protocol are in [docs/method.md](../docs/method.md).\n\n",
    );
    md.push_str("## Contents\n\n- [Table 1](#table-1)\n");
    for section in sections {
        let name = &section.exp.spec.name;
        let _ = writeln!(md, "- [{name}](#{})", anchor(name));
    }
    md.push_str("- [Other figures](#other-figures)\n\n");

    md.push_str("## Table 1\n\n");
    let table1 = std::fs::read_to_string(results_dir.join("table1.md")).unwrap_or_default();
    md.push_str(&without_title(&table1));
    md.push('\n');
    push_figures(&mut md, results_dir, table1_figures);

    for section in sections {
        push_section(&mut md, results_dir, section)?;
    }

    md.push_str("## Other figures\n\n");
    push_figures(&mut md, results_dir, other_figures);
    let path = results_dir.join(REPORT_MD);
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// One experiment: its comparison table, protocol, runs in short and figures.
fn push_section(md: &mut String, results_dir: &Path, section: &Section) -> Result<()> {
    let spec = &section.exp.spec;
    let _ = writeln!(md, "## {}\n", spec.name);
    let _ = writeln!(
        md,
        "Experiment file `{}`; {} on {}.{}\n",
        section
            .exp
            .path
            .strip_prefix(".")
            .unwrap_or(&section.exp.path)
            .display(),
        spec.net.key(),
        spec.dataset.key(),
        spec.shortened
            .as_ref()
            .map_or(String::new(), |how| format!(" **Shortened:** {how}."))
    );
    let dir = results_dir.join(&spec.name);
    match std::fs::read_to_string(dir.join("comparison.md")) {
        Ok(table) => md.push_str(&without_title(&table)),
        Err(_) => md.push_str("No finished runs.\n"),
    }
    md.push('\n');
    let _ = writeln!(md, "Protocol: {}.\n", protocol_in_short(&spec.protocol));
    let mut runs = String::new();
    for run in spec.runs() {
        let variant = &spec.variants[run.variant];
        let run_dir = dir.join(spec.run_folder(run));
        let Ok(p) = output::read_provenance(&run_dir) else {
            continue;
        };
        if p.finished.is_empty() {
            continue;
        }
        let own = variant
            .protocol_changes
            .as_ref()
            .map_or(String::new(), |changes| {
                format!("`{}`", changes.to_string().trim()).replace('\n', "; ")
            });
        let _ = writeln!(
            runs,
            "| {} | {} | {}{} | {} | {} ({} threads) | {} | {} / {} | {:.0} | {} | {} |",
            variant.name,
            variant.layer.key(),
            own,
            p.lrt_variance
                .as_ref()
                .map_or(String::new(), |form| format!(" LRT variance {form}")),
            p.commit,
            p.device,
            p.threads,
            p.seed,
            p.epochs_completed,
            p.epochs_planned,
            p.wall_time_s,
            p.finished,
            match (p.shortened, p.stale_against(&section.exp, run)) {
                (true, _) => format!("shortened: {}", p.shortened_how),
                (false, Some(_)) => "stale: the file changed since".to_string(),
                (false, None) => "full protocol".to_string(),
            },
        );
    }
    if !runs.is_empty() {
        md.push_str(
            "| variant | layers | its own protocol | commit | device | seed | epochs | s | finished | status |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        md.push_str(&runs);
        md.push('\n');
    }
    push_figures(md, results_dir, &section.figures);
    Ok(())
}

/// The protocol keys a reader compares first, in one line.
fn protocol_in_short(p: &Protocol) -> String {
    let runner::spec::Optimizer::Adam { lr, .. } = p.optimizer;
    let mut parts = vec![
        format!("{} epochs", p.epochs),
        format!("batch {}", p.batch_size),
        match &p.seeds {
            Some(seeds) => format!(
                "seeds {}",
                seeds
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("seed {}", p.seed),
        },
        format!("Adam lr {lr}"),
        format!(
            "KL weight 0 for {} epochs, then linear to 1 over {}",
            p.kl_warmup.zero_epochs, p.kl_warmup.ramp_epochs
        ),
        match p.lr_schedule {
            runner::spec::LrSchedule::ConstantThenLinear {
                decay_start_epoch: 0,
            } => "lr linear to 0".to_string(),
            runner::spec::LrSchedule::ConstantThenLinear { decay_start_epoch } => {
                format!("lr constant for {decay_start_epoch} epochs, then linear to 0")
            }
        },
        format!("log α threshold {}", p.threshold),
        format!("train clip {}", if p.train_clip { "on" } else { "off" }),
        format!("Sparse VD LRT variance {}", p.lrt_variance.key()),
    ];
    if let Some(n) = p.train_subset {
        parts.push(format!("first {n} training images"));
    }
    if p.l2 > 0.0 {
        parts.push(format!("L2 {}", p.l2));
    }
    if p.random_labels {
        parts.push("random training labels".into());
    }
    parts.join(", ")
}

/// The PNG figures among `figures`, as images linked relative to `results_dir`.
fn push_figures(md: &mut String, results_dir: &Path, figures: &[PathBuf]) {
    for figure in figures
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "png"))
    {
        let name = figure
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into());
        let link = relative_to(results_dir, figure);
        let _ = writeln!(md, "![{name}]({})\n", link.display());
    }
}

/// `path` as seen from `dir` when both are relative to the same folder (the default `results/`
/// and `figures/` under the repository root); `path` itself otherwise.
fn relative_to(dir: &Path, path: &Path) -> PathBuf {
    let plain = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
    if !(plain(dir) && plain(path)) {
        return path.to_path_buf();
    }
    let up = dir.components().count();
    let mut relative: PathBuf = std::iter::repeat_n("..", up).collect();
    relative.push(path);
    relative
}

/// A Markdown file's text without its first-level title line.
fn without_title(text: &str) -> String {
    text.lines()
        .skip_while(|line| line.starts_with("# ") || line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect()
}

/// GitHub's anchor of a heading: lower case, spaces to hyphens, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_linked_from_the_results_folder() {
        assert_eq!(
            relative_to(Path::new("results"), Path::new("figures/a.png")),
            PathBuf::from("../figures/a.png")
        );
        assert_eq!(
            relative_to(Path::new("/abs/results"), Path::new("figures/a.png")),
            PathBuf::from("figures/a.png")
        );
        assert_eq!(anchor("random_labels_vgg_short"), "random_labels_vgg_short");
        assert_eq!(anchor("Other figures"), "other-figures");
        assert_eq!(without_title("# T\n\nbody\n| a |\n"), "body\n| a |\n");
    }
}
