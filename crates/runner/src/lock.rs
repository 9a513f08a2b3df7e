//! One writer per results folder: a run holds `<variant>/.lock` (its process id) while it
//! trains, so that two runs of the same experiment cannot interleave their files. A lock left by
//! a process that no longer exists (killed run) is taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: another run (process {pid}) is writing these results; wait for it or stop it")]
    Held { path: PathBuf, pid: u32 },
    #[error("{path}: cannot take the lock: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while alive; the lock file is removed on drop.
#[derive(Debug)]
pub struct VariantLock {
    path: PathBuf,
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl VariantLock {
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    write!(file, "{}", std::process::id()).map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if pid != std::process::id() && process_alive(pid) => {
                            return Err(LockError::Held { path, pid });
                        }
                        // Stale (its process is gone) or unreadable: take it over.
                        _ => std::fs::remove_file(&path).map_err(io)?,
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(io(std::io::Error::other(
            "lock file reappeared while taking it over",
        )))
    }
}

impl Drop for VariantLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_while_first_is_held_and_stale_locks_are_taken_over() {
        let dir = std::env::temp_dir().join(format!("lock-test-{}", std::process::id()));
        let first = VariantLock::acquire(&dir).unwrap();
        // Same process id: simulate another live process by writing PID 1 (always alive).
        std::fs::write(dir.join(LOCK_FILE), "1").unwrap();
        assert!(matches!(
            VariantLock::acquire(&dir),
            Err(LockError::Held { pid: 1, .. })
        ));
        // A dead process id is taken over.
        std::fs::write(dir.join(LOCK_FILE), "4294967294").unwrap();
        let second = VariantLock::acquire(&dir).unwrap();
        drop(second);
        assert!(!dir.join(LOCK_FILE).exists());
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
