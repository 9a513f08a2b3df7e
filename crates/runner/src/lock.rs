//! One writer per results folder: a run holds `<run folder>/.lock` (its process id and host)
//! while it trains, so that two runs of the same experiment cannot interleave their files, also
//! when Slurm tasks on several nodes share one results folder. A lock left by a process of this
//! host that no longer exists (killed run) is taken over; one of another host is left alone,
//! since its process cannot be checked from here.

use std::io::Write;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path}: another run (process {pid} on {host}) is writing these results; wait for it or stop it (if it is gone, delete the lock file)"
    )]
    Held {
        path: PathBuf,
        pid: u32,
        host: String,
    },
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

/// This machine's host name (empty where the kernel does not say).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The process id and host a lock file names (`<pid> <host>`; files from before the host name
/// hold the pid alone, and were written on this host).
fn holder(text: &str) -> Option<(u32, String)> {
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    Some((pid, parts.next().map_or_else(host, str::to_string)))
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
                    write!(file, "{} {}", std::process::id(), host()).map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).ok();
                    match text.as_deref().and_then(holder) {
                        Some((pid, other)) if other != host() => {
                            return Err(LockError::Held {
                                path,
                                pid,
                                host: other,
                            });
                        }
                        Some((pid, here)) if pid != std::process::id() && process_alive(pid) => {
                            return Err(LockError::Held {
                                path,
                                pid,
                                host: here,
                            });
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
        // Another host's lock is left alone: its process cannot be checked from here.
        std::fs::write(dir.join(LOCK_FILE), "4294967294 another-node").unwrap();
        assert!(matches!(
            VariantLock::acquire(&dir),
            Err(LockError::Held { pid: 4294967294, ref host, .. }) if host == "another-node"
        ));
        // A dead process id of this host is taken over.
        std::fs::write(dir.join(LOCK_FILE), "4294967294").unwrap();
        let second = VariantLock::acquire(&dir).unwrap();
        drop(second);
        assert!(!dir.join(LOCK_FILE).exists());
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
