//! PG→etcd queue applier (spec §3.4): claims pending writes with SKIP LOCKED,
//! sends a leading run of distinct keys as one etcd Txn of nested CAS Txns,
//! and records each row's outcome in the same PostgreSQL transaction.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};

use crate::config::SchemaMode;
use crate::error::{SyncError, SyncResult, status_is_transient};
use crate::event::TextRow;
use crate::watch::insert_text_rows;

/// Most bytes (keys + values) in one etcd Txn; a larger row goes alone.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Single-row Txns in flight when a batch falls back (spec §3.4 step 5).
pub const FALLBACK_IN_FLIGHT: usize = 64;

/// How a batch's per-row Txns are nested in one request. etcd checks a
/// Txn's op count against `--max-txn-ops` and each nested Txn against what
/// is left (`max - outer ops`), so 128 one-op rows do not fit flat under the
/// default 128; two levels of groups do, and still commit at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One nested Txn per row.
    Flat,
    /// Groups of at most this many rows, each group a nested Txn of row Txns.
    Grouped(usize),
}

impl Layout {
    /// The layout for `rows` row Txns (one op per branch) under `max_ops`;
    /// `None` when not even two levels fit.
    pub fn choose(rows: usize, max_ops: usize) -> Option<Layout> {
        if rows < max_ops {
            return Some(Layout::Flat);
        }
        // Groups g of size c need g + c + 1 <= max_ops; prefer few groups.
        (1..max_ops.saturating_sub(1))
            .rev()
            .find(|&c| rows.div_ceil(c) + c < max_ops)
            .map(Layout::Grouped)
    }

    fn request(self, batch: &[QueuedWrite]) -> Txn {
        let ops = match self {
            Layout::Flat => batch.iter().map(|w| TxnOp::txn(w.txn())).collect(),
            Layout::Grouped(size) => batch
                .chunks(size)
                .map(|group| {
                    TxnOp::txn(
                        Txn::new().and_then(
                            group
                                .iter()
                                .map(|w| TxnOp::txn(w.txn()))
                                .collect::<Vec<_>>(),
                        ),
                    )
                })
                .collect::<Vec<_>>(),
        };
        Txn::new().and_then(ops)
    }

    /// The per-row responses, in batch order.
    fn row_responses(self, resp: &TxnResponse) -> Vec<TxnResponse> {
        fn nested(r: &TxnResponse) -> Vec<TxnResponse> {
            r.op_responses()
                .into_iter()
                .filter_map(|op| match op {
                    TxnOpResponse::Txn(inner) => Some(inner),
                    _ => None,
                })
                .collect()
        }
        match self {
            Layout::Flat => nested(resp),
            Layout::Grouped(_) => nested(resp).iter().flat_map(nested).collect(),
        }
    }
}

/// Claims first, then computes bases for the claimed rows only: a base
/// computed in the scan would cost a lookup per pending row, every batch.
/// The base lookups must go through the key index alone: with a fresh
/// (unanalyzed) queue the planner likes to AND in a range scan of the
/// `id`/`ts` index, which reads the whole queue per row. `+ 0` and
/// `IS TRUE` keep those predicates out of the index choice, and `OFFSET 0`
/// keeps the lateral base from being evaluated twice.
const CLAIM_TWO_TABLE: &str = "WITH c AS (SELECT w.\"id\", w.\"key\", w.\"value\", w.\"base_revision\" \
        FROM \"etcd_wal\" w WHERE w.\"status\" = 'pending' AND starts_with(w.\"key\", $1) \
        ORDER BY w.\"id\" LIMIT $2 FOR UPDATE OF w SKIP LOCKED) \
    SELECT c.\"id\", c.\"key\", c.\"value\", b.eff, \
    coalesce((SELECT e.\"tombstone\" FROM \"etcd\" e WHERE e.\"key\" = c.\"key\" AND e.\"revision\" = b.eff), false) \
    FROM c CROSS JOIN LATERAL (SELECT greatest(c.\"base_revision\", \
        (SELECT max(p.\"revision\") FROM \"etcd_wal\" p WHERE p.\"key\" = c.\"key\" \
         AND p.\"status\" = 'success' AND p.\"id\" + 0 < c.\"id\")) AS eff OFFSET 0) b \
    ORDER BY c.\"id\"";

const CLAIM_SINGLE_TABLE: &str = "WITH c AS (SELECT p.\"ts\", p.\"key\", p.\"value\", p.\"tombstone\" \
        FROM \"etcd\" p WHERE p.\"revision\" = -1 AND starts_with(p.\"key\", $1) \
        ORDER BY p.\"ts\" LIMIT $2 FOR UPDATE OF p SKIP LOCKED) \
    SELECT c.\"ts\", c.\"key\", CASE WHEN c.\"tombstone\" THEN NULL ELSE c.\"value\" END, b.eff, \
    coalesce((SELECT e.\"tombstone\" FROM \"etcd\" e WHERE e.\"key\" = c.\"key\" AND e.\"revision\" = b.eff), false) \
    FROM c CROSS JOIN LATERAL (SELECT max(s.\"revision\") AS eff FROM \"etcd\" s \
        WHERE s.\"key\" = c.\"key\" AND s.\"revision\" > 0 AND (s.\"ts\" <= c.\"ts\") IS TRUE OFFSET 0) b \
    ORDER BY c.\"ts\"";

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
    kv: KvClient,
    prefix: String,
    mode: SchemaMode,
    batch: usize,
    /// etcd's `--max-txn-ops` as far as we know; lowered when etcd refuses.
    max_txn_ops: usize,
    /// Fallback causes already logged at WARN.
    fallback_causes: HashSet<String>,
}

impl Applier {
    pub fn new(kv: KvClient, prefix: &str, mode: SchemaMode, batch: usize) -> Applier {
        Applier {
            kv,
            prefix: prefix.to_owned(),
            mode,
            batch,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            fallback_causes: HashSet::new(),
        }
    }

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
                        return Err(SyncError::LockLost);
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

    /// Sends the batch as one Txn of per-row nested Txns (one revision for
    /// all). When etcd refuses the shape, rows go as single-row Txns.
    /// Transient errors abort the whole batch (rows stay pending).
    async fn send(&mut self, batch: &[QueuedWrite]) -> SyncResult<Vec<Outcome>> {
        if batch.len() == 1 {
            // One row needs no nesting; its own error is its outcome.
            return self.send_rows(batch).await;
        }
        loop {
            let Some(layout) = Layout::choose(batch.len(), self.max_txn_ops) else {
                self.warn_once(
                    "etcd --max-txn-ops too small for nested Txns",
                    batch.len(),
                    self.max_txn_ops,
                );
                return self.send_rows(batch).await;
            };
            let error = match self.kv.txn(layout.request(batch)).await {
                Ok(resp) => {
                    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                    let rows = layout.row_responses(&resp);
                    if rows.len() == batch.len() {
                        return Ok(batch
                            .iter()
                            .zip(rows)
                            .map(|(w, r)| outcome(w, &r, revision))
                            .collect());
                    }
                    format!(
                        "etcd answered {} of {} nested Txns",
                        rows.len(),
                        batch.len()
                    )
                }
                Err(e) if is_transient(&e) => return Err(e.into()),
                Err(e) if is_too_many_ops(&e) => {
                    // A server with a lower --max-txn-ops: learn it and retry smaller.
                    let lower = self.max_txn_ops / 2;
                    self.warn_once(&etcd_message(e), batch.len(), lower);
                    self.max_txn_ops = lower;
                    continue;
                }
                Err(e) => etcd_message(e),
            };
            self.warn_once(&error, batch.len(), self.max_txn_ops);
            return self.send_rows(batch).await;
        }
    }

    /// Single-row Txns, at most `FALLBACK_IN_FLIGHT` at once. The rows of a
    /// batch have distinct keys, so per-key id order holds.
    async fn send_rows(&self, batch: &[QueuedWrite]) -> SyncResult<Vec<Outcome>> {
        // Owned futures (no borrow of `batch`), so the service future stays Send.
        let requests: Vec<_> = batch
            .iter()
            .map(|write| {
                let (mut kv, txn) = (self.kv.clone(), write.txn());
                async move { kv.txn(txn).await }
            })
            .collect();
        let results: Vec<_> = futures_util::stream::iter(requests)
            .buffered(FALLBACK_IN_FLIGHT)
            .collect()
            .await;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (write, result) in batch.iter().zip(results) {
            match result {
                Ok(resp) => {
                    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                    outcomes.push(outcome(write, &resp, revision));
                }
                Err(e) if is_transient(&e) => return Err(e.into()),
                Err(e) => outcomes.push(Outcome::Failed(etcd_message(e))),
            }
        }
        Ok(outcomes)
    }

    /// WARN the first time a cause makes batches fall back; DEBUG after that.
    fn warn_once(&mut self, cause: &str, rows: usize, max_txn_ops: usize) {
        let class: String = cause.chars().filter(|c| !c.is_ascii_digit()).collect();
        if self.fallback_causes.insert(class) {
            tracing::warn!(
                error = %cause,
                rows,
                max_txn_ops,
                "etcd refused a batch of nested Txns; sending its rows as single-row Txns"
            );
        } else {
            tracing::debug!(error = %cause, rows, "batch Txn refused; sending rows singly");
        }
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

/// etcd's `--max-txn-ops` refusal (InvalidArgument).
fn is_too_many_ops(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("too many operations in txn request"))
}

/// The error text stored in `error_message`: etcd's own words (the gRPC
/// status message verbatim, e.g. `etcdserver: request is too large`).
fn etcd_message(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
        other => other.to_string(),
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
    fn layout_fits_etcds_op_budget() {
        assert_eq!(Layout::choose(2, 128), Some(Layout::Flat));
        assert_eq!(Layout::choose(127, 128), Some(Layout::Flat));
        // 128 flat rows would need 129 ops: two groups (2 + 125 + 1 <= 128).
        assert_eq!(Layout::choose(128, 128), Some(Layout::Grouped(125)));
        for (rows, max) in [(128, 128), (128, 32), (40, 16), (9, 8)] {
            let Some(Layout::Grouped(c)) = Layout::choose(rows, max) else {
                panic!("{rows} rows under {max} ops");
            };
            assert!(
                rows.div_ceil(c) + c < max,
                "{rows} rows, groups of {c}, max {max}"
            );
        }
        assert_eq!(
            Layout::choose(128, 8),
            None,
            "too small even for two levels"
        );
        assert_eq!(Layout::choose(2, 2), None);
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
