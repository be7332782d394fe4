//! Node initialization, schema fingerprints, snapshots and merge
//! (`pgtandem init|schema|snapshot|merge|analyze-overlap|top`, and
//! `steep-repl node|init|…`; node-init.md §2.1).

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Subcommand, ValueEnum};

use super::daemon::RemoteArgs;
use crate::secret::SecretString;

#[derive(Debug, Subcommand)]
pub enum InitCommand {
    /// Start automatic initialization of a target node from a source
    Start(InitStartArgs),
    /// Prepare manual initialization on the source (slot + exported snapshot)
    Prepare(InitPrepareArgs),
    /// Complete manual initialization on the target
    Complete(InitCompleteArgs),
    /// Cancel an initialization in progress
    Cancel(InitCancelArgs),
    /// Show initialization progress
    Progress(InitProgressArgs),
    /// Reinitialize all or part of a node
    Reinit(InitReinitArgs),
    /// Merge two nodes that already hold overlapping data
    Merge(InitMergeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitMethod {
    Snapshot,
    Manual,
    TwoPhase,
    Direct,
    BidirectionalMerge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaSync {
    Strict,
    Auto,
    Manual,
}

/// Source PostgreSQL coordinates a target uses to subscribe.
#[derive(Debug, Args)]
pub struct SourceConnArgs {
    /// Source PostgreSQL port
    #[arg(long, default_value_t = 5432)]
    pub source_port: u16,
    /// Source PostgreSQL database
    #[arg(long)]
    pub source_database: Option<String>,
    /// Source PostgreSQL user
    #[arg(long)]
    pub source_user: Option<String>,
}

fn parallel_workers() -> clap::builder::RangedI64ValueParser<u8> {
    clap::value_parser!(u8).range(1..=16)
}

#[derive(Debug, Args)]
pub struct InitStartArgs {
    /// Target node id
    pub target: String,
    /// Source node id
    #[arg(long)]
    pub from: String,
    /// Source PostgreSQL host
    #[arg(long)]
    pub source_host: String,
    #[command(flatten)]
    pub source: SourceConnArgs,
    #[arg(long, value_enum, default_value_t = InitMethod::Snapshot)]
    pub method: InitMethod,
    /// Parallel workers (1-16)
    #[arg(long, default_value_t = 4, value_parser = parallel_workers())]
    pub parallel: u8,
    #[arg(long, value_enum, default_value_t = SchemaSync::Strict)]
    pub schema_sync: SchemaSync,
    /// Start even if the target is not UNINITIALIZED
    #[arg(long)]
    pub force: bool,
    /// Give up after this long (Go duration)
    #[arg(long, default_value = "24h")]
    pub timeout: String,
    /// Resume an interrupted initialization
    #[arg(long)]
    pub resume: bool,
    /// Follow progress until done
    #[arg(long)]
    pub watch: bool,
    /// Allow a password in the subscription's conninfo (stored in the catalog)
    #[arg(long)]
    pub allow_password_in_catalog: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct InitPrepareArgs {
    /// Source node id
    pub node: String,
    /// Slot name [default: steep_init_<node>]
    #[arg(long)]
    pub slot: Option<String>,
    /// Target node id the slot is reserved for
    #[arg(long)]
    pub target: Option<String>,
    /// Slot reservation lifetime (Go duration)
    #[arg(long, default_value = "24h")]
    pub expires: String,
    /// Run pg_dump and pg_restore into this directory
    #[arg(long, value_name = "DIR")]
    pub dump_to: Option<PathBuf>,
    /// pg_dump/pg_restore jobs for --dump-to
    #[arg(short = 'j', long)]
    pub jobs: Option<u16>,
    /// Release the exported snapshot and slot reservation
    #[arg(long)]
    pub release: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct InitCompleteArgs {
    /// Target node id
    pub target: String,
    /// Source node id
    #[arg(long)]
    pub source: String,
    /// Source PostgreSQL host
    #[arg(long)]
    pub source_host: String,
    #[command(flatten)]
    pub source_conn: SourceConnArgs,
    /// Source LSN from prepare [default: read from init_slots]
    #[arg(long, visible_alias = "source-lsn")]
    pub lsn: Option<String>,
    #[arg(long, value_enum, default_value_t = SchemaSync::Strict)]
    pub schema_sync: SchemaSync,
    /// Skip schema verification (dangerous)
    #[arg(long)]
    pub skip_schema_check: bool,
    /// Source daemon address for schema verification
    #[arg(long, value_name = "HOST:PORT")]
    pub source_remote: Option<String>,
    /// The target is a standby cloned from the source (pgtandem clone)
    #[arg(long)]
    pub from_replica: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct InitCancelArgs {
    /// Node id
    pub node: String,
    /// Drop partial data and replication objects
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub cleanup: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct InitProgressArgs {
    /// Node id
    pub node: String,
    /// Keep refreshing
    #[arg(long)]
    pub watch: bool,
    /// JSON output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["full", "tables", "schema"])))]
pub struct InitReinitArgs {
    /// Node id
    pub node: String,
    /// Reinitialize everything
    #[arg(long)]
    pub full: bool,
    /// Tables to reinitialize (s.t, comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Reinitialize every table of this schema
    #[arg(long)]
    pub schema: Option<String>,
    /// Also reinitialize tables holding foreign keys into the set
    #[arg(long)]
    pub include_dependents: bool,
    /// Parallel workers (1-16)
    #[arg(long, value_parser = parallel_workers())]
    pub parallel: Option<u8>,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergeStrategy {
    PreferNodeA,
    PreferNodeB,
    LastModified,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LastModifiedBy {
    Column,
    CommitTs,
}

#[derive(Debug, Args)]
pub struct InitMergeArgs {
    /// Node A id
    pub node_a: String,
    /// Node B id
    pub node_b: String,
    /// Connection string of node B
    #[arg(long)]
    pub node_b_connstr: SecretString,
    /// Tables to merge (s.t, comma-separated)
    #[arg(long, value_delimiter = ',', required = true)]
    pub tables: Vec<String>,
    #[arg(long, value_enum, default_value_t = MergeStrategy::PreferNodeA)]
    pub strategy: MergeStrategy,
    /// Show what would change without changing it
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = SchemaSync::Strict)]
    pub schema_sync: SchemaSync,
    /// Milliseconds to wait for writes to quiesce
    #[arg(long, default_value_t = 5000)]
    pub quiesce_timeout: u64,
    /// Where last-modified times come from
    #[arg(long, value_enum)]
    pub last_modified_by: Option<LastModifiedBy>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Capture table fingerprints of a node
    Capture(SchemaCaptureArgs),
    /// Compare the fingerprints of two nodes
    Compare(SchemaCompareArgs),
    /// Column-level diff of one table on two nodes
    Diff(SchemaDiffArgs),
    /// Export a node's fingerprints
    Export(SchemaExportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FingerprintAlgorithm {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Table,
    Json,
}

/// Options shared by the schema commands.
#[derive(Debug, Args)]
pub struct FingerprintArgs {
    #[arg(long, value_enum, default_value_t = FingerprintAlgorithm::V1)]
    pub algorithm: FingerprintAlgorithm,
    /// Include column defaults in the fingerprint
    #[arg(long)]
    pub include_defaults: bool,
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
    /// Write the output to this file
    #[arg(long, value_name = "F")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SchemaCaptureArgs {
    /// Node id
    pub node: String,
    /// Schemas to capture (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub schemas: Vec<String>,
    #[command(flatten)]
    pub fingerprint: FingerprintArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct SchemaCompareArgs {
    pub node_a: String,
    pub node_b: String,
    /// Daemon address of node A
    #[arg(long, value_name = "HOST:PORT")]
    pub remote_a: Option<String>,
    /// Daemon address of node B
    #[arg(long, value_name = "HOST:PORT")]
    pub remote_b: Option<String>,
    #[command(flatten)]
    pub fingerprint: FingerprintArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct SchemaDiffArgs {
    pub node_a: String,
    pub node_b: String,
    /// Table to diff (s.t)
    #[arg(long)]
    pub table: String,
    #[arg(long, value_name = "HOST:PORT")]
    pub remote_a: Option<String>,
    #[arg(long, value_name = "HOST:PORT")]
    pub remote_b: Option<String>,
    #[command(flatten)]
    pub fingerprint: FingerprintArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct SchemaExportArgs {
    pub node: String,
    /// Output file
    #[arg(long, value_name = "F")]
    pub output: PathBuf,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write a two-phase snapshot of a source node to a directory
    Generate(SnapshotGenerateArgs),
    /// Load a snapshot directory into a target node
    Apply(SnapshotApplyArgs),
    /// List snapshots
    List(SnapshotListArgs),
    /// Delete a snapshot (and its slot)
    Delete(SnapshotDeleteArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
}

/// Source coordinates for `snapshot apply` to subscribe afterwards.
#[derive(Debug, Args)]
pub struct SnapshotSourceArgs {
    #[arg(long)]
    pub source_host: Option<String>,
    #[arg(long)]
    pub source_port: Option<u16>,
    #[arg(long)]
    pub source_database: Option<String>,
    #[arg(long)]
    pub source_user: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotGenerateArgs {
    /// Source node id
    pub source: String,
    /// Output directory (new or empty)
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    /// Codec level
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Parallel workers (1-16)
    #[arg(long, default_value_t = 4, value_parser = parallel_workers())]
    pub parallel: u8,
    /// Show progress
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub progress: bool,
    /// Drop the snapshot slot when done
    #[arg(long)]
    pub no_keep_slot: bool,
    /// Skip schema.sql
    #[arg(long)]
    pub no_schema: bool,
    /// Resume an interrupted generate
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotApplyArgs {
    /// Target node id
    pub target: String,
    /// Snapshot directory
    #[arg(long, value_name = "DIR")]
    pub input: PathBuf,
    /// Source node id (subscribe after loading)
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub source_conn: SnapshotSourceArgs,
    /// Parallel workers (1-16)
    #[arg(long, default_value_t = 4, value_parser = parallel_workers())]
    pub parallel: u8,
    /// Verify checksums before loading
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub verify: bool,
    /// Show progress
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub progress: bool,
    /// Resume an interrupted apply
    #[arg(long)]
    pub resume: bool,
    /// Apply schema.sql for missing tables
    #[arg(long)]
    pub create_schema: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotListArgs {
    /// JSON output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotDeleteArgs {
    /// Snapshot id
    pub id: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    pub node_a: String,
    pub node_b: String,
    /// Tables to merge (s.t, comma-separated)
    #[arg(long, value_delimiter = ',', required = true)]
    pub tables: Vec<String>,
    #[arg(long, value_enum, default_value_t = MergeStrategy::PreferNodeA)]
    pub strategy: MergeStrategy,
    #[arg(long)]
    pub dry_run: bool,
    /// postgres_fdw server pointing at node B
    #[arg(long, default_value = "node_b_fdw")]
    pub remote_server: String,
    #[arg(long, value_enum)]
    pub last_modified_by: Option<LastModifiedBy>,
    /// Compare through postgres_fdw instead of pgtandem's own streams
    #[arg(long)]
    pub use_fdw: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct AnalyzeOverlapArgs {
    pub node_a: String,
    pub node_b: String,
    /// Tables to analyze (s.t, comma-separated)
    #[arg(long, value_delimiter = ',', required = true)]
    pub tables: Vec<String>,
    /// JSON output
    #[arg(long)]
    pub json: bool,
    /// List conflicting rows
    #[arg(long)]
    pub detailed: bool,
    /// postgres_fdw server pointing at node B
    #[arg(long, default_value = "node_b_fdw")]
    pub remote_server: String,
    /// Compare through postgres_fdw instead of pgtandem's own streams
    #[arg(long)]
    pub use_fdw: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs one init command.
pub fn run_init(command: &InitCommand) -> u8 {
    tracing::debug!(?command, "init arguments");
    let name = match command {
        InitCommand::Start(_) => "init start",
        InitCommand::Prepare(_) => "init prepare",
        InitCommand::Complete(_) => "init complete",
        InitCommand::Cancel(_) => "init cancel",
        InitCommand::Progress(_) => "init progress",
        InitCommand::Reinit(_) => "init reinit",
        InitCommand::Merge(_) => "init merge",
    };
    super::engine_not_built(name)
}

pub fn run_schema(command: &SchemaCommand) -> u8 {
    tracing::debug!(?command, "schema arguments");
    let name = match command {
        SchemaCommand::Capture(_) => "schema capture",
        SchemaCommand::Compare(_) => "schema compare",
        SchemaCommand::Diff(_) => "schema diff",
        SchemaCommand::Export(_) => "schema export",
    };
    super::engine_not_built(name)
}

pub fn run_snapshot(command: &SnapshotCommand) -> u8 {
    tracing::debug!(?command, "snapshot arguments");
    let name = match command {
        SnapshotCommand::Generate(_) => "snapshot generate",
        SnapshotCommand::Apply(_) => "snapshot apply",
        SnapshotCommand::List(_) => "snapshot list",
        SnapshotCommand::Delete(_) => "snapshot delete",
    };
    super::engine_not_built(name)
}

pub fn run_merge(args: &MergeArgs) -> u8 {
    tracing::debug!(?args, "merge arguments");
    super::engine_not_built("merge")
}

pub fn run_analyze_overlap(args: &AnalyzeOverlapArgs) -> u8 {
    tracing::debug!(?args, "analyze-overlap arguments");
    super::engine_not_built("analyze-overlap")
}

pub fn run_top(args: &TopArgs) -> u8 {
    tracing::debug!(?args, "top arguments");
    super::engine_not_built("top")
}
