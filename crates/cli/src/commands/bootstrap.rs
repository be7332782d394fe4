//! `pgtandem bootstrap` / `pg-bootstrap-sync`: pg_dump into Kasho's Redis
//! change buffer, and `bootstrap apply` (bootstrap.md §2.1–2.2).

use std::path::PathBuf;

use clap::{ArgAction, Args, Subcommand, ValueEnum};

use crate::secret::SecretString;

/// `pgtandem bootstrap [FLAGS]` or `pgtandem bootstrap apply [FLAGS]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BootstrapCommand {
    #[command(subcommand)]
    pub action: Option<BootstrapAction>,
    #[command(flatten)]
    pub sync: BootstrapArgs,
}

#[derive(Debug, Subcommand)]
pub enum BootstrapAction {
    /// Apply the change buffer to a replica (a correct consumer of Kasho's format)
    Apply(BootstrapApplyArgs),
}

/// pg-bootstrap-sync's flags (pflag syntax: `--f v`, `--f=v`, `-dv`, `--bool=true|false`).
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Dump to read: a file, a -Fd directory, or - for stdin
    #[arg(short = 'd', long, required_unless_present = "orchestrate")]
    pub dump_file: Option<PathBuf>,

    /// Redis URL (redis://, rediss:// or unix://)
    #[arg(
        short = 'k',
        long,
        env = "KV_URL",
        hide_env_values = true,
        required_unless_present = "dry_run"
    )]
    pub kv_url: Option<SecretString>,

    /// Members per ZADD (at most 8 MiB per batch)
    #[arg(short = 'b', long, default_value_t = 1000)]
    pub batch_size: u32,

    /// Row cap per table; 0 = no cap
    #[arg(short = 'm', long, default_value_t = 0)]
    pub max_rows_per_table: u64,

    /// Changes per progress log line
    #[arg(short = 'p', long, default_value_t = 1000)]
    pub progress_interval: u64,

    /// Parse and count without writing to Redis
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    pub dry_run: bool,

    /// Debug logs
    #[arg(short = 'v', long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    pub verbose: bool,

    /// Dump format
    #[arg(long, value_enum, default_value_t = DumpFormat::Auto)]
    pub format: DumpFormat,

    /// Decode workers (default: CPUs - 1)
    #[arg(short = 'j', long)]
    pub jobs: Option<u16>,

    /// Sorted-set key and pub/sub channel name
    #[arg(long, default_value = "kasho:changes")]
    pub key: String,

    /// EXPIRE seconds on the key; 0 = no expiry
    #[arg(long, default_value_t = 86400)]
    pub ttl: u64,

    /// When to PUBLISH on the channel
    #[arg(long, value_enum, default_value_t = PublishMode::Auto)]
    pub publish: PublishMode,

    /// How positions map to scores
    #[arg(long, value_enum, default_value_t = ScoreMode::Legacy)]
    pub score_mode: ScoreMode,

    /// LSN the bootstrap must sort before (X/Y)
    #[arg(long)]
    pub snapshot_lsn: Option<String>,

    /// Kasho transforms.yml to validate against the dump
    #[arg(long)]
    pub transform_config: Option<PathBuf>,

    /// JSON encoding of float4/float8 values
    #[arg(long, value_enum, default_value_t = FloatEncoding::String)]
    pub float_encoding: FloatEncoding,

    /// JSON encoding of date/timestamp values
    #[arg(long, value_enum, default_value_t = TemporalEncoding::Text)]
    pub temporal: TemporalEncoding,

    /// RFC 3339 time stamped on DDL changes (default: run start)
    #[arg(long)]
    pub ddl_time: Option<String>,

    /// Checkpoint file (default: <dump>.pgtandem-ckpt.json)
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,

    /// Resume from the checkpoint
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    pub resume: bool,

    /// Same as --resume --checkpoint F
    #[arg(long, value_name = "F")]
    pub resume_from: Option<PathBuf>,

    /// Write even if bootstrap members already exist
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    pub allow_existing: bool,

    /// Also write the members to this JSON Lines file
    #[arg(long, value_name = "F")]
    pub emit_jsonl: Option<PathBuf>,

    /// Schema dump giving column types for a --data-only dump
    #[arg(long, value_name = "F")]
    pub schema_file: Option<PathBuf>,

    /// How long to keep reconnecting to Redis (Go duration)
    #[arg(long, default_value = "60s")]
    pub retry_timeout: String,

    /// Run the whole hand-off: slot, dump, bootstrap, CompleteBootstrap
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    pub orchestrate: bool,

    /// Source database URL for --orchestrate
    #[arg(long, env = "PRIMARY_DATABASE_URL", hide_env_values = true)]
    pub source: Option<SecretString>,

    /// Replication slot name
    #[arg(long, env = "REPLICATION_SLOT_NAME", default_value = "kasho_slot")]
    pub slot: String,

    /// Publication name
    #[arg(long, default_value = "kasho_pub")]
    pub publication: String,

    /// Directory for the -Fd -j dump under --orchestrate
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// pg_dump -j for --orchestrate
    #[arg(long, default_value_t = 2)]
    pub dump_jobs: u16,

    /// pg-change-stream RPC address
    #[arg(long, env = "CHANGE_STREAM_SERVICE_ADDR")]
    pub change_stream_addr: Option<String>,

    /// Skip CompleteBootstrap
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = ArgAction::Set)]
    pub no_complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    Auto,
    Plain,
    Custom,
    Directory,
    Tar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoreMode {
    /// n - 1,000,000, as Kasho's parser
    Legacy,
    /// n - 2^53, always below every WAL score
    Safe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloatEncoding {
    String,
    Number,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemporalEncoding {
    Text,
    Rfc3339,
}

/// `pgtandem bootstrap apply` (bootstrap.md §2.2).
#[derive(Debug, Args)]
pub struct BootstrapApplyArgs {
    /// Redis URL of the change buffer
    #[arg(short = 'k', long, env = "KV_URL", hide_env_values = true)]
    pub kv_url: Option<SecretString>,

    /// Sorted-set key
    #[arg(long, default_value = "kasho:changes")]
    pub key: String,

    /// Replica DSN
    #[arg(
        long,
        env = "REPLICA_DATABASE_URL",
        hide_env_values = true,
        required = true
    )]
    pub target: Option<SecretString>,

    /// `bootstrap` (from the start) or a position to start after
    #[arg(long, default_value = "bootstrap")]
    pub from: String,

    /// Stop after the last bootstrap change
    #[arg(long, conflicts_with = "follow")]
    pub until_handoff: bool,

    /// Keep polling for new changes
    #[arg(long)]
    pub follow: bool,

    /// Changes per transaction
    #[arg(short = 'b', long, default_value_t = 5000)]
    pub batch_size: u32,

    /// Members per read
    #[arg(long, default_value_t = 10000)]
    pub page_size: u32,

    /// Apply Kasho transforms from this file
    #[arg(long, value_name = "FILE")]
    pub transform_config: Option<PathBuf>,

    /// What to do when a row already exists
    #[arg(long, value_enum, default_value_t = OnConflict::Error)]
    pub on_conflict: OnConflict,

    /// Resume table; `none` = not resumable
    #[arg(long, default_value = "pgtandem.bootstrap_apply_progress")]
    pub progress_table: String,

    /// Decode and render exactly like Kasho
    #[arg(long)]
    pub emulate_kasho: bool,

    /// Decode only
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnConflict {
    Error,
    Skip,
}

/// Runs `bootstrap` or `bootstrap apply`.
pub fn run(command: &BootstrapCommand) -> u8 {
    match &command.action {
        Some(BootstrapAction::Apply(args)) => {
            tracing::debug!(?args, "bootstrap apply arguments");
            super::engine_not_built("bootstrap apply")
        }
        None => {
            tracing::debug!(args = ?command.sync, "bootstrap arguments");
            super::engine_not_built("bootstrap")
        }
    }
}
