//! An experiment of one's own, `experiments/own_mlp_idx.toml`: a wider MLP on a folder of IDX
//! files the project has never seen (MNIST downsampled to 14 × 14, written here, also into the
//! data cache as `data/mnist_14x14` so that the example runs as it stands). Trained briefly, it
//! learns; its provenance records the files' sha256; its table has no paper columns; a net that
//! does not take its images is refused with a message that says why.

mod common;

use datasets::idx::{idx_bytes, parse_idx};
use runner::spec::LoadedExperiment;
use std::path::{Path, PathBuf};

const SIDE: usize = 14;
const FOLDER: &str = "mnist_14x14";

/// An MNIST IDX pair downsampled to 14 × 14 by 2 × 2 means: (images file, labels file).
fn downsampled(mnist: &Path, images: &str, labels: &str) -> (Vec<u8>, Vec<u8>) {
    let read =
        |name: &str, rank| parse_idx(&std::fs::read(mnist.join(name)).unwrap(), rank).unwrap();
    let (images, labels) = (read(images, 3), read(labels, 1));
    let count = images.dims[0];
    let mut small = Vec::with_capacity(count * SIDE * SIDE);
    for image in images.data.chunks_exact(28 * 28) {
        for r in 0..SIDE {
            for c in 0..SIDE {
                let at = |dr: usize, dc: usize| image[(2 * r + dr) * 28 + 2 * c + dc] as u32;
                small.push(((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1) + 2) / 4) as u8);
            }
        }
    }
    let side = SIDE as u32;
    (
        idx_bytes(&[count as u32, side, side], &small),
        idx_bytes(&[count as u32], &labels.data),
    )
}

/// The 14 × 14 data set in the data cache (written once), returned as its folder.
fn mnist_14x14() -> PathBuf {
    static FOLDER_WRITTEN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOLDER_WRITTEN.get_or_init(write_mnist_14x14).clone()
}

fn write_mnist_14x14() -> PathBuf {
    let data_dir = datasets::data_dir(None);
    let folder = data_dir.join(FOLDER);
    let names = datasets::folder::IDX_FILES;
    if names.iter().all(|n| folder.join(n).is_file()) {
        return folder;
    }
    datasets::Mnist::load(&data_dir).unwrap(); // fetches and verifies the originals
    let partial = data_dir.join(format!("{FOLDER}.partial-{}", std::process::id()));
    std::fs::create_dir_all(&partial).unwrap();
    for (images, labels) in [(names[0], names[1]), (names[2], names[3])] {
        let (image_bytes, label_bytes) = downsampled(&data_dir, images, labels);
        std::fs::write(partial.join(images), image_bytes).unwrap();
        std::fs::write(partial.join(labels), label_bytes).unwrap();
    }
    let _ = std::fs::rename(&partial, &folder); // another test process may have won the race
    let _ = std::fs::remove_dir_all(&partial);
    folder
}

/// A scratch folder holding the example experiment file (its `net` line replaced by `net` when
/// given) and the data folder where the file's relative path points.
fn scratch(tag: &str, net: Option<&str>) -> (PathBuf, PathBuf) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut text = std::fs::read_to_string(repo.join("experiments/own_mlp_idx.toml")).unwrap();
    if let Some(net) = net {
        text = text.replace("net = { mlp = [196, 500, 300, 10] }", net);
    }
    let (work, path) = common::scratch("own_mlp_idx", tag, &text);
    let data = work.join("data").join(FOLDER);
    std::fs::create_dir_all(&data).unwrap();
    for name in datasets::folder::IDX_FILES {
        std::fs::copy(mnist_14x14().join(name), data.join(name)).unwrap();
    }
    (work, path)
}

#[test]
fn a_wider_mlp_learns_on_a_folder_of_idx_files_with_their_hashes_in_provenance() {
    let (work, path) = scratch("learn", None);
    let exp = LoadedExperiment::load(&path).unwrap();
    let options = runner::RunOptions {
        epochs: Some(2),
        ..common::options(&work)
    };
    let summaries = runner::run_experiment(&exp, &options).unwrap();
    assert_eq!(summaries.len(), 2);
    for s in &summaries {
        println!(
            "{}: test error {:.2}%, compression {:.1}×",
            s.variant, s.test_error_pct, s.compression
        );
        assert!(s.shortened, "2 of 40 epochs must be labelled shortened");
        assert!(
            s.test_error_pct < 6.0,
            "{}: test error {:.2}% (chance is 90%)",
            s.variant,
            s.test_error_pct
        );
        assert_eq!(s.dataset, "idx (../data/mnist_14x14)");
        assert!(s.paper_error_pct.is_none());
    }
    let results = work.join("results/own_mlp_idx");
    let provenance = runner::output::read_provenance(&results.join("sparse_vd")).unwrap();
    let data = work.join("data").join(FOLDER);
    assert_eq!(provenance.data_sha256.len(), 4);
    for name in datasets::folder::IDX_FILES {
        let expected = runner::provenance::sha256_hex(&std::fs::read(data.join(name)).unwrap());
        assert_eq!(provenance.data_sha256[name], expected, "{name}");
    }
    let comparison = std::fs::read_to_string(results.join(runner::output::COMPARISON_MD)).unwrap();
    assert!(!comparison.contains("paper"), "{comparison}");
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_net_that_does_not_take_the_images_is_refused() {
    let (work, path) = scratch("misfit", Some("net = \"lenet300\""));
    let exp = LoadedExperiment::load(&path).unwrap();
    let Err(error) = runner::run_experiment(&exp, &common::options(&work)) else {
        panic!("LeNet-300-100 takes 784 values per image, not 196");
    };
    let error = error.to_string();
    assert!(
        error.contains("own_mlp_idx.toml: net: lenet300 takes 784 values per image")
            && error.contains("14×14 = 196"),
        "{error}"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
