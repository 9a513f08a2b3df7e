//! `harness report` regenerates Table 1, the figures and results/REPORT.md from the committed
//! results: the report has a section per experiment file, Table 1 with our rows, and every image
//! it links exists.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of `from` (files and folders) at `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn report_embeds_every_table_and_figure() {
    let work = std::env::temp_dir().join(format!("report-{}", std::process::id()));
    let (results, figures) = (work.join("results"), work.join("figures"));
    copy_tree(&repo().join("results"), &results);
    let status = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(repo())
        .args(["report", "--results-dir"])
        .arg(&results)
        .arg("--figures-dir")
        .arg(&figures)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report = std::fs::read_to_string(results.join("REPORT.md")).unwrap();
    assert!(
        report.contains("## Table 1") && report.contains("| LeNet-5-Caffe | Sparse VD | ours |")
    );
    for file in std::fs::read_dir(repo().join("experiments")).unwrap() {
        let path = file.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if stem != "paper_reference" {
            let name = runner::spec::LoadedExperiment::load(&path)
                .unwrap()
                .spec
                .name;
            assert!(
                report.contains(&format!("## {name}\n")),
                "no section for {stem}"
            );
        }
    }
    let images: Vec<&str> = report
        .lines()
        .filter_map(|line| {
            line.strip_prefix("![")?
                .split_once("](")?
                .1
                .strip_suffix(')')
        })
        .collect();
    for expected in [
        "table1_removed_per_layer.png",
        "lenet300_training.png",
        "lenet5_sparse_vd_first_layer.png",
        "kl_approximation.png",
        "vgg_cifar10_short_removed_per_layer.png",
    ] {
        assert!(
            images.iter().any(|i| i.ends_with(expected)),
            "{expected} not linked"
        );
    }
    for image in images {
        assert!(Path::new(image).is_file(), "linked image {image} missing");
    }
    std::fs::remove_dir_all(&work).unwrap();
}
