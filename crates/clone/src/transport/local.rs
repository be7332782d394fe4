//! The `local` transport: the primary is on this host and we run as its OS
//! user, so files are copied with `copy_file_range` (through `std::io::copy`)
//! and listed with plain directory walks. No ssh, no rsync.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind as IoKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgtandem_core::progress::ProgressCounter;

use super::{CopyRequest, CopyStats, Probe, Transport};
use crate::error::{CloneError, Result};
use crate::fileset::{Entry, EntryKind, Module};
use crate::limiter::Limiter;

/// Unthrottled copy piece: big enough for `copy_file_range` to shine,
/// small enough for byte-level progress.
const COPY_CHUNK: u64 = 8 << 20;
/// Piece size under `--limit-net-bw` and for `--paranoid` comparisons.
const SMALL_CHUNK: u64 = 1 << 20;

/// Same-host copy.
#[derive(Debug, Default)]
pub struct LocalTransport;

impl LocalTransport {
    pub fn new() -> Self {
        Self
    }
}

/// Nanosecond mtime of a file's metadata.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn system_time(ns: i128) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    } else {
        UNIX_EPOCH - Duration::from_nanos(u64::try_from(-ns).unwrap_or(u64::MAX))
    }
}

fn entry_for(root: &Path, path: &Path, meta: &std::fs::Metadata) -> Result<Option<Entry>> {
    let rel = path.strip_prefix(root).unwrap_or(path).to_owned();
    let kind = if meta.file_type().is_symlink() {
        match std::fs::read_link(path) {
            Ok(t) => EntryKind::Symlink(t),
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(CloneError::io(format!("readlink {}", path.display()), e)),
        }
    } else if meta.is_dir() {
        EntryKind::Dir
    } else if meta.is_file() {
        EntryKind::File
    } else {
        // Sockets, fifos, devices have no place in PGDATA.
        return Ok(None);
    };
    Ok(Some(Entry {
        path: rel,
        size: if kind == EntryKind::File {
            meta.len()
        } else {
            0
        },
        kind,
        mtime_ns: mtime_ns(meta),
        mode: meta.mode() & 0o7777,
    }))
}

/// Lists `root` recursively (no symlink following), skipping `prune`.
pub fn walk(root: &Path, prune: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let reader = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == IoKind::NotFound && dir != root => continue,
            Err(e) => return Err(CloneError::io(format!("listing {}", dir.display()), e)),
        };
        for item in reader {
            let item = match item {
                Ok(i) => i,
                Err(e) if e.kind() == IoKind::NotFound => continue,
                Err(e) => return Err(CloneError::io(format!("listing {}", dir.display()), e)),
            };
            let path = item.path();
            let meta = match path.symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == IoKind::NotFound => continue,
                Err(e) => return Err(CloneError::io(format!("stat {}", path.display()), e)),
            };
            let Some(entry) = entry_for(root, &path, &meta)? else {
                continue;
            };
            if prune.contains(&entry.path) {
                continue;
            }
            if entry.kind == EntryKind::Dir {
                stack.push(path);
            }
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

impl Transport for LocalTransport {
    fn probe(&mut self) -> Result<Probe> {
        Ok(Probe {
            boot_id: crate::preflight::local_boot_id(),
        })
    }

    fn disk_usage(&self, roots: &[PathBuf]) -> Result<u64> {
        let mut total = 0;
        for root in roots {
            for e in walk(root, &[])? {
                if e.kind == EntryKind::File {
                    total += e.size;
                }
            }
        }
        Ok(total)
    }

    fn list(&self, module: &Module) -> Result<Vec<Entry>> {
        walk(&module.source, &module.prune)
    }

    fn start(&mut self, _modules: &[Module]) -> Result<()> {
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        Ok(())
    }

    fn copy_batch(
        &self,
        request: &CopyRequest<'_>,
        limiter: &Limiter,
        progress: &ProgressCounter,
    ) -> Result<CopyStats> {
        let mut stats = CopyStats::default();
        for entry in request.files {
            copy_one(request, entry, limiter, progress, &mut stats)?;
        }
        Ok(stats)
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| CloneError::io(format!("reading {}", path.display()), e))
    }

    fn cleanup(&mut self) {}
}

fn copy_one(
    request: &CopyRequest<'_>,
    entry: &Entry,
    limiter: &Limiter,
    progress: &ProgressCounter,
    stats: &mut CopyStats,
) -> Result<()> {
    let src_path = request.module.source.join(&entry.path);
    let dst_path = request.module.target.join(&entry.path);
    let io = |what: &str, p: &Path| {
        let ctx = format!("{what} {}", p.display());
        move |e| CloneError::io(ctx, e)
    };
    let src = match File::open(&src_path) {
        Ok(f) => f,
        Err(e) if e.kind() == IoKind::NotFound => {
            // Dropped, truncated away or rewritten by VACUUM FULL: normal.
            stats.vanished.push(entry.path.clone());
            remove_any(&dst_path)?;
            progress.add(entry.size);
            return Ok(());
        }
        Err(e) => return Err(io("opening", &src_path)(e)),
    };
    let smeta = src.metadata().map_err(io("stat", &src_path))?;
    let size = smeta.len();
    let src_mtime = mtime_ns(&smeta);
    stats.files += 1;
    stats.total_size += size;
    // The listing promised entry.size; settle the difference in the total.
    if size > entry.size {
        progress.add_total(size - entry.size);
    }
    let existing = dst_path.symlink_metadata().ok();
    let existing_file = existing.as_ref().filter(|m| m.is_file());
    if let Some(d) = existing_file
        && !request.paranoid
        && d.len() == size
        && mtime_ns(d) == src_mtime
    {
        stats.matched += size;
        progress.add(entry.size.max(size));
        return Ok(());
    }
    if existing.is_some() && existing_file.is_none() {
        remove_any(&dst_path)?;
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&dst_path)
        .map_err(io("creating", &dst_path))?;
    let written = if existing_file.is_some() && request.paranoid {
        delta_copy(&src, &dst, size, limiter, progress, stats)
            .map_err(io("copying to", &dst_path))?
    } else {
        dst.set_len(0).map_err(io("truncating", &dst_path))?;
        whole_copy(&src, &mut dst, limiter, progress).map_err(io("copying to", &dst_path))?
    };
    if written > 0 || existing_file.is_none() {
        stats.transferred += 1;
        stats.transferred_size += size;
    }
    if existing_file.is_none() {
        stats.created += 1;
    }
    stats.literal += written;
    stats.wire_received += written;
    // Short source (shrunk during copy): account the promised bytes.
    if entry.size > size {
        progress.add(entry.size - size);
    }
    dst.set_permissions(Permissions::from_mode(entry.mode))
        .map_err(io("chmod", &dst_path))?;
    dst.set_modified(system_time(src_mtime))
        .map_err(io("setting mtime of", &dst_path))?;
    Ok(())
}

fn whole_copy(
    src: &File,
    dst: &mut File,
    limiter: &Limiter,
    progress: &ProgressCounter,
) -> std::io::Result<u64> {
    let chunk = if limiter.is_limited() {
        SMALL_CHUNK
    } else {
        COPY_CHUNK
    };
    let mut total = 0;
    loop {
        // std::io::copy between files uses copy_file_range on Linux and
        // falls back to read/write where the kernel refuses.
        let n = std::io::copy(&mut src.take(chunk), dst)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        progress.add(n);
        limiter.consume(n);
    }
}

/// `--paranoid`: compare 1 MiB chunks, rewrite only those that differ.
fn delta_copy(
    src: &File,
    dst: &File,
    size: u64,
    limiter: &Limiter,
    progress: &ProgressCounter,
    stats: &mut CopyStats,
) -> std::io::Result<u64> {
    let mut theirs = vec![0u8; SMALL_CHUNK as usize];
    let mut ours = vec![0u8; SMALL_CHUNK as usize];
    let mut offset = 0u64;
    let mut written = 0u64;
    while offset < size {
        let want = (size - offset).min(SMALL_CHUNK) as usize;
        let n = read_full_at(src, &mut theirs[..want], offset)?;
        if n == 0 {
            break;
        }
        let m = read_full_at(dst, &mut ours[..n], offset)?;
        if m != n || theirs[..n] != ours[..n] {
            dst.write_all_at(&theirs[..n], offset)?;
            written += n as u64;
            limiter.consume(n as u64);
        } else {
            stats.matched += n as u64;
        }
        progress.add(n as u64);
        offset += n as u64;
    }
    dst.set_len(offset)?;
    Ok(written)
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Removes a file, symlink or directory tree; absent is fine.
pub fn remove_any(path: &Path) -> Result<()> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    match result {
        Err(e) if e.kind() != IoKind::NotFound => {
            Err(CloneError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fileset::ModuleKind;

    fn module(src: &Path, dst: &Path) -> Module {
        Module {
            name: "base".into(),
            kind: ModuleKind::Base,
            source: src.to_owned(),
            target: dst.to_owned(),
            prune: vec![],
        }
    }

    #[test]
    fn copies_keep_mode_and_ns_mtime_and_quick_check_skips_unchanged() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/f"), vec![7u8; 3 << 20]).unwrap();
        std::fs::set_permissions(src.path().join("d/f"), Permissions::from_mode(0o640)).unwrap();
        std::fs::create_dir(dst.path().join("d")).unwrap();
        let m = module(src.path(), dst.path());
        let files: Vec<Entry> = walk(src.path(), &[])
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EntryKind::File)
            .collect();
        let t = LocalTransport::new();
        let progress = ProgressCounter::new(Some(3 << 20));
        let req = CopyRequest {
            module: &m,
            files: &files,
            whole_file: true,
            paranoid: false,
        };
        let limiter = Limiter::new(None);
        let s = t.copy_batch(&req, &limiter, &progress).unwrap();
        assert_eq!(
            (s.files, s.created, s.transferred, s.literal),
            (1, 1, 1, 3 << 20)
        );
        assert_eq!(progress.done(), 3 << 20);
        let a = std::fs::metadata(src.path().join("d/f")).unwrap();
        let b = std::fs::metadata(dst.path().join("d/f")).unwrap();
        assert_eq!(mtime_ns(&a), mtime_ns(&b));
        assert_eq!(b.mode() & 0o777, 0o640);
        // Unchanged: nothing written.
        let s = t
            .copy_batch(&req, &limiter, &ProgressCounter::new(None))
            .unwrap();
        assert_eq!((s.transferred, s.literal, s.matched), (0, 0, 3 << 20));
        // Same size and mtime, other content: only --paranoid sees it.
        let f = OpenOptions::new()
            .write(true)
            .open(dst.path().join("d/f"))
            .unwrap();
        f.write_all_at(b"xx", 5).unwrap();
        f.set_modified(system_time(mtime_ns(&a))).unwrap();
        drop(f);
        let s = t
            .copy_batch(&req, &limiter, &ProgressCounter::new(None))
            .unwrap();
        assert_eq!(s.literal, 0);
        let paranoid = CopyRequest {
            paranoid: true,
            ..req
        };
        let s = t
            .copy_batch(&paranoid, &limiter, &ProgressCounter::new(None))
            .unwrap();
        assert_eq!((s.literal, s.matched), (1 << 20, 2 << 20));
        assert_eq!(
            std::fs::read(src.path().join("d/f")).unwrap(),
            std::fs::read(dst.path().join("d/f")).unwrap()
        );
        // Vanished sources are counted and their stale copies removed.
        std::fs::remove_file(src.path().join("d/f")).unwrap();
        let s = t
            .copy_batch(&req, &limiter, &ProgressCounter::new(None))
            .unwrap();
        assert_eq!(s.vanished, vec![PathBuf::from("d/f")]);
        assert!(!dst.path().join("d/f").exists());
    }
}
