//! Real data sets for the harness: fetched on first use, verified by checksum, parsed into
//! memory. Nothing here knows about models or tensors.

pub mod cifar;
pub mod fetch;
pub mod folder;
#[cfg(test)]
mod fuzz;
pub mod idx;
pub mod mnist;
pub mod split;
pub mod zca;

pub use cifar::{Cifar10, CifarError, Preprocessing};
pub use folder::FolderData;
pub use idx::IdxError;
pub use mnist::Mnist;
pub use split::Split;

use std::path::PathBuf;

/// Environment variable that overrides the data cache folder.
pub const DATA_DIR_ENV: &str = "HARNESS_DATA_DIR";

/// Everything that can go wrong while getting or reading a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Idx { path: PathBuf, source: IdxError },
    #[error("{path}: {source}")]
    Cifar { path: PathBuf, source: CifarError },
    #[error(
        "{path}: checksum mismatch (md5 {found}, expected {expected}); the file is corrupt or not the genuine data set: delete it and the harness fetches it again"
    )]
    Checksum {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "could not obtain {what}; tried:\n{attempts}\nPlace the files by hand in {dir} (see README.md, section \"Data\")"
    )]
    NoSource {
        what: String,
        dir: PathBuf,
        attempts: String,
    },
    #[error("{0}")]
    Inconsistent(String),
}

/// The cache folder: `explicit` if given, else `$HARNESS_DATA_DIR`, else `data/` at the
/// repository root (git-ignored).
pub fn data_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os(DATA_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"))
}
