//! Shared pieces of the `pgtandem clone` end-to-end tests: a password-
//! protected primary with pgbench data, the binary copied where the
//! `postgres` OS user can run it, clone runs as that user, and standbys that
//! are stopped even when a test panics.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgtandem_testkit::{OsUser, Pg, PgCluster};

pub const PASSWORD: &str = "clone-secret";

/// A primary (`wal_level=replica` by default) with `pgbench -i -s 1`.
pub fn primary(version: Pg) -> PgCluster {
    let pg = PgCluster::builder(version)
        .password(PASSWORD)
        .fsync(false)
        .start()
        .unwrap();
    pg.pgbench_init("postgres", 1).unwrap();
    pg
}

/// The test binary, copied into a 0755 temp dir: the build dir under
/// /root is unreadable for `postgres`.
pub struct Binary {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn binary() -> Binary {
    let dir = tempfile::Builder::new()
        .prefix("pgt-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("pgtandem");
    fs::copy(env!("CARGO_BIN_EXE_pgtandem"), &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    Binary { _dir: dir, path }
}

/// A scratch dir owned by `postgres` holding replica targets.
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgt-clone-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    OsUser::postgres_server()
        .unwrap()
        .take_ownership(dir.path())
        .unwrap();
    dir
}

/// `pgtandem clone --transport local` against `pg` into `replica`, plus `extra`.
pub fn clone_args(pg: &PgCluster, replica: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "clone",
        "--transport",
        "local",
        "--pghost",
        pg.host(),
        "--pguser",
        "postgres",
        "--parallel",
        "2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push("--pgport".into());
    args.push(pg.port().to_string());
    args.push("--primary-pgdata".into());
    args.push(pg.data_dir().display().to_string());
    args.push("--replica-pgdata".into());
    args.push(replica.display().to_string());
    args.push("--pg-bindir".into());
    args.push(pg.bin_dir().display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// The clone command, run as `postgres` (directly, so signals reach it),
/// with a clean environment and `PGPASSWORD`.
pub fn command(bin: &Binary, args: &[String], env: &[(&str, &str)]) -> Command {
    let user = OsUser::postgres_server().unwrap();
    let mut cmd = Command::new(&bin.path);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", user.home())
        .env("PGPASSWORD", PASSWORD)
        .env("TMPDIR", "/tmp")
        .current_dir("/tmp")
        .uid(user.uid().as_raw())
        .gid(user.gid().as_raw())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a clone to completion.
pub fn run(bin: &Binary, args: &[String], env: &[(&str, &str)]) -> Output {
    command(bin, args, env).output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts exit 0, printing both streams otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "clone failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Single value of a SQL query on the primary (over its socket).
pub fn scalar(pg: &PgCluster, sql: &str) -> String {
    pg.psql("postgres", sql).unwrap()
}

/// Polls `check` until true or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Number of `pgclone_%` slots on the primary.
pub fn pgclone_slots(pg: &PgCluster) -> u32 {
    scalar(
        pg,
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgclone\\_%'",
    )
    .parse()
    .unwrap()
}

/// A standby started from a clone; stopped (immediate) on drop.
pub struct Standby<'a> {
    pub primary: &'a PgCluster,
    pub pgdata: PathBuf,
    pub port: u16,
}

impl Standby<'_> {
    /// Adopts a standby the tool already started (`--start`).
    pub fn adopt<'a>(primary: &'a PgCluster, pgdata: &Path, port: u16) -> Standby<'a> {
        Standby {
            primary,
            pgdata: pgdata.to_owned(),
            port,
        }
    }

    /// Configures and starts a clone without `-R` by hand.
    pub fn start_manually<'a>(primary: &'a PgCluster, pgdata: &Path) -> Standby<'a> {
        let port = pgtandem_testkit::free_port().unwrap();
        fs::write(pgdata.join("standby.signal"), "").unwrap();
        let conf = format!(
            "primary_conninfo = 'host={} port={} user=postgres password={PASSWORD}'\nport = {port}\n",
            primary.host(),
            primary.port()
        );
        let auto = pgdata.join("postgresql.auto.conf");
        let mut current = fs::read_to_string(&auto).unwrap_or_default();
        current.push_str(&conf);
        fs::write(&auto, current).unwrap();
        let standby = Standby {
            primary,
            pgdata: pgdata.to_owned(),
            port,
        };
        let out = standby
            .pg_ctl()
            .args(["start", "-w", "-t", "60", "-l"])
            .arg(pgdata.join("standby.log"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", text(&out.stderr));
        standby
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.primary.command("pg_ctl");
        cmd.arg("-D").arg(&self.pgdata);
        cmd
    }

    /// psql against the standby.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .primary
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-h"])
            .arg(self.primary.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(text(&out.stdout).trim().to_owned())
        } else {
            Err(text(&out.stderr))
        }
    }

    /// Proves replication: the WAL receiver streams and a row inserted on
    /// the primary shows up here.
    pub fn assert_streams_and_replays(&self, marker: &str) {
        let streaming = eventually(Duration::from_secs(30), || {
            self.psql("SELECT status FROM pg_stat_wal_receiver")
                .as_deref()
                == Ok("streaming")
        });
        assert!(streaming, "standby never streamed; log:\n{}", self.log());
        assert_eq!(self.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
        self.primary
            .psql(
                "postgres",
                &format!(
                    "CREATE TABLE IF NOT EXISTS clone_marker(v text); \
                     INSERT INTO clone_marker VALUES ('{marker}')"
                ),
            )
            .unwrap();
        let seen = eventually(Duration::from_secs(30), || {
            self.psql(&format!(
                "SELECT count(*) FROM clone_marker WHERE v = '{marker}'"
            ))
            .as_deref()
                == Ok("1")
        });
        assert!(seen, "row never replayed; log:\n{}", self.log());
        let primary_accounts = self
            .primary
            .psql("postgres", "SELECT count(*) FROM pgbench_accounts")
            .unwrap();
        assert_eq!(
            self.psql("SELECT count(*) FROM pgbench_accounts").unwrap(),
            primary_accounts
        );
    }

    fn log(&self) -> String {
        ["standby.log", "pgtandem_start.log"]
            .iter()
            .filter_map(|f| fs::read_to_string(self.pgdata.join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Immediate stop.
    pub fn stop(&self) {
        let _ = self
            .pg_ctl()
            .args(["stop", "-m", "immediate", "-w"])
            .output();
    }
}

impl Drop for Standby<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}
