//! An experiment's data as the runs see it: loaded (fetched on first use), checked against the
//! net, and cut to the protocol's subsets, with the labels permuted for a random-labels run.

use crate::RunError;
use crate::spec::{self, Dataset, LoadedExperiment, Preprocessing};
use crate::{rng, train};
use datasets::{Cifar10, Mnist, Split};
use std::borrow::Cow;
use std::path::Path;

/// An experiment's data, preprocessed, both splits whole.
pub struct Data {
    pub train: Split,
    pub test: Split,
    /// (file name, sha256) of a data set read from a folder; empty for the built-in ones, which
    /// are held to their known checksums.
    pub files: Vec<(String, String)>,
}

/// Load (fetching the built-in ones on first use) the experiment's data set, and check that its
/// images and classes fit the net.
pub fn load_data(exp: &LoadedExperiment, data_dir: &Path) -> Result<Data, RunError> {
    let spec = &exp.spec;
    let preprocessing = match spec.preprocessing {
        None => datasets::Preprocessing::Zca { regulariser: 1e-5 },
        Some(Preprocessing::Zca { regulariser }) => datasets::Preprocessing::Zca { regulariser },
        Some(Preprocessing::PerChannel) => datasets::Preprocessing::PerChannel,
    };
    let folder = |f: &Path| exp.path.parent().unwrap_or(Path::new(".")).join(f);
    let data = match &spec.dataset {
        Dataset::Mnist => {
            let mnist = Mnist::load(data_dir)?;
            Data {
                train: mnist.train,
                test: mnist.test,
                files: Vec::new(),
            }
        }
        Dataset::Cifar10 => {
            let cifar = Cifar10::load(data_dir, preprocessing)?;
            Data {
                train: cifar.train,
                test: cifar.test,
                files: Vec::new(),
            }
        }
        Dataset::Idx(f) => from_folder(datasets::folder::load_idx(&folder(f))?),
        Dataset::CifarBinary(f) => from_folder(datasets::folder::load_cifar_binary(
            &folder(f),
            preprocessing,
            data_dir,
        )?),
    };
    check_data_fits(exp, &data)?;
    Ok(data)
}

fn from_folder(data: datasets::FolderData) -> Data {
    Data {
        train: data.train,
        test: data.test,
        files: data.files,
    }
}

/// That the net takes the data's images and has an output for each of its classes.
fn check_data_fits(exp: &LoadedExperiment, data: &Data) -> Result<(), RunError> {
    let net = &exp.spec.net;
    let shape = data.train.image_shape;
    let [c, h, w] = shape;
    let values = c * h * w;
    let fail = |message: String| {
        Err(RunError::DataDoesNotFit {
            file: exp.path.display().to_string(),
            message,
        })
    };
    match net.input() {
        spec::NetInput::Image(wanted) if wanted != shape => {
            return fail(format!(
                "{} takes {}×{}×{} images, but {} holds {c}×{h}×{w} images",
                net.describe(),
                wanted[0],
                wanted[1],
                wanted[2],
                exp.spec.dataset.describe()
            ));
        }
        spec::NetInput::Values(wanted) if wanted != values => {
            return fail(format!(
                "{} takes {wanted} values per image, but {} holds {c}×{h}×{w} = {values}",
                net.describe(),
                exp.spec.dataset.describe()
            ));
        }
        _ => {}
    }
    let classes = data
        .train
        .labels
        .iter()
        .chain(&data.test.labels)
        .max()
        .map_or(0, |&m| m as usize + 1);
    if classes > net.outputs() {
        return fail(format!(
            "{} has {} outputs, but {} has {classes} classes",
            net.describe(),
            net.outputs(),
            exp.spec.dataset.describe()
        ));
    }
    Ok(())
}

/// The training examples a variant trains on: the protocol's subset, with the labels replaced
/// by a seeded permutation of themselves for a random-labels run.
pub(crate) fn training_split<'a>(train: &'a Split, protocol: &spec::Protocol) -> Cow<'a, Split> {
    let split = subset(train, protocol.train_subset);
    if !protocol.random_labels {
        return split;
    }
    let mut split = split.into_owned();
    let order = rng::permutation(
        split.len(),
        rng::derive_seed(protocol.seed, train::STREAM_LABELS, 0),
    );
    split.labels = order.iter().map(|&i| split.labels[i]).collect();
    Cow::Owned(split)
}

/// The first `n` examples of `split` (all of it without `n`), copied only when shortened.
pub(crate) fn subset(split: &Split, n: Option<usize>) -> Cow<'_, Split> {
    match n {
        Some(n) if n < split.len() => Cow::Owned(split.clone().truncated(n)),
        _ => Cow::Borrowed(split),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_labels_are_a_seeded_permutation_of_the_training_labels() {
        let exp = spec::Experiment::parse(include_str!("../../../experiments/random_labels.toml"))
            .expect("the committed experiment file");
        let train = Split {
            images: vec![0.0; 1000],
            labels: (0..1000).map(|i| (i % 10) as u8).collect(),
            image_shape: [1, 1, 1],
        };
        let permuted = training_split(&train, exp.protocol_of(0));
        let again = training_split(&train, exp.protocol_of(0));
        assert_eq!(permuted.labels, again.labels, "a function of the seed");
        let moved = permuted
            .labels
            .iter()
            .zip(&train.labels)
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 800, "only {moved} of 1000 labels changed");
        let mut sorted = permuted.labels.clone();
        sorted.sort_unstable();
        let mut original = train.labels.clone();
        original.sort_unstable();
        assert_eq!(sorted, original, "the same labels, reassigned");
        let mut kept = exp.protocol_of(0).clone();
        kept.random_labels = false;
        assert_eq!(training_split(&train, &kept).labels, train.labels);
    }
}
