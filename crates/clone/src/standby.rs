//! `-R` and `--start` (clone.md §3.6): turning the copied directory into a
//! configured standby and, if asked, starting it until it streams.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgtandem_core::conninfo::ConnInfo;
use pgtandem_core::error::ErrorKind;
use tokio_postgres::SimpleQueryMessage;

use crate::error::{CloneError, Result};
use crate::options::CloneOptions;

/// `pg_ctl start` log in the replica PGDATA.
pub const START_LOG: &str = "pgtandem_start.log";

/// A libpq conninfo value, quoted only when needed.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '\t', '\n']) {
        return v.to_owned();
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A GUC string literal as `postgresql.auto.conf` holds it.
fn guc_literal(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// `primary_conninfo` as `pg_basebackup -R` writes it: the real host and
/// port, `password` only when `PGPASSWORD` supplied it, `passfile` and
/// `sslmode` from the environment.
pub fn primary_conninfo(options: &CloneOptions, env: impl Fn(&str) -> Option<String>) -> String {
    let mut parts = vec![format!("user={}", conninfo_value(&options.pguser))];
    if let Some(pw) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        parts.push(format!("password={}", conninfo_value(&pw)));
    }
    if let Some(f) = env("PGPASSFILE").filter(|p| !p.is_empty()) {
        parts.push(format!("passfile={}", conninfo_value(&f)));
    }
    parts.push(format!("host={}", conninfo_value(&options.pghost)));
    parts.push(format!("port={}", options.pgport));
    if let Some(m) = env("PGSSLMODE").filter(|p| !p.is_empty()) {
        parts.push(format!("sslmode={}", conninfo_value(&m)));
    }
    parts.join(" ")
}

/// Writes `standby.signal` and appends the settings to `postgresql.auto.conf`.
pub fn write_config(pgdata: &Path, options: &CloneOptions) -> Result<()> {
    let signal = pgdata.join("standby.signal");
    std::fs::write(&signal, b"")
        .map_err(|e| CloneError::io(format!("writing {}", signal.display()), e))?;
    let conninfo = primary_conninfo(options, |v| std::env::var(v).ok());
    let mut text = format!(
        "# Written by pgtandem clone\nprimary_conninfo = {}\n",
        guc_literal(&conninfo)
    );
    if let Some(slot) = &options.standby_slot {
        text.push_str(&format!("primary_slot_name = {}\n", guc_literal(slot)));
    }
    if let Some(port) = options.standby_port {
        text.push_str(&format!("port = {port}\n"));
    }
    let auto = pgdata.join("postgresql.auto.conf");
    let io = |e| CloneError::io(format!("writing {}", auto.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}

/// `pg_ctl` from `--pg-bindir`, else from `PATH`.
fn pg_ctl(bindir: Option<&Path>) -> PathBuf {
    match bindir {
        Some(dir) => dir.join("pg_ctl"),
        None => PathBuf::from("pg_ctl"),
    }
}

/// Starts the standby with `pg_ctl start -w` and waits until its WAL
/// receiver streams; on timeout the standby is left running.
pub async fn start(pgdata: &Path, options: &CloneOptions, timeout: Duration) -> Result<()> {
    if !pgdata.join("postgresql.conf").exists() {
        return Err(CloneError::refused(
            ErrorKind::Config,
            format!("--start needs postgresql.conf in {}", pgdata.display()),
        ));
    }
    let log = pgdata.join(START_LOG);
    let program = pg_ctl(options.pg_bindir.as_deref());
    let status = Command::new(&program)
        .args(["start", "-w", "-D"])
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CloneError::refused(
                    ErrorKind::Config,
                    format!("{} not found", program.display()),
                )
            } else {
                CloneError::io(format!("running {}", program.display()), e)
            }
        })?;
    if !status.status.success() {
        return Err(CloneError::transport(format!(
            "pg_ctl start failed: {}, see {}",
            String::from_utf8_lossy(&status.stderr).trim(),
            log.display()
        )));
    }
    let not_streaming = || {
        CloneError::Timeout(format!(
            "Standby did not reach streaming within {}s, see {}",
            timeout.as_secs(),
            log.display()
        ))
    };
    let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .map_err(|e| CloneError::io("reading the standby's postmaster.pid", e))?;
    let lines: Vec<&str> = pid_file.lines().collect();
    let port = lines.get(3).map(|s| s.trim()).unwrap_or("5432").to_owned();
    let socket_dir = lines
        .get(4)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or("/tmp")
        .to_owned();
    let mut info = ConnInfo::new();
    let settings = [
        ("host", socket_dir),
        ("port", port),
        ("user", options.pguser.clone()),
        ("dbname", "postgres".to_owned()),
    ];
    for (k, v) in settings {
        info.set(k, v)
            .map_err(|e| CloneError::refused(ErrorKind::Config, e.to_string()))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(client) = pgtandem_pg::connect(&info).await
            && let Ok(rows) = client
                .simple_query("SELECT status FROM pg_stat_wal_receiver")
                .await
            && rows
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("streaming")))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(not_streaming());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_is_quoted_for_libpq_then_for_the_guc() {
        let mut o = CloneOptions::new("127.0.0.2", "rep user", "/p", "/r");
        o.pgport = 5444;
        let env = |v: &str| match v {
            "PGPASSWORD" => Some("it's\\x".to_owned()),
            "PGSSLMODE" => Some("disable".to_owned()),
            _ => None,
        };
        let c = primary_conninfo(&o, env);
        assert_eq!(
            c,
            "user='rep user' password='it\\'s\\\\x' host=127.0.0.2 port=5444 sslmode=disable"
        );
        assert_eq!(guc_literal("a'b\\c"), "'a''b\\\\c'");
        let no_pw = primary_conninfo(&o, |_| None);
        assert!(!no_pw.contains("password"));
    }
}
