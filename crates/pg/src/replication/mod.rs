//! Replication connections (walsender protocol) on our own thin layer over
//! `postgres-protocol`, because tokio-postgres 0.7 cannot send the
//! `replication` startup parameter.
//!
//! A [`ReplicationConnection`] runs replication commands (`IDENTIFY_SYSTEM`,
//! `CREATE_REPLICATION_SLOT`, ...) through the simple query protocol. The
//! connection owns its socket and read buffer, which WAL streaming
//! ([`PhysicalStream`]) and the native WAL receiver ([`WalReceiver`]) use.

mod receiver;
mod startup;
mod stream;
mod wal_writer;
mod wire;

pub use receiver::{
    DEFAULT_RECEIVE_TIMEOUT, DEFAULT_STATUS_INTERVAL, ReceivedWal, WalReceiveError, WalReceiver,
    WalReceiverOptions,
};
pub use stream::{
    PhysicalStream, SlotPosition, StandbyStatus, StreamMessage, TimelineSwitch, XLogData,
};
pub use wal_writer::{ARCHIVE_STATUS_DIR, PARTIAL_SUFFIX};

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use pgtandem_core::conninfo::{ConnInfo, HostSpec};
use pgtandem_core::lsn::Lsn;
use pgtandem_core::quoting::{quote_ident_always, quote_literal};
use pgtandem_core::version::PgVersion;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::connect::ConnParams;
use crate::error::{Error, Result};
use wire::{Framed, Incoming, Socket, describe, describe_target, server_error};

/// How long [`ReplicationConnection::close`] waits for the server to hang up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Kind of replication connection, i.e. the `replication` startup parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationMode {
    /// `replication=true`: physical WAL streaming, not bound to a database.
    Physical,
    /// `replication=database`: logical decoding in the conninfo's database;
    /// also accepts ordinary SQL.
    Logical,
}

impl ReplicationMode {
    fn startup_value(self) -> &'static str {
        match self {
            ReplicationMode::Physical => "true",
            ReplicationMode::Logical => "database",
        }
    }
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// Cluster identifier as a decimal string (it is a u64, kept as text so
    /// it compares equal to `pg_control_system().system_identifier::text`).
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush location.
    pub xlogpos: Lsn,
    /// Database of a logical connection; `None` for physical ones.
    pub dbname: Option<String>,
}

/// Options of a physical slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOptions {
    /// Dropped automatically when this connection ends (also on crash).
    pub temporary: bool,
    /// Reserve WAL immediately instead of on first use by a client.
    pub reserve_wal: bool,
}

/// What to do with the snapshot of a new logical slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it for `SET TRANSACTION SNAPSHOT` by other sessions.
    Export,
    /// Do not export anything.
    NoExport,
    /// Use it in the current transaction of this connection (which must be
    /// inside `BEGIN ISOLATION LEVEL REPEATABLE READ` on a logical
    /// connection).
    Use,
}

impl SnapshotAction {
    fn option_value(self) -> &'static str {
        match self {
            SnapshotAction::Export => "export",
            SnapshotAction::NoExport => "nothing",
            SnapshotAction::Use => "use",
        }
    }
}

/// Result of creating a logical slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the slot.
    pub slot_name: String,
    /// First LSN whose changes are decoded from the slot: everything
    /// committed before it is visible in the slot's snapshot, everything
    /// after it is streamed.
    pub consistent_point: Lsn,
    /// Exported snapshot, with [`SnapshotAction::Export`]. It stays valid
    /// only until the next command on this replication connection or its
    /// close, so import it with `SET TRANSACTION SNAPSHOT` before that.
    pub snapshot_name: Option<String>,
    /// Output plugin of the slot.
    pub output_plugin: Option<String>,
}

/// One entry of `TIMELINE_HISTORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    /// File name, e.g. `00000002.history`.
    pub filename: String,
    /// File content.
    pub content: String,
}

/// Rows of a simple query, all values in text format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names of the last row set.
    pub columns: Vec<String>,
    /// Rows of the last row set; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Tag of the last `CommandComplete` (e.g. `CREATE_REPLICATION_SLOT`).
    pub command_tag: Option<String>,
}

impl QueryResult {
    /// The value of `column` in the first row; errors if there is no row or
    /// no such column.
    pub fn first(&self, column: &str) -> Result<Option<&str>> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| Error::Protocol(format!("result has no column \"{column}\"")))?;
        let row = self
            .rows
            .first()
            .ok_or_else(|| Error::Protocol("command returned no row".into()))?;
        Ok(row.get(index).and_then(Option::as_deref))
    }

    fn first_required(&self, column: &str) -> Result<&str> {
        self.first(column)?
            .ok_or_else(|| Error::Protocol(format!("column \"{column}\" is NULL")))
    }
}

/// A walsender session.
pub struct ReplicationConnection {
    framed: Framed,
    mode: ReplicationMode,
    parameters: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("mode", &self.mode)
            .field("backend_pid", &self.backend_pid())
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Opens a replication connection using the conninfo's hosts in order.
    pub async fn connect(info: &ConnInfo, mode: ReplicationMode) -> Result<Self> {
        Self::connect_params(&ConnParams::from_conninfo(info)?, mode).await
    }

    /// Like [`ReplicationConnection::connect`] for resolved parameters.
    ///
    /// `target_session_attrs` is ignored: replication works against
    /// primaries and standbys alike.
    pub async fn connect_params(params: &ConnParams, mode: ReplicationMode) -> Result<Self> {
        let mut last_error = None;
        for target in &params.hosts {
            let attempt = Self::connect_host(params, target, mode);
            let result = match params.connect_timeout {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout(format!(
                        "connection to {} timed out after {}s",
                        describe_target(target),
                        limit.as_secs()
                    ))),
                },
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                // Like libpq, move on to the next host only when this one
                // could not be reached; a server's answer is final.
                Err(e @ (Error::Io { .. } | Error::Timeout(_))) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Config("no host to connect to".into())))
    }

    async fn connect_host(
        params: &ConnParams,
        target: &HostSpec,
        mode: ReplicationMode,
    ) -> Result<Self> {
        let socket = Socket::connect(target).await.map_err(|e| {
            Error::io(
                format!("connection to {} failed", describe_target(target)),
                e,
            )
        })?;
        let mut framed = Framed::new(socket);
        // libpq/pg_basebackup look physical connections up in .pgpass under
        // the database name "replication".
        let pgpass_db = match mode {
            ReplicationMode::Physical => "replication",
            ReplicationMode::Logical => params.dbname.as_str(),
        };
        let mut startup_params = vec![
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", mode.startup_value()),
            ("client_encoding", "UTF8"),
        ];
        if let Some(name) = &params.application_name {
            startup_params.push(("application_name", name.as_str()));
        }
        if let Some(options) = &params.options {
            startup_params.push(("options", options.as_str()));
        }
        let session = startup::startup(&mut framed, &startup_params, &params.user, || {
            params.password_for(target, pgpass_db)
        })
        .await?;
        tracing::debug!(server = %describe_target(target), ?mode, "replication connection established");
        Ok(Self {
            framed,
            mode,
            parameters: session.parameters,
            backend_key: session.backend_key,
        })
    }

    /// Physical or logical.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// A `ParameterStatus` value reported by the server (e.g.
    /// `server_version`, `integer_datetimes`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Process id of the walsender, as in `pg_stat_replication.pid`.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_key.map(|(pid, _)| pid)
    }

    /// Runs one command with the simple query protocol.
    ///
    /// Commands that switch to COPY mode are refused here; they need their
    /// own streaming entry points.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult> {
        frontend::query(sql, &mut self.framed.write_buf)
            .map_err(|e| Error::Config(format!("invalid query text: {e}")))?;
        self.framed.flush().await?;

        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.framed.read().await? {
                Incoming::Message(Message::RowDescription(body)) => {
                    result.columns = body
                        .fields()
                        .map(|f| Ok(f.name().to_owned()))
                        .collect()
                        .map_err(|e| Error::Protocol(format!("malformed row description: {e}")))?;
                    result.rows.clear();
                }
                Incoming::Message(Message::DataRow(body)) => {
                    result.rows.push(decode_row(&body)?);
                }
                Incoming::Message(Message::CommandComplete(body)) => {
                    let tag = body.tag().map_err(|e| Error::Protocol(e.to_string()))?;
                    result.command_tag = Some(tag.to_owned());
                }
                Incoming::Message(Message::EmptyQueryResponse) => {}
                Incoming::Message(Message::NoticeResponse(body)) => {
                    startup::log_notice(body.fields());
                }
                Incoming::Message(Message::ParameterStatus(p)) => {
                    if let (Ok(name), Ok(value)) = (p.name(), p.value()) {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    // Keep reading: the server still sends ReadyForQuery, and
                    // the connection stays usable after it.
                    error = Some(server_error(body.fields())?);
                }
                Incoming::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e.into()),
                        None => Ok(result),
                    };
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} in response to a simple query",
                        describe(&other)
                    )));
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        Ok(SystemIdentity {
            system_id: r.first_required("systemid")?.to_owned(),
            timeline: parse_field(r.first_required("timeline")?, "timeline")?,
            xlogpos: parse_lsn(r.first_required("xlogpos")?)?,
            dbname: r.first("dbname")?.map(str::to_owned),
        })
    }

    /// `CREATE_REPLICATION_SLOT "name" [TEMPORARY] PHYSICAL [(RESERVE_WAL)]`.
    ///
    /// The server reports no meaningful LSN for physical slots; read
    /// `restart_lsn` from `pg_replication_slots` if needed.
    pub async fn create_physical_slot(&mut self, name: &str, options: SlotOptions) -> Result<()> {
        self.simple_query(&physical_slot_sql(name, options)).await?;
        Ok(())
    }

    /// `CREATE_REPLICATION_SLOT "name" [TEMPORARY] LOGICAL "plugin" (SNAPSHOT '...')`
    /// (option syntax of PostgreSQL 15+). Needs a logical connection.
    ///
    /// With [`SnapshotAction::Export`], the returned snapshot is valid only
    /// until the next command on this connection or its close: keep the
    /// connection idle while other sessions run `SET TRANSACTION SNAPSHOT`.
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        plugin: &str,
        temporary: bool,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot> {
        if self.mode != ReplicationMode::Logical {
            return Err(Error::Unsupported(
                "logical slots need a logical replication connection (replication=database)".into(),
            ));
        }
        let r = self
            .simple_query(&logical_slot_sql(name, plugin, temporary, snapshot))
            .await?;
        Ok(CreatedSlot {
            slot_name: r.first_required("slot_name")?.to_owned(),
            consistent_point: parse_lsn(r.first_required("consistent_point")?)?,
            snapshot_name: r.first("snapshot_name")?.map(str::to_owned),
            output_plugin: r.first("output_plugin")?.map(str::to_owned),
        })
    }

    /// `DROP_REPLICATION_SLOT "name" [WAIT]`; with `wait`, blocks while the
    /// slot is active instead of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        let mut sql = format!("DROP_REPLICATION_SLOT {}", quote_ident_always(name));
        if wait {
            sql.push_str(" WAIT");
        }
        self.simple_query(&sql).await?;
        Ok(())
    }

    /// `SHOW name`, e.g. `wal_segment_size` or `server_version_num`.
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let r = self
            .simple_query(&format!("SHOW {}", quote_ident_always(name)))
            .await?;
        let row = r
            .rows
            .first()
            .ok_or_else(|| Error::Protocol(format!("SHOW {name} returned no row")))?;
        row.first()
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Protocol(format!("SHOW {name} returned NULL")))
    }

    /// The server version, via `SHOW server_version_num`.
    pub async fn server_version(&mut self) -> Result<PgVersion> {
        crate::connect::parse_version_num(&self.show("server_version_num").await?)
    }

    /// `TIMELINE_HISTORY tli`: the history file of a timeline (> 1).
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<TimelineHistory> {
        let r = self
            .simple_query(&format!("TIMELINE_HISTORY {timeline}"))
            .await?;
        Ok(TimelineHistory {
            filename: r.first_required("filename")?.to_owned(),
            content: r.first_required("content")?.to_owned(),
        })
    }

    /// Sends `Terminate` and waits briefly for the server to hang up, so that
    /// its temporary slots are on their way out when this returns.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.framed.write_buf);
        self.framed.flush().await?;
        // The server answers Terminate by closing; anything else is noise.
        let drain = async { while self.framed.read().await.is_ok() {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        // The peer may already be gone; a failed shutdown changes nothing.
        let _ = self.framed.shutdown().await;
        Ok(())
    }
}

fn physical_slot_sql(name: &str, options: SlotOptions) -> String {
    let mut sql = format!("CREATE_REPLICATION_SLOT {}", quote_ident_always(name));
    if options.temporary {
        sql.push_str(" TEMPORARY");
    }
    sql.push_str(" PHYSICAL");
    if options.reserve_wal {
        sql.push_str(" (RESERVE_WAL)");
    }
    sql
}

fn logical_slot_sql(name: &str, plugin: &str, temporary: bool, snapshot: SnapshotAction) -> String {
    format!(
        "CREATE_REPLICATION_SLOT {}{} LOGICAL {} (SNAPSHOT {})",
        quote_ident_always(name),
        if temporary { " TEMPORARY" } else { "" },
        quote_ident_always(plugin),
        quote_literal(snapshot.option_value()),
    )
}

fn decode_row(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>> {
    let buffer = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges
        .next()
        .map_err(|e| Error::Protocol(format!("malformed data row: {e}")))?
    {
        let value = match range {
            None => None,
            Some(range) => {
                let bytes = buffer
                    .get(range)
                    .ok_or_else(|| Error::Protocol("data row value out of bounds".into()))?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| Error::Protocol("non-UTF-8 value in data row".into()))?;
                Some(text)
            }
        };
        row.push(value);
    }
    Ok(row)
}

fn parse_lsn(text: &str) -> Result<Lsn> {
    Lsn::from_str(text).map_err(|e| Error::Protocol(format!("invalid LSN \"{text}\": {e}")))
}

fn parse_field<T: FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Protocol(format!("invalid {what} \"{text}\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_commands_use_modern_syntax() {
        let temp = SlotOptions {
            temporary: true,
            reserve_wal: true,
        };
        assert_eq!(
            physical_slot_sql("pgclone_1", temp),
            "CREATE_REPLICATION_SLOT \"pgclone_1\" TEMPORARY PHYSICAL (RESERVE_WAL)"
        );
        assert_eq!(
            physical_slot_sql("wait", SlotOptions::default()),
            "CREATE_REPLICATION_SLOT \"wait\" PHYSICAL"
        );
        assert_eq!(
            logical_slot_sql("s", "pgoutput", false, SnapshotAction::Export),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL \"pgoutput\" (SNAPSHOT 'export')"
        );
        assert_eq!(
            logical_slot_sql("s", "test_decoding", true, SnapshotAction::NoExport),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL \"test_decoding\" (SNAPSHOT 'nothing')"
        );
    }
}
