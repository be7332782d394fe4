//! Moving table data between two servers as raw COPY bytes.
//!
//! Rows are never decoded: `COPY ... TO STDOUT` chunks from the source are
//! forwarded as-is into `COPY ... FROM STDIN` on the destination, so memory
//! stays bounded by a few chunks whatever the table size.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, TryStreamExt, pin_mut};
use pgtandem_core::quoting::quote_ident;
use tokio::time::Instant;
use tokio_postgres::{Client, CopyInSink};

use crate::error::Result;

/// Progress is reported at most once per this many bytes (and at the end), so
/// a million tiny rows do not mean a million callbacks.
const PROGRESS_STEP: u64 = 256 * 1024;

/// Rows are forwarded in CopyData messages of about this size.
const COALESCE_BYTES: usize = 64 * 1024;

/// What one [`copy_between`] moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// COPY payload bytes forwarded.
    pub bytes: u64,
    /// Rows the destination reported in its `COPY n` command tag.
    pub rows: u64,
}

/// COPY data format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's binary format: fastest, needs identical column types on
    /// both sides.
    #[default]
    Binary,
    /// Text format: portable across versions and compatible column types.
    Text,
}

impl CopyFormat {
    fn option(self) -> &'static str {
        match self {
            CopyFormat::Binary => "(FORMAT binary)",
            CopyFormat::Text => "(FORMAT text)",
        }
    }
}

/// `COPY "schema"."table" ("c1", ...) TO STDOUT (FORMAT ...)`; an empty
/// column list copies all columns.
pub fn copy_out_sql(schema: &str, table: &str, columns: &[&str], format: CopyFormat) -> String {
    format!(
        "COPY {} TO STDOUT {}",
        qualified_with_columns(schema, table, columns),
        format.option()
    )
}

/// `COPY "schema"."table" ("c1", ...) FROM STDIN (FORMAT ...)`.
pub fn copy_in_sql(schema: &str, table: &str, columns: &[&str], format: CopyFormat) -> String {
    format!(
        "COPY {} FROM STDIN {}",
        qualified_with_columns(schema, table, columns),
        format.option()
    )
}

/// `COPY (query) TO STDOUT (FORMAT ...)`, e.g. for CTID ranges.
pub fn copy_query_out_sql(query: &str, format: CopyFormat) -> String {
    format!("COPY ({query}) TO STDOUT {}", format.option())
}

fn qualified_with_columns(schema: &str, table: &str, columns: &[&str]) -> String {
    let mut sql = format!("{}.{}", quote_ident(schema), quote_ident(table));
    if !columns.is_empty() {
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c).to_string()).collect();
        sql.push_str(" (");
        sql.push_str(&cols.join(", "));
        sql.push(')');
    }
    sql
}

/// Streams `copy_out_sql` on `src` into `copy_in_sql` on `dst`.
///
/// `progress` receives byte counts as they are forwarded (deltas, so several
/// parallel copies can add into one shared counter). Backpressure: a chunk is
/// read from the source only when the destination accepted the previous one.
/// On any error the destination COPY is aborted (CopyFail), so no partial
/// data is committed by it; the caller's transaction decides the rest.
///
/// If the destination rejects the COPY statement itself at execution (missing
/// table or column, no privilege), `dst` is closed when this returns: see
/// [`start_copy_in`].
pub async fn copy_between(
    src: &Client,
    copy_out_sql: &str,
    dst: &Client,
    copy_in_sql: &str,
    progress: impl Fn(u64),
) -> Result<CopyStats> {
    // Destination first: a missing table fails before the source starts
    // producing data we would have to throw away.
    let sink = start_copy_in(dst, copy_in_sql).await?;
    pin_mut!(sink);
    let stream = src.copy_out(copy_out_sql).await?;
    pin_mut!(stream);

    let mut bytes = 0u64;
    let mut unreported = 0u64;
    // The server sends one CopyData message per row; forwarding them one by one costs a message
    // header and a sink round per row. COPY FROM accepts any chunking, so coalesce.
    let mut batch = BytesMut::with_capacity(COALESCE_BYTES);
    while let Some(chunk) = stream.try_next().await? {
        let len = chunk.len() as u64;
        if batch.is_empty() && chunk.len() >= COALESCE_BYTES {
            sink.feed(chunk).await?;
        } else {
            batch.extend_from_slice(&chunk);
            if batch.len() >= COALESCE_BYTES {
                sink.feed(batch.split().freeze()).await?;
            }
        }
        bytes += len;
        unreported += len;
        if unreported >= PROGRESS_STEP {
            progress(unreported);
            unreported = 0;
        }
    }
    if !batch.is_empty() {
        sink.feed(batch.freeze()).await?;
    }
    let rows = sink.as_mut().finish().await?;
    if unreported > 0 {
        progress(unreported);
    }
    Ok(CopyStats { bytes, rows })
}

/// How long to wait for tokio-postgres to notice the stray `ReadyForQuery`.
const STRAY_READY_WAIT: Duration = Duration::from_secs(10);

/// Starts `COPY ... FROM STDIN` on `dst`.
///
/// tokio-postgres 0.7 sends `Sync` both after `Execute` and after the
/// `CopyFail` it uses to abort, so when the server rejects the statement
/// before entering copy mode it answers with one `ReadyForQuery` too many
/// (rust-postgres#789). That stray message would be attributed to the next
/// request on the connection, silently shifting every later result by one.
/// We make the outcome deterministic instead: parse errors are caught by a
/// separate `prepare` (which leaves the connection clean), and after an
/// execution-time rejection we wait until the stray message has closed the
/// connection, so it can never be reused with misattributed results.
async fn start_copy_in(dst: &Client, copy_in_sql: &str) -> Result<CopyInSink<Bytes>> {
    let statement = dst.prepare(copy_in_sql).await?;
    match dst.copy_in::<_, Bytes>(&statement).await {
        Ok(sink) => Ok(sink),
        Err(e) => {
            if e.as_db_error().is_some() {
                let deadline = Instant::now() + STRAY_READY_WAIT;
                while !dst.is_closed() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tracing::debug!(
                    closed = dst.is_closed(),
                    "destination rejected COPY; connection discarded"
                );
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_quote_identifiers() {
        assert_eq!(
            copy_out_sql("public", "My Table", &["id", "we\"ird"], CopyFormat::Binary),
            "COPY public.\"My Table\" (id, \"we\"\"ird\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_in_sql("s", "t", &[], CopyFormat::Text),
            "COPY s.t FROM STDIN (FORMAT text)"
        );
        assert_eq!(
            copy_query_out_sql("SELECT 1", CopyFormat::Binary),
            "COPY (SELECT 1) TO STDOUT (FORMAT binary)"
        );
    }
}
