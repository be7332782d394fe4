//! Private temp dirs with short names (Unix socket paths must stay under 107 bytes).

use tempfile::TempDir;

use crate::error::{Error, Result};

/// A fresh directory `/tmp/<prefix>XXXXXX`, removed when the guard drops.
pub(crate) fn scratch_dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(6)
        .tempdir_in("/tmp")
        .map_err(|e| Error::io(format!("creating a temp dir /tmp/{prefix}*"), e))
}

/// Removes a scratch dir, reporting (not panicking on) failure: this runs in `Drop`.
pub(crate) fn remove_scratch_dir(dir: Option<TempDir>) {
    if let Some(dir) = dir {
        let path = dir.path().to_owned();
        if let Err(e) = dir.close() {
            eprintln!("testkit: removing {}: {e}", path.display());
        }
    }
}
