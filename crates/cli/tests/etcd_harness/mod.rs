//! Shared harness of the etcd-sync end-to-end suites (etcd-sync.md §5): real
//! etcd 3.4 and PostgreSQL 15/18 from the test kit, the real `pgtandem` binary
//! as a child process (also through its `pg_etcd` link), an independent watch
//! logger, and polling helpers. Every wait is a generous upper bound polled
//! every 10 ms: the tests prove behaviour, the benchmark measures speed.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use pgtandem_testkit::{Etcd, Pg, PgCluster};

/// The default prefix of §5.
pub const PREFIX: &str = "/t/";
/// Upper bound for "within 1–2 s" of the spec on a loaded 2-core CI box.
pub const SOON: Duration = Duration::from_secs(20);
/// Upper bound for startup, settling after load, and other slow phases.
pub const SLOW: Duration = Duration::from_secs(90);
/// Key the watch logger writes (outside every test prefix) to know it caught up.
const LOGGER_SYNC_KEY: &str = "/__watch_logger__/sync";

/// One `#[tokio::test]` per PostgreSQL version for each scenario body
/// (`async fn body(pg: Pg)`), as `name::pg15` and `name::pg18`.
macro_rules! both_pg {
    ($($name:ident => $body:ident;)*) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn pg15() {
                    super::$body($crate::etcd_harness::Pg::V15).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn pg18() {
                    super::$body($crate::etcd_harness::Pg::V18).await
                }
            }
        )*
    };
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `timeout`.
/// Returns how long it took (printed by callers that record timings).
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` every 10 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs blocking test-kit calls (server stop/start) without stalling the runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// One etcd and one PostgreSQL cluster for a test, a fresh database `sync`, and
/// a temp dir with the drop-in links made by `pgtandem install-links`.
pub struct Env {
    pub version: Pg,
    pub pg: PgCluster,
    pub etcd: Etcd,
    pub db: String,
    links: tempfile::TempDir,
}

impl Env {
    pub async fn start(version: Pg) -> Env {
        let (pg, etcd) = tokio::task::spawn_blocking(move || {
            let pg = PgCluster::builder(version).fsync(false).start().unwrap();
            let etcd = Etcd::start().unwrap();
            (pg, etcd)
        })
        .await
        .unwrap();
        let links = install_links();
        let env = Env {
            version,
            pg,
            etcd,
            db: "sync".into(),
            links,
        };
        env.create_database("sync");
        env
    }

    /// A fresh database (scenarios that need a second one).
    pub fn create_database(&self, name: &str) -> String {
        blocking(|| self.pg.create_database(name)).unwrap();
        name.to_owned()
    }

    pub fn pg_dsn(&self, db: &str) -> String {
        // The PostgreSQL 18 wheel has no OpenSSL.
        format!("{} sslmode=disable", self.pg.conninfo(db))
    }

    pub fn etcd_dsn(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}{prefix}", self.etcd.client_port())
    }

    pub async fn pg_client(&self) -> tokio_postgres::Client {
        pg_connect(&self.pg_dsn(&self.db)).await
    }

    pub async fn pg_client_for(&self, db: &str) -> tokio_postgres::Client {
        pg_connect(&self.pg_dsn(db)).await
    }

    pub async fn etcd_client(&self) -> Client {
        Client::connect([self.etcd.endpoint()], None).await.unwrap()
    }

    pub async fn logger(&self) -> WatchLogger {
        WatchLogger::start(self.etcd.endpoint(), None).await
    }

    /// The path of a drop-in link (`pg_etcd`, `etcd_fdw`).
    pub fn link(&self, name: &str) -> PathBuf {
        self.links.path().join(name)
    }

    /// `pgtandem etcd-sync` on the default database and prefix `/t/`, 1 s polling.
    pub fn service(&self) -> ServiceBuilder {
        self.service_on(&self.db, PREFIX)
    }

    pub fn service_on(&self, db: &str, prefix: &str) -> ServiceBuilder {
        ServiceBuilder::pgtandem()
            .opt("--postgres-dsn", &self.pg_dsn(db))
            .opt("--etcd-dsn", &self.etcd_dsn(prefix))
            .opt("--polling-interval", "1s")
    }

    /// Same, but started through the `pg_etcd` link.
    pub fn pg_etcd(&self) -> ServiceBuilder {
        ServiceBuilder::link(self.link("pg_etcd"))
            .opt("--postgres-dsn", &self.pg_dsn(&self.db))
            .opt("--etcd-dsn", &self.etcd_dsn(PREFIX))
            .opt("--polling-interval", "1s")
    }

    /// `status` (JSON) with a short connect budget.
    pub async fn status(&self) -> RunOutput {
        self.service()
            .action(&["status"])
            .opt("--connect-timeout", "3s")
            .run(SLOW)
            .await
    }

    /// `validate` (JSON) with a short connect budget.
    pub async fn validate(&self, extra: &[&str]) -> RunOutput {
        let mut action = vec!["validate"];
        action.extend_from_slice(extra);
        self.service()
            .action(&action)
            .opt("--connect-timeout", "3s")
            .run(SLOW)
            .await
    }
}

/// A temp dir with the drop-in links, made by `pgtandem install-links`.
pub fn install_links() -> tempfile::TempDir {
    let links = tempfile::tempdir().unwrap();
    let status = Command::new(pgtandem_bin())
        .env_clear()
        .arg("install-links")
        .arg(links.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pgtandem install-links failed");
    links
}

/// A loopback port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn pgtandem_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("pgtandem")
}

/// The two schema modes of §3.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    TwoTable,
    SingleTable,
}

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Mode::TwoTable => "two-table",
            Mode::SingleTable => "single-table",
        }
    }

    /// How a tombstone's value is stored (§2.4).
    pub fn tombstone_value(self) -> Option<&'static str> {
        match self {
            Mode::TwoTable => None,
            Mode::SingleTable => Some(""),
        }
    }

    /// The SQL call that queues a put: `etcd_set` (two-table) or `etcd_put`.
    pub fn put_fn(self) -> &'static str {
        match self {
            Mode::TwoTable => "etcd_set",
            Mode::SingleTable => "etcd_put",
        }
    }
}

/// How a PG-side write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// `success`, `noop`, `conflict` or `failed` (single-table: `success` or `conflict`).
    pub status: String,
    /// Two-table: `etcd_wal.revision`; single-table: the key's latest synced revision.
    pub revision: Option<i64>,
}

/// Queues a put (`Some`) or delete (`None`) through the mode's SQL API.
pub async fn pg_write(pg: &tokio_postgres::Client, mode: Mode, key: &str, value: Option<&str>) {
    match value {
        Some(v) => {
            let sql = format!("SELECT {}($1, $2)", mode.put_fn());
            pg.execute(&sql, &[&key, &v]).await.unwrap();
        }
        None => {
            pg.execute("SELECT etcd_delete($1)", &[&key]).await.unwrap();
        }
    }
}

/// Waits until the latest PG-side write of `key` is done and says how.
pub async fn wait_applied(pg: &tokio_postgres::Client, mode: Mode, key: &str) -> Applied {
    match mode {
        Mode::TwoTable => {
            let row = wait_wal_done(pg, key).await;
            Applied {
                status: row.status,
                revision: row.revision,
            }
        }
        Mode::SingleTable => {
            wait_until(
                &format!("pending row of {key} to be applied"),
                SOON,
                async || {
                    pg.query_one(
                        "SELECT count(*) FROM etcd WHERE key = $1 AND revision = -1",
                        &[&key],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                        == 0
                },
            )
            .await;
            let conflicts: i64 = pg
                .query_one(
                    "SELECT count(*) FROM pg_etcd_conflicts WHERE key = $1",
                    &[&key],
                )
                .await
                .unwrap()
                .get(0);
            let latest: Option<i64> = pg
                .query_one("SELECT max(revision) FROM etcd WHERE key = $1", &[&key])
                .await
                .unwrap()
                .get(0);
            Applied {
                status: if conflicts > 0 { "conflict" } else { "success" }.into(),
                revision: latest,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The service under test
// ---------------------------------------------------------------------------

/// How the binary is invoked, with its flags. Runs with a cleared environment
/// (plus `PATH`), so nothing on the machine leaks in; `env` adds variables.
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    program: PathBuf,
    lead: Vec<String>,
    action: Vec<String>,
    opts: Vec<(String, Option<String>)>,
    envs: Vec<(String, String)>,
}

impl ServiceBuilder {
    /// `pgtandem etcd-sync …` with no flags.
    pub fn pgtandem() -> ServiceBuilder {
        ServiceBuilder {
            program: pgtandem_bin(),
            lead: vec!["etcd-sync".into()],
            action: Vec::new(),
            opts: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// A drop-in link (`pg_etcd`, `etcd_fdw`) with no flags.
    pub fn link(path: PathBuf) -> ServiceBuilder {
        ServiceBuilder {
            program: path,
            lead: Vec::new(),
            action: Vec::new(),
            opts: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Sets (or replaces) `--flag value`.
    pub fn opt(mut self, flag: &str, value: &str) -> Self {
        self.opts.retain(|(f, _)| f != flag);
        self.opts.push((flag.into(), Some(value.into())));
        self
    }

    /// `--schema-mode`.
    pub fn mode(self, mode: Mode) -> Self {
        self.opt("--schema-mode", mode.flag())
    }

    /// Adds a bare flag (`--skip-migrations`).
    pub fn flag(mut self, flag: &str) -> Self {
        self.opts.push((flag.into(), None));
        self
    }

    /// Removes a flag (so an env variable or the default applies).
    pub fn without(mut self, flag: &str) -> Self {
        self.opts.retain(|(f, _)| f != flag);
        self
    }

    /// `status`, `validate --fix`, `migrate`, or any other words.
    pub fn action(mut self, words: &[&str]) -> Self {
        self.action = words.iter().map(|w| (*w).to_owned()).collect();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = self.lead.clone();
        args.extend(self.action.iter().cloned());
        for (flag, value) in &self.opts {
            args.push(flag.clone());
            if let Some(value) = value {
                args.push(value.clone());
            }
        }
        args
    }

    fn describe(&self) -> String {
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "{name} {}",
            self.lead
                .iter()
                .chain(&self.action)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    /// Starts the long-running service; stderr lines are captured.
    pub fn spawn(&self) -> Service {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let label = format!("{}[{}]", self.describe().trim(), child.id());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        let echo = label.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{echo}: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Service {
            child: Mutex::new(child),
            label,
            lines,
            started: Instant::now(),
            exit: Mutex::new(None),
        }
    }

    /// Runs a one-shot command (status, validate, migrate, a CLI check) to its end.
    pub async fn run(&self, timeout: Duration) -> RunOutput {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .args(self.args())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = Instant::now();
        let output = tokio::time::timeout(timeout, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{} did not finish within {timeout:?}", self.describe()))
            .unwrap();
        let out = RunOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        };
        eprintln!(
            "{} -> {:?} in {:?}\nstdout: {}\nstderr: {}",
            self.describe(),
            out.code,
            out.elapsed,
            out.stdout,
            out.stderr
        );
        out
    }
}

/// What a one-shot run returned.
#[derive(Debug)]
pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// stdout as JSON (status/validate print one document).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// A running service; SIGKILLed on drop if still alive.
pub struct Service {
    child: Mutex<Child>,
    pub label: String,
    lines: Arc<Mutex<Vec<String>>>,
    pub started: Instant,
    exit: Mutex<Option<i32>>,
}

impl Service {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.lock().unwrap().id()).unwrap())
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.count_log(needle) > 0
    }

    /// Waits for a stderr line containing `needle`; returns that line. Fails
    /// early (after a grace period for the last lines) if the process exits.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let what = format!("{}: log line containing {needle:?}", self.label);
        let mut exited_at: Option<Instant> = None;
        wait_for(&what, timeout, async || {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if found.is_none()
                && let Some(code) = self.try_exit()
            {
                let at = *exited_at.get_or_insert_with(Instant::now);
                assert!(
                    at.elapsed() < Duration::from_secs(2),
                    "{what}: the process exited with code {code} first"
                );
            }
            found
        })
        .await
    }

    /// Waits for `n` lines containing `needle`.
    pub async fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        let what = format!("{}: {n} log lines containing {needle:?}", self.label);
        wait_until(&what, timeout, async || self.count_log(needle) >= n).await;
    }

    /// Startup finished: the watch runs (after the initial resync, if any).
    pub async fn wait_ready(&self) -> Duration {
        self.wait_log("Started etcd watch", SLOW).await;
        self.started.elapsed()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// The exit code, if the process has ended (a signal death panics).
    pub fn try_exit(&self) -> Option<i32> {
        let mut exit = self.exit.lock().unwrap();
        if exit.is_none()
            && let Some(status) = self.child.lock().unwrap().try_wait().unwrap()
        {
            let code = status
                .code()
                .unwrap_or_else(|| panic!("{} died by a signal: {status:?}", self.label));
            *exit = Some(code);
        }
        *exit
    }

    pub fn is_running(&self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the process to end and returns its exit code.
    pub async fn wait_exit(&self, timeout: Duration) -> i32 {
        let what = format!("{} to exit", self.label);
        wait_for(&what, timeout, async || self.try_exit()).await
    }

    /// SIGTERM; asserts the graceful exit of §3.5 (code 0 and its log line).
    pub async fn terminate(&self) {
        self.signal(Signal::SIGTERM);
        let code = self.wait_exit(SOON).await;
        assert_eq!(code, 0, "{}: SIGTERM must exit 0", self.label);
        self.wait_log("Graceful shutdown completed", SOON).await;
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&self) {
        let mut exit = self.exit.lock().unwrap();
        if exit.is_none() {
            let mut child = self.child.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
            *exit = Some(-9);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        if matches!(child.try_wait(), Ok(None)) {
            // A stopped (SIGSTOP) process is resumed so it dies at once.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The independent watch logger
// ---------------------------------------------------------------------------

/// One etcd event as the logger saw it.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    pub put: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub seen_at: Instant,
}

impl LoggedEvent {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Watches the whole keyspace from the revision after its start, reconnecting
/// (from the last revision seen + 1) across etcd restarts, and records every event.
pub struct WatchLogger {
    events: Arc<Mutex<Vec<LoggedEvent>>>,
    last: Arc<AtomicI64>,
    compacted: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchLogger {
    pub async fn start(endpoint: String, options: Option<ConnectOptions>) -> WatchLogger {
        let mut client = Client::connect([endpoint.clone()], options.clone())
            .await
            .unwrap();
        let head = head_revision(&mut client).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let last = Arc::new(AtomicI64::new(head));
        let compacted = Arc::new(AtomicBool::new(false));
        let (sink, seen, lost) = (
            Arc::clone(&events),
            Arc::clone(&last),
            Arc::clone(&compacted),
        );
        let task = tokio::spawn(async move {
            loop {
                let from = seen.load(Ordering::SeqCst) + 1;
                if let Ok(mut client) = Client::connect([endpoint.clone()], options.clone()).await
                    && let Ok(mut stream) = client
                        .watch(
                            "",
                            Some(
                                WatchOptions::new()
                                    .with_all_keys()
                                    .with_start_revision(from),
                            ),
                        )
                        .await
                {
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                eprintln!("watch logger: compacted at {}", resp.compact_revision());
                                lost.store(true, Ordering::SeqCst);
                                seen.store(resp.compact_revision() - 1, Ordering::SeqCst);
                            }
                            break;
                        }
                        let now = Instant::now();
                        let mut sink = sink.lock().unwrap();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            sink.push(LoggedEvent {
                                put: ev.event_type() == EventType::Put,
                                key: kv.key().to_vec(),
                                value: kv.value().to_vec(),
                                mod_revision: kv.mod_revision(),
                                seen_at: now,
                            });
                            seen.fetch_max(kv.mod_revision(), Ordering::SeqCst);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        WatchLogger {
            events,
            last,
            compacted,
            task,
        }
    }

    /// Waits until the logger has seen every event committed before this call.
    pub async fn sync(&self, client: &mut Client) {
        let rev = put(client, LOGGER_SYNC_KEY, "sync").await;
        wait_until("watch logger to catch up", SLOW, async || {
            self.last.load(Ordering::SeqCst) >= rev
        })
        .await;
    }

    /// Whether the logger itself lost events to a compaction.
    pub fn lost_events(&self) -> bool {
        self.compacted.load(Ordering::SeqCst)
    }

    pub fn all(&self) -> Vec<LoggedEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Events whose key starts with `prefix`.
    pub fn under(&self, prefix: &str) -> Vec<LoggedEvent> {
        let prefix = prefix.as_bytes();
        self.all()
            .into_iter()
            .filter(|e| e.key.starts_with(prefix))
            .collect()
    }

    pub fn for_key(&self, key: &str) -> Vec<LoggedEvent> {
        self.all()
            .into_iter()
            .filter(|e| e.key == key.as_bytes())
            .collect()
    }

    pub fn puts_for(&self, key: &str) -> Vec<LoggedEvent> {
        self.for_key(key).into_iter().filter(|e| e.put).collect()
    }
}

impl Drop for WatchLogger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// etcd helpers
// ---------------------------------------------------------------------------

/// Put; returns the revision it produced.
pub async fn put(client: &mut Client, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> i64 {
    let resp = client.put(key, value, None).await.unwrap();
    resp.header().unwrap().revision()
}

/// Delete; returns the revision it produced.
pub async fn del(client: &mut Client, key: &str) -> i64 {
    let resp = client.delete(key, None).await.unwrap();
    assert_eq!(resp.deleted(), 1, "deleting {key}: no such key");
    resp.header().unwrap().revision()
}

/// `(value, mod_revision)` of a key, if it exists.
pub async fn get(client: &mut Client, key: &str) -> Option<(String, i64)> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs().first().map(|kv| {
        (
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.mod_revision(),
        )
    })
}

/// `etcdctl get --prefix --count-only`.
pub async fn count_prefix(client: &mut Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count()
}

/// The store's current revision.
pub async fn head_revision(client: &mut Client) -> i64 {
    client
        .get("\0", Some(GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Every live key under `prefix` with its value and mod_revision.
pub async fn etcd_snapshot(client: &mut Client, prefix: &str) -> Vec<(String, String, i64)> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// PostgreSQL helpers
// ---------------------------------------------------------------------------

pub async fn pg_connect(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A row of the `etcd` history table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdRow {
    pub key: String,
    pub value: Option<String>,
    pub revision: i64,
    pub tombstone: bool,
}

impl EtcdRow {
    pub fn new(key: &str, value: Option<&str>, revision: i64, tombstone: bool) -> EtcdRow {
        EtcdRow {
            key: key.into(),
            value: value.map(str::to_owned),
            revision,
            tombstone,
        }
    }
}

/// All `etcd` rows of a key, by revision.
pub async fn etcd_rows(pg: &tokio_postgres::Client, key: &str) -> Vec<EtcdRow> {
    pg.query(
        "SELECT key, value, revision, tombstone FROM etcd WHERE key = $1 ORDER BY revision",
        &[&key],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| EtcdRow {
        key: r.get(0),
        value: r.get(1),
        revision: r.get(2),
        tombstone: r.get(3),
    })
    .collect()
}

/// Whether `etcd` holds a row at exactly `(key, revision)`.
pub async fn has_row(pg: &tokio_postgres::Client, key: &str, revision: i64) -> bool {
    pg.query_one(
        "SELECT count(*) FROM etcd WHERE key = $1 AND revision = $2",
        &[&key, &revision],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

/// The checkpoint of `prefix` in `pg_etcd_state`.
pub async fn checkpoint(pg: &tokio_postgres::Client, prefix: &str) -> Option<i64> {
    pg.query_opt(
        "SELECT revision FROM pg_etcd_state WHERE prefix = $1",
        &[&prefix],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// `(last_resync_revision, last_resync_reason)` of `prefix`.
pub async fn last_resync(
    pg: &tokio_postgres::Client,
    prefix: &str,
) -> (Option<i64>, Option<String>) {
    let row = pg
        .query_one(
            "SELECT last_resync_revision, last_resync_reason FROM pg_etcd_state WHERE prefix = $1",
            &[&prefix],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A row of the `etcd_wal` queue.
#[derive(Clone, Debug)]
pub struct WalRow {
    pub id: i64,
    pub key: String,
    pub value: Option<String>,
    pub revision: Option<i64>,
    pub base_revision: Option<i64>,
    pub status: String,
    pub error_message: Option<String>,
}

/// Queue rows of a key, by id.
pub async fn wal_rows(pg: &tokio_postgres::Client, key: &str) -> Vec<WalRow> {
    pg.query(
        "SELECT id, key, value, revision, base_revision, status, error_message \
         FROM etcd_wal WHERE key = $1 ORDER BY id",
        &[&key],
    )
    .await
    .unwrap()
    .iter()
    .map(wal_row)
    .collect()
}

/// Every queue row, by id.
pub async fn all_wal_rows(pg: &tokio_postgres::Client) -> Vec<WalRow> {
    pg.query(
        "SELECT id, key, value, revision, base_revision, status, error_message \
         FROM etcd_wal ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(wal_row)
    .collect()
}

fn wal_row(r: &tokio_postgres::Row) -> WalRow {
    WalRow {
        id: r.get(0),
        key: r.get(1),
        value: r.get(2),
        revision: r.get(3),
        base_revision: r.get(4),
        status: r.get(5),
        error_message: r.get(6),
    }
}

/// Number of queue rows with `status`.
pub async fn wal_count(pg: &tokio_postgres::Client, status: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM etcd_wal WHERE status = $1",
        &[&status],
    )
    .await
    .unwrap()
    .get(0)
}

/// One scalar of any query.
pub async fn scalar_i64(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until the latest queue row of `key` has a final status; returns it.
pub async fn wait_wal_done(pg: &tokio_postgres::Client, key: &str) -> WalRow {
    wait_for(
        &format!("etcd_wal row of {key} to leave pending"),
        SOON,
        async || {
            wal_rows(pg, key)
                .await
                .pop()
                .filter(|r| r.status != "pending")
        },
    )
    .await
}

/// Migration names in `pg_etcd_migrations`, by id.
pub async fn migrations(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query("SELECT version FROM pg_etcd_migrations ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until every in-prefix event the logger saw is in `etcd` at its exact
/// revision (`tombstone` for deletes) and nothing is pending in the queue.
pub async fn wait_settled(
    pg: &tokio_postgres::Client,
    logger: &WatchLogger,
    client: &mut Client,
    prefix: &str,
    two_table: bool,
) {
    logger.sync(client).await;
    let events = logger.under(prefix);
    wait_until("every logged event to be in etcd", SLOW, async || {
        missing_events(pg, &events).await.is_empty()
    })
    .await;
    if two_table {
        wait_until("queue to drain", SLOW, async || {
            wal_count(pg, "pending").await == 0
        })
        .await;
    } else {
        wait_until("pending rows to drain", SLOW, async || {
            scalar_i64(pg, "SELECT count(*) FROM etcd WHERE revision = -1").await == 0
        })
        .await;
    }
}

/// Logged events without their exact `etcd` row.
pub async fn missing_events(
    pg: &tokio_postgres::Client,
    events: &[LoggedEvent],
) -> Vec<LoggedEvent> {
    let keys: Vec<String> = events.iter().map(LoggedEvent::key_str).collect();
    let revs: Vec<i64> = events.iter().map(|e| e.mod_revision).collect();
    let tombs: Vec<bool> = events.iter().map(|e| !e.put).collect();
    let values: Vec<String> = events.iter().map(LoggedEvent::value_str).collect();
    let found: Vec<(String, i64)> = pg
        .query(
            "SELECT u.key, u.rev FROM unnest($1::text[], $2::bigint[], $3::bool[], $4::text[]) \
             AS u(key, rev, tomb, val) \
             JOIN etcd e ON e.key = u.key AND e.revision = u.rev AND e.tombstone = u.tomb \
             AND (u.tomb OR e.value = u.val)",
            &[&keys, &revs, &tombs, &values],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let found: std::collections::HashSet<(String, i64)> = found.into_iter().collect();
    events
        .iter()
        .filter(|e| !found.contains(&(e.key_str(), e.mod_revision)))
        .cloned()
        .collect()
}

/// p50/p99/max of samples, for the test output.
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| {
        let idx = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[idx]
    };
    (at(0.50), at(0.99), samples[samples.len() - 1])
}
