//! Native WAL capture (clone.md §3.4): a slot `pgclone_<pid>` (temporary by
//! default, so it dies with the connection even on `kill -9`), the receiver
//! writing straight into the replica's `pg_wal`, and the wait for the
//! backup's stop LSN.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgtandem_core::lsn::Lsn;
use pgtandem_pg::{
    ConnParams, ReceivedWal, ReplicationConnection, ReplicationMode, SlotOptions, SystemIdentity,
    WalReceiver, WalReceiverOptions,
};
use tokio_util::sync::CancellationToken;

use crate::error::{CloneError, Result};

/// Which slot protects the WAL between capture start and backup start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotMode {
    /// `TEMPORARY`: dropped by the server when the connection ends.
    Temporary,
    /// `--slot`: survives crashes; dropped at cleanup.
    Persistent,
    /// `--no-slot`.
    None,
}

/// An opened replication connection whose identity was checked (§3.1 step 5).
pub struct ReplicationHandle {
    conn: ReplicationConnection,
    pub identity: SystemIdentity,
}

impl ReplicationHandle {
    /// Connects as walsender `pgclone-<pid>` and runs `IDENTIFY_SYSTEM`.
    pub async fn connect(params: &ConnParams) -> Result<Self> {
        let mut conn = ReplicationConnection::connect_params(params, ReplicationMode::Physical)
            .await
            .map_err(|e| CloneError::pg("Could not open a replication connection", e))?;
        let identity = conn
            .identify_system()
            .await
            .map_err(|e| CloneError::pg("IDENTIFY_SYSTEM failed", e))?;
        Ok(Self { conn, identity })
    }
}

/// Running capture.
pub struct WalCapture {
    receiver: WalReceiver,
    /// A persistent slot to drop at cleanup.
    persistent_slot: Option<String>,
}

/// What the capture left in the waldir.
#[derive(Debug, Clone)]
pub struct CaptureResult {
    pub received: ReceivedWal,
    /// `(from, to)` of the renamed last segment.
    pub renamed_partial: Option<(PathBuf, PathBuf)>,
}

impl WalCapture {
    /// Creates the slot and starts streaming into `waldir`.
    pub async fn start(
        handle: ReplicationHandle,
        slot_name: &str,
        mode: SlotMode,
        waldir: &Path,
        cancel: &CancellationToken,
        warn: impl Fn(&str),
    ) -> Result<Self> {
        let ReplicationHandle { mut conn, identity } = handle;
        let mut slot = None;
        if mode != SlotMode::None {
            let options = SlotOptions {
                temporary: mode == SlotMode::Temporary,
                reserve_wal: true,
            };
            match conn.create_physical_slot(slot_name, options).await {
                Ok(()) => slot = Some(slot_name.to_owned()),
                Err(e) if mode == SlotMode::Temporary => warn(&format!(
                    "WARNING: could not create temporary replication slot ({e}); streaming without a slot"
                )),
                Err(e) => {
                    return Err(CloneError::pg(
                        format!("Could not create replication slot {slot_name}"),
                        e,
                    ));
                }
            }
        }
        let mut options = WalReceiverOptions::new(waldir);
        options.slot = slot.clone();
        options.expected_system_id = Some(identity.system_id.clone());
        let receiver = WalReceiver::start(conn, options, cancel)
            .await
            .map_err(CloneError::Wal)?;
        Ok(Self {
            receiver,
            persistent_slot: slot.filter(|_| mode == SlotMode::Persistent),
        })
    }

    /// The walsender's pid.
    pub fn backend_pid(&self) -> Option<i32> {
        self.receiver.backend_pid()
    }

    /// Watch of the durable position (for progress reports).
    pub fn flushed_watch(&self) -> tokio::sync::watch::Receiver<Lsn> {
        self.receiver.flushed()
    }

    /// The durable position so far.
    pub fn flushed(&self) -> Lsn {
        self.receiver.flushed_lsn()
    }

    /// The persistent slot that cleanup must drop, if any.
    pub fn persistent_slot(&self) -> Option<String> {
        self.persistent_slot.clone()
    }

    /// Waits (up to `limit`) until WAL through `stop_lsn` is fsynced, stops
    /// streaming and gives the last `.partial` its final name.
    pub async fn finish(mut self, stop_lsn: Lsn, limit: Duration) -> Result<CaptureResult> {
        let segment =
            stop_lsn.wal_file_name(self.receiver.timeline(), self.receiver.wal_segment_size());
        match tokio::time::timeout(limit, self.receiver.wait_flushed(stop_lsn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(CloneError::Wal(e)),
            Err(_) => {
                return Err(CloneError::Timeout(format!(
                    "WAL {segment} not received in {} s",
                    limit.as_secs()
                )));
            }
        }
        let received = self.receiver.stop().await.map_err(CloneError::Wal)?;
        let from = received.partial.clone();
        let renamed = tokio::task::spawn_blocking({
            let received = received.clone();
            move || received.finish_partial()
        })
        .await
        .map_err(|e| CloneError::transport(format!("WAL finishing task failed: {e}")))?
        .map_err(CloneError::Wal)?;
        Ok(CaptureResult {
            received,
            renamed_partial: from.zip(renamed),
        })
    }

    /// Stops streaming without waiting (failure paths).
    pub async fn abort(self) {
        let _ = self.receiver.stop().await;
    }
}

/// Drops a persistent slot on a fresh connection, waiting while it is
/// still active (`DROP_REPLICATION_SLOT … WAIT`).
pub async fn drop_slot(params: &ConnParams, name: &str) -> Result<()> {
    let mut conn = ReplicationConnection::connect_params(params, ReplicationMode::Physical)
        .await
        .map_err(|e| CloneError::pg("Could not open a replication connection", e))?;
    let dropped = tokio::time::timeout(Duration::from_secs(30), conn.drop_slot(name, true)).await;
    let _ = conn.close().await;
    match dropped {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CloneError::pg(format!("Could not drop slot {name}"), e)),
        Err(_) => Err(CloneError::Timeout(format!(
            "Dropping slot {name} timed out"
        ))),
    }
}
