//! The native physical WAL receiver: streams WAL from a walsender straight
//! into a directory (a standby's `pg_wal`), as `pg_receivewal` and
//! `pg_basebackup -X stream` do, and reports the durable position to the
//! server and to the caller.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use pgtandem_core::error::ErrorKind;
use pgtandem_core::lsn::{Lsn, validate_wal_seg_size};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ReplicationConnection;
use super::stream::{PhysicalStream, StandbyStatus, StreamMessage, TimelineSwitch};
use super::wal_writer::{DiskError, WalDirWriter, finish_partial_file};
use crate::error::Error;

/// How often the durable position is reported when nothing else prompts it
/// (`pg_receivewal --status-interval` default).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Silence after which the server is presumed gone (`wal_receiver_timeout`
/// default); at half of it we ask the server for a keepalive.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the `CopyDone` handshake of a clean stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why WAL streaming failed. `Display` gives the detail for the caller's
/// `WAL streaming failed: <detail>`.
///
/// Cheap to clone, so both [`WalReceiver::wait_flushed`] and
/// [`WalReceiver::stop`] can report the same failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalReceiveError {
    /// Connection loss, a server error (e.g. the walsender was terminated)
    /// or a protocol violation.
    #[error("{0}")]
    Pg(Arc<Error>),
    /// Writing the target directory failed.
    #[error("{context}: {source}")]
    Disk {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The server belongs to another cluster than the caller expects.
    #[error("system identifier mismatch: expected {expected}, server reports {actual}")]
    SystemIdMismatch {
        /// What the caller passed.
        expected: String,
        /// What `IDENTIFY_SYSTEM` returned.
        actual: String,
    },
    /// The server ended the streamed timeline (e.g. after a promotion).
    #[error("{}", describe_timeline_end(*.timeline, .next))]
    TimelineEnded {
        /// The timeline we streamed.
        timeline: u32,
        /// Where the server continues, if it said.
        next: Option<TimelineSwitch>,
    },
    /// The receiver was stopped before the awaited position arrived.
    #[error("WAL streaming stopped at {flushed} before reaching {target}")]
    StoppedBefore {
        /// Durable end of the received WAL.
        flushed: Lsn,
        /// The awaited position.
        target: Lsn,
    },
    /// Bad options (e.g. an unusable WAL segment size).
    #[error("{0}")]
    Config(String),
    /// The receiver task died (a bug).
    #[error("WAL receiver task failed: {0}")]
    Internal(String),
}

impl WalReceiveError {
    /// Classification for retry policies and exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WalReceiveError::Pg(e) => e.kind(),
            WalReceiveError::Disk { source, .. } => match source.kind() {
                io::ErrorKind::PermissionDenied => ErrorKind::Permission,
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            WalReceiveError::SystemIdMismatch { .. } | WalReceiveError::Config(_) => {
                ErrorKind::Config
            }
            WalReceiveError::TimelineEnded { .. } => ErrorKind::Unsupported,
            WalReceiveError::StoppedBefore { .. } => ErrorKind::Cancelled,
            WalReceiveError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether starting the receiver again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WalReceiveError::Pg(e) => e.is_retryable(),
            _ => self.kind().is_retryable(),
        }
    }
}

impl From<Error> for WalReceiveError {
    fn from(e: Error) -> Self {
        WalReceiveError::Pg(Arc::new(e))
    }
}

impl From<DiskError> for WalReceiveError {
    fn from(e: DiskError) -> Self {
        WalReceiveError::Disk {
            context: e.context,
            source: Arc::new(e.source),
        }
    }
}

impl From<WalReceiveError> for pgtandem_core::error::Error {
    fn from(e: WalReceiveError) -> Self {
        pgtandem_core::error::Error::new(e.kind(), e.to_string())
    }
}

fn describe_timeline_end(timeline: u32, next: &Option<TimelineSwitch>) -> String {
    match next {
        Some(n) => format!(
            "server ended timeline {timeline}; it continues on timeline {} from {}",
            n.next_timeline, n.start
        ),
        None => format!("server ended streaming of timeline {timeline}"),
    }
}

/// What to stream and where to put it.
#[derive(Clone, Debug)]
pub struct WalReceiverOptions {
    /// Target directory (e.g. the replica's `pg_wal`); created if missing,
    /// with `archive_status/`.
    pub target_dir: PathBuf,
    /// Streaming starts at the segment holding this position. `None`: the
    /// slot's restart LSN (`READ_REPLICATION_SLOT`), else the server's
    /// current flush position.
    pub start: Option<Lsn>,
    /// `START_REPLICATION SLOT "<slot>"`; the slot must exist (a temporary
    /// one must have been created on the same connection).
    pub slot: Option<String>,
    /// Refuse a server whose `IDENTIFY_SYSTEM` reports another system id.
    pub expected_system_id: Option<String>,
    /// Longest time between two status reports.
    pub status_interval: Duration,
    /// Server silence after which streaming fails.
    pub receive_timeout: Duration,
}

impl WalReceiverOptions {
    /// Defaults: no slot, start at the server's position, 10 s status
    /// interval, 60 s receive timeout.
    pub fn new(target_dir: impl Into<PathBuf>) -> Self {
        Self {
            target_dir: target_dir.into(),
            start: None,
            slot: None,
            expected_system_id: None,
            status_interval: DEFAULT_STATUS_INTERVAL,
            receive_timeout: DEFAULT_RECEIVE_TIMEOUT,
        }
    }
}

/// What a stopped receiver left in its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedWal {
    /// The target directory.
    pub target_dir: PathBuf,
    /// Timeline of all files written.
    pub timeline: u32,
    /// `wal_segment_size` of the server.
    pub wal_segment_size: u64,
    /// First streamed position (a segment start).
    pub start: Lsn,
    /// Durable end of the received WAL.
    pub flushed: Lsn,
    /// The last, incomplete segment (fsynced), if any.
    pub partial: Option<PathBuf>,
    /// Segments completed, renamed and marked `.done`.
    pub completed_segments: u64,
}

impl ReceivedWal {
    /// fsyncs the last `.partial` and renames it to its final segment name
    /// (then fsyncs the directory), as the clone does once the WAL reaches
    /// the backup's stop LSN. Returns the new path. Blocking file I/O.
    pub fn finish_partial(&self) -> Result<Option<PathBuf>, WalReceiveError> {
        match &self.partial {
            Some(partial) => Ok(Some(finish_partial_file(partial)?)),
            None => Ok(None),
        }
    }
}

/// A running WAL receiver (a tokio task streaming into the target dir).
///
/// Dropping it stops streaming in the background; prefer [`Self::stop`].
#[derive(Debug)]
pub struct WalReceiver {
    task: Option<JoinHandle<Result<ReceivedWal, WalReceiveError>>>,
    outcome: Option<Result<ReceivedWal, WalReceiveError>>,
    stop: CancellationToken,
    flushed: watch::Receiver<Lsn>,
    timeline: u32,
    start: Lsn,
    wal_segment_size: u64,
    backend_pid: Option<i32>,
}

impl WalReceiver {
    /// Checks the server (`IDENTIFY_SYSTEM`, system id, `wal_segment_size`),
    /// writes `<TLI>.history` on timeline > 1, sends `START_REPLICATION` and
    /// spawns the streaming task.
    ///
    /// `cancel` stops the receiver cleanly (like [`Self::stop`]) when fired,
    /// e.g. by a supervisor on the first failure elsewhere.
    pub async fn start(
        mut conn: ReplicationConnection,
        options: WalReceiverOptions,
        cancel: &CancellationToken,
    ) -> Result<Self, WalReceiveError> {
        let identity = conn.identify_system().await?;
        if let Some(expected) = &options.expected_system_id
            && *expected != identity.system_id
        {
            return Err(WalReceiveError::SystemIdMismatch {
                expected: expected.clone(),
                actual: identity.system_id,
            });
        }
        let wal_segment_size = parse_segment_size(&conn.show("wal_segment_size").await?)?;
        let timeline = identity.timeline;
        let requested = match (options.start, &options.slot) {
            (Some(lsn), _) => lsn,
            (None, Some(slot)) => conn
                .read_replication_slot(slot)
                .await?
                .and_then(|s| s.restart_lsn)
                .unwrap_or(identity.xlogpos),
            (None, None) => identity.xlogpos,
        };
        let start = requested.segment_start(wal_segment_size);

        let writer =
            WalDirWriter::create(&options.target_dir, timeline, wal_segment_size, start).await?;
        if timeline > 1 {
            let history = conn.timeline_history(timeline).await?;
            writer
                .write_history(&history.filename, &history.content)
                .await?;
        }
        let stream = PhysicalStream::start(conn, options.slot.as_deref(), start, timeline).await?;
        let backend_pid = stream.backend_pid();
        tracing::info!(%start, timeline, slot = options.slot.as_deref(), dir = %options.target_dir.display(), "WAL receiver started");

        let (flushed_tx, flushed) = watch::channel(start);
        let stop = cancel.child_token();
        let session = Session {
            stream: Some(stream),
            writer,
            flushed_tx,
            stop: stop.clone(),
            status_interval: options.status_interval,
            receive_timeout: options.receive_timeout,
            timeline,
        };
        let summary = SummaryBase {
            target_dir: options.target_dir,
            timeline,
            wal_segment_size,
            start,
        };
        let task = tokio::spawn(Box::pin(session.run(summary)));
        Ok(Self {
            task: Some(task),
            outcome: None,
            stop,
            flushed,
            timeline,
            start,
            wal_segment_size,
            backend_pid,
        })
    }

    /// The durable (fsynced) end of the received WAL, updated at least every
    /// status interval, on server request, at each segment end and whenever
    /// the stream goes idle. Closed when the receiver ends.
    pub fn flushed(&self) -> watch::Receiver<Lsn> {
        self.flushed.clone()
    }

    /// Current durable position.
    pub fn flushed_lsn(&self) -> Lsn {
        *self.flushed.borrow()
    }

    /// The streamed timeline.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// First streamed position (segment start).
    pub fn start_lsn(&self) -> Lsn {
        self.start
    }

    /// The server's `wal_segment_size`.
    pub fn wal_segment_size(&self) -> u64 {
        self.wal_segment_size
    }

    /// The walsender's pid (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Waits until WAL up to `target` is durable. Fails with the stream's
    /// error if it ends first (or [`WalReceiveError::StoppedBefore`]).
    pub async fn wait_flushed(&mut self, target: Lsn) -> Result<Lsn, WalReceiveError> {
        let mut rx = self.flushed.clone();
        loop {
            let now = *rx.borrow_and_update();
            if now >= target {
                return Ok(now);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        let received = self.wait().await?;
        if received.flushed >= target {
            Ok(received.flushed)
        } else {
            Err(WalReceiveError::StoppedBefore {
                flushed: received.flushed,
                target,
            })
        }
    }

    /// Waits for the receiver to end on its own (error, or cancellation),
    /// without asking it to stop.
    pub async fn wait(&mut self) -> Result<ReceivedWal, WalReceiveError> {
        if let Some(task) = self.task.take() {
            let outcome = task
                .await
                .unwrap_or_else(|e| Err(WalReceiveError::Internal(e.to_string())));
            self.outcome = Some(outcome);
        }
        self.outcome
            .clone()
            .unwrap_or_else(|| Err(WalReceiveError::Internal("receiver task lost".into())))
    }

    /// Stops streaming cleanly: reports the final position, `CopyDone`,
    /// writes WAL still in flight, fsyncs the `.partial`, closes the
    /// connection (which drops a temporary slot). Returns what was received,
    /// or the error that had already ended the stream.
    pub async fn stop(mut self) -> Result<ReceivedWal, WalReceiveError> {
        self.stop.cancel();
        self.wait().await
    }
}

impl Drop for WalReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Parses `SHOW wal_segment_size` (`16MB`, `1GB`, `1048576B`).
fn parse_segment_size(text: &str) -> Result<u64, WalReceiveError> {
    let invalid = || WalReceiveError::Config(format!("invalid wal_segment_size \"{text}\""));
    let digits = text.trim().bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.trim().split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(invalid()),
    };
    let size = number.checked_mul(factor).ok_or_else(invalid)?;
    validate_wal_seg_size(size).map_err(|e| WalReceiveError::Config(e.to_string()))
}

/// The fixed parts of [`ReceivedWal`].
struct SummaryBase {
    target_dir: PathBuf,
    timeline: u32,
    wal_segment_size: u64,
    start: Lsn,
}

/// State of the streaming task.
struct Session {
    /// `None` once handed to `finish` (clean stop or timeline end).
    stream: Option<PhysicalStream>,
    writer: WalDirWriter,
    flushed_tx: watch::Sender<Lsn>,
    stop: CancellationToken,
    status_interval: Duration,
    receive_timeout: Duration,
    timeline: u32,
}

impl Session {
    async fn run(mut self, base: SummaryBase) -> Result<ReceivedWal, WalReceiveError> {
        let result = self.stream_until_stopped().await;
        if let Err(e) = &result {
            // Keep what arrived durable, so the caller may still use it.
            if let Err(flush) = self.writer.flush().await {
                tracing::warn!(error = %flush.source, "{}", flush.context);
            }
            self.publish();
            tracing::warn!(error = %e, flushed = %self.writer.flushed(), "WAL streaming failed");
        }
        result?;
        Ok(ReceivedWal {
            target_dir: base.target_dir,
            timeline: base.timeline,
            wal_segment_size: base.wal_segment_size,
            start: base.start,
            flushed: self.writer.flushed(),
            partial: self.writer.partial_path(),
            completed_segments: self.writer.completed_segments(),
        })
    }

    async fn stream_until_stopped(&mut self) -> Result<(), WalReceiveError> {
        let mut next_status = Instant::now() + self.status_interval;
        let mut last_heard = Instant::now();
        let mut pinged = false;
        loop {
            if self.stop.is_cancelled() {
                return self.stop_cleanly().await;
            }
            // Take what is already buffered or readable without waiting; only
            // when the stream goes idle make the written WAL durable and say
            // so, like PostgreSQL's walreceiver.
            let ready = self.stream_mut()?.next_message().now_or_never();
            let message = match ready {
                Some(message) => message?,
                None => {
                    if self.writer.dirty() {
                        self.report(false).await?;
                        next_status = Instant::now() + self.status_interval;
                    }
                    let ping_at = last_heard + self.receive_timeout / 2;
                    let deadline = last_heard + self.receive_timeout;
                    let wake = next_status.min(if pinged { deadline } else { ping_at });
                    match self.wait_for_message(wake).await? {
                        Some(message) => message,
                        None => {
                            let now = Instant::now();
                            if now >= deadline {
                                return Err(Error::Timeout(format!(
                                    "no message from the server for {} s",
                                    self.receive_timeout.as_secs()
                                ))
                                .into());
                            }
                            let ping = !pinged && now >= ping_at;
                            if ping || now >= next_status {
                                self.report(ping).await?;
                                pinged |= ping;
                                next_status = now + self.status_interval;
                            }
                            continue;
                        }
                    }
                }
            };
            last_heard = Instant::now();
            pinged = false;
            match message {
                StreamMessage::XLogData(x) => {
                    self.write(&x).await?;
                }
                StreamMessage::Keepalive {
                    reply_requested, ..
                } => {
                    if reply_requested {
                        self.report(false).await?;
                        next_status = Instant::now() + self.status_interval;
                    }
                }
                StreamMessage::ServerDone => return Err(self.timeline_ended().await),
            }
            if Instant::now() >= next_status {
                self.report(false).await?;
                next_status = Instant::now() + self.status_interval;
            }
        }
    }

    fn stream_mut(&mut self) -> Result<&mut PhysicalStream, WalReceiveError> {
        self.stream
            .as_mut()
            .ok_or_else(|| WalReceiveError::Internal("stream already finished".into()))
    }

    /// The next message, or `None` at `wake` or when asked to stop.
    async fn wait_for_message(
        &mut self,
        wake: Instant,
    ) -> Result<Option<StreamMessage>, WalReceiveError> {
        let stop = self.stop.clone();
        let stream = self.stream_mut()?;
        tokio::select! {
            biased;
            () = stop.cancelled() => Ok(None),
            message = stream.next_message() => Ok(Some(message?)),
            () = tokio::time::sleep_until(wake) => Ok(None),
        }
    }

    /// Writes one XLogData message; reports after each completed segment.
    async fn write(&mut self, x: &super::stream::XLogData) -> Result<(), WalReceiveError> {
        if x.start != self.writer.written() {
            return Err(Error::Protocol(format!(
                "WAL data for {} arrived while expecting {}",
                x.start,
                self.writer.written()
            ))
            .into());
        }
        let completed = self.writer.write(&x.data).await?;
        if completed > 0 && !self.stop.is_cancelled() {
            self.report(false).await?;
        }
        Ok(())
    }

    /// fsyncs written WAL, sends a status update and publishes the position.
    async fn report(&mut self, reply_requested: bool) -> Result<(), WalReceiveError> {
        self.writer.flush().await?;
        let status = StandbyStatus {
            write: self.writer.written(),
            flush: self.writer.flushed(),
            apply: Lsn::INVALID,
            reply_requested,
        };
        self.stream_mut()?.send_status(status).await?;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.flushed_tx.send_replace(self.writer.flushed());
    }

    /// Final report, `CopyDone`, WAL still in flight, fsync, close.
    async fn stop_cleanly(&mut self) -> Result<(), WalReceiveError> {
        self.report(false).await?;
        let handshake = async {
            let stream = self.stream_mut()?;
            stream.send_copy_done().await?;
            loop {
                match self.stream_mut()?.next_message().await? {
                    StreamMessage::XLogData(x) => self.write(&x).await?,
                    StreamMessage::Keepalive { .. } => {}
                    StreamMessage::ServerDone => break,
                }
            }
            let stream = self
                .stream
                .take()
                .ok_or_else(|| WalReceiveError::Internal("stream already finished".into()))?;
            let (conn, _) = stream.finish().await?;
            Ok::<_, WalReceiveError>(conn)
        };
        let conn = tokio::time::timeout(STOP_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "server did not end streaming within {} s",
                    STOP_TIMEOUT.as_secs()
                ))
            })??;
        self.writer.flush().await?;
        self.publish();
        conn.close().await?;
        tracing::info!(flushed = %self.writer.flushed(), "WAL receiver stopped");
        Ok(())
    }

    /// The server sent `CopyDone` unasked: its timeline ended.
    async fn timeline_ended(&mut self) -> WalReceiveError {
        let next = match self.stream.take() {
            Some(stream) => match stream.finish().await {
                Ok((conn, next)) => {
                    // The stream already failed; closing is best effort.
                    let _ = conn.close().await;
                    next
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ending the stream after timeline end");
                    None
                }
            },
            None => None,
        };
        WalReceiveError::TimelineEnded {
            timeline: self.timeline,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_as_show_prints_them() {
        assert_eq!(parse_segment_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_segment_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_segment_size("1048576B").unwrap(), 1 << 20);
        assert_eq!(parse_segment_size("2048kB").unwrap(), 2 << 20);
        assert!(parse_segment_size("3MB").is_err(), "not a power of two");
        assert!(parse_segment_size("16 XB").is_err());
        assert!(parse_segment_size("MB").is_err());
    }

    #[test]
    fn errors_give_the_detail_and_a_kind() {
        let e = WalReceiveError::TimelineEnded {
            timeline: 1,
            next: Some(TimelineSwitch {
                next_timeline: 2,
                start: Lsn(0x0300_00A0),
            }),
        };
        assert_eq!(
            e.to_string(),
            "server ended timeline 1; it continues on timeline 2 from 0/30000A0"
        );
        assert!(!e.is_retryable());
        let e: WalReceiveError = Error::from(crate::ServerError::new(
            "FATAL",
            "57P01",
            "terminating connection",
        ))
        .into();
        assert_eq!(e.to_string(), "FATAL: terminating connection");
        assert_eq!(e.kind(), ErrorKind::Connection);
        let e = WalReceiveError::SystemIdMismatch {
            expected: "1".into(),
            actual: "2".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Config);
    }
}
