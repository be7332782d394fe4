//! Snapshot resync (spec §3.2): page through the prefix at one revision R0,
//! COPY into a temp table, upsert (etcd wins), tombstone vanished keys at R0
//! and commit the checkpoint in the same transaction.

use bytes::{BufMut, BytesMut};
use etcd_client::{GetOptions, KvClient};
use futures_util::SinkExt;
use tokio_postgres::Client;

use crate::checkpoint::Checkpoint;
use crate::config::SchemaMode;
use crate::error::{SyncError, SyncResult};
use crate::etcd_session::{is_compacted, is_resource_exhausted, prefix_range_end};
use crate::event::{KvEvent, RejectReason, insert_rejects};

/// Keys per Range page.
const PAGE_SIZE: i64 = 1000;
/// Compactions overtaking R0 tolerated before giving up (exit 4).
pub const MAX_RESYNC_ATTEMPTS: u32 = 5;

const CREATE_SNAPSHOT: &str = "CREATE TEMP TABLE IF NOT EXISTS \"pg_etcd_snapshot\" \
    (\"key\" text NOT NULL, \"value\" text NOT NULL, \"revision\" bigint NOT NULL) ON COMMIT DROP";
const COPY_SNAPSHOT: &str =
    "COPY \"pg_etcd_snapshot\" (\"key\", \"value\", \"revision\") FROM STDIN";
/// etcd wins; unchanged rows are not touched.
const UPSERT: &str = "INSERT INTO \"etcd\" (\"key\", \"value\", \"revision\", \"tombstone\") \
    SELECT s.\"key\", s.\"value\", s.\"revision\", false FROM \"pg_etcd_snapshot\" s \
    ON CONFLICT (\"key\", \"revision\") DO UPDATE SET \"value\" = EXCLUDED.\"value\", \
    \"tombstone\" = false, \"ts\" = now() \
    WHERE \"etcd\".\"value\" IS DISTINCT FROM EXCLUDED.\"value\" OR \"etcd\".\"tombstone\"";
/// Live latest rows at or below R0 whose key vanished get a tombstone at R0.
const TOMBSTONE_VANISHED: &str = "INSERT INTO \"etcd\" (\"key\", \"value\", \"revision\", \"tombstone\") \
    SELECT l.\"key\", $3::text, $2, true FROM ( \
        SELECT DISTINCT ON (e.\"key\") e.\"key\", e.\"revision\", e.\"tombstone\" FROM \"etcd\" e \
        WHERE starts_with(e.\"key\", $1) AND e.\"revision\" > 0 \
        ORDER BY e.\"key\", e.\"revision\" DESC) l \
    WHERE NOT l.\"tombstone\" AND l.\"revision\" <= $2 \
      AND NOT EXISTS (SELECT 1 FROM \"pg_etcd_snapshot\" s WHERE s.\"key\" = l.\"key\") \
    ON CONFLICT (\"key\", \"revision\") DO UPDATE SET \"tombstone\" = true, \"value\" = EXCLUDED.\"value\"";

/// Outcome of a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncSummary {
    /// The snapshot revision; watching continues from R0+1.
    pub revision: i64,
    /// Keys copied.
    pub keys: u64,
    /// Keys tombstoned because they vanished.
    pub tombstoned: u64,
}

/// Runs a resync, restarting when compaction overtakes R0.
pub async fn resync(
    pg: &mut Client,
    kv: &mut KvClient,
    prefix: &str,
    mode: SchemaMode,
    cluster_id: &str,
    reason: &str,
) -> SyncResult<ResyncSummary> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match resync_once(pg, kv, prefix, mode, cluster_id, reason).await {
            Err(SyncError::Compacted(rev)) if attempt < MAX_RESYNC_ATTEMPTS => {
                tracing::warn!(
                    prefix,
                    revision = rev,
                    attempt,
                    "compaction overtook the snapshot; restarting resync"
                );
            }
            Err(SyncError::Compacted(rev)) => {
                return Err(SyncError::Fatal(format!(
                    "resync failed {MAX_RESYNC_ATTEMPTS} times in a row: revision {rev} compacted"
                )));
            }
            other => return other,
        }
    }
}

async fn resync_once(
    pg: &mut Client,
    kv: &mut KvClient,
    prefix: &str,
    mode: SchemaMode,
    cluster_id: &str,
    reason: &str,
) -> SyncResult<ResyncSummary> {
    let tx = pg.transaction().await?;
    tx.batch_execute(CREATE_SNAPSHOT).await?;
    tx.batch_execute("TRUNCATE \"pg_etcd_snapshot\"").await?;
    let sink = tx.copy_in::<_, bytes::Bytes>(COPY_SNAPSHOT).await?;
    let mut sink = std::pin::pin!(sink);
    let range_end = prefix_range_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    let mut limit = PAGE_SIZE;
    let mut snapshot_rev: Option<i64> = None;
    let mut keys = 0u64;
    let mut rejects: Vec<(KvEvent, RejectReason)> = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(limit);
        if let Some(r0) = snapshot_rev {
            options = options.with_revision(r0);
        }
        let resp = match kv.get(start.clone(), Some(options)).await {
            Ok(r) => r,
            Err(e) if is_resource_exhausted(&e) && limit > 1 => {
                limit /= 2;
                continue;
            }
            Err(e) if is_compacted(&e) => {
                return Err(SyncError::Compacted(snapshot_rev.unwrap_or_default()));
            }
            Err(e) => return Err(e.into()),
        };
        let header_rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        let r0 = *snapshot_rev.get_or_insert(header_rev);
        let mut buf = BytesMut::new();
        for kvp in resp.kvs() {
            let event = KvEvent {
                key: kvp.key().to_vec(),
                value: kvp.value().to_vec(),
                revision: kvp.mod_revision(),
                tombstone: false,
            };
            match event.to_row(mode) {
                Ok(row) => {
                    put_copy_text(&mut buf, &row.key);
                    buf.put_u8(b'\t');
                    put_copy_text(&mut buf, row.value.as_deref().unwrap_or_default());
                    buf.put_u8(b'\t');
                    buf.put_slice(row.revision.to_string().as_bytes());
                    buf.put_u8(b'\n');
                    keys += 1;
                }
                Err(reason) => rejects.push((event, reason)),
            }
        }
        if !buf.is_empty() {
            sink.send(buf.freeze()).await?;
        }
        let last = resp.kvs().last().map(|k| k.key().to_vec());
        match last {
            Some(mut key) if resp.more() => {
                key.push(0);
                start = key;
            }
            _ => {
                tracing::info!(
                    prefix,
                    count = keys + rejects.len() as u64,
                    header_revision = r0,
                    "Retrieved all keys from etcd"
                );
                break;
            }
        }
    }
    sink.as_mut().finish().await?;
    let r0 = snapshot_rev.unwrap_or_default();
    tx.execute(UPSERT, &[]).await?;
    let tomb_value = crate::event::tombstone_value(mode);
    let tombstoned = tx
        .execute(TOMBSTONE_VANISHED, &[&prefix, &r0, &tomb_value])
        .await?;
    insert_rejects(&tx, &rejects).await?;
    Checkpoint::reset(&tx, prefix, r0, cluster_id, reason).await?;
    tx.commit().await?;
    tracing::info!(
        prefix,
        revision = r0,
        reason,
        tombstoned,
        "Copied {keys} keys from etcd to PostgreSQL"
    );
    Ok(ResyncSummary {
        revision: r0,
        keys,
        tombstoned,
    })
}

/// Appends `text` in COPY text format (backslash escapes).
fn put_copy_text(buf: &mut BytesMut, text: &str) {
    for b in text.bytes() {
        match b {
            b'\\' => buf.put_slice(b"\\\\"),
            b'\t' => buf.put_slice(b"\\t"),
            b'\n' => buf.put_slice(b"\\n"),
            b'\r' => buf.put_slice(b"\\r"),
            other => buf.put_u8(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_separators() {
        let mut buf = BytesMut::new();
        put_copy_text(&mut buf, "a\tb\\c\nd\re");
        assert_eq!(&buf[..], b"a\\tb\\\\c\\nd\\re");
    }
}
