//! One etcd key change as PostgreSQL stores it, and the rule for what
//! `text` columns cannot hold (spec §3.3, `pg_etcd_rejects`).

use tokio_postgres::GenericClient;

use crate::config::SchemaMode;
use crate::error::SyncResult;

/// A put or delete at one revision, bytes as etcd sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEvent {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub revision: i64,
    pub tombstone: bool,
}

/// Why an event cannot go into `etcd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    KeyNotUtf8,
    ValueNotUtf8,
    NulByte,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::KeyNotUtf8 => "key_not_utf8",
            RejectReason::ValueNotUtf8 => "value_not_utf8",
            RejectReason::NulByte => "nul_byte",
        }
    }
}

/// A representable event, ready for the `etcd` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRow {
    pub key: String,
    /// `None` = SQL NULL (two-table tombstone).
    pub value: Option<String>,
    pub revision: i64,
    pub tombstone: bool,
}

impl KvEvent {
    /// Converts to text, or says why it cannot be.
    pub fn to_row(&self, mode: SchemaMode) -> Result<TextRow, RejectReason> {
        let key = std::str::from_utf8(&self.key).map_err(|_| RejectReason::KeyNotUtf8)?;
        if key.contains('\0') {
            return Err(RejectReason::NulByte);
        }
        let value = if self.tombstone {
            tombstone_value(mode)
        } else {
            let v = std::str::from_utf8(&self.value).map_err(|_| RejectReason::ValueNotUtf8)?;
            if v.contains('\0') {
                return Err(RejectReason::NulByte);
            }
            Some(v.to_owned())
        };
        Ok(TextRow {
            key: key.to_owned(),
            value,
            revision: self.revision,
            tombstone: self.tombstone,
        })
    }

    /// The key for logs, lossy.
    pub fn key_lossy(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// Tombstones hold NULL in two-table mode and `''` in single-table mode.
pub fn tombstone_value(mode: SchemaMode) -> Option<String> {
    match mode {
        SchemaMode::TwoTable => None,
        SchemaMode::SingleTable => Some(String::new()),
    }
}

/// Records unrepresentable events (idempotent on `(key, revision)`), one ERROR each.
pub async fn insert_rejects<C: GenericClient>(
    client: &C,
    rejects: &[(KvEvent, RejectReason)],
) -> SyncResult<()> {
    for (event, reason) in rejects {
        tracing::error!(
            key = %event.key_lossy(),
            revision = event.revision,
            reason = reason.as_str(),
            "etcd event cannot be stored as text; recorded in pg_etcd_rejects"
        );
        let value: Option<&[u8]> = (!event.tombstone).then_some(event.value.as_slice());
        client
            .execute(
                "INSERT INTO \"pg_etcd_rejects\" (\"key\", \"value\", \"revision\", \"tombstone\", \"reason\") \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (\"key\", \"revision\") DO NOTHING",
                &[&event.key, &value, &event.revision, &event.tombstone, &reason.as_str()],
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &[u8], value: &[u8], tombstone: bool) -> KvEvent {
        KvEvent {
            key: key.to_vec(),
            value: value.to_vec(),
            revision: 7,
            tombstone,
        }
    }

    #[test]
    fn unrepresentable_events_are_classified() {
        let m = SchemaMode::TwoTable;
        assert_eq!(
            ev(b"/t/\xff", b"v", false).to_row(m),
            Err(RejectReason::KeyNotUtf8)
        );
        assert_eq!(
            ev(b"/t/a", b"\xff\xfe", false).to_row(m),
            Err(RejectReason::ValueNotUtf8)
        );
        assert_eq!(
            ev(b"/t/a", b"a\0b", false).to_row(m),
            Err(RejectReason::NulByte)
        );
        let row = ev(b"/t/a", b"", true).to_row(m).unwrap();
        assert_eq!(row.value, None);
        let row = ev(b"/t/a", b"", true)
            .to_row(SchemaMode::SingleTable)
            .unwrap();
        assert_eq!(row.value.as_deref(), Some(""));
    }
}
