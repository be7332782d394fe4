//! `pgtandem etcd-sync` / `pg_etcd` / `etcd_fdw`: etcd ⇄ PostgreSQL sync
//! (etcd-sync.md §2.1–2.3).

use clap::{ArgAction, Args, Subcommand, ValueEnum};

use crate::secret::SecretString;

/// Default etcd DSN when neither flag nor variable gives one.
pub const DEFAULT_ETCD_DSN: &str = "etcd://127.0.0.1:2379/";

/// `etcd-sync [run|status|validate|migrate]` with its shared flags.
#[derive(Debug, Args)]
pub struct EtcdSyncCommand {
    #[command(subcommand)]
    pub action: Option<EtcdSyncAction>,
    #[command(flatten)]
    pub options: EtcdSyncArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EtcdSyncAction {
    /// Run the sync service (the default)
    Run,
    /// Health report
    Status(StatusArgs),
    /// Consistency check between etcd and PostgreSQL
    Validate(ValidateArgs),
    /// Apply migrations and exit
    Migrate,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
    pub format: ReportFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
    pub format: ReportFormat,
    /// Most differences listed
    #[arg(long, default_value_t = 100)]
    pub max_differences: u32,
    /// Take the leader lock, resync (etcd wins) and validate again
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Json,
    Text,
}

/// Flags shared by every etcd-sync action. Env fallbacks: clap reads the
/// `pg_etcd_*` primary; [`EtcdSyncArgs::resolve`] adds the `ETCD_FDW_*`
/// aliases and defaults (flag > pg_etcd_* > ETCD_FDW_* > default).
#[derive(Debug, Clone, Args)]
pub struct EtcdSyncArgs {
    /// PostgreSQL connection string (URL or key=value) [default: libpq defaults]
    #[arg(
        short = 'p',
        long,
        global = true,
        env = "pg_etcd_POSTGRES_DSN",
        hide_env_values = true,
        hide_env_values = true
    )]
    pub postgres_dsn: Option<SecretString>,

    /// etcd connection string: etcd://[user[:password]@]host[:port][,host[:port]...][/prefix][?param=value&...] [default: etcd://127.0.0.1:2379/]
    #[arg(
        short = 'e',
        long,
        global = true,
        env = "pg_etcd_ETCD_DSN",
        hide_env_values = true
    )]
    pub etcd_dsn: Option<SecretString>,

    /// Log level: trace|debug|info|warn|warning|error|fatal|panic [default: info]
    #[arg(
        short = 'l',
        long,
        global = true,
        env = "pg_etcd_LOG_LEVEL",
        hide_env_values = true,
        ignore_case = true
    )]
    pub log_level: Option<LogLevel>,

    /// Fallback poll interval for PostgreSQL to etcd (Go duration, > 0 and <= 1h)
    #[arg(
        long,
        global = true,
        env = "pg_etcd_POLLING_INTERVAL",
        hide_env_values = true,
        default_value = "1s"
    )]
    pub polling_interval: String,

    /// two-table or single-table [default: two-table; an existing single-table database stays single-table]
    #[arg(
        long,
        global = true,
        env = "pg_etcd_SCHEMA_MODE",
        hide_env_values = true,
        value_enum
    )]
    pub schema_mode: Option<SchemaMode>,

    /// Most events per PostgreSQL transaction (PG to etcd uses min(this, 128))
    #[arg(long, global = true, env = "pg_etcd_BATCH_SIZE", hide_env_values = true, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// Startup budget per peer (Go duration); exceeded = exit 2
    #[arg(
        long,
        global = true,
        env = "pg_etcd_CONNECT_TIMEOUT",
        hide_env_values = true,
        default_value = "30s"
    )]
    pub connect_timeout: String,

    /// Runtime outage budget (Go duration, 0 = unlimited); exceeded = exit 4
    #[arg(
        long,
        global = true,
        env = "pg_etcd_MAX_OUTAGE",
        hide_env_values = true,
        default_value = "0"
    )]
    pub max_outage: String,

    /// Check the schema only; run no DDL
    #[arg(long, global = true, env = "pg_etcd_SKIP_MIGRATIONS", hide_env_values = true, action = ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_migrations: bool,

    /// Delete history older than this (Go duration, 0 = keep all)
    #[arg(
        long,
        global = true,
        env = "pg_etcd_HISTORY_RETENTION",
        hide_env_values = true,
        default_value = "0"
    )]
    pub history_retention: String,

    /// Show version information
    #[arg(short = 'v', long = "version", global = true, action = ArgAction::SetTrue)]
    pub version: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Warning,
    Error,
    Fatal,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaMode {
    TwoTable,
    SingleTable,
}

/// Flags after env aliases and defaults are applied.
#[derive(Debug, Clone)]
pub struct EtcdSyncConfig {
    /// `None` = libpq defaults (PG* variables, ~/.pgpass).
    pub postgres_dsn: Option<SecretString>,
    pub etcd_dsn: SecretString,
    pub log_level: LogLevel,
    pub polling_interval: String,
    pub schema_mode: SchemaMode,
    /// Whether the mode was chosen explicitly (flag or variable).
    pub schema_mode_explicit: bool,
    pub batch_size: u32,
    pub connect_timeout: String,
    pub max_outage: String,
    pub skip_migrations: bool,
    pub history_retention: String,
}

impl EtcdSyncArgs {
    /// Fills unset values from the legacy `ETCD_FDW_*` variables (an empty
    /// variable counts as unset), then from the defaults. Errors are
    /// configuration errors (exit 1).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<EtcdSyncConfig, String> {
        let alias = |name: &str| env(name).filter(|v| !v.is_empty());
        let log_level = match (&self.log_level, alias("ETCD_FDW_LOG_LEVEL")) {
            (Some(level), _) => *level,
            (None, Some(text)) => <LogLevel as ValueEnum>::from_str(&text, true)
                .map_err(|_| format!("invalid log level: {text}"))?,
            (None, None) => LogLevel::Info,
        };
        Ok(EtcdSyncConfig {
            postgres_dsn: self
                .postgres_dsn
                .clone()
                .or_else(|| alias("ETCD_FDW_POSTGRES_DSN").map(SecretString::from)),
            etcd_dsn: self
                .etcd_dsn
                .clone()
                .or_else(|| alias("ETCD_FDW_ETCD_DSN").map(SecretString::from))
                .unwrap_or_else(|| SecretString::from(DEFAULT_ETCD_DSN)),
            log_level,
            polling_interval: self.polling_interval.clone(),
            schema_mode: self.schema_mode.unwrap_or(SchemaMode::TwoTable),
            schema_mode_explicit: self.schema_mode.is_some(),
            batch_size: self.batch_size,
            connect_timeout: self.connect_timeout.clone(),
            max_outage: self.max_outage.clone(),
            skip_migrations: self.skip_migrations,
            history_retention: self.history_retention.clone(),
        })
    }
}

/// Runs one etcd-sync action.
pub fn run(command: &EtcdSyncCommand) -> u8 {
    let config = match command.options.resolve(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(detail) => {
            eprintln!("Error: {detail}");
            return 1;
        }
    };
    let action = command.action.clone().unwrap_or(EtcdSyncAction::Run);
    let level = pgtandem_etcd::log_layout::level_from_name(log_level_name(config.log_level))
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    if !pgtandem_etcd::log_layout::init(level) {
        eprintln!("Failed to setup logging");
        return 1;
    }
    if matches!(action, EtcdSyncAction::Run) {
        tracing::info!(
            version = crate::version::PGTANDEM_VERSION,
            commit = crate::version::git_commit(),
            pid = std::process::id(),
            "pg_etcd logging initialized"
        );
    }
    let settings = match pgtandem_etcd::Settings::validate(&raw_settings(&config), &|k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "{}", config_error_message(&e.to_string()));
            return pgtandem_etcd::ExitCode::Config.code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    let code = runtime.block_on(async {
        match action {
            EtcdSyncAction::Run => pgtandem_etcd::service::run(&settings, shutdown_signal()).await,
            EtcdSyncAction::Migrate => pgtandem_etcd::service::run_migrate(&settings).await,
            EtcdSyncAction::Status(a) => {
                pgtandem_etcd::status::run(&settings, a.format == ReportFormat::Text).await
            }
            EtcdSyncAction::Validate(a) => {
                pgtandem_etcd::validate::run(
                    &settings,
                    a.format == ReportFormat::Text,
                    a.max_differences as usize,
                    a.fix,
                )
                .await
            }
        }
    });
    // Abandoned tasks (watch readers, connection drivers) must not delay exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code.code()
}

/// The first fixed message that names the configuration problem (§2.3).
fn config_error_message(detail: &str) -> &'static str {
    if detail.starts_with(pgtandem_etcd::config::INVALID_POLLING_INTERVAL) {
        pgtandem_etcd::config::INVALID_POLLING_INTERVAL
    } else {
        "Invalid configuration"
    }
}

fn log_level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn | LogLevel::Warning => "warn",
        LogLevel::Error | LogLevel::Fatal | LogLevel::Panic => "error",
    }
}

fn raw_settings(config: &EtcdSyncConfig) -> pgtandem_etcd::RawSettings {
    pgtandem_etcd::RawSettings {
        postgres_dsn: config.postgres_dsn.as_ref().map(|d| d.expose().to_owned()),
        etcd_dsn: config.etcd_dsn.expose().to_owned(),
        polling_interval: config.polling_interval.clone(),
        schema_mode: config
            .schema_mode_explicit
            .then_some(match config.schema_mode {
                SchemaMode::TwoTable => pgtandem_etcd::SchemaMode::TwoTable,
                SchemaMode::SingleTable => pgtandem_etcd::SchemaMode::SingleTable,
            }),
        batch_size: config.batch_size,
        connect_timeout: config.connect_timeout.clone(),
        max_outage: config.max_outage.clone(),
        skip_migrations: config.skip_migrations,
        history_retention: config.history_retention.clone(),
    }
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        std::process::exit(0);
    });
}

/// Drops the env fallback of every flag whose variable is set but empty:
/// clap would read `""` as a value, while §2.1 says an empty variable counts
/// as unset (so the `ETCD_FDW_*` alias or the default applies).
pub fn without_empty_env(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|value| value.is_empty());
        if empty { arg.env(None::<&str>) } else { arg }
    })
}

/// pflag's wording for a parse error the reference reports itself
/// (`unknown flag: --dry-run`); `None` keeps clap's text.
pub fn pflag_error_detail(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
    if name.starts_with("--") {
        Some(format!("unknown flag: {name}"))
    } else {
        let short = name.trim_start_matches('-').chars().next()?;
        Some(format!("unknown shorthand flag: '{short}' in {name}"))
    }
}

/// pg_etcd checks `-v`/`--version` before any other parsing (etcd-sync.md §2.1).
pub fn asks_for_version<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> bool {
    args.iter()
        .any(|a| a.as_ref() == "-v" || a.as_ref() == "--version")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        command: EtcdSyncCommand,
    }

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> EtcdSyncConfig {
        let h = Harness::try_parse_from(std::iter::once("pg_etcd").chain(args.iter().copied()))
            .unwrap();
        h.command
            .options
            .resolve(|k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            })
            .unwrap()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = resolve(&[], &[]);
        assert_eq!(c.etcd_dsn.expose(), DEFAULT_ETCD_DSN);
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.postgres_dsn.is_none());
        assert_eq!(c.schema_mode, SchemaMode::TwoTable);
        assert_eq!(c.batch_size, 1000);
    }

    #[test]
    fn legacy_aliases_fill_gaps_but_flags_win() {
        let env = [
            ("ETCD_FDW_ETCD_DSN", "etcd://old:2379/p"),
            ("ETCD_FDW_LOG_LEVEL", "DEBUG"),
            ("ETCD_FDW_POSTGRES_DSN", ""),
        ];
        let c = resolve(&[], &env);
        assert_eq!(c.etcd_dsn.expose(), "etcd://old:2379/p");
        assert_eq!(c.log_level, LogLevel::Debug);
        assert!(c.postgres_dsn.is_none(), "empty variable counts as unset");
        let c = resolve(&["-e", "etcd://new/", "-l", "WARN"], &env);
        assert_eq!(c.etcd_dsn.expose(), "etcd://new/");
        assert_eq!(c.log_level, LogLevel::Warn);
    }

    #[test]
    fn bad_alias_log_level_is_a_configuration_error() {
        let h = Harness::try_parse_from(["pg_etcd"]).unwrap();
        let err = h
            .command
            .options
            .resolve(|k| (k == "ETCD_FDW_LOG_LEVEL").then(|| "loud".to_owned()))
            .unwrap_err();
        assert!(err.contains("loud"));
    }

    #[test]
    fn flags_work_before_and_after_the_action() {
        let h =
            Harness::try_parse_from(["pg_etcd", "-p", "dbname=x", "status", "--format", "text"])
                .unwrap();
        assert!(matches!(
            h.command.action,
            Some(EtcdSyncAction::Status(StatusArgs {
                format: ReportFormat::Text
            }))
        ));
        let h =
            Harness::try_parse_from(["pg_etcd", "validate", "--fix", "-e", "etcd://h/"]).unwrap();
        assert_eq!(
            h.command
                .options
                .etcd_dsn
                .as_ref()
                .map(SecretString::expose),
            Some("etcd://h/")
        );
    }

    #[test]
    fn unknown_flags_use_pflag_wording() {
        let detail = |args: &[&str]| {
            let err = Harness::try_parse_from(args.iter().copied()).err().unwrap();
            pflag_error_detail(&err)
        };
        assert_eq!(
            detail(&["pg_etcd", "--dry-run"]).as_deref(),
            Some("unknown flag: --dry-run")
        );
        assert_eq!(
            detail(&["pg_etcd", "--dry-run=yes"]).as_deref(),
            Some("unknown flag: --dry-run")
        );
        assert_eq!(
            detail(&["pg_etcd", "-x"]).as_deref(),
            Some("unknown shorthand flag: 'x' in -x")
        );
        assert_eq!(detail(&["pg_etcd", "--log-level", "loud"]), None);
    }

    #[test]
    fn version_is_spotted_anywhere() {
        assert!(asks_for_version(&["pg_etcd", "--bogus", "-v"]));
        assert!(!asks_for_version(&["pg_etcd", "-l", "info"]));
    }
}
