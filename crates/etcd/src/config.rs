//! Service settings: the raw flag/env values and their validation, which
//! happens before any I/O (spec §3.1 step 1).

use std::time::Duration;

use pgtandem_core::conninfo::ConnInfo;

use crate::dsn::EtcdDsn;
use crate::duration::parse_go_duration;
use crate::error::{SyncError, SyncResult};

/// Fixed message logged before exit 1 for a bad polling interval.
pub const INVALID_POLLING_INTERVAL: &str = "Invalid polling interval format";
/// Longest accepted polling interval.
const MAX_POLLING_INTERVAL: Duration = Duration::from_secs(3600);
/// PG→etcd batches are capped by etcd's default `--max-txn-ops`.
pub const MAX_APPLY_BATCH: usize = 128;

/// Which table layout the database uses (spec §3.1 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    TwoTable,
    SingleTable,
}

impl SchemaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaMode::TwoTable => "two-table",
            SchemaMode::SingleTable => "single-table",
        }
    }
}

/// Settings as given (flags and environment already merged by the CLI).
#[derive(Clone, Default)]
pub struct RawSettings {
    /// `None` = libpq defaults.
    pub postgres_dsn: Option<String>,
    pub etcd_dsn: String,
    pub polling_interval: String,
    /// `None` when the operator did not choose a mode explicitly.
    pub schema_mode: Option<SchemaMode>,
    pub batch_size: u32,
    pub connect_timeout: String,
    pub max_outage: String,
    pub skip_migrations: bool,
    pub history_retention: String,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// PostgreSQL target with `PG*` fallbacks and `application_name` applied.
    pub postgres: ConnInfo,
    pub etcd: EtcdDsn,
    pub polling_interval: Duration,
    pub schema_mode: Option<SchemaMode>,
    /// Events per ingest transaction.
    pub batch_size: usize,
    pub connect_timeout: Duration,
    /// `None` = unlimited.
    pub max_outage: Option<Duration>,
    pub skip_migrations: bool,
    /// `None` = keep all history.
    pub history_retention: Option<Duration>,
}

impl Settings {
    /// Validates everything; `env` supplies `PG*` variables.
    pub fn validate(raw: &RawSettings, env: &dyn Fn(&str) -> Option<String>) -> SyncResult<Self> {
        let polling_interval = match parse_go_duration(&raw.polling_interval) {
            Ok(d) if !d.is_zero() && d <= MAX_POLLING_INTERVAL => d,
            _ => {
                return Err(SyncError::Config(format!(
                    "{INVALID_POLLING_INTERVAL}: \"{}\" (must be > 0 and <= 1h)",
                    raw.polling_interval
                )));
            }
        };
        let duration = |name: &str, text: &str| {
            parse_go_duration(text)
                .map_err(|e| SyncError::Config(format!("invalid --{name} \"{text}\": {e}")))
        };
        let connect_timeout = duration("connect-timeout", &raw.connect_timeout)?;
        if connect_timeout.is_zero() {
            return Err(SyncError::Config("--connect-timeout must be > 0".into()));
        }
        let max_outage = Some(duration("max-outage", &raw.max_outage)?).filter(|d| !d.is_zero());
        let history_retention =
            Some(duration("history-retention", &raw.history_retention)?).filter(|d| !d.is_zero());
        let etcd = EtcdDsn::parse(&raw.etcd_dsn).map_err(SyncError::Config)?;
        let postgres = postgres_conninfo(raw.postgres_dsn.as_deref(), env)?;
        if raw.batch_size == 0 {
            return Err(SyncError::Config("--batch-size must be >= 1".into()));
        }
        Ok(Settings {
            postgres,
            etcd,
            polling_interval,
            schema_mode: raw.schema_mode,
            batch_size: raw.batch_size as usize,
            connect_timeout,
            max_outage,
            skip_migrations: raw.skip_migrations,
            history_retention,
        })
    }

    /// Rows per PG→etcd batch.
    pub fn apply_batch(&self) -> usize {
        self.batch_size.min(MAX_APPLY_BATCH)
    }
}

/// Parses the PostgreSQL DSN and fills gaps from `PG*` variables; the
/// application name defaults to `pg_etcd`.
pub fn postgres_conninfo(
    dsn: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> SyncResult<ConnInfo> {
    let info = match dsn {
        Some(text) => ConnInfo::parse(text)
            .map_err(|e| SyncError::Config(format!("invalid PostgreSQL DSN: {}", e.message())))?,
        None => ConnInfo::new(),
    };
    let mut info = info.with_env_defaults(env);
    if info.application_name().is_none() {
        info.set("application_name", "pg_etcd")
            .map_err(|e| SyncError::Config(e.message().to_owned()))?;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawSettings {
        RawSettings {
            postgres_dsn: Some("host=/tmp dbname=x".into()),
            etcd_dsn: "etcd://127.0.0.1:2379/t/".into(),
            polling_interval: "1s".into(),
            schema_mode: None,
            batch_size: 1000,
            connect_timeout: "30s".into(),
            max_outage: "0".into(),
            skip_migrations: false,
            history_retention: "0".into(),
        }
    }

    #[test]
    fn defaults_validate() {
        let s = Settings::validate(&raw(), &|_| None).unwrap();
        assert_eq!(s.polling_interval, Duration::from_secs(1));
        assert_eq!(s.max_outage, None);
        assert_eq!(s.apply_batch(), 128);
        assert_eq!(s.postgres.application_name(), Some("pg_etcd"));
        assert_eq!(s.etcd.prefix, "/t/");
    }

    #[test]
    fn polling_interval_bounds() {
        for bad in ["abc", "0", "2h", "-1s"] {
            let mut r = raw();
            r.polling_interval = bad.into();
            let err = Settings::validate(&r, &|_| None).unwrap_err().to_string();
            assert!(err.starts_with(INVALID_POLLING_INTERVAL), "{bad}: {err}");
        }
        let mut r = raw();
        r.polling_interval = "1h".into();
        assert!(Settings::validate(&r, &|_| None).is_ok());
    }

    #[test]
    fn bad_dsn_is_config_error() {
        let mut r = raw();
        r.etcd_dsn = "http://h".into();
        assert!(matches!(
            Settings::validate(&r, &|_| None),
            Err(SyncError::Config(_))
        ));
    }
}
