//! The file set of a clone (clone.md §3.2): modules, listed entries and the
//! exclusions every transport shares, so what is copied never depends on how.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A copy unit: `pgdata`, `base` or one `spc_<oid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// pgclone's module name.
    pub name: String,
    pub kind: ModuleKind,
    /// Root on the primary.
    pub source: PathBuf,
    /// Root on the replica.
    pub target: PathBuf,
    /// Relative directories the listing must not enter at all.
    pub prune: Vec<PathBuf>,
}

/// What a module's root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModuleKind {
    /// PGDATA minus `base/` and `pg_wal/`.
    Pgdata,
    /// `PGDATA/base`.
    Base,
    /// A tablespace location.
    Tablespace { oid: u32 },
}

/// What a listed path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
}

/// One listed path, relative to its module root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Permission bits.
    pub mode: u32,
}

/// The control file, written last from the post-backup copy.
pub const PG_CONTROL: &str = "global/pg_control";
/// Where the post-backup `pg_control` waits for the final rename.
pub const PG_CONTROL_TMP: &str = "global/pg_control.pgtandem.tmp";

/// Top-level PGDATA files never copied (pgclone's list plus pg_basebackup's).
const SKIPPED_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "standby.signal",
    "recovery.signal",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    crate::journal::JOURNAL_FILE,
    crate::standby::START_LOG,
];

/// Top-level directories whose contents are runtime state: recreated empty.
pub const EMPTIED_DIRS: &[&str] = &[
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files the copy itself must never delete or overwrite in a module's target.
pub fn protected_on_target(kind: ModuleKind, path: &Path) -> bool {
    if kind != ModuleKind::Pgdata {
        return false;
    }
    let depth = path.components().count();
    match first_component(path).as_str() {
        // WAL capture and the `base` module own these subtrees.
        "pg_wal" | "base" => true,
        // Tablespace links are recreated from the mapping.
        "pg_tblspc" => depth >= 2,
        _ => {
            path == Path::new(crate::journal::JOURNAL_FILE)
                || path == Path::new(PG_CONTROL)
                || path == Path::new(PG_CONTROL_TMP)
        }
    }
}

fn first_component(path: &Path) -> String {
    path.components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Applies the exclusions of §3.2 to a module's listing.
pub fn apply_exclusions(kind: ModuleKind, entries: Vec<Entry>) -> Vec<Entry> {
    // Unlogged relations: `<rfn>_init` beside them marks every other fork.
    let mut init_forks: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for e in &entries {
        if let (Some(name), Some(parent)) = (e.path.file_name(), e.path.parent())
            && let Some((rfn, Some("init"), _)) = relation_name(&name.to_string_lossy())
        {
            init_forks
                .entry(parent.to_owned())
                .or_default()
                .insert(rfn.to_owned());
        }
    }
    // Excluded directories drop their whole subtree.
    let mut dropped_dirs: Vec<PathBuf> = Vec::new();
    entries
        .into_iter()
        .filter(|e| {
            if dropped_dirs.iter().any(|d| e.path.starts_with(d)) {
                return false;
            }
            let keep = keep_entry(kind, e, &init_forks);
            if !keep && e.kind == EntryKind::Dir {
                dropped_dirs.push(e.path.clone());
            }
            keep
        })
        .collect()
}

fn keep_entry(kind: ModuleKind, e: &Entry, init_forks: &HashMap<PathBuf, HashSet<String>>) -> bool {
    let name = e
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("pgsql_tmp") || name == "pg_internal.init" {
        return false;
    }
    let depth = e.path.components().count();
    if kind == ModuleKind::Pgdata {
        let top = first_component(&e.path);
        if depth == 1 {
            if top == "pg_wal" || top == "base" {
                return false;
            }
            if e.kind != EntryKind::Dir
                && (SKIPPED_TOP_FILES.contains(&name.as_str()) || name.ends_with(".tmp"))
            {
                return false;
            }
        } else if EMPTIED_DIRS.contains(&top.as_str()) || top == "pg_wal" || top == "base" {
            return false;
        }
        if e.path == Path::new("global/pg_control") {
            return false;
        }
        // Tablespace links are their own modules; in-place tablespaces stay.
        if top == "pg_tblspc" && depth == 2 && matches!(e.kind, EntryKind::Symlink(_)) {
            return false;
        }
    }
    if e.kind == EntryKind::File
        && let Some((rfn, fork, _)) = relation_name(&name)
    {
        let parent = e.path.parent().unwrap_or(Path::new(""));
        if fork != Some("init") && init_forks.get(parent).is_some_and(|s| s.contains(rfn)) {
            return false;
        }
    }
    if e.kind == EntryKind::File && is_temp_relation(&name) {
        return false;
    }
    true
}

/// `<rfn>[_fork][.seg]` → (rfn, fork, segment).
fn relation_name(name: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let (stem, seg) = match name.split_once('.') {
        Some((s, seg)) if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => {
            (s, Some(seg))
        }
        Some(_) => return None,
        None => (name, None),
    };
    let (rfn, fork) = match stem.split_once('_') {
        Some((r, f @ ("fsm" | "vm" | "init"))) => (r, Some(f)),
        Some(_) => return None,
        None => (stem, None),
    };
    (!rfn.is_empty() && rfn.bytes().all(|b| b.is_ascii_digit())).then_some((rfn, fork, seg))
}

/// Temporary relations: `t<backend>_<rfn>[...]`.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, rel)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && relation_name(rel).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Entry {
        Entry {
            path: p.into(),
            kind: EntryKind::File,
            size: 1,
            mtime_ns: 0,
            mode: 0o600,
        }
    }

    fn dir(p: &str) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            ..file(p)
        }
    }

    fn kept(kind: ModuleKind, list: Vec<Entry>) -> Vec<String> {
        apply_exclusions(kind, list)
            .into_iter()
            .map(|e| e.path.display().to_string())
            .collect()
    }

    #[test]
    fn pgdata_exclusions() {
        let got = kept(
            ModuleKind::Pgdata,
            vec![
                file("PG_VERSION"),
                file("postmaster.pid"),
                file("postmaster.opts"),
                file("standby.signal"),
                file("postgresql.auto.conf"),
                file("postgresql.auto.conf.tmp"),
                dir("global"),
                file("global/pg_control"),
                file("global/1262"),
                file("global/pg_internal.init"),
                dir("pg_replslot"),
                dir("pg_replslot/s1"),
                file("pg_replslot/s1/state"),
                dir("pg_stat_tmp"),
                file("pg_stat_tmp/global.stat"),
                dir("pg_wal"),
                file("pg_wal/000000010000000000000001"),
                dir("pg_tblspc"),
                Entry {
                    kind: EntryKind::Symlink("/ts".into()),
                    ..file("pg_tblspc/16400")
                },
                dir("pg_tblspc/16401"),
                dir("pgsql_tmp"),
                file("pgsql_tmp/x"),
            ],
        );
        assert_eq!(
            got,
            [
                "PG_VERSION",
                "postgresql.auto.conf",
                "global",
                "global/1262",
                "pg_replslot",
                "pg_stat_tmp",
                "pg_tblspc",
                "pg_tblspc/16401"
            ]
        );
    }

    #[test]
    fn unlogged_and_temporary_relations() {
        let got = kept(
            ModuleKind::Base,
            vec![
                dir("5"),
                file("5/16384"),
                file("5/16384_fsm"),
                file("5/16390"),
                file("5/16390.1"),
                file("5/16390_vm"),
                file("5/16390_init"),
                file("5/t3_16500"),
                file("5/t3_16500_fsm"),
                file("5/pg_filenode.map"),
            ],
        );
        assert_eq!(
            got,
            [
                "5",
                "5/16384",
                "5/16384_fsm",
                "5/16390_init",
                "5/pg_filenode.map"
            ]
        );
    }

    #[test]
    fn protected_paths() {
        for p in [
            "pg_wal",
            "base",
            "pgtandem_clone.state",
            "global/pg_control",
            "pg_tblspc/1",
        ] {
            assert!(protected_on_target(ModuleKind::Pgdata, Path::new(p)), "{p}");
        }
        for p in ["pg_tblspc", "global/1262", "pg_replslot/x"] {
            assert!(
                !protected_on_target(ModuleKind::Pgdata, Path::new(p)),
                "{p}"
            );
        }
        assert!(!protected_on_target(ModuleKind::Base, Path::new("pg_wal")));
    }
}
