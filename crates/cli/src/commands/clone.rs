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

/// Hands validated arguments to the clone engine.
fn start(args: &CloneArgs) -> u8 {
    tracing::debug!(?args, "clone arguments");
    super::engine_not_built("clone")
}

/// pgclone's `[YYYY-MM-DD HH:MM:SS]` prefix, in local time when the offset is
/// knowable (the process is still single-threaded here), else UTC.
pub fn local_timestamp() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let now = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&format)
        .unwrap_or_else(|_| "0000-00-00 00:00:00".to_owned())
}
