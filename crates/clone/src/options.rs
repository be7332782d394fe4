//! What one clone run is asked to do, independent of the command-line
//! grammar that produced it (the CLI maps pgclone flags onto this).

use std::path::PathBuf;
use std::time::Duration;

/// How PGDATA files travel from the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Throw-away rsync daemon on the primary over SSH (pgclone's way).
    Rsync,
    /// Same host, run as the primary's OS user.
    Local,
}

impl TransportKind {
    /// Name used in the journal and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Rsync => "rsync",
            TransportKind::Local => "local",
        }
    }
}

/// Who captures WAL during the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMethod {
    Native,
    PgReceivewal,
}

/// Human progress rendering on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Bar iff stdout is a terminal.
    Auto,
    Bar,
    Plain,
    None,
}

/// One `--tablespace-mapping OLD=NEW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceMapping {
    pub old: PathBuf,
    pub new: PathBuf,
}

/// Everything the engine needs; secrets come from the environment
/// (`PGPASSWORD`, `.pgpass`), never from here.
#[derive(Debug, Clone)]
pub struct CloneOptions {
    pub pghost: String,
    pub pgport: u16,
    pub pguser: String,
    pub primary_pgdata: PathBuf,
    pub replica_pgdata: PathBuf,
    /// `None` = `<replica>/pg_wal` as a real directory.
    pub replica_waldir: Option<PathBuf>,
    pub ssh_key: Option<PathBuf>,
    pub ssh_user: Option<String>,
    pub ssh_port: Option<u16>,
    pub ssh_options: Vec<String>,
    pub insecure_ssh: bool,
    pub temp_waldir: Option<PathBuf>,
    /// Copy workers for the whole clone.
    pub parallel: usize,
    pub paranoid: bool,
    pub drop_existing: bool,
    pub verbose: bool,
    pub keep_run_tmp: bool,
    /// Persistent slot `pgclone_<pid>` instead of a temporary one.
    pub slot: bool,
    /// Native capture without any slot.
    pub no_slot: bool,
    pub bypass_rep_traffic: bool,
    pub progress: ProgressStyle,
    pub progress_interval: Duration,
    /// Aggregate bytes/s.
    pub limit_net_bw: Option<u64>,
    pub transport: TransportKind,
    pub wal_method: WalMethod,
    pub write_standby_config: bool,
    pub standby_slot: Option<String>,
    pub start: bool,
    pub standby_port: Option<u16>,
    pub pg_bindir: Option<PathBuf>,
    pub tablespace_mappings: Vec<TablespaceMapping>,
    pub json: bool,
    pub resume: bool,
    pub no_sync: bool,
}

impl CloneOptions {
    /// Defaults for a local clone; tests and the CLI adjust fields.
    pub fn new(
        pghost: impl Into<String>,
        pguser: impl Into<String>,
        primary_pgdata: impl Into<PathBuf>,
        replica_pgdata: impl Into<PathBuf>,
    ) -> Self {
        Self {
            pghost: pghost.into(),
            pgport: 5432,
            pguser: pguser.into(),
            primary_pgdata: primary_pgdata.into(),
            replica_pgdata: replica_pgdata.into(),
            replica_waldir: None,
            ssh_key: None,
            ssh_user: None,
            ssh_port: None,
            ssh_options: Vec::new(),
            insecure_ssh: false,
            temp_waldir: None,
            parallel: 2,
            paranoid: false,
            drop_existing: false,
            verbose: false,
            keep_run_tmp: false,
            slot: false,
            no_slot: false,
            bypass_rep_traffic: false,
            progress: ProgressStyle::None,
            progress_interval: Duration::from_secs(30),
            limit_net_bw: None,
            transport: TransportKind::Local,
            wal_method: WalMethod::Native,
            write_standby_config: false,
            standby_slot: None,
            start: false,
            standby_port: None,
            pg_bindir: None,
            tablespace_mappings: Vec::new(),
            json: false,
            resume: false,
            no_sync: false,
        }
    }

    /// The replica waldir: `--replica-waldir` with one trailing `/` stripped,
    /// or `None` when it is the default `<replica>/pg_wal`.
    pub fn separate_waldir(&self) -> Option<PathBuf> {
        let dir = self.replica_waldir.as_ref()?;
        let text = dir.to_string_lossy();
        let trimmed = text
            .strip_suffix('/')
            .filter(|t| !t.is_empty())
            .unwrap_or(&text);
        let dir = PathBuf::from(trimmed);
        (dir != self.replica_pgdata.join("pg_wal")).then_some(dir)
    }
}
