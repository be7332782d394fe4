//! Opening ordinary (SQL) connections from a libpq-style [`ConnInfo`]:
//! parameter resolution, `.pgpass`, TLS policy, retries, version checks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgtandem_core::conninfo::{ConnInfo, Host, HostSpec};
use pgtandem_core::pgpass::{self, PgpassFile};
use pgtandem_core::version::PgVersion;
use tokio::time::Instant;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// TLS policy from `sslmode`.
///
/// We have no TLS connector yet, so modes that demand TLS are refused instead
/// of silently falling back to plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// `disable`, `allow`, `prefer`: plaintext is acceptable.
    Plain,
}

impl TlsPolicy {
    fn from_sslmode(mode: Option<&str>) -> Result<Self> {
        match mode.unwrap_or("prefer") {
            "disable" | "allow" | "prefer" => Ok(TlsPolicy::Plain),
            mode @ ("require" | "verify-ca" | "verify-full") => Err(Error::Unsupported(format!(
                "sslmode={mode} requested, but TLS connections to PostgreSQL are not built into \
                 pgtandem yet; use sslmode=disable or sslmode=prefer on a trusted network"
            ))),
            other => Err(Error::Config(format!("invalid sslmode value: \"{other}\""))),
        }
    }
}

/// Connection parameters after defaults are applied; shared by SQL and
/// replication connections so both resolve hosts and passwords identically.
#[derive(Clone)]
pub struct ConnParams {
    /// Candidate servers in the order libpq would try them.
    pub hosts: Vec<HostSpec>,
    /// Role name.
    pub user: String,
    /// Database name.
    pub dbname: String,
    /// Explicit password (from the conninfo or `PGPASSWORD`), never logged.
    password: Option<String>,
    /// `passfile` override for `.pgpass` lookups.
    passfile: Option<PathBuf>,
    /// `application_name`, shown in `pg_stat_activity`/`pg_stat_replication`.
    pub application_name: Option<String>,
    /// Per-host connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Backend command-line options (`-c name=value ...`).
    pub options: Option<String>,
    /// TCP keepalives on/off.
    pub keepalives: bool,
    /// Idle time before the first keepalive probe.
    pub keepalives_idle: Option<Duration>,
    /// Which server in a host list is acceptable.
    pub target_session_attrs: TargetSessionAttrs,
    /// TLS policy derived from `sslmode`.
    pub tls: TlsPolicy,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("target_session_attrs", &self.target_session_attrs)
            .finish_non_exhaustive()
    }
}

impl ConnParams {
    /// Resolves a conninfo into concrete parameters, applying libpq's
    /// built-in defaults (port 5432, user = OS user, dbname = user, default
    /// socket directory). `PG*` environment variables are the caller's
    /// choice: apply [`ConnInfo::with_env_defaults`] first to honour them.
    pub fn from_conninfo(info: &ConnInfo) -> Result<Self> {
        let os_user = match info.user().filter(|u| !u.is_empty()) {
            Some(_) => String::new(),
            None => os_user()?,
        };
        let info = info.with_builtin_defaults(&os_user);
        let hosts = info
            .hosts()
            .map_err(|e| Error::Config(e.message().to_owned()))?;
        let user = info.user().unwrap_or_default().to_owned();
        let dbname = info.dbname().unwrap_or_default().to_owned();
        Ok(ConnParams {
            hosts,
            dbname,
            user,
            password: info.password().map(str::to_owned),
            passfile: info.get("passfile").map(PathBuf::from),
            application_name: info.application_name().map(str::to_owned),
            connect_timeout: parse_seconds(info.get("connect_timeout"), "connect_timeout")?
                .filter(|d| !d.is_zero()),
            options: info.get("options").map(str::to_owned),
            keepalives: parse_bool(info.get("keepalives"), "keepalives")?.unwrap_or(true),
            keepalives_idle: parse_seconds(info.get("keepalives_idle"), "keepalives_idle")?,
            target_session_attrs: parse_session_attrs(info.get("target_session_attrs"))?,
            tls: TlsPolicy::from_sslmode(info.get("sslmode"))?,
        })
    }

    /// Overrides the application name (walsender/session naming).
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// The password to send to `host`: the explicit one, else `.pgpass`.
    pub fn password_for(&self, target: &HostSpec, dbname: &str) -> Option<String> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        lookup_pgpass(self.passfile.as_deref(), target, dbname, &self.user)
    }

    /// A tokio-postgres config for these parameters.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        for target in &self.hosts {
            match (&target.host, &target.hostaddr) {
                (Host::Unix(dir), _) => config.host_path(dir),
                // The numeric address is where we connect; the name only
                // matters for .pgpass, which we resolve ourselves.
                (Host::Tcp(_), Some(addr)) => config.host(addr),
                (Host::Tcp(name), None) => config.host(name),
            };
            config.port(target.port);
        }
        config.user(&self.user).dbname(&self.dbname);
        // tokio-postgres takes one password for all hosts; libpq would look
        // `.pgpass` up per host, which only matters for multi-host lists.
        if let Some(target) = self.hosts.first()
            && let Some(password) = self.password_for(target, &self.dbname)
        {
            config.password(password);
        }
        if let Some(name) = &self.application_name {
            config.application_name(name);
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        if let Some(options) = &self.options {
            config.options(options);
        }
        config.keepalives(self.keepalives);
        if let Some(idle) = self.keepalives_idle {
            config.keepalives_idle(idle);
        }
        config.target_session_attrs(self.target_session_attrs);
        match self.tls {
            TlsPolicy::Plain => config.ssl_mode(tokio_postgres::config::SslMode::Disable),
        };
        config
    }
}

/// libpq's password file lookup: `passfile`, else `PGPASSFILE`, else
/// `~/.pgpass`; unsafe files are ignored with libpq's warning.
fn lookup_pgpass(
    passfile: Option<&Path>,
    target: &HostSpec,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let path = match passfile {
        Some(path) => path.to_owned(),
        None => {
            let home = std::env::var_os("HOME")?;
            pgpass::pgpass_path(&|var| std::env::var(var).ok(), Path::new(&home))
        }
    };
    match pgpass::load(&path) {
        PgpassFile::Loaded(file) => file
            .lookup(&target.host_str(), &target.port.to_string(), dbname, user)
            .map(str::to_owned),
        PgpassFile::Missing => None,
        PgpassFile::Ignored(why) => {
            tracing::warn!("{why}");
            None
        }
    }
}

/// libpq's default user is the OS user; the environment is the only source
/// that needs no extra dependency.
fn os_user() -> Result<String> {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| Error::Config("no user name given and none found in the environment".into()))
}

fn parse_seconds(value: Option<&str>, key: &str) -> Result<Option<Duration>> {
    value
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
                .map_err(|_| Error::Config(format!("invalid integer value \"{v}\" for {key}")))
        })
        .transpose()
}

fn parse_bool(value: Option<&str>, key: &str) -> Result<Option<bool>> {
    value
        .map(|v| match v.trim() {
            "1" | "on" | "true" | "yes" => Ok(true),
            "0" | "off" | "false" | "no" => Ok(false),
            _ => Err(Error::Config(format!("invalid value \"{v}\" for {key}"))),
        })
        .transpose()
}

fn parse_session_attrs(value: Option<&str>) -> Result<TargetSessionAttrs> {
    match value.unwrap_or("any") {
        "any" => Ok(TargetSessionAttrs::Any),
        "read-write" => Ok(TargetSessionAttrs::ReadWrite),
        "read-only" => Ok(TargetSessionAttrs::ReadOnly),
        other => Err(Error::Unsupported(format!(
            "target_session_attrs={other} is not supported (use any, read-write or read-only)"
        ))),
    }
}

/// Opens a SQL connection and drives it on a background task.
pub async fn connect(info: &ConnInfo) -> Result<Client> {
    connect_params(&ConnParams::from_conninfo(info)?).await
}

/// Like [`connect`], for already-resolved parameters.
pub async fn connect_params(params: &ConnParams) -> Result<Client> {
    let (client, connection) = params.pg_config().connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %Error::from(e), "PostgreSQL connection ended with an error");
        }
    });
    Ok(client)
}

/// Backoff for [`connect_with_retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay after the first failure; doubled after each further one.
    pub initial_delay: Duration,
    /// Upper bound of a single delay.
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before attempt `attempt + 1` (attempt counts from 1).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the
    /// attempt/time budget is spent; returns the last error.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    let delay = self.delay_after(attempt);
                    let out_of_time = started.elapsed() + delay > self.max_elapsed;
                    if attempt >= self.max_attempts.max(1) || out_of_time {
                        return Err(e);
                    }
                    tracing::info!(attempt, delay_ms = delay.as_millis() as u64, error = %e, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// [`connect`], retrying errors that may go away (server starting up,
/// refused connection, too many clients).
pub async fn connect_with_retry(info: &ConnInfo, policy: RetryPolicy) -> Result<Client> {
    let params = ConnParams::from_conninfo(info)?;
    policy
        .run("connecting to PostgreSQL", || connect_params(&params))
        .await
}

/// The server's version from `server_version_num`.
pub async fn server_version(client: &Client) -> Result<PgVersion> {
    let rows = client.simple_query("SHOW server_version_num").await?;
    let num = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| Error::Protocol("SHOW server_version_num returned no row".into()))?;
    parse_version_num(&num)
}

pub(crate) fn parse_version_num(num: &str) -> Result<PgVersion> {
    let n: u32 = num
        .trim()
        .parse()
        .map_err(|_| Error::Protocol(format!("invalid server_version_num \"{num}\"")))?;
    PgVersion::from_num(n)
        .map_err(|e| Error::Protocol(format!("invalid server_version_num \"{num}\": {e}")))
}

/// Fails with [`pgtandem_core::error::ErrorKind::Unsupported`] unless the
/// server's major version is at least `min_major`.
pub async fn require_version(client: &Client, min_major: u32) -> Result<PgVersion> {
    let version = server_version(client).await?;
    if version.major < min_major {
        return Err(Error::Unsupported(format!(
            "PostgreSQL {min_major} or later is required, but the server runs PostgreSQL {version}"
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Result<ConnParams> {
        ConnParams::from_conninfo(&ConnInfo::parse(s).unwrap())
    }

    #[test]
    fn conninfo_resolution() {
        let p =
            params("host=/tmp,db1 port=5433 user=u application_name=a connect_timeout=3").unwrap();
        assert_eq!(p.hosts.len(), 2);
        assert_eq!(p.hosts[0].host, Host::Unix("/tmp".into()));
        assert_eq!(p.hosts[1].port, 5433);
        assert_eq!(p.dbname, "u");
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(3)));
        let cfg = p.pg_config();
        assert_eq!(cfg.get_ports(), &[5433, 5433]);
        assert_eq!(cfg.get_application_name(), Some("a"));
        assert!(params("host=a,b,c port=1,2 user=u").is_err());
        assert!(params("user=u keepalives=maybe").is_err());
        assert!(params("user=u target_session_attrs=standby").is_err());
    }

    #[test]
    fn password_is_redacted_in_debug() {
        let p = params("host=h user=u password=hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(p.pg_config().get_password(), Some(&b"hunter2"[..]));
    }

    #[test]
    fn tls_modes_never_downgrade() {
        assert_eq!(TlsPolicy::from_sslmode(None).unwrap(), TlsPolicy::Plain);
        assert_eq!(
            TlsPolicy::from_sslmode(Some("disable")).unwrap(),
            TlsPolicy::Plain
        );
        for mode in ["require", "verify-ca", "verify-full"] {
            let e = TlsPolicy::from_sslmode(Some(mode)).unwrap_err();
            assert_eq!(e.kind(), pgtandem_core::error::ErrorKind::Unsupported);
            assert!(e.to_string().contains("TLS"), "{e}");
        }
        assert!(TlsPolicy::from_sslmode(Some("bogus")).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            max_elapsed: Duration::from_secs(60),
        };
        assert_eq!(p.delay_after(1), Duration::from_millis(100));
        assert_eq!(p.delay_after(2), Duration::from_millis(200));
        assert_eq!(p.delay_after(3), Duration::from_millis(350));
        assert_eq!(p.delay_after(40), Duration::from_millis(350));
    }

    #[tokio::test]
    async fn retry_stops_on_fatal_and_after_budget() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_elapsed: Duration::from_secs(10),
        };
        let mut calls = 0;
        let r: Result<()> = p
            .run("op", || {
                calls += 1;
                async { Err(Error::Timeout("t".into())) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<()> = p
            .run("op", || {
                calls += 1;
                async { Err(Error::Auth("no".into())) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r = p
            .run("op", || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 2 {
                        Err(Error::Timeout("t".into()))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 2);
    }

    #[test]
    fn version_num_parsing() {
        let v = parse_version_num("150004").unwrap();
        assert_eq!((v.major, v.minor), (15, 4));
        let v = parse_version_num("180001").unwrap();
        assert_eq!((v.major, v.minor), (18, 1));
        assert!(parse_version_num("abc").is_err());
    }
}
