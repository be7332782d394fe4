//! The clone's one SQL session on the primary (`pgclone-<pid>-session`):
//! server checks, then `pg_backup_start`/`pg_backup_stop`, which must run in
//! the same session because a non-exclusive backup lives and dies with it.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use pgtandem_core::conninfo::ConnInfo;
use pgtandem_core::error::ErrorKind;
use pgtandem_core::lsn::Lsn;
use pgtandem_pg::{Client, ConnParams};
use tokio_postgres::SimpleQueryMessage;

use crate::error::{CloneError, Result};
use crate::options::CloneOptions;

/// Oldest supported primary.
pub const MIN_VERSION_NUM: u32 = 150_000;

const SERVER_FACTS: &str = "SELECT current_setting('server_version_num'), \
     current_setting('wal_level'), current_setting('archive_mode'), \
     current_setting('config_file'), current_setting('hba_file'), \
     current_setting('data_directory'), \
     pg_size_bytes(current_setting('wal_segment_size'))";
const TABLESPACES: &str = "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace \
     WHERE pg_tablespace_location(oid) <> '' ORDER BY oid";
const BACKUP_START: &str = "SELECT lsn FROM pg_backup_start('pgclone', true) AS lsn";
const BACKUP_STOP: &str = "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(true)";

/// What the primary told us before anything was changed.
#[derive(Debug, Clone)]
pub struct PrimaryFacts {
    pub version_num: u32,
    pub wal_level: String,
    pub archive_mode: String,
    pub config_file: PathBuf,
    pub hba_file: PathBuf,
    pub data_directory: PathBuf,
    pub wal_segment_size: u64,
    /// `(oid, location)` of every non-default tablespace.
    pub tablespaces: Vec<(u32, PathBuf)>,
}

impl PrimaryFacts {
    pub fn major(&self) -> u32 {
        self.version_num / 10_000
    }
}

/// Result of `pg_backup_stop`.
#[derive(Debug, Clone)]
pub struct BackupStop {
    pub lsn: Lsn,
    pub labelfile: String,
    pub spcmapfile: String,
}

/// Connection parameters for the primary from the options and the libpq
/// environment (`PGPASSWORD`, `PGPASSFILE`, `PGSSLMODE`, `PGDATABASE`, ...;
/// `PGPORT` and `PGHOST` are not consulted: the flags decide).
pub fn conn_params(options: &CloneOptions, application_name: &str) -> Result<ConnParams> {
    let config = |e: pgtandem_core::error::Error| {
        CloneError::refused(
            ErrorKind::Config,
            format!("Invalid connection settings: {e}"),
        )
    };
    let mut info = ConnInfo::new();
    info.set("host", options.pghost.clone()).map_err(config)?;
    info.set("port", options.pgport.to_string())
        .map_err(config)?;
    info.set("user", options.pguser.clone()).map_err(config)?;
    let info = info.with_env_defaults(&|var| match var {
        "PGAPPNAME" | "PGPORT" | "PGHOST" | "PGHOSTADDR" => None,
        _ => std::env::var(var).ok().filter(|v| !v.is_empty()),
    });
    ConnParams::from_conninfo(&info)
        .map(|p| p.with_application_name(application_name))
        .map_err(|e| CloneError::pg("Invalid connection settings", e))
}

/// The SQL session.
pub struct Session {
    client: Client,
}

impl Session {
    /// Connects as `pgclone-<pid>-session`.
    pub async fn open(params: &ConnParams) -> Result<Self> {
        let client = pgtandem_pg::connect_params(params)
            .await
            .map_err(|e| CloneError::pg("Could not connect to the primary", e))?;
        Ok(Self { client })
    }

    async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| CloneError::pg(format!("Query failed ({sql})"), e.into()))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Version, settings and tablespaces (§3.1 step 5).
    pub async fn facts(&self) -> Result<PrimaryFacts> {
        let rows = self.rows(SERVER_FACTS).await?;
        let row = rows.first().ok_or_else(|| {
            CloneError::refused(ErrorKind::Internal, "Could not retrieve PostgreSQL version")
        })?;
        let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let version_num: u32 = text(0).parse().map_err(|_| {
            CloneError::refused(ErrorKind::Internal, "Could not retrieve PostgreSQL version")
        })?;
        if version_num < MIN_VERSION_NUM {
            return Err(CloneError::refused(
                ErrorKind::Unsupported,
                "PostgreSQL >= 15 required",
            ));
        }
        let wal_level = text(1);
        if wal_level == "minimal" {
            return Err(CloneError::refused(
                ErrorKind::Config,
                "wal_level must be replica or logical on the primary",
            ));
        }
        let mut tablespaces = Vec::new();
        for row in self.rows(TABLESPACES).await? {
            let oid = row.first().cloned().flatten().and_then(|o| o.parse().ok());
            let loc = row.get(1).cloned().flatten();
            if let (Some(oid), Some(loc)) = (oid, loc) {
                tablespaces.push((oid, PathBuf::from(loc)));
            }
        }
        Ok(PrimaryFacts {
            version_num,
            wal_level,
            archive_mode: text(2),
            config_file: PathBuf::from(text(3)),
            hba_file: PathBuf::from(text(4)),
            data_directory: PathBuf::from(text(5)),
            wal_segment_size: text(6).parse().unwrap_or(16 << 20),
            tablespaces,
        })
    }

    /// `pg_backup_start('pgclone', true)`: the start LSN.
    pub async fn backup_start(&self) -> Result<Lsn> {
        let rows =
            self.client.simple_query(BACKUP_START).await.map_err(|e| {
                CloneError::pg("pg_backup_start failed", pgtandem_pg::Error::from(e))
            })?;
        let lsn = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        parse_lsn(lsn.as_deref().unwrap_or(""))
    }

    /// `pg_backup_stop(true)`, cancelled after `timeout` (`None` = wait forever).
    pub async fn backup_stop(&self, timeout: Option<Duration>) -> Result<BackupStop> {
        let query = self.client.simple_query(BACKUP_STOP);
        let rows = match timeout {
            None => query.await,
            Some(limit) => match tokio::time::timeout(limit, query).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = self
                        .client
                        .cancel_token()
                        .cancel_query(tokio_postgres::NoTls)
                        .await;
                    return Err(CloneError::Timeout(format!(
                        "pg_backup_stop did not finish within {}s (check archive_command on the primary)",
                        limit.as_secs()
                    )));
                }
            },
        }
        .map_err(|e| CloneError::pg("pg_backup_stop failed", pgtandem_pg::Error::from(e)))?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((
                    r.get(0).unwrap_or_default().to_owned(),
                    r.get(1).unwrap_or_default().to_owned(),
                    r.get(2).unwrap_or_default().to_owned(),
                )),
                _ => None,
            })
            .ok_or_else(|| CloneError::transport("pg_backup_stop failed"))?;
        Ok(BackupStop {
            lsn: parse_lsn(&row.0)?,
            labelfile: row.1,
            spcmapfile: row.2,
        })
    }

    /// Whether a walsender with this pid or application name streams.
    pub async fn walsender_running(
        &self,
        pid: Option<i32>,
        application_name: &str,
    ) -> Result<bool> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = {}{}",
            pgtandem_core::quoting::quote_literal(application_name),
            pid.map(|p| format!(" OR pid = {p}")).unwrap_or_default()
        );
        let rows = self.rows(&sql).await?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|c| c != "0"))
    }

    /// `pg_drop_replication_slot` fallback for a slot the walsender
    /// protocol could not drop.
    pub async fn drop_slot(&self, name: &str) -> Result<()> {
        let sql = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            pgtandem_core::quoting::quote_literal(name)
        );
        self.rows(&sql).await.map(drop)
    }

    /// `--standby-slot`: a persistent slot reserving WAL from now on,
    /// created unless it exists, and kept after the clone.
    pub async fn create_slot_if_absent(&self, name: &str) -> Result<()> {
        let lit = pgtandem_core::quoting::quote_literal(name);
        let sql = format!(
            "SELECT pg_create_physical_replication_slot({lit}, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {lit})"
        );
        self.rows(&sql).await.map(drop)
    }

    /// Ends the session (the server aborts a backup still in progress).
    pub fn close(self) {
        drop(self.client);
    }
}

/// An LSN as `pg_backup_start/stop` print it; anything else is pgclone's FATAL.
pub fn parse_lsn(text: &str) -> Result<Lsn> {
    let valid = text.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes()
                .chain(b.bytes())
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    });
    let lsn = valid.then(|| Lsn::from_str(text).ok()).flatten();
    lsn.ok_or_else(|| {
        CloneError::refused(ErrorKind::Internal, format!("Invalid LSN format: {text}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_format_is_checked_like_pgclone() {
        assert_eq!(parse_lsn("0/3000028").unwrap(), Lsn(0x300_0028));
        assert_eq!(parse_lsn("1A/FF").unwrap(), Lsn((0x1A << 32) | 0xFF));
        for bad in ["", "0/", "/1", "0/3000028x", "0x0/1", "0/abc"] {
            assert_eq!(
                parse_lsn(bad).unwrap_err().to_string(),
                format!("Invalid LSN format: {bad}")
            );
        }
    }
}
