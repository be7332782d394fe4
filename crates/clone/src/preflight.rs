//! Checks that must all pass before the clone changes anything (clone.md
//! §3.1 steps 1–7): not root, the per-target lock, no live postmaster in the
//! target, the same-host guard and free disk space.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{Pid, Uid};
use pgtandem_core::error::ErrorKind;
use sha2::{Digest, Sha256};

use crate::error::{CloneError, Result};

/// pgclone's refusal to run as root.
pub const ROOT_MESSAGE: &str = "This script must not be run as root";

/// Refuses the superuser: PostgreSQL files must belong to the server's user.
pub fn refuse_root() -> Result<()> {
    if Uid::effective().is_root() {
        return Err(CloneError::refused(ErrorKind::Permission, ROOT_MESSAGE));
    }
    Ok(())
}

/// `readlink -f` of a path that may not exist yet: the deepest existing
/// ancestor is canonicalised and the rest appended (as after `mkdir -p`).
pub fn canonical_target(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| CloneError::io("reading the current directory", e))?
            .join(path)
    };
    let mut normal = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other.as_os_str()),
        }
    }
    let mut existing = normal.clone();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(resolved) => {
                let mut out = resolved;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => match (
                existing.file_name().map(ToOwned::to_owned),
                existing.parent(),
            ) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_owned();
                }
                _ => return Ok(normal),
            },
        }
    }
}

/// The lock file pgclone.sh uses for a target, so both tools exclude each other.
pub fn lock_path(canonical_replica: &Path) -> PathBuf {
    let digest = Sha256::digest(canonical_replica.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/tmp/pgclone_{}.lock", hex::encode(digest)))
}

/// The held per-target lock; removed (while still held) when dropped.
#[derive(Debug)]
pub struct TargetLock {
    file: Option<File>,
    path: PathBuf,
}

impl TargetLock {
    /// `flock(LOCK_EX|LOCK_NB)` on [`lock_path`]; a holder means another clone
    /// of the same target is running.
    pub fn acquire(canonical_replica: &Path) -> Result<Self> {
        let path = lock_path(canonical_replica);
        // Another user's lock file (pgclone.sh of another account) can
        // still be locked through a read-only descriptor.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .or_else(|e| match e.kind() {
                IoKind::PermissionDenied => File::open(&path),
                _ => Err(e),
            })
            .map_err(|e| CloneError::io(format!("opening lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                file: Some(file),
                path,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(CloneError::refused(
                ErrorKind::Busy,
                format!(
                    "Another pgclone is running for {} (lock: {})",
                    canonical_replica.display(),
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(CloneError::io(format!("locking {}", path.display()), e))
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Remove while held, so no other run can hold a lock on an
            // unlinked inode while a third creates a fresh one.
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }
}

/// FATAL if `postmaster.pid` in the target names a live process (EPERM
/// counts as alive: it exists but belongs to someone else).
pub fn refuse_live_postmaster(pgdata: &Path) -> Result<()> {
    let pid_file = pgdata.join("postmaster.pid");
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
        Err(e) => return Err(CloneError::io(format!("reading {}", pid_file.display()), e)),
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        return Ok(());
    };
    let alive = matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM));
    if alive {
        return Err(CloneError::refused(
            ErrorKind::Busy,
            format!(
                "Seems like PostgreSQL instance already running or stale postmaster.pid has found (PID {pid}) in {}.",
                pgdata.display()
            ),
        ));
    }
    Ok(())
}

/// This machine's boot id: equal ids mean the primary runs on this host.
pub fn local_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The same-host guard: no target may equal, contain or sit inside a
/// primary directory (compared after resolving the deepest existing
/// ancestor, so symlinks and bind-style aliases cannot hide the overlap).
pub fn refuse_overlap(targets: &[PathBuf], sources: &[PathBuf]) -> Result<()> {
    for target in targets {
        let t = canonical_target(target)?;
        for source in sources {
            let s = canonical_target(source)?;
            if t.starts_with(&s) || s.starts_with(&t) || same_inode(&t, &s) {
                return Err(CloneError::refused(
                    ErrorKind::Config,
                    format!(
                        "Target {} is the primary's own directory; use --tablespace-mapping or another --replica-pgdata",
                        target.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Bytes a target directory already holds that the copy may reuse.
pub fn existing_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// One target directory's share of the disk check.
#[derive(Debug, Clone)]
pub struct DiskNeed {
    /// Where the data will go (may not exist yet).
    pub target: PathBuf,
    /// Bytes that will arrive there.
    pub incoming: u64,
    /// Bytes already there (reused or deleted by the copy).
    pub reusable: u64,
}

/// Sums the needs per mount point and compares them with the free space.
pub fn check_disk(needs: &[DiskNeed]) -> Result<()> {
    let mut per_mount: BTreeMap<u64, (PathBuf, u64, u64)> = BTreeMap::new();
    for need in needs {
        let existing = nearest_existing(&need.target);
        let meta = std::fs::metadata(&existing)
            .map_err(|e| CloneError::io(format!("stat {}", existing.display()), e))?;
        let stat = nix::sys::statvfs::statvfs(&existing).map_err(|e| {
            CloneError::io(
                format!("statvfs {}", existing.display()),
                std::io::Error::from(e),
            )
        })?;
        let avail = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        let entry = per_mount
            .entry(meta.dev())
            .or_insert_with(|| (mount_point(&existing), avail, 0));
        entry.2 += need.incoming.saturating_sub(need.reusable);
    }
    for (mount, avail, need) in per_mount.values() {
        let avail_mb = avail / (1024 * 1024);
        let need_mb = need.div_ceil(1024 * 1024);
        if need > avail {
            return Err(CloneError::refused(
                ErrorKind::Config,
                format!(
                    "Insufficient disk space on {}: {avail_mb} MB  < {need_mb} MB required",
                    mount.display()
                ),
            ));
        }
    }
    Ok(())
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_owned();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Walks up while the device stays the same.
fn mount_point(path: &Path) -> PathBuf {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return path.to_owned();
    };
    let Ok(dev) = std::fs::metadata(&canon).map(|m| m.dev()) else {
        return canon;
    };
    let mut current = canon.clone();
    while let Some(parent) = current.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => current = parent.to_owned(),
            _ => break,
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_path_is_pgclone_compatible() {
        // printf %s /var/lib/pg | sha256sum
        let p = lock_path(Path::new("/var/lib/pg"));
        let expected = hex::encode(Sha256::digest(b"/var/lib/pg"));
        assert_eq!(p, PathBuf::from(format!("/tmp/pgclone_{expected}.lock")));
        assert_eq!(expected.len(), 64);
    }

    #[test]
    fn canonical_target_resolves_existing_part_and_appends_rest() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let link = real.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let got = canonical_target(&link.join("a/../b/c")).unwrap();
        assert_eq!(got, real.join("b/c"));
    }

    #[test]
    fn second_lock_on_same_target_is_refused_with_pgclone_message() {
        let target = Path::new("/nonexistent/pgtandem-lock-test");
        let first = TargetLock::acquire(target).unwrap();
        let err = TargetLock::acquire(target).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Another pgclone is running for /nonexistent/pgtandem-lock-test (lock: {})",
                first.path().display()
            )
        );
        let path = first.path().to_owned();
        drop(first);
        assert!(!path.exists());
    }

    #[test]
    fn overlap_guard_refuses_equal_inside_and_containing_targets() {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("primary");
        std::fs::create_dir(&primary).unwrap();
        for bad in [
            primary.clone(),
            primary.join("sub/x"),
            dir.path().to_owned(),
        ] {
            let e = refuse_overlap(std::slice::from_ref(&bad), std::slice::from_ref(&primary))
                .unwrap_err();
            assert!(
                e.to_string().contains("is the primary's own directory"),
                "{e}"
            );
        }
        refuse_overlap(&[dir.path().join("replica")], &[primary]).unwrap();
    }

    #[test]
    fn live_postmaster_is_refused_and_dead_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n/x\n", std::process::id()),
        )
        .unwrap();
        let e = refuse_live_postmaster(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with(&format!(
            "Seems like PostgreSQL instance already running or stale postmaster.pid has found (PID {})",
            std::process::id()
        )));
        std::fs::write(dir.path().join("postmaster.pid"), "999999999\n").unwrap();
        refuse_live_postmaster(dir.path()).unwrap();
    }
}
