//! The multicall names: which tool pgtandem impersonates when started through a
//! symlink. Names and version lines are part of the compatibility contract
//! (pinned by `tests/golden/drop_ins.txt`).

use std::ffi::OsStr;
use std::path::Path;

use crate::version::{PGTANDEM_VERSION, build_date, git_commit};

/// The reference pgclone release whose behaviour `pgclone` reproduces.
pub const PGCLONE_REFERENCE_VERSION: &str = "1.5.0";

/// A tool that pgtandem replaces, reachable as a symlink named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropIn {
    Pgclone,
    SteepRepl,
    PgBootstrapSync,
    PgEtcd,
    EtcdFdw,
}

/// The pgtandem capability a drop-in name maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `pgtandem clone`
    Clone,
    /// `pgtandem daemon|tls|node|init|schema|snapshot|merge|analyze-overlap`
    Node,
    /// `pgtandem bootstrap`
    Bootstrap,
    /// `pgtandem etcd-sync`
    EtcdSync,
}

impl Capability {
    /// The `pgtandem` subcommand (or command family) this capability lives under.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Clone => "clone",
            Capability::Node => "node",
            Capability::Bootstrap => "bootstrap",
            Capability::EtcdSync => "etcd-sync",
        }
    }
}

impl DropIn {
    /// Every drop-in, in the order `install-links` creates them.
    pub const ALL: [DropIn; 5] = [
        DropIn::Pgclone,
        DropIn::SteepRepl,
        DropIn::PgBootstrapSync,
        DropIn::PgEtcd,
        DropIn::EtcdFdw,
    ];

    /// The executable name users and scripts call.
    pub fn name(self) -> &'static str {
        match self {
            DropIn::Pgclone => "pgclone",
            DropIn::SteepRepl => "steep-repl",
            DropIn::PgBootstrapSync => "pg-bootstrap-sync",
            DropIn::PgEtcd => "pg_etcd",
            DropIn::EtcdFdw => "etcd_fdw",
        }
    }

    pub fn capability(self) -> Capability {
        match self {
            DropIn::Pgclone => Capability::Clone,
            DropIn::SteepRepl => Capability::Node,
            DropIn::PgBootstrapSync => Capability::Bootstrap,
            DropIn::PgEtcd | DropIn::EtcdFdw => Capability::EtcdSync,
        }
    }

    /// Exact `--version` output (without the trailing newline).
    pub fn version_text(self) -> String {
        match self {
            DropIn::Pgclone => {
                format!("pgclone version {PGCLONE_REFERENCE_VERSION} (pgtandem {PGTANDEM_VERSION})")
            }
            DropIn::PgEtcd | DropIn::EtcdFdw => etcd_style_version(self.name()),
            DropIn::SteepRepl | DropIn::PgBootstrapSync => {
                format!("{} version {PGTANDEM_VERSION}", self.name())
            }
        }
    }

    /// Exit code for a command-line parse error, as each reference tool had it
    /// (help and version always exit 0).
    pub fn parse_error_exit_code(self) -> u8 {
        match self {
            DropIn::Pgclone | DropIn::PgBootstrapSync | DropIn::PgEtcd | DropIn::EtcdFdw => 1,
            // node-init §2.1: 2 = bad arguments.
            DropIn::SteepRepl => 2,
        }
    }

    /// The drop-in named by `argv[0]`'s basename, or `None` for `pgtandem` and
    /// any other name (which get the full command tree).
    pub fn from_argv0(argv0: &OsStr) -> Option<DropIn> {
        let base = Path::new(argv0).file_name()?.to_str()?;
        DropIn::ALL.into_iter().find(|d| d.name() == base)
    }
}

/// pg_etcd's version block: `<name> version <ver>`, then `commit:` and `built:`.
pub fn etcd_style_version(name: &str) -> String {
    format!(
        "{name} version {PGTANDEM_VERSION}\ncommit: {}\nbuilt: {}",
        git_commit(),
        build_date()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_basename_selects_the_drop_in() {
        assert_eq!(
            DropIn::from_argv0(OsStr::new("/usr/local/bin/pgclone")),
            Some(DropIn::Pgclone)
        );
        assert_eq!(
            DropIn::from_argv0(OsStr::new("pg_etcd")),
            Some(DropIn::PgEtcd)
        );
        assert_eq!(
            DropIn::from_argv0(OsStr::new("./etcd_fdw")),
            Some(DropIn::EtcdFdw)
        );
        assert_eq!(DropIn::from_argv0(OsStr::new("/x/pgtandem")), None);
        assert_eq!(DropIn::from_argv0(OsStr::new("pgclone.sh")), None);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        for d in DropIn::ALL {
            assert_eq!(DropIn::from_argv0(OsStr::new(d.name())), Some(d));
        }
    }
}
