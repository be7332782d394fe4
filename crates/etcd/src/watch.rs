//! etcd→PG ingest (spec §3.3): a watch from checkpoint+1 feeding a bounded
//! channel; responses already received are grouped into one transaction
//! together with the checkpoint advance.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::checkpoint::Checkpoint;
use crate::config::SchemaMode;
use crate::error::{SyncError, SyncResult};
use crate::etcd_session::{EtcdSession, prefix_range_end};
use crate::event::{KvEvent, RejectReason, TextRow, insert_rejects};

/// Responses buffered between etcd and PostgreSQL; etcd holds the rest.
pub const CHANNEL_CAPACITY: usize = 1024;
/// etcd 3.4 sends progress only every 10 min; we ask after this much silence.
pub const PROGRESS_AFTER: Duration = Duration::from_secs(5);
/// Retries of one batch after a deadlock or serialization failure.
const MAX_TX_RETRIES: u32 = 5;

const INSERT_ROWS: &str = "INSERT INTO \"etcd\" (\"key\", \"value\", \"revision\", \"tombstone\") \
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[]) \
    ON CONFLICT (\"key\", \"revision\") DO NOTHING";

/// What the watch stream delivered.
#[derive(Debug)]
enum Delivery {
    Created,
    Events { events: Vec<KvEvent>, revision: i64 },
    Progress(i64),
    Compacted(i64),
    Failed(SyncError),
}

/// Why ingest stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The start revision is gone: resync.
    Compacted(i64),
}

/// Aborts the reader task when ingest stops.
struct ReaderGuard(tokio::task::JoinHandle<()>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches `prefix` from `start_revision` and writes every event into `etcd`
/// until the stream fails (error) or the revision is compacted.
/// `on_progress` runs after every commit and when the watch is created.
pub async fn ingest(
    pg: &mut Client,
    etcd: &EtcdSession,
    prefix: &str,
    mode: SchemaMode,
    start_revision: i64,
    batch_size: usize,
    mut on_progress: impl FnMut(),
) -> SyncResult<WatchEnd> {
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let options = WatchOptions::new()
        .with_range(prefix_range_end(prefix.as_bytes()))
        .with_start_revision(start_revision)
        .with_progress_notify();
    let stream = etcd.watch_client().watch(prefix, Some(options)).await?;
    let _guard = ReaderGuard(tokio::spawn(read_stream(stream, tx)));
    tracing::info!(prefix, revision = start_revision, "Started etcd watch");
    pg.batch_execute("SET synchronous_commit = off").await?;
    loop {
        let Some(first) = rx.recv().await else {
            return Err(SyncError::Etcd {
                message: "watch reader stopped".into(),
                retryable: true,
            });
        };
        let mut batch = Vec::new();
        let mut count = 0;
        let mut stop = None;
        let mut next = Some(first);
        while let Some(delivery) = next.take() {
            match delivery {
                Delivery::Created => on_progress(),
                Delivery::Events { events, revision } => {
                    count += events.len();
                    batch.push((events, revision));
                }
                Delivery::Progress(revision) => batch.push((Vec::new(), revision)),
                Delivery::Compacted(rev) => stop = Some(Ok(WatchEnd::Compacted(rev))),
                Delivery::Failed(e) => stop = Some(Err(e)),
            }
            if stop.is_some() || count >= batch_size {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            commit_batch(pg, prefix, mode, &batch).await?;
            on_progress();
        }
        if let Some(end) = stop {
            if let Ok(WatchEnd::Compacted(rev)) = &end {
                tracing::warn!(
                    prefix,
                    compact_revision = rev,
                    "etcd watch revision compacted; resyncing"
                );
            }
            return end;
        }
    }
}

/// Reads the watch stream; asks for progress after 5 s of silence.
async fn read_stream(stream: etcd_client::WatchStream, tx: mpsc::Sender<Delivery>) {
    let (mut sender, mut responses) = stream.split();
    let mut last_activity = Instant::now();
    loop {
        let deadline = last_activity + PROGRESS_AFTER;
        let delivery = tokio::select! {
            message = responses.message() => {
                last_activity = Instant::now();
                match message {
                    Ok(Some(resp)) => classify(resp),
                    Ok(None) => Delivery::Failed(SyncError::Etcd { message: "watch stream closed".into(), retryable: true }),
                    Err(e) => Delivery::Failed(e.into()),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                last_activity = Instant::now();
                match sender.request_progress().await {
                    Ok(()) => continue,
                    Err(e) => Delivery::Failed(e.into()),
                }
            }
        };
        let terminal = matches!(delivery, Delivery::Compacted(_) | Delivery::Failed(_));
        if tx.send(delivery).await.is_err() || terminal {
            return;
        }
    }
}

fn classify(resp: WatchResponse) -> Delivery {
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    if resp.canceled() {
        if resp.compact_revision() > 0 {
            return Delivery::Compacted(resp.compact_revision());
        }
        return Delivery::Failed(SyncError::Etcd {
            message: format!("watch canceled: {}", resp.cancel_reason()),
            retryable: true,
        });
    }
    if resp.created() {
        return Delivery::Created;
    }
    if resp.events().is_empty() {
        return Delivery::Progress(revision);
    }
    let events = resp
        .events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            Some(KvEvent {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
                revision: kv.mod_revision(),
                tombstone: ev.event_type() == EventType::Delete,
            })
        })
        .collect();
    Delivery::Events { events, revision }
}

/// Writes grouped responses and advances the checkpoint in one transaction,
/// retrying deadlocks and serialization failures.
async fn commit_batch(
    pg: &mut Client,
    prefix: &str,
    mode: SchemaMode,
    batch: &[(Vec<KvEvent>, i64)],
) -> SyncResult<()> {
    let mut rows: Vec<TextRow> = Vec::new();
    let mut rejects: Vec<(KvEvent, RejectReason)> = Vec::new();
    for event in batch.iter().flat_map(|(events, _)| events) {
        match event.to_row(mode) {
            Ok(row) => {
                tracing::debug!(key = %row.key, revision = row.revision, tombstone = row.tombstone, "etcd event");
                rows.push(row);
            }
            Err(reason) => rejects.push((event.clone(), reason)),
        }
    }
    rows.sort_by(|a, b| (&a.key, a.revision).cmp(&(&b.key, b.revision)));
    let revision = batch.iter().map(|(_, r)| *r).max().unwrap_or_default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match write_rows(pg, prefix, &rows, &rejects, revision).await {
            Err(e)
                if attempt < MAX_TX_RETRIES && matches!(e.sqlstate(), Some("40P01" | "40001")) =>
            {
                tracing::debug!(error = %e, "retrying ingest transaction");
            }
            other => return other,
        }
    }
}

async fn write_rows(
    pg: &mut Client,
    prefix: &str,
    rows: &[TextRow],
    rejects: &[(KvEvent, RejectReason)],
    revision: i64,
) -> SyncResult<()> {
    let tx = pg.transaction().await?;
    if !rows.is_empty() {
        insert_text_rows(&tx, rows).await?;
    }
    insert_rejects(&tx, rejects).await?;
    Checkpoint::advance(&tx, prefix, revision).await?;
    tx.commit().await?;
    Ok(())
}

/// Insert-or-nothing of synced rows (shared with the applier's echo rows).
pub async fn insert_text_rows<C: tokio_postgres::GenericClient>(
    client: &C,
    rows: &[TextRow],
) -> SyncResult<u64> {
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let values: Vec<Option<&str>> = rows.iter().map(|r| r.value.as_deref()).collect();
    let revisions: Vec<i64> = rows.iter().map(|r| r.revision).collect();
    let tombstones: Vec<bool> = rows.iter().map(|r| r.tombstone).collect();
    Ok(client
        .execute(INSERT_ROWS, &[&keys, &values, &revisions, &tombstones])
        .await?)
}
