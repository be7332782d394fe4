//! Physical WAL streaming: `START_REPLICATION ... PHYSICAL` and the CopyBoth
//! sub-protocol (XLogData and keepalives from the server, standby status
//! updates from us), plus `READ_REPLICATION_SLOT` to find where to start.
//!
//! This is the wire level only; [`super::receiver::WalReceiver`] turns the
//! stream into WAL files.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgtandem_core::lsn::Lsn;
use pgtandem_core::quoting::quote_ident_always;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::wire::{Incoming, describe, server_error};
use super::{ReplicationConnection, decode_row, parse_field, parse_lsn, startup};
use crate::error::{Error, Result};

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC),
/// which the replication protocol's timestamps count from.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Where a physical slot keeps WAL from, as `READ_REPLICATION_SLOT` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// First WAL position the slot retains; `None` if it reserves nothing yet.
    pub restart_lsn: Option<Lsn>,
    /// Timeline of `restart_lsn`.
    pub restart_timeline: Option<u32>,
}

impl ReplicationConnection {
    /// `READ_REPLICATION_SLOT "name"` (PostgreSQL 15+): the restart position
    /// of a physical slot, or `None` if there is no such slot.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotPosition>> {
        let r = self
            .simple_query(&format!(
                "READ_REPLICATION_SLOT {}",
                quote_ident_always(name)
            ))
            .await?;
        // A missing slot is answered with one row of NULLs.
        if r.first("slot_type")?.is_none() {
            return Ok(None);
        }
        Ok(Some(SlotPosition {
            restart_lsn: r.first("restart_lsn")?.map(parse_lsn).transpose()?,
            restart_timeline: r
                .first("restart_tli")?
                .map(|t| parse_field(t, "timeline"))
                .transpose()?,
        }))
    }
}

/// One message of a physical stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL bytes (`XLogData`, 'w').
    XLogData(XLogData),
    /// The server's heartbeat ('k').
    Keepalive {
        /// End of WAL on the server.
        wal_end: Lsn,
        /// The server wants a status update now (or it may time us out).
        reply_requested: bool,
    },
    /// The server sent `CopyDone`: the streamed timeline ended, or it
    /// acknowledges our own `CopyDone`. Call [`PhysicalStream::finish`].
    ServerDone,
}

/// A chunk of WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position of the first byte of `data`.
    pub start: Lsn,
    /// End of WAL on the server when it sent this.
    pub wal_end: Lsn,
    /// The WAL bytes, exactly as in the server's segment files.
    pub data: Bytes,
}

impl XLogData {
    /// Position just past the last byte of `data`.
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0.saturating_add(self.data.len() as u64))
    }
}

/// Standby status update ('r'): tells the server how far we got, which
/// drives `pg_stat_replication` and lets a slot release WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyStatus {
    /// End of WAL written to files (maybe not yet durable).
    pub write: Lsn,
    /// End of WAL that is fsynced.
    pub flush: Lsn,
    /// End of WAL applied; [`Lsn::INVALID`] for a receiver that never replays.
    pub apply: Lsn,
    /// Ask the server for an immediate keepalive (a liveness probe).
    pub reply_requested: bool,
}

/// Where the server continues after the streamed timeline ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The next timeline.
    pub next_timeline: u32,
    /// Where the next timeline forked off the streamed one.
    pub start: Lsn,
}

/// A replication connection in CopyBoth mode after `START_REPLICATION`.
///
/// Owns the connection; [`PhysicalStream::finish`] hands it back once both
/// sides have sent `CopyDone`.
#[derive(Debug)]
pub struct PhysicalStream {
    conn: ReplicationConnection,
    client_done: bool,
    server_done: bool,
}

impl PhysicalStream {
    /// Sends `START_REPLICATION [SLOT "slot"] PHYSICAL start TIMELINE tli`
    /// and waits until the server switches to streaming.
    ///
    /// A server error (unknown slot, start point ahead of the server,
    /// removed segment) is returned and the connection is dropped.
    pub async fn start(
        mut conn: ReplicationConnection,
        slot: Option<&str>,
        start: Lsn,
        timeline: u32,
    ) -> Result<Self> {
        let sql = start_replication_sql(slot, start, timeline);
        frontend::query(&sql, &mut conn.framed.write_buf)
            .map_err(|e| Error::Config(format!("invalid query text: {e}")))?;
        conn.framed.flush().await?;
        loop {
            match conn.framed.read().await? {
                Incoming::CopyBothResponse => {
                    tracing::debug!(%start, timeline, slot, "physical streaming started");
                    return Ok(Self {
                        conn,
                        client_done: false,
                        server_done: false,
                    });
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields())?.into());
                }
                Incoming::Message(Message::NoticeResponse(body)) => {
                    startup::log_notice(body.fields());
                }
                Incoming::Message(Message::ParameterStatus(_)) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} in response to START_REPLICATION",
                        describe(&other)
                    )));
                }
            }
        }
    }

    /// The walsender's process id (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid()
    }

    /// Reads the next stream message.
    ///
    /// Cancel-safe: dropping the future loses no bytes, so it can sit in a
    /// `select!` with timers. A server `ErrorResponse` (e.g. the walsender
    /// was terminated) is returned as [`Error::Server`].
    pub async fn next_message(&mut self) -> Result<StreamMessage> {
        loop {
            match self.conn.framed.read().await? {
                Incoming::Message(Message::CopyData(body)) => {
                    return parse_copy_data(body.into_bytes());
                }
                Incoming::Message(Message::CopyDone) => {
                    self.server_done = true;
                    return Ok(StreamMessage::ServerDone);
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields())?.into());
                }
                Incoming::Message(Message::NoticeResponse(body)) => {
                    startup::log_notice(body.fields());
                }
                Incoming::Message(Message::ParameterStatus(_)) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected {} during WAL streaming",
                        describe(&other)
                    )));
                }
            }
        }
    }

    /// Sends a standby status update.
    pub async fn send_status(&mut self, status: StandbyStatus) -> Result<()> {
        if self.client_done {
            return Err(Error::Protocol(
                "status update after CopyDone; the server no longer reads them".into(),
            ));
        }
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(status.write.0);
        payload.put_u64(status.flush.0);
        payload.put_u64(status.apply.0);
        payload.put_i64(pg_now_micros());
        payload.put_u8(u8::from(status.reply_requested));
        put_copy_data(&mut self.conn.framed.write_buf, &payload);
        self.conn.framed.flush().await
    }

    /// Sends `CopyDone`: we want to stop. The server answers with its own
    /// `CopyDone` ([`StreamMessage::ServerDone`]), possibly after some
    /// WAL that was already on its way.
    pub async fn send_copy_done(&mut self) -> Result<()> {
        if !self.client_done {
            frontend::copy_done(&mut self.conn.framed.write_buf);
            self.conn.framed.flush().await?;
            self.client_done = true;
        }
        Ok(())
    }

    /// Ends the stream: sends `CopyDone` if we have not, discards WAL until
    /// the server's `CopyDone`, then reads the command's result up to
    /// `ReadyForQuery`. Returns the connection, ready for more commands,
    /// and the next timeline if the server ended a historic timeline.
    pub async fn finish(mut self) -> Result<(ReplicationConnection, Option<TimelineSwitch>)> {
        self.send_copy_done().await?;
        while !self.server_done {
            if let StreamMessage::XLogData(x) = self.next_message().await? {
                tracing::debug!(start = %x.start, bytes = x.data.len(), "WAL after CopyDone discarded");
            }
        }
        let switch = read_stream_result(&mut self.conn).await?;
        Ok((self.conn, switch))
    }
}

/// Reads what follows the `CopyDone` exchange: an optional one-row result
/// set `(next_tli, next_tli_startpos)`, `CommandComplete`s, `ReadyForQuery`.
async fn read_stream_result(conn: &mut ReplicationConnection) -> Result<Option<TimelineSwitch>> {
    let mut columns: Vec<String> = Vec::new();
    let mut switch = None;
    let mut error = None;
    loop {
        match conn.framed.read().await? {
            Incoming::Message(Message::RowDescription(body)) => {
                columns = body
                    .fields()
                    .map(|f| Ok(f.name().to_owned()))
                    .collect()
                    .map_err(|e| Error::Protocol(format!("malformed row description: {e}")))?;
            }
            Incoming::Message(Message::DataRow(body)) => {
                let row = decode_row(&body)?;
                let value = |name: &str| {
                    columns
                        .iter()
                        .position(|c| c == name)
                        .and_then(|i| row.get(i).cloned().flatten())
                        .ok_or_else(|| Error::Protocol(format!("timeline result lacks {name}")))
                };
                switch = Some(TimelineSwitch {
                    next_timeline: parse_field(&value("next_tli")?, "timeline")?,
                    start: parse_lsn(&value("next_tli_startpos")?)?,
                });
            }
            Incoming::Message(Message::CommandComplete(_) | Message::ParameterStatus(_)) => {}
            Incoming::Message(Message::NoticeResponse(body)) => startup::log_notice(body.fields()),
            Incoming::Message(Message::ErrorResponse(body)) => {
                error = Some(server_error(body.fields())?);
            }
            Incoming::Message(Message::ReadyForQuery(_)) => {
                return match error {
                    Some(e) => Err(e.into()),
                    None => Ok(switch),
                };
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected {} after WAL streaming ended",
                    describe(&other)
                )));
            }
        }
    }
}

fn start_replication_sql(slot: Option<&str>, start: Lsn, timeline: u32) -> String {
    let mut sql = String::from("START_REPLICATION ");
    if let Some(slot) = slot {
        sql.push_str("SLOT ");
        sql.push_str(&quote_ident_always(slot));
        sql.push(' ');
    }
    sql.push_str(&format!("PHYSICAL {start} TIMELINE {timeline}"));
    sql
}

fn parse_copy_data(mut buf: Bytes) -> Result<StreamMessage> {
    if buf.is_empty() {
        return Err(Error::Protocol(
            "empty CopyData message in WAL stream".into(),
        ));
    }
    match buf.get_u8() {
        b'w' => {
            if buf.len() < 24 {
                return Err(Error::Protocol("truncated XLogData header".into()));
            }
            let start = Lsn(buf.get_u64());
            let wal_end = Lsn(buf.get_u64());
            let _send_time = buf.get_i64();
            Ok(StreamMessage::XLogData(XLogData {
                start,
                wal_end,
                data: buf,
            }))
        }
        b'k' => {
            if buf.len() < 17 {
                return Err(Error::Protocol("truncated keepalive message".into()));
            }
            let wal_end = Lsn(buf.get_u64());
            let _send_time = buf.get_i64();
            let reply_requested = buf.get_u8() != 0;
            Ok(StreamMessage::Keepalive {
                wal_end,
                reply_requested,
            })
        }
        other => Err(Error::Protocol(format!(
            "unknown WAL stream message type {:?}",
            char::from(other)
        ))),
    }
}

fn put_copy_data(buf: &mut BytesMut, payload: &[u8]) {
    buf.put_u8(b'd');
    // Payloads here are a few dozen bytes, far below i32::MAX.
    buf.put_i32(i32::try_from(payload.len() + 4).unwrap_or(i32::MAX));
    buf.put_slice(payload);
}

/// Microseconds since 2000-01-01, the protocol's `TimestampTz`.
fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let micros = since_unix
        .as_micros()
        .saturating_sub(u128::from(PG_EPOCH_UNIX_SECS) * 1_000_000);
    i64::try_from(micros).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_command_quotes_the_slot() {
        assert_eq!(
            start_replication_sql(Some("pgclone_1"), Lsn(0x1_0000_0000), 1),
            "START_REPLICATION SLOT \"pgclone_1\" PHYSICAL 1/0 TIMELINE 1"
        );
        assert_eq!(
            start_replication_sql(None, Lsn(0x0300_0000), 3),
            "START_REPLICATION PHYSICAL 0/3000000 TIMELINE 3"
        );
    }

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x0100_0000);
        w.put_u64(0x0200_0000);
        w.put_i64(42);
        w.put_slice(b"wal!");
        let StreamMessage::XLogData(x) = parse_copy_data(w.freeze()).unwrap() else {
            panic!("not XLogData");
        };
        assert_eq!(x.start, Lsn(0x0100_0000));
        assert_eq!(x.wal_end, Lsn(0x0200_0000));
        assert_eq!(&x.data[..], b"wal!");
        assert_eq!(x.end(), Lsn(0x0100_0004));

        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(7);
        k.put_i64(0);
        k.put_u8(1);
        assert_eq!(
            parse_copy_data(k.freeze()).unwrap(),
            StreamMessage::Keepalive {
                wal_end: Lsn(7),
                reply_requested: true
            }
        );

        assert!(parse_copy_data(Bytes::from_static(b"w\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"k")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
        assert!(parse_copy_data(Bytes::new()).is_err());
    }

    #[test]
    fn copy_data_frame_and_clock() {
        let mut buf = BytesMut::new();
        put_copy_data(&mut buf, b"abc");
        assert_eq!(&buf[..], b"d\0\0\0\x07abc");
        // 2020-01-01 is 631152000 s after the PostgreSQL epoch.
        assert!(pg_now_micros() > 631_152_000 * 1_000_000);
    }
}
