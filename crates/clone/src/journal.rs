//! `pgtandem_clone.state` (clone.md §3.5): a JSON Lines journal in the
//! replica PGDATA. The first line names the primary; every later line is a
//! file copied **and fsynced**, so `--resume` can skip it without asking the
//! primary. Written before the copy and removed only after `pg_control` is
//! in place, so a journal without `global/pg_control` marks an interrupted
//! clone.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use pgtandem_core::error::ErrorKind;
use serde::{Deserialize, Serialize};

use crate::error::{CloneError, Result};

/// The journal's file name in the replica PGDATA.
pub const JOURNAL_FILE: &str = "pgtandem_clone.state";

/// Identity of the clone in progress (first line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHeader {
    pub system_id: String,
    pub timeline: u32,
    pub major: u32,
    pub transport: String,
}

/// One copied and fsynced file: module, path, size and ns mtime as copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub m: String,
    pub p: String,
    pub s: u64,
    pub t: i64,
}

/// `(module, path)` → `(size, mtime_ns)` of journalled files.
pub type Completed = HashMap<(String, String), (u64, i64)>;

/// Whether a previous clone into `pgdata` was interrupted.
pub fn interrupted(pgdata: &Path) -> bool {
    pgdata.join(JOURNAL_FILE).exists() && !pgdata.join(crate::fileset::PG_CONTROL).exists()
}

/// Reads a journal; `Cannot resume: …` if it is missing, unreadable or
/// belongs to another cluster or major version.
pub fn load_for_resume(pgdata: &Path, expected: &JournalHeader) -> Result<Completed> {
    let cannot =
        |reason: String| CloneError::refused(ErrorKind::Config, format!("Cannot resume: {reason}"));
    let path = pgdata.join(JOURNAL_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|_| cannot(format!("no journal {}", path.display())))?;
    let mut lines = text.lines();
    let header: JournalHeader = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| cannot(format!("unreadable journal {}", path.display())))?;
    if header.system_id != expected.system_id {
        return Err(cannot(format!(
            "the journal belongs to system {}, the primary is {}",
            header.system_id, expected.system_id
        )));
    }
    if header.major != expected.major {
        return Err(cannot(format!(
            "the journal is from PostgreSQL {}, the primary runs {}",
            header.major, expected.major
        )));
    }
    // A torn last line (crash while appending) is simply not trusted.
    Ok(lines
        .filter_map(|l| serde_json::from_str::<FileRecord>(l).ok())
        .map(|r| ((r.m, r.p), (r.s, r.t)))
        .collect())
}

/// The open journal, appended to by copy workers.
#[derive(Debug)]
pub struct Journal {
    file: Mutex<File>,
}

impl Journal {
    /// Writes (and fsyncs) a fresh journal: the header, then `carried`
    /// records of an earlier run that `--resume` may still use.
    pub fn create(pgdata: &Path, header: &JournalHeader, carried: &Completed) -> Result<Self> {
        let path = pgdata.join(JOURNAL_FILE);
        let io = |e| CloneError::io(format!("writing {}", path.display()), e);
        let mut text = encode(header)?;
        for ((m, p), (s, t)) in carried {
            text.extend(encode(&FileRecord {
                m: m.clone(),
                p: p.clone(),
                s: *s,
                t: *t,
            })?);
        }
        let mut f = File::create(&path).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        crate::durability::fsync_dir(pgdata)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends records and fsyncs the journal.
    pub fn append(&self, records: &[FileRecord]) -> Result<()> {
        let mut text = Vec::new();
        for r in records {
            text.extend(encode(r)?);
        }
        let mut f = self
            .file
            .lock()
            .map_err(|_| CloneError::transport("journal lock poisoned"))?;
        f.write_all(&text)
            .and_then(|()| f.sync_data())
            .map_err(|e| CloneError::io(format!("appending to {JOURNAL_FILE}"), e))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)
        .map_err(|e| CloneError::transport(format!("encoding the journal: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// Removes the journal (the clone is complete).
pub fn finish(pgdata: &Path) -> Result<()> {
    let path = pgdata.join(JOURNAL_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(CloneError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(system_id: &str, major: u32) -> JournalHeader {
        JournalHeader {
            system_id: system_id.into(),
            timeline: 1,
            major,
            transport: "local".into(),
        }
    }

    #[test]
    fn journal_round_trip_and_resume_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_for_resume(dir.path(), &header("1", 15)).unwrap_err();
        assert!(
            e.to_string().starts_with("Cannot resume: no journal"),
            "{e}"
        );
        let j = Journal::create(dir.path(), &header("1", 15), &Completed::new()).unwrap();
        j.append(&[FileRecord {
            m: "base".into(),
            p: "5/16384".into(),
            s: 8192,
            t: 42,
        }])
        .unwrap();
        drop(j);
        // A torn tail is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        f.write_all(b"{\"m\":\"base\",\"p\":").unwrap();
        let done = load_for_resume(dir.path(), &header("1", 15)).unwrap();
        assert_eq!(
            done.get(&("base".to_owned(), "5/16384".to_owned())),
            Some(&(8192, 42))
        );
        assert_eq!(done.len(), 1);
        let e = load_for_resume(dir.path(), &header("2", 15)).unwrap_err();
        assert!(e.to_string().contains("belongs to system 1"), "{e}");
        let e = load_for_resume(dir.path(), &header("1", 18)).unwrap_err();
        assert!(e.to_string().contains("PostgreSQL 15"), "{e}");
        // Carried records survive a fresh journal.
        let j = Journal::create(dir.path(), &header("1", 15), &done).unwrap();
        drop(j);
        assert_eq!(load_for_resume(dir.path(), &header("1", 15)).unwrap(), done);
        assert!(interrupted(dir.path()));
        finish(dir.path()).unwrap();
        assert!(!interrupted(dir.path()));
    }
}
