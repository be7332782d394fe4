//! The per-prefix checkpoint in `pg_etcd_state`: every change under the
//! prefix up to `revision` is in `etcd` (spec §2.7).

use tokio_postgres::GenericClient;

use crate::error::SyncResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub revision: i64,
    pub cluster_id: String,
    pub last_resync_revision: Option<i64>,
    pub last_resync_reason: Option<String>,
}

impl Checkpoint {
    pub async fn load<C: GenericClient>(client: &C, prefix: &str) -> SyncResult<Option<Self>> {
        let row = client
            .query_opt(
                "SELECT \"revision\", \"cluster_id\", \"last_resync_revision\", \"last_resync_reason\" \
                 FROM \"pg_etcd_state\" WHERE \"prefix\" = $1",
                &[&prefix],
            )
            .await?;
        Ok(row.map(|r| Checkpoint {
            revision: r.get(0),
            cluster_id: r.get(1),
            last_resync_revision: r.get(2),
            last_resync_reason: r.get(3),
        }))
    }

    /// Moves the checkpoint forward only (same transaction as the data).
    pub async fn advance<C: GenericClient>(
        client: &C,
        prefix: &str,
        revision: i64,
    ) -> SyncResult<()> {
        client
            .execute(
                "UPDATE \"pg_etcd_state\" SET \"revision\" = $2, \"updated_at\" = now() \
                 WHERE \"prefix\" = $1 AND \"revision\" < $2",
                &[&prefix, &revision],
            )
            .await?;
        Ok(())
    }

    /// Sets the checkpoint after a resync, whatever it was.
    pub async fn reset<C: GenericClient>(
        client: &C,
        prefix: &str,
        revision: i64,
        cluster_id: &str,
        reason: &str,
    ) -> SyncResult<()> {
        client
            .execute(
                "INSERT INTO \"pg_etcd_state\" AS s (\"prefix\", \"revision\", \"cluster_id\", \
                 \"last_resync_revision\", \"last_resync_at\", \"last_resync_reason\", \"updated_at\") \
                 VALUES ($1, $2, $3, $2, now(), $4, now()) \
                 ON CONFLICT (\"prefix\") DO UPDATE SET \"revision\" = EXCLUDED.\"revision\", \
                 \"cluster_id\" = EXCLUDED.\"cluster_id\", \
                 \"last_resync_revision\" = EXCLUDED.\"last_resync_revision\", \
                 \"last_resync_at\" = EXCLUDED.\"last_resync_at\", \
                 \"last_resync_reason\" = EXCLUDED.\"last_resync_reason\", \"updated_at\" = now()",
                &[&prefix, &revision, &cluster_id, &reason],
            )
            .await?;
        Ok(())
    }
}

/// Why the service must resync instead of watching (spec §3.1 step 6).
pub fn resync_reason(
    checkpoint: Option<&Checkpoint>,
    cluster_id: &str,
    etcd_revision: i64,
) -> Option<&'static str> {
    match checkpoint {
        None => Some("initial"),
        Some(c) if c.cluster_id != cluster_id => Some("cluster_changed"),
        Some(c) if c.revision > etcd_revision => Some("revision_regressed"),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_reasons() {
        let c = Checkpoint {
            revision: 10,
            cluster_id: "1".into(),
            last_resync_revision: None,
            last_resync_reason: None,
        };
        assert_eq!(resync_reason(None, "1", 5), Some("initial"));
        assert_eq!(resync_reason(Some(&c), "2", 50), Some("cluster_changed"));
        assert_eq!(resync_reason(Some(&c), "1", 9), Some("revision_regressed"));
        assert_eq!(resync_reason(Some(&c), "1", 10), None);
    }
}
