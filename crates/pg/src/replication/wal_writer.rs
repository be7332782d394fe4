//! Writes streamed WAL into a directory the way `pg_receivewal` and
//! `pg_basebackup -X stream` do, so the directory can serve as a standby's
//! `pg_wal`: `<seg>.partial` zero-filled to the segment size, renamed to
//! `<seg>` once complete and durable, then `archive_status/<seg>.done`.
//!
//! File I/O that may block for long (zero-filling, fsync, rename) runs on
//! tokio's blocking pool; writes of streamed bytes go to the page cache
//! inline.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgtandem_core::lsn::Lsn;

/// Suffix of a segment still being written.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Subdirectory where PostgreSQL tracks archiving; `.done` = nothing to do.
pub const ARCHIVE_STATUS_DIR: &str = "archive_status";

/// Chunk size for zero-filling a new segment.
const ZERO_CHUNK: usize = 1 << 20;

/// A failed file operation with what we were doing.
#[derive(Debug)]
pub(crate) struct DiskError {
    pub(crate) context: String,
    pub(crate) source: io::Error,
}

type DiskResult<T> = std::result::Result<T, DiskError>;

fn disk(context: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let context = context.into();
    move |source| DiskError { context, source }
}

/// The segment currently being written.
struct OpenSegment {
    file: Arc<File>,
    start: Lsn,
    name: String,
}

/// Writes contiguous WAL of one timeline into `dir`.
pub(crate) struct WalDirWriter {
    dir: PathBuf,
    timeline: u32,
    segment_size: u64,
    current: Option<OpenSegment>,
    written: Lsn,
    flushed: Lsn,
    completed_segments: u64,
}

impl WalDirWriter {
    /// Prepares `dir` (and `archive_status/`) for WAL starting at `start`,
    /// which must be a segment start.
    pub(crate) async fn create(
        dir: &Path,
        timeline: u32,
        segment_size: u64,
        start: Lsn,
    ) -> DiskResult<Self> {
        let status = dir.join(ARCHIVE_STATUS_DIR);
        blocking(move || {
            fs::create_dir_all(&status)
                .map_err(disk(format!("could not create {}", status.display())))
        })
        .await?;
        Ok(Self {
            dir: dir.to_owned(),
            timeline,
            segment_size,
            current: None,
            written: start,
            flushed: start,
            completed_segments: 0,
        })
    }

    /// End of the WAL written so far.
    pub(crate) fn written(&self) -> Lsn {
        self.written
    }

    /// End of the WAL that is durable on disk.
    pub(crate) fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Whether some written WAL is not yet fsynced.
    pub(crate) fn dirty(&self) -> bool {
        self.written > self.flushed
    }

    pub(crate) fn completed_segments(&self) -> u64 {
        self.completed_segments
    }

    /// Path of the `.partial` being written, if any.
    pub(crate) fn partial_path(&self) -> Option<PathBuf> {
        self.current
            .as_ref()
            .map(|s| self.dir.join(format!("{}{PARTIAL_SUFFIX}", s.name)))
    }

    /// Appends `data` at [`Self::written`]; completes (fsync, rename, fsync
    /// dir, `.done`) every segment it fills. Returns how many it completed.
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> DiskResult<u64> {
        let mut completed = 0;
        while !data.is_empty() {
            if self.current.is_none() {
                self.open_segment().await?;
            }
            let Some(segment) = &self.current else {
                break;
            };
            let offset = self.written.saturating_sub(segment.start);
            let room = self.segment_size - offset;
            let n = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            let (chunk, rest) = data.split_at(n);
            segment
                .file
                .write_all_at(chunk, offset)
                .map_err(disk(format!(
                    "could not write to WAL file \"{}{PARTIAL_SUFFIX}\"",
                    segment.name
                )))?;
            self.written = Lsn(self.written.0 + n as u64);
            data = rest;
            if self.written.saturating_sub(segment.start) == self.segment_size {
                self.complete_segment().await?;
                completed += 1;
            }
        }
        Ok(completed)
    }

    /// fsyncs the current `.partial` if anything was written since the last
    /// fsync. Returns whether the durable position moved.
    pub(crate) async fn flush(&mut self) -> DiskResult<bool> {
        if !self.dirty() {
            return Ok(false);
        }
        if let Some(segment) = &self.current {
            let file = segment.file.clone();
            let context = format!(
                "could not fsync WAL file \"{}{PARTIAL_SUFFIX}\"",
                segment.name
            );
            blocking(move || file.sync_data().map_err(disk(context))).await?;
        }
        self.flushed = self.written;
        Ok(true)
    }

    /// Writes a timeline history file (`<TLI>.history`) durably and marks it
    /// archived, as `pg_basebackup -X stream` does before any WAL of it.
    pub(crate) async fn write_history(&self, filename: &str, content: &str) -> DiskResult<()> {
        let dir = self.dir.clone();
        let name = filename.to_owned();
        let content = content.as_bytes().to_vec();
        blocking(move || {
            let tmp = dir.join(format!("{name}.tmp"));
            let path = dir.join(&name);
            let mut file =
                File::create(&tmp).map_err(disk(format!("could not create {}", tmp.display())))?;
            file.write_all(&content)
                .and_then(|()| file.sync_all())
                .map_err(disk(format!("could not write {}", tmp.display())))?;
            fs::rename(&tmp, &path).map_err(disk(format!("could not rename {}", tmp.display())))?;
            fsync_dir(&dir)?;
            mark_done(&dir, &name)
        })
        .await
    }

    async fn open_segment(&mut self) -> DiskResult<()> {
        let start = self.written.segment_start(self.segment_size);
        let name = start.wal_file_name(self.timeline, self.segment_size);
        let path = self.dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let dir = self.dir.clone();
        let size = self.segment_size;
        let file = blocking(move || {
            let context = format!("could not create WAL file {}", path.display());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(disk(context.clone()))?;
            // Real zeros, not a sparse file: later writes then need no block
            // allocation, and a crash never leaves garbage past the data.
            zero_fill(&file, size).map_err(disk(context.clone()))?;
            file.sync_all().map_err(disk(context))?;
            fsync_dir(&dir)?;
            Ok(file)
        })
        .await?;
        tracing::debug!(segment = %name, "WAL segment opened");
        self.current = Some(OpenSegment {
            file: Arc::new(file),
            start,
            name,
        });
        Ok(())
    }

    async fn complete_segment(&mut self) -> DiskResult<()> {
        let Some(segment) = self.current.take() else {
            return Ok(());
        };
        let dir = self.dir.clone();
        let name = segment.name.clone();
        blocking(move || {
            let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
            segment
                .file
                .sync_all()
                .map_err(disk(format!("could not fsync {}", partial.display())))?;
            fs::rename(&partial, dir.join(&name))
                .map_err(disk(format!("could not rename {}", partial.display())))?;
            fsync_dir(&dir)?;
            mark_done(&dir, &name)
        })
        .await?;
        self.flushed = self.written;
        self.completed_segments += 1;
        tracing::debug!(segment = %segment.name, "WAL segment complete");
        Ok(())
    }
}

/// fsyncs `<dir>/<name>.partial` and renames it to `<dir>/<name>`, then
/// fsyncs the directory. No `.done` is created: like `pg_basebackup`, an
/// incomplete segment is left for the standby to finish and archive.
pub(crate) fn finish_partial_file(partial: &Path) -> DiskResult<PathBuf> {
    let final_path = partial.with_extension("");
    if partial.extension().and_then(|e| e.to_str()) != Some(&PARTIAL_SUFFIX[1..]) {
        return Err(DiskError {
            context: format!("{} is not a .partial WAL file", partial.display()),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(disk(format!("could not fsync {}", partial.display())))?;
    fs::rename(partial, &final_path)
        .map_err(disk(format!("could not rename {}", partial.display())))?;
    if let Some(dir) = final_path.parent() {
        fsync_dir(dir)?;
    }
    Ok(final_path)
}

fn zero_fill(file: &File, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let n = usize::try_from(size - offset).map_or(ZERO_CHUNK, |left| left.min(ZERO_CHUNK));
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

fn mark_done(dir: &Path, name: &str) -> DiskResult<()> {
    let status = dir.join(ARCHIVE_STATUS_DIR);
    let done = status.join(format!("{name}.done"));
    File::create(&done)
        .and_then(|f| f.sync_all())
        .map_err(disk(format!("could not create {}", done.display())))?;
    fsync_dir(&status)
}

fn fsync_dir(dir: &Path) -> DiskResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(disk(format!("could not fsync directory {}", dir.display())))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DiskResult<T> + Send + 'static,
) -> DiskResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(DiskError {
            context: "file I/O task failed".into(),
            source: io::Error::other(e.to_string()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    #[tokio::test]
    async fn segments_complete_across_writes_and_partials_finish() {
        let dir = tempfile::tempdir().unwrap();
        let start = Lsn(5 * SEG);
        let mut w = WalDirWriter::create(dir.path(), 2, SEG, start)
            .await
            .unwrap();
        let first: Vec<u8> = (0..SEG + 100).map(|i| (i % 251) as u8 + 1).collect();
        assert_eq!(w.write(&first).await.unwrap(), 1);
        assert_eq!(w.written(), Lsn(6 * SEG + 100));
        assert_eq!(w.flushed(), Lsn(6 * SEG), "a completed segment is durable");
        assert!(w.dirty());

        let done = dir.path().join("000000020000000000000005");
        assert_eq!(fs::read(&done).unwrap(), &first[..SEG as usize]);
        assert!(
            dir.path()
                .join("archive_status/000000020000000000000005.done")
                .exists()
        );

        let partial = w.partial_path().unwrap();
        assert_eq!(partial, dir.path().join("000000020000000000000006.partial"));
        let bytes = fs::read(&partial).unwrap();
        assert_eq!(bytes.len() as u64, SEG, "zero-filled to the segment size");
        assert_eq!(&bytes[..100], &first[SEG as usize..]);
        assert!(bytes[100..].iter().all(|&b| b == 0));

        assert!(w.flush().await.unwrap());
        assert!(!w.flush().await.unwrap());
        assert_eq!(w.flushed(), w.written());
        assert_eq!(w.completed_segments(), 1);

        w.write_history(
            "00000002.history",
            "1\t0/5000000\tno recovery target specified\n",
        )
        .await
        .unwrap();
        assert!(
            dir.path()
                .join("archive_status/00000002.history.done")
                .exists()
        );
        assert!(
            fs::read_to_string(dir.path().join("00000002.history"))
                .unwrap()
                .starts_with("1\t")
        );

        let finished = finish_partial_file(&partial).unwrap();
        assert_eq!(finished, dir.path().join("000000020000000000000006"));
        assert!(!partial.exists());
        assert!(
            !dir.path()
                .join("archive_status/000000020000000000000006.done")
                .exists()
        );
        assert!(finish_partial_file(&done).is_err(), "only .partial files");
    }
}
