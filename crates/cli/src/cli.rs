//! The command trees: `pgtandem`'s full tree and the trees each drop-in name
//! exposes (`steep-repl`, `pg-bootstrap-sync`, `pg_etcd`/`etcd_fdw`; `pgclone`
//! has its own hand-rolled grammar in `pgclone_args`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::commands::bootstrap::{BootstrapAction, BootstrapArgs, BootstrapCommand};
use crate::commands::daemon::{DaemonCommand, HealthArgs};
use crate::commands::etcd_sync::EtcdSyncCommand;
use crate::commands::install_links::InstallLinksArgs;
use crate::commands::node_init::{
    AnalyzeOverlapArgs, InitCommand, MergeArgs, SchemaCommand, SnapshotCommand, TopArgs,
};
use crate::commands::node_schema::InstallSchemaArgs;
use crate::commands::tls::TlsCommand;
use crate::version::PGTANDEM_VERSION;

/// `--version` text of the Go tools is `<name> version <ver>`; clap prints
/// `<name> <version>`, so the word goes into the version string.
const GO_STYLE_VERSION: &str = concat!("version ", env!("CARGO_PKG_VERSION"));

/// Flags every node/daemon command accepts, before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Config file (TOML [repl], or the reference's YAML repl:)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Debug logging
    #[arg(long, global = true)]
    pub debug: bool,
}

/// `pgtandem`: every capability under one command tree.
#[derive(Debug, Parser)]
#[command(
    name = "pgtandem",
    version = PGTANDEM_VERSION,
    about = "Move PostgreSQL data between servers: physical clones, logical node init, \
             dump bootstrap into Kasho, etcd sync",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct PgtandemCli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a physical standby from a running primary (same flags as pgclone; see `pgtandem clone --help`)
    #[command(disable_help_flag = true)]
    Clone(CloneRawArgs),
    /// Node daemon: run it, manage its service, query health
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Node schema management
    #[command(subcommand)]
    Node(NodeCommand),
    /// Certificates for daemon mTLS
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Same as `daemon health`
    Health(HealthArgs),
    /// Node initialization
    #[command(subcommand)]
    Init(InitCommand),
    /// Schema fingerprints
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Two-phase snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Bidirectional merge of overlapping tables
    Merge(MergeArgs),
    /// Count matches and conflicts between two nodes
    AnalyzeOverlap(AnalyzeOverlapArgs),
    /// Live view of nodes and snapshots
    Top(TopArgs),
    /// Load a pg_dump into Kasho's Redis change buffer (pg-bootstrap-sync)
    Bootstrap(BootstrapCommand),
    /// etcd <-> PostgreSQL key/value sync (pg_etcd)
    EtcdSync(EtcdSyncCommand),
    /// Create the drop-in symlinks (pgclone, steep-repl, pg-bootstrap-sync, pg_etcd, etcd_fdw) in DIR
    InstallLinks(InstallLinksArgs),
}

/// `pgtandem clone` arguments, handed verbatim to the pgclone grammar.
#[derive(Debug, Args)]
pub struct CloneRawArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// `pgtandem node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Install the steep_repl schema with plain SQL (managed PostgreSQL)
    InstallSchema(InstallSchemaArgs),
}

/// `steep-repl`: the reference daemon's tree, with its init commands reachable
/// both as `node <cmd>` (reference) and `init <cmd>`.
#[derive(Debug, Parser)]
#[command(
    name = "steep-repl",
    version = GO_STYLE_VERSION,
    disable_version_flag = true,
    about = "Steep bidirectional replication daemon (pgtandem)",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct SteepReplCli {
    /// Print version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    pub version: Option<bool>,
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: SteepReplCommand,
}

// Parsed once per process; boxing variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SteepReplCommand {
    #[command(flatten)]
    Daemon(DaemonCommand),
    /// Certificates for daemon mTLS
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Node initialization and schema install
    #[command(subcommand)]
    Node(SteepReplNodeCommand),
    /// Node initialization
    #[command(subcommand)]
    Init(InitCommand),
    /// Schema fingerprints
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Two-phase snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Bidirectional merge of overlapping tables
    Merge(MergeArgs),
    /// Count matches and conflicts between two nodes
    AnalyzeOverlap(AnalyzeOverlapArgs),
    /// Live view of nodes and snapshots
    Top(TopArgs),
}

// Parsed once per process; boxing variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SteepReplNodeCommand {
    #[command(flatten)]
    Init(InitCommand),
    /// Install the steep_repl schema with plain SQL (managed PostgreSQL)
    InstallSchema(InstallSchemaArgs),
}

/// `pg-bootstrap-sync`: exactly `pgtandem bootstrap`.
#[derive(Debug, Parser)]
#[command(
    name = "pg-bootstrap-sync",
    version = GO_STYLE_VERSION,
    disable_version_flag = true,
    about = "Load a pg_dump into Kasho's Redis change buffer (pgtandem bootstrap)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct PgBootstrapSyncCli {
    /// Print version and exit
    #[arg(long = "version", action = ArgAction::Version)]
    pub version: Option<bool>,
    #[command(subcommand)]
    pub action: Option<BootstrapAction>,
    #[command(flatten)]
    pub sync: BootstrapArgs,
}

impl PgBootstrapSyncCli {
    pub fn into_command(self) -> BootstrapCommand {
        BootstrapCommand {
            action: self.action,
            sync: self.sync,
        }
    }
}

/// `pg_etcd` / `etcd_fdw` (the command name is set at run time).
#[derive(Debug, Parser)]
#[command(
    name = "pg_etcd",
    disable_version_flag = true,
    about = "Bidirectional etcd <-> PostgreSQL synchronization (pgtandem etcd-sync)"
)]
pub struct EtcdSyncCli {
    #[command(flatten)]
    pub command: EtcdSyncCommand,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_trees_are_well_formed() {
        PgtandemCli::command().debug_assert();
        SteepReplCli::command().debug_assert();
        PgBootstrapSyncCli::command().debug_assert();
        EtcdSyncCli::command().debug_assert();
    }

    #[test]
    fn steep_repl_reaches_init_commands_as_node_and_init() {
        for word in ["node", "init"] {
            let cli = SteepReplCli::try_parse_from([
                "steep-repl",
                word,
                "start",
                "node-b",
                "--from",
                "node-a",
                "--source-host",
                "h",
                "--insecure",
            ])
            .unwrap();
            let start = match cli.command {
                SteepReplCommand::Node(SteepReplNodeCommand::Init(InitCommand::Start(s)))
                | SteepReplCommand::Init(InitCommand::Start(s)) => s,
                other => panic!("{other:?}"),
            };
            assert_eq!(start.target, "node-b");
            assert_eq!(start.source.source_port, 5432);
            assert_eq!(start.parallel, 4);
            assert!(start.remote.tls.insecure);
        }
    }

    #[test]
    fn health_is_reachable_as_pgtandem_health_and_daemon_health() {
        for words in [&["health"][..], &["daemon", "health"]] {
            let args =
                ["pgtandem"]
                    .iter()
                    .chain(words)
                    .chain(&["--remote", "h:5433", "--insecure"]);
            let cli = PgtandemCli::try_parse_from(args).unwrap();
            let health = match cli.command {
                Command::Health(h) | Command::Daemon(DaemonCommand::Health(h)) => h,
                other => panic!("{other:?}"),
            };
            assert_eq!(health.remote.as_deref(), Some("h:5433"));
            assert_eq!(health.timeout, "10s");
        }
    }

    #[test]
    fn bootstrap_accepts_pflag_syntax() {
        let cli = PgBootstrapSyncCli::try_parse_from([
            "pg-bootstrap-sync",
            "-ddump.sql",
            "--dry-run=true",
            "-v",
            "--batch-size=50",
        ])
        .unwrap();
        assert_eq!(cli.sync.dump_file, Some(PathBuf::from("dump.sql")));
        assert!(cli.sync.dry_run && cli.sync.verbose);
        assert_eq!(cli.sync.batch_size, 50);
        assert_eq!(cli.sync.key, "kasho:changes");
        let cli = PgBootstrapSyncCli::try_parse_from([
            "pg-bootstrap-sync",
            "-d",
            "x",
            "--dry-run=false",
            "-k",
            "redis://h",
        ])
        .unwrap();
        assert!(!cli.sync.dry_run);
    }

    #[test]
    fn bootstrap_requires_dump_file_unless_orchestrating() {
        let err =
            PgBootstrapSyncCli::try_parse_from(["pg-bootstrap-sync", "--dry-run"]).unwrap_err();
        assert!(err.to_string().contains("--dump-file"));
        PgBootstrapSyncCli::try_parse_from(["pg-bootstrap-sync", "--orchestrate", "--dry-run"])
            .unwrap();
    }

    #[test]
    fn bootstrap_apply_is_a_subcommand_of_both_names() {
        let cli = PgtandemCli::try_parse_from([
            "pgtandem",
            "bootstrap",
            "apply",
            "--target",
            "postgres://r",
            "-k",
            "redis://h",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Bootstrap(BootstrapCommand {
                action: Some(BootstrapAction::Apply(_)),
                ..
            })
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cli = PgBootstrapSyncCli::try_parse_from([
            "pg-bootstrap-sync",
            "-d",
            "x",
            "-k",
            "redis://:hunter2@h",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"));
    }
}
