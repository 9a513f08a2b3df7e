//! Data sets of one's own, from a folder: IDX files in MNIST's layout, or CIFAR-10-style binary
//! batches. There is no known checksum to hold them to, so they are checked for structure
//! (magic numbers, dimensions, counts, label range), and each file's sha256 is returned for the
//! run's provenance.

use crate::cifar::{self, Preprocessing, RawImages};
use crate::idx::parse_idx;
use crate::mnist::{centred, mean_image};
use crate::{DataError, Split};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The IDX files of a folder, in MNIST's layout.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The test batch of a CIFAR-binary folder; the training batches are `data_batch_<n>.bin`.
pub const CIFAR_TEST_BATCH: &str = "test_batch.bin";

/// A data set read from a folder.
#[derive(Debug, Clone)]
pub struct FolderData {
    pub train: Split,
    pub test: Split,
    /// (file name, sha256) of every file read, in reading order.
    pub files: Vec<(String, String)>,
}

/// The bytes of `dir/name` and their sha256.
fn read_hashed(
    dir: &Path,
    name: &str,
    files: &mut Vec<(String, String)>,
) -> Result<Vec<u8>, DataError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|source| DataError::Io { path, source })?;
    let hash = Sha256::digest(&bytes);
    files.push((
        name.to_string(),
        hash.iter().map(|b| format!("{b:02x}")).collect(),
    ));
    Ok(bytes)
}

/// IDX files in MNIST's layout ([`IDX_FILES`]): images of any size (rank 3, `[n, h, w]`, one
/// channel) and labels (rank 1) 0 … C − 1, C = the largest training label + 1. Preprocessed as
/// MNIST: pixels / 255 minus the training set's mean image.
pub fn load_idx(dir: &Path) -> Result<FolderData, DataError> {
    let mut files = Vec::new();
    let mut read = |name: &str, rank: u8| {
        let bytes = read_hashed(dir, name, &mut files)?;
        parse_idx(&bytes, rank).map_err(|source| DataError::Idx {
            path: dir.join(name),
            source,
        })
    };
    let [train_images, train_labels, test_images, test_labels] = IDX_FILES;
    let split = [
        (
            read(train_images, 3)?,
            read(train_labels, 1)?,
            train_images,
            train_labels,
        ),
        (
            read(test_images, 3)?,
            read(test_labels, 1)?,
            test_images,
            test_labels,
        ),
    ];
    for (images, labels, images_name, labels_name) in &split {
        let inconsistent = |what: String| {
            DataError::Inconsistent(format!("{}: {what}", dir.join(images_name).display()))
        };
        if images.dims[0] == 0 || images.dims[1] == 0 || images.dims[2] == 0 {
            return Err(inconsistent(format!(
                "no images (dimensions {:?})",
                images.dims
            )));
        }
        if images.dims[0] != labels.dims[0] {
            return Err(inconsistent(format!(
                "{} images but {labels_name} holds {} labels",
                images.dims[0], labels.dims[0]
            )));
        }
    }
    let [
        (train, train_y, ..),
        (test, test_y, test_name, test_labels_name),
    ] = split;
    if train.dims[1..] != test.dims[1..] {
        return Err(DataError::Inconsistent(format!(
            "{}: images are {:?}, but the training images are {:?}",
            dir.join(test_name).display(),
            &test.dims[1..],
            &train.dims[1..]
        )));
    }
    let classes = train_y.data.iter().max().map_or(0, |&m| m as usize + 1);
    if let Some(i) = test_y.data.iter().position(|&y| y as usize >= classes) {
        return Err(DataError::Inconsistent(format!(
            "{}: label {} of test example {i} is not among the {classes} classes of the training labels (0 … {})",
            dir.join(test_labels_name).display(),
            test_y.data[i],
            classes - 1
        )));
    }
    let image_pixels = train.dims[1] * train.dims[2];
    let mean = mean_image(&train.data, image_pixels);
    let shape = [1, train.dims[1], train.dims[2]];
    Ok(FolderData {
        train: Split {
            images: centred(&train.data, &mean),
            labels: train_y.data,
            image_shape: shape,
        },
        test: Split {
            images: centred(&test.data, &mean),
            labels: test_y.data,
            image_shape: shape,
        },
        files,
    })
}

/// CIFAR-10-style binary batches: `data_batch_<n>.bin` (n = 1, 2, … without gaps) for training
/// and [`CIFAR_TEST_BATCH`], records of one label byte (0 … 9) and a 3 × 32 × 32 image.
/// Preprocessed like CIFAR-10; a ZCA fit is cached in `zca_cache` under the training batches'
/// hash, so that other data never meets a stale fit.
pub fn load_cifar_binary(
    dir: &Path,
    preprocessing: Preprocessing,
    zca_cache: &Path,
) -> Result<FolderData, DataError> {
    let mut files = Vec::new();
    let mut read = |name: &str| {
        let bytes = read_hashed(dir, name, &mut files)?;
        cifar::parse_batch(&bytes).map_err(|source| DataError::Cifar {
            path: dir.join(name),
            source,
        })
    };
    let mut train = RawImages {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for n in 1.. {
        let name = format!("data_batch_{n}.bin");
        if n > 1 && !dir.join(&name).exists() {
            break;
        }
        let part = read(&name)?;
        train.pixels.extend(part.pixels);
        train.labels.extend(part.labels);
    }
    let test = read(CIFAR_TEST_BATCH)?;
    let mut training_hash = Sha256::new();
    for (_, hash) in files.iter().filter(|(name, _)| name != CIFAR_TEST_BATCH) {
        training_hash.update(hash.as_bytes());
    }
    let key: String = training_hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let zca_dir = zca_cache.join(format!("cifar-binary-{key}"));
    if matches!(preprocessing, Preprocessing::Zca { .. }) {
        std::fs::create_dir_all(&zca_dir).map_err(|source| DataError::Io {
            path: zca_dir.clone(),
            source,
        })?;
    }
    let (train, test) = cifar::preprocessed(train, test, preprocessing, &zca_dir)?;
    Ok(FolderData { train, test, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::idx_bytes as idx;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Three 2 × 3 training images of classes 0 … 2 and two test images.
    fn write_idx_folder(dir: &Path, test_labels: &[u8]) {
        let train: Vec<u8> = (0..18).map(|i| (i * 10) as u8).collect();
        std::fs::write(dir.join(IDX_FILES[0]), idx(&[3, 2, 3], &train)).unwrap();
        std::fs::write(dir.join(IDX_FILES[1]), idx(&[3], &[0, 2, 1])).unwrap();
        std::fs::write(dir.join(IDX_FILES[2]), idx(&[2, 2, 3], &[0; 12])).unwrap();
        std::fs::write(dir.join(IDX_FILES[3]), idx(&[2], test_labels)).unwrap();
    }

    #[test]
    fn an_idx_folder_of_any_image_size_loads_with_hashes_and_the_mean_image_removed() {
        let dir = scratch("idx");
        write_idx_folder(&dir, &[1, 2]);
        let data = load_idx(&dir).unwrap();
        assert_eq!(data.train.image_shape, [1, 2, 3]);
        assert_eq!(data.train.len(), 3);
        assert_eq!(data.test.labels, vec![1, 2]);
        // Pixel 0 of the training images is 0, 60 and 120: mean 60/255, so image 0 gets −60/255.
        assert!((data.train.images[0] + 60.0 / 255.0).abs() < 1e-6);
        let names: Vec<&str> = data.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, IDX_FILES);
        assert!(data.files.iter().all(|(_, h)| h.len() == 64));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idx_folders_with_structural_faults_are_refused_naming_the_file() {
        let dir = scratch("idx-bad");
        write_idx_folder(&dir, &[1, 3]);
        let message = load_idx(&dir).unwrap_err().to_string();
        assert!(
            message.contains("t10k-labels-idx1-ubyte") && message.contains("label 3"),
            "{message}"
        );
        write_idx_folder(&dir, &[1, 2]);
        std::fs::write(dir.join(IDX_FILES[3]), idx(&[3], &[0, 1, 2])).unwrap();
        let message = load_idx(&dir).unwrap_err().to_string();
        assert!(
            message.contains("2 images but t10k-labels-idx1-ubyte holds 3"),
            "{message}"
        );
        std::fs::write(dir.join(IDX_FILES[0]), idx(&[3, 2], &[0; 6])).unwrap();
        let message = load_idx(&dir).unwrap_err().to_string();
        assert!(
            message.contains("train-images-idx3-ubyte") && message.contains("magic number"),
            "{message}"
        );
        std::fs::remove_file(dir.join(IDX_FILES[0])).unwrap();
        let message = load_idx(&dir).unwrap_err().to_string();
        assert!(message.contains("train-images-idx3-ubyte"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cifar_binary_folder_loads_every_numbered_batch() {
        let dir = scratch("cifar");
        let batch = |labels: &[u8]| {
            let raw = RawImages {
                pixels: (0..labels.len() * cifar::IMAGE_BYTES)
                    .map(|i| (i % 251) as u8)
                    .collect(),
                labels: labels.to_vec(),
            };
            cifar::batch_bytes(&raw)
        };
        std::fs::write(dir.join("data_batch_1.bin"), batch(&[0, 1])).unwrap();
        std::fs::write(dir.join("data_batch_2.bin"), batch(&[9])).unwrap();
        std::fs::write(dir.join(CIFAR_TEST_BATCH), batch(&[3, 4])).unwrap();
        let data = load_cifar_binary(&dir, Preprocessing::PerChannel, &dir).unwrap();
        assert_eq!(data.train.labels, vec![0, 1, 9]);
        assert_eq!(data.test.labels, vec![3, 4]);
        assert_eq!(data.train.image_shape, [3, 32, 32]);
        assert_eq!(data.files.len(), 3);
        std::fs::write(dir.join(CIFAR_TEST_BATCH), &batch(&[3])[..100]).unwrap();
        let message = load_cifar_binary(&dir, Preprocessing::PerChannel, &dir)
            .unwrap_err()
            .to_string();
        assert!(message.contains(CIFAR_TEST_BATCH), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
