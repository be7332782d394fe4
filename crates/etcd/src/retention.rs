//! Opt-in history retention (spec §3.6): deletes expired rows in batches of
//! 1,000, never a key's latest live row, never pending or failed queue rows.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::SchemaMode;
use crate::error::SyncResult;

const BATCH: i64 = 1000;

const SUPERSEDED: &str = "DELETE FROM \"etcd\" WHERE ctid IN (SELECT e.ctid FROM \"etcd\" e \
    WHERE starts_with(e.\"key\", $1) AND e.\"revision\" > 0 AND e.\"ts\" < now() - make_interval(secs => $2) \
    AND EXISTS (SELECT 1 FROM \"etcd\" n WHERE n.\"key\" = e.\"key\" AND n.\"revision\" > e.\"revision\") LIMIT $3)";
const LONE_TOMBSTONES: &str = "DELETE FROM \"etcd\" WHERE ctid IN (SELECT e.ctid FROM \"etcd\" e \
    WHERE starts_with(e.\"key\", $1) AND e.\"tombstone\" AND e.\"revision\" > 0 \
    AND e.\"ts\" < now() - make_interval(secs => $2) \
    AND NOT EXISTS (SELECT 1 FROM \"etcd\" o WHERE o.\"key\" = e.\"key\" AND o.\"revision\" <> e.\"revision\") LIMIT $3)";
const QUEUE: &str = "DELETE FROM \"etcd_wal\" WHERE ctid IN (SELECT w.ctid FROM \"etcd_wal\" w \
    WHERE starts_with(w.\"key\", $1) AND w.\"status\" IN ('success', 'conflict', 'noop') \
    AND w.\"ts\" < now() - make_interval(secs => $2) LIMIT $3)";

/// One retention pass; returns the number of rows deleted.
pub async fn expire(
    client: &Client,
    prefix: &str,
    mode: SchemaMode,
    keep: Duration,
) -> SyncResult<u64> {
    let secs = keep.as_secs_f64();
    let mut statements = vec![SUPERSEDED, LONE_TOMBSTONES];
    if mode == SchemaMode::TwoTable {
        statements.push(QUEUE);
    }
    let mut total = 0;
    for sql in statements {
        loop {
            let n = client.execute(sql, &[&prefix, &secs, &BATCH]).await?;
            total += n;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(total)
}
