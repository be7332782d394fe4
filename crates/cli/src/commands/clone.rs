//! `pgtandem clone` / `pgclone`: physical standby clone (clone.md).

use std::ffi::OsString;

use crate::drop_in::DropIn;
use crate::pgclone_args::{self, PgcloneRequest};

pub use crate::pgclone_args::CloneArgs;

/// Runs a clone command line (arguments after `pgclone` or `pgtandem clone`).
/// `argv0` is the program name as invoked, used in missing-value messages.
pub fn run(argv0: &str, args: &[OsString], global_debug: bool) -> u8 {
    let mut utf8 = Vec::with_capacity(args.len());
    for arg in args {
        match arg.to_str() {
            Some(s) => utf8.push(s.to_owned()),
            None => {
                eprintln!(
                    "[{}] FATAL: Argument is not valid UTF-8: {}",
                    local_timestamp(),
                    arg.to_string_lossy()
                );
                return 1;
            }
        }
    }
    let parsed = match pgclone_args::parse(&utf8, |var| std::env::var(var).ok()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", e.render(argv0, &local_timestamp()));
            return 1;
        }
    };
    for warning in &parsed.warnings {
        eprintln!("[{}] WARNING: {warning}", local_timestamp());
    }
    match parsed.request {
        PgcloneRequest::Usage => {
            print!("{}", pgclone_args::usage());
            0
        }
        PgcloneRequest::Version => {
            println!("{}", DropIn::Pgclone.version_text());
            0
        }
        PgcloneRequest::Clone(clone_args) => {
            crate::logging::init(global_debug || clone_args.debug);
            start(&clone_args)
        }
    }
}

/// Hands validated arguments to the clone engine; a failure is one FATAL
/// line on stderr and exit 1 (the JSON summary was already printed).
fn start(args: &CloneArgs) -> u8 {
    tracing::debug!(?args, "clone arguments");
    let outcome = pgtandem_clone::run(engine_options(args));
    if let Some(error) = &outcome.error {
        eprintln!("[{}] FATAL: {error}", pgtandem_clone::report::timestamp());
    }
    outcome.exit_code()
}

/// Maps the pgclone grammar's result onto the engine's options.
fn engine_options(a: &CloneArgs) -> pgtandem_clone::CloneOptions {
    use pgtandem_clone::{ProgressStyle, TransportKind, WalMethod};
    let mut o = pgtandem_clone::CloneOptions::new(
        a.pghost.clone(),
        a.pguser.clone(),
        a.primary_pgdata.clone(),
        a.replica_pgdata.clone(),
    );
    o.pgport = a.pgport;
    o.replica_waldir = a.replica_waldir.clone();
    o.ssh_key = a.ssh_key.clone();
    o.ssh_user = a.ssh_user.clone();
    o.ssh_port = a.ssh_port;
    o.ssh_options = a.ssh_options.clone();
    o.insecure_ssh = a.insecure_ssh;
    o.temp_waldir = a.temp_waldir.clone();
    o.parallel = a.parallel.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    o.paranoid = a.paranoid;
    o.drop_existing = a.drop_existing;
    o.verbose = a.verbose || a.debug;
    o.keep_run_tmp = a.keep_run_tmp;
    o.slot = a.slot;
    o.no_slot = a.no_slot;
    o.bypass_rep_traffic = a.bypass_rep_traffic;
    o.progress = match a.progress {
        pgclone_args::ProgressMode::Auto => ProgressStyle::Auto,
        pgclone_args::ProgressMode::Bar => ProgressStyle::Bar,
        pgclone_args::ProgressMode::Plain => ProgressStyle::Plain,
        pgclone_args::ProgressMode::None => ProgressStyle::None,
    };
    o.progress_interval = std::time::Duration::from_secs(a.progress_interval_secs);
    o.limit_net_bw = a.limit_net_bw;
    o.transport = match a.transport {
        pgclone_args::Transport::Rsync => TransportKind::Rsync,
        pgclone_args::Transport::Local => TransportKind::Local,
    };
    o.wal_method = match a.wal_method {
        pgclone_args::WalMethod::Native => WalMethod::Native,
        pgclone_args::WalMethod::PgReceivewal => WalMethod::PgReceivewal,
    };
    o.write_standby_config = a.write_standby_config;
    o.standby_slot = a.standby_slot.clone();
    o.start = a.start;
    o.standby_port = a.standby_port;
    o.pg_bindir = a.pg_bindir.clone();
    o.tablespace_mappings = a
        .tablespace_mappings
        .iter()
        .map(|m| pgtandem_clone::TablespaceMapping {
            old: m.old.clone(),
            new: m.new.clone(),
        })
        .collect();
    o.json = a.json;
    o.resume = a.resume;
    o.no_sync = a.no_sync;
    o
}

/// pgclone's `[YYYY-MM-DD HH:MM:SS]` prefix, in local time when the offset is
/// knowable (the process is still single-threaded here), else UTC.
pub fn local_timestamp() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let now = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&format)
        .unwrap_or_else(|_| "0000-00-00 00:00:00".to_owned())
}
