//! PG→etcd queue applier (spec §3.4): claims pending writes with SKIP LOCKED,
//! sends a leading run of distinct keys as one etcd Txn of nested CAS Txns,
//! and records each row's outcome in the same PostgreSQL transaction.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};

use crate::config::SchemaMode;
use crate::error::{SyncError, SyncResult, status_is_transient};
use crate::event::TextRow;
use crate::watch::insert_text_rows;

/// Most bytes (keys + values) in one etcd Txn; a larger row goes alone.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

const CLAIM_TWO_TABLE: &str = "SELECT w.\"id\", w.\"key\", w.\"value\", b.eff, \
    coalesce((SELECT e.\"tombstone\" FROM \"etcd\" e WHERE e.\"key\" = w.\"key\" AND e.\"revision\" = b.eff), false) \
    FROM \"etcd_wal\" w CROSS JOIN LATERAL (SELECT greatest(w.\"base_revision\", \
        (SELECT max(p.\"revision\") FROM \"etcd_wal\" p WHERE p.\"key\" = w.\"key\" \
         AND p.\"status\" = 'success' AND p.\"id\" < w.\"id\")) AS eff) b \
    WHERE w.\"status\" = 'pending' AND starts_with(w.\"key\", $1) \
    ORDER BY w.\"id\" LIMIT $2 FOR UPDATE OF w SKIP LOCKED";

const CLAIM_SINGLE_TABLE: &str = "SELECT p.\"ts\", p.\"key\", CASE WHEN p.\"tombstone\" THEN NULL ELSE p.\"value\" END, b.eff, \
    coalesce((SELECT e.\"tombstone\" FROM \"etcd\" e WHERE e.\"key\" = p.\"key\" AND e.\"revision\" = b.eff), false) \
    FROM \"etcd\" p CROSS JOIN LATERAL (SELECT max(s.\"revision\") AS eff FROM \"etcd\" s \
        WHERE s.\"key\" = p.\"key\" AND s.\"revision\" > 0 AND s.\"ts\" <= p.\"ts\") b \
    WHERE p.\"revision\" = -1 AND starts_with(p.\"key\", $1) \
    ORDER BY p.\"ts\" LIMIT $2 FOR UPDATE OF p SKIP LOCKED";

const RECORD_TWO_TABLE: &str = "UPDATE \"etcd_wal\" w SET \"status\" = u.st, \
    \"revision\" = coalesce(u.rev, w.\"revision\"), \"error_message\" = u.err, \"applied_at\" = now() \
    FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[]) AS u(id, st, rev, err) \
    WHERE w.\"id\" = u.id";

/// One claimed queue row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWrite {
    /// `etcd_wal.id` (two-table) …
    pub id: Option<i64>,
    /// … or the pending row's `ts` (single-table).
    pub ts: Option<SystemTime>,
    pub key: String,
    /// `None` = delete.
    pub value: Option<String>,
    /// Effective base revision (§3.4 step 3).
    pub base: Option<i64>,
    /// Whether the base row is a tombstone.
    pub base_tombstone: bool,
}

impl QueuedWrite {
    fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, String::len)
    }

    /// The compare: an unknown or deleted base requires the key to be absent.
    fn compare(&self) -> Compare {
        match self.base {
            Some(rev) if !self.base_tombstone => {
                Compare::mod_revision(self.key.as_str(), CompareOp::Equal, rev)
            }
            _ => Compare::create_revision(self.key.as_str(), CompareOp::Equal, 0),
        }
    }

    fn txn(&self) -> Txn {
        let write = match &self.value {
            Some(v) => TxnOp::put(self.key.as_str(), v.as_str(), None),
            None => TxnOp::delete(self.key.as_str(), None),
        };
        Txn::new()
            .when(vec![self.compare()])
            .and_then(vec![write])
            .or_else(vec![TxnOp::get(self.key.as_str(), None)])
    }
}

/// What happened to one row in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written at this revision (or etcd already held it there).
    Success(i64),
    /// Delete of an absent key.
    Noop,
    /// etcd wins: current mod_revision and KV (None if absent).
    Conflict {
        current: i64,
        kv: Option<(String, i64)>,
    },
    /// Permanent etcd error for this row.
    Failed(String),
}

/// Rows at the head of `rows` that go into one Txn: distinct keys, at most
/// `max_bytes` (the first row always goes, alone if it is larger).
pub fn leading_run(rows: &[QueuedWrite], max_bytes: usize) -> usize {
    let mut keys = HashSet::new();
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = row.size();
        if i > 0 && (bytes + size > max_bytes || keys.contains(row.key.as_str())) {
            return i;
        }
        keys.insert(row.key.as_str());
        bytes += size;
    }
    rows.len()
}

/// Drains the queue for one prefix.
pub struct Applier {
    pub kv: KvClient,
    pub prefix: String,
    pub mode: SchemaMode,
    pub batch: usize,
}

impl Applier {
    /// Applies until the queue is drained, then waits for a NOTIFY or the
    /// polling tick. Returns an error when a session fails; `wake` closing
    /// means the control session (and the lock) is gone.
    pub async fn run(
        &mut self,
        pg: &mut Client,
        wake: &mut mpsc::UnboundedReceiver<String>,
        poll: Duration,
        mut on_progress: impl FnMut(),
    ) -> SyncResult<()> {
        loop {
            while self.apply_once(pg).await? {}
            on_progress();
            tokio::select! {
                msg = wake.recv() => {
                    if msg.is_none() {
                        return Err(SyncError::Etcd { message: "control session closed; leader lock lost".into(), retryable: true });
                    }
                    while wake.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Claims and applies one batch; true when more rows may be waiting.
    pub async fn apply_once(&mut self, pg: &mut Client) -> SyncResult<bool> {
        let tx = pg.transaction().await?;
        let rows = self.claim(&tx).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(false);
        }
        let run = leading_run(&rows, MAX_BATCH_BYTES);
        let batch = &rows[..run];
        let outcomes = self.send(batch).await?;
        self.record(&tx, batch, &outcomes).await?;
        tx.commit().await?;
        Ok(rows.len() >= self.batch || run < rows.len())
    }

    async fn claim(&self, tx: &Transaction<'_>) -> SyncResult<Vec<QueuedWrite>> {
        let limit = self.batch as i64;
        let rows = match self.mode {
            SchemaMode::TwoTable => tx.query(CLAIM_TWO_TABLE, &[&self.prefix, &limit]).await?,
            SchemaMode::SingleTable => {
                tx.query(CLAIM_SINGLE_TABLE, &[&self.prefix, &limit])
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| {
                let (id, ts) = match self.mode {
                    SchemaMode::TwoTable => (Some(r.get::<_, i64>(0)), None),
                    SchemaMode::SingleTable => (None, Some(r.get::<_, SystemTime>(0))),
                };
                QueuedWrite {
                    id,
                    ts,
                    key: r.get(1),
                    value: r.get(2),
                    base: r.get(3),
                    base_tombstone: r.get(4),
                }
            })
            .collect())
    }

    /// One Txn of nested Txns; on a permanent error, row by row to isolate it.
    /// Transient errors abort the whole batch (rows stay pending).
    async fn send(&mut self, batch: &[QueuedWrite]) -> SyncResult<Vec<Outcome>> {
        let nested: Vec<TxnOp> = batch.iter().map(|w| TxnOp::txn(w.txn())).collect();
        match self.kv.txn(Txn::new().and_then(nested)).await {
            Ok(resp) => {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                let responses = resp.op_responses();
                if responses.len() == batch.len() {
                    return Ok(batch
                        .iter()
                        .zip(responses)
                        .map(|(w, r)| match r {
                            TxnOpResponse::Txn(inner) => outcome(w, &inner, revision),
                            _ => Outcome::Failed("unexpected etcd response".into()),
                        })
                        .collect());
                }
            }
            Err(e) if is_transient(&e) => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, rows = batch.len(), "batch Txn refused; isolating rows");
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            match self.kv.txn(write.txn()).await {
                Ok(resp) => {
                    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                    outcomes.push(outcome(write, &resp, revision));
                }
                Err(e) if is_transient(&e) => return Err(e.into()),
                Err(e) => outcomes.push(Outcome::Failed(
                    SyncError::from(e)
                        .to_string()
                        .trim_start_matches("etcd: ")
                        .to_owned(),
                )),
            }
        }
        Ok(outcomes)
    }

    async fn record(
        &self,
        tx: &Transaction<'_>,
        batch: &[QueuedWrite],
        outcomes: &[Outcome],
    ) -> SyncResult<()> {
        let mut synced: Vec<TextRow> = Vec::new();
        for (w, o) in batch.iter().zip(outcomes) {
            match o {
                Outcome::Success(rev) => {
                    tracing::debug!(key = %w.key, revision = rev, "applied queued write");
                    synced.push(TextRow {
                        key: w.key.clone(),
                        value: match (&w.value, self.mode) {
                            (Some(v), _) => Some(v.clone()),
                            (None, mode) => crate::event::tombstone_value(mode),
                        },
                        revision: *rev,
                        tombstone: w.value.is_none(),
                    });
                }
                Outcome::Conflict { current, kv } => {
                    let base = w.base.unwrap_or(0);
                    tracing::warn!(
                        "Conflict detected for {} - etcd wins (rev: {} > {})",
                        w.key,
                        current,
                        base
                    );
                    if let Some((value, rev)) = kv {
                        synced.push(TextRow {
                            key: w.key.clone(),
                            value: Some(value.clone()),
                            revision: *rev,
                            tombstone: false,
                        });
                    }
                }
                Outcome::Failed(msg) => {
                    tracing::error!(key = %w.key, error = %msg, "queued write failed");
                }
                Outcome::Noop => {}
            }
        }
        match self.mode {
            SchemaMode::TwoTable => record_two_table(tx, batch, outcomes).await?,
            SchemaMode::SingleTable => record_single_table(tx, batch, outcomes).await?,
        }
        synced.sort_by(|a, b| (&a.key, a.revision).cmp(&(&b.key, b.revision)));
        if !synced.is_empty() {
            insert_text_rows(tx, &synced).await?;
        }
        Ok(())
    }
}

fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            status_is_transient(s) && s.code() != tonic::Code::ResourceExhausted
        }
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::EndpointError(_) => true,
        _ => false,
    }
}

/// Interprets one row's Txn response (spec §3.4 step 6).
fn outcome(write: &QueuedWrite, resp: &TxnResponse, revision: i64) -> Outcome {
    let responses = resp.op_responses();
    if resp.succeeded() {
        return match responses.first() {
            Some(TxnOpResponse::Delete(d)) if d.deleted() == 0 => Outcome::Noop,
            _ => Outcome::Success(revision),
        };
    }
    let current = match responses.first() {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    };
    match (&write.value, current) {
        (None, None) => Outcome::Noop,
        (Some(v), Some(kv)) if kv.value() == v.as_bytes() => Outcome::Success(kv.mod_revision()),
        (_, kv) => Outcome::Conflict {
            current: kv.as_ref().map_or(revision, |k| k.mod_revision()),
            kv: kv.and_then(|k| {
                let rev = k.mod_revision();
                k.value_str()
                    .ok()
                    .filter(|v| !v.contains('\0'))
                    .map(|v| (v.to_owned(), rev))
            }),
        },
    }
}

async fn record_two_table(
    tx: &Transaction<'_>,
    batch: &[QueuedWrite],
    outcomes: &[Outcome],
) -> SyncResult<()> {
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let mut revisions: Vec<Option<i64>> = Vec::new();
    let mut errors: Vec<Option<String>> = Vec::new();
    for (w, o) in batch.iter().zip(outcomes) {
        ids.push(w.id.unwrap_or_default());
        let (status, rev, err) = match o {
            Outcome::Success(r) => ("success", Some(*r), None),
            Outcome::Noop => ("noop", None, None),
            Outcome::Conflict { current, .. } => (
                "conflict",
                Some(-1),
                Some(format!(
                    "etcd has newer revision {current} > {}",
                    w.base.unwrap_or(0)
                )),
            ),
            Outcome::Failed(msg) => ("failed", Some(-1), Some(msg.clone())),
        };
        statuses.push(status);
        revisions.push(rev);
        errors.push(err);
    }
    tx.execute(RECORD_TWO_TABLE, &[&ids, &statuses, &revisions, &errors])
        .await?;
    Ok(())
}

async fn record_single_table(
    tx: &Transaction<'_>,
    batch: &[QueuedWrite],
    outcomes: &[Outcome],
) -> SyncResult<()> {
    for (w, o) in batch.iter().zip(outcomes) {
        let ts = w.ts.unwrap_or(SystemTime::UNIX_EPOCH);
        match o {
            Outcome::Success(rev) => {
                tx.execute(
                    "WITH d AS (DELETE FROM \"etcd\" WHERE \"key\" = $1 AND \"revision\" = -1 AND \"ts\" = $2 \
                     RETURNING \"key\", \"value\", \"tombstone\") \
                     INSERT INTO \"etcd\" (\"key\", \"value\", \"revision\", \"tombstone\") \
                     SELECT d.\"key\", d.\"value\", $3, d.\"tombstone\" FROM d \
                     ON CONFLICT (\"key\", \"revision\") DO NOTHING",
                    &[&w.key, &ts, rev],
                )
                .await?;
            }
            Outcome::Noop => {
                tx.execute(
                    "DELETE FROM \"etcd\" WHERE \"key\" = $1 AND \"revision\" = -1 AND \"ts\" = $2",
                    &[&w.key, &ts],
                )
                .await?;
            }
            Outcome::Conflict { .. } | Outcome::Failed(_) => {
                let etcd_rev = match o {
                    Outcome::Conflict { current, .. } => Some(*current),
                    _ => None,
                };
                tx.execute(
                    "WITH d AS (DELETE FROM \"etcd\" WHERE \"key\" = $1 AND \"revision\" = -1 AND \"ts\" = $2 \
                     RETURNING \"key\", \"value\", \"tombstone\", \"ts\") \
                     INSERT INTO \"pg_etcd_conflicts\" (\"key\", \"value\", \"tombstone\", \"ts\", \
                     \"base_revision\", \"etcd_revision\", \"detected_at\") \
                     SELECT d.\"key\", d.\"value\", d.\"tombstone\", d.\"ts\", $3, $4, now() FROM d",
                    &[&w.key, &ts, &w.base, &etcd_rev],
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, len: usize) -> QueuedWrite {
        QueuedWrite {
            id: Some(1),
            ts: None,
            key: key.into(),
            value: Some("x".repeat(len)),
            base: None,
            base_tombstone: false,
        }
    }

    #[test]
    fn leading_run_stops_at_a_repeated_key() {
        let rows = [w("/a", 1), w("/b", 1), w("/a", 1), w("/c", 1)];
        assert_eq!(leading_run(&rows, MAX_BATCH_BYTES), 2);
    }

    #[test]
    fn leading_run_respects_the_byte_budget() {
        let rows = [w("/a", 600), w("/b", 600), w("/c", 1)];
        assert_eq!(leading_run(&rows, 1000), 1);
        let big = [w("/a", 5000), w("/b", 1)];
        assert_eq!(leading_run(&big, 1000), 1, "an oversized row goes alone");
        assert_eq!(leading_run(&[], 1000), 0);
        let small: Vec<_> = (0..128).map(|i| w(&format!("/k{i}"), 10)).collect();
        assert_eq!(leading_run(&small, MAX_BATCH_BYTES), 128);
    }

    #[test]
    fn compare_uses_create_revision_for_unknown_or_deleted_bases() {
        let mut row = w("/a", 1);
        assert!(
            format!("{:?}", row.compare()).contains("CreateRevision")
                || format!("{:?}", row.compare()).contains("create")
        );
        row.base = Some(5);
        assert!(
            format!("{:?}", row.compare())
                .to_lowercase()
                .contains("mod")
        );
        row.base_tombstone = true;
        assert!(
            format!("{:?}", row.compare())
                .to_lowercase()
                .contains("create")
        );
    }
}
