//! Shared helpers for the integration tests: clusters from the test kit and
//! conninfo construction.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use pgtandem_core::conninfo::ConnInfo;
use pgtandem_pg::Client;
use pgtandem_testkit::{Pg, PgCluster};

/// Parses a libpq key/value string.
pub fn conninfo(s: &str) -> ConnInfo {
    s.parse().unwrap()
}

/// TCP conninfo of `cluster` for `db` (includes its password if any).
pub fn tcp(cluster: &PgCluster, db: &str) -> ConnInfo {
    conninfo(&cluster.conninfo(db))
}

/// Unix-socket conninfo of `cluster` for `db`.
pub fn socket(cluster: &PgCluster, db: &str) -> ConnInfo {
    conninfo(&format!(
        "host={} port={} user=postgres dbname={db}",
        cluster.socket_dir().display(),
        cluster.port()
    ))
}

/// A running cluster; `fsync` off because these tests never crash it.
pub fn cluster(version: Pg) -> PgCluster {
    PgCluster::builder(version).fsync(false).start().unwrap()
}

/// A cluster with `wal_level=logical`.
pub fn logical_cluster(version: Pg) -> PgCluster {
    PgCluster::builder(version)
        .fsync(false)
        .guc("wal_level", "logical")
        .start()
        .unwrap()
}

/// First column of the first row of a simple query, as text.
pub async fn scalar(client: &Client, sql: &str) -> Option<String> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten()
}

/// Polls `check` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
