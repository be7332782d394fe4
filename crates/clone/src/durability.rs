//! Making the replica durable: atomic small-file writes (temp + fsync +
//! rename + dir fsync) and the final parallel fsync of every file and dir.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{CloneError, Result};

/// fsyncs a directory so renames and creations in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| CloneError::io(format!("fsync {}", dir.display()), e))
}

/// Writes `contents` to `path` through `<path>.tmp` and a rename.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = PathBuf::from(format!("{}.pgtandem.tmp", path.display()));
    let io = |e| CloneError::io(format!("writing {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    fsync_dir(path.parent().unwrap_or(Path::new("/")))
}

/// fsyncs every regular file and directory under `roots` (symlinks are not
/// followed; a symlinked waldir or tablespace is passed as its own root),
/// with `parallel` threads.
pub fn fsync_trees(roots: &[PathBuf], parallel: usize) -> Result<()> {
    let mut paths = Vec::new();
    for root in roots {
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let reader = std::fs::read_dir(&dir)
                .map_err(|e| CloneError::io(format!("listing {}", dir.display()), e))?;
            for item in reader.flatten() {
                let path = item.path();
                match item.file_type() {
                    Ok(t) if t.is_dir() => stack.push(path),
                    Ok(t) if t.is_file() => paths.push(path),
                    _ => {}
                }
            }
            paths.push(dir);
        }
    }
    let work = Mutex::new(paths);
    let failure: Mutex<Option<CloneError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                loop {
                    let next = work.lock().ok().and_then(|mut w| w.pop());
                    let Some(path) = next else { break };
                    let synced = File::open(&path).and_then(|f| f.sync_all());
                    if let Err(e) = synced
                        && let Ok(mut f) = failure.lock()
                    {
                        f.get_or_insert(CloneError::io(format!("fsync {}", path.display()), e));
                        break;
                    }
                }
            });
        }
    });
    match failure.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
