//! Shared harness: a real etcd and a real PostgreSQL cluster per test.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use etcd_client::{Client as EtcdClient, EventType, WatchOptions};
use pgtandem_etcd::{RawSettings, SchemaMode, Settings};
use pgtandem_testkit::{Etcd, Pg, PgCluster};
use tokio_postgres::{Client, NoTls};

pub struct World {
    pub etcd: Etcd,
    pub pg: PgCluster,
    pub db: String,
}

impl World {
    pub fn start(version: Pg) -> World {
        let etcd = Etcd::start().unwrap();
        let pg = PgCluster::builder(version).fsync(false).start().unwrap();
        pg.create_database("sync").unwrap();
        World {
            etcd,
            pg,
            db: "sync".into(),
        }
    }

    pub fn settings(&self, prefix: &str, mode: Option<SchemaMode>) -> Settings {
        let raw = RawSettings {
            postgres_dsn: Some(self.pg.conninfo(&self.db)),
            etcd_dsn: format!("etcd://127.0.0.1:{}{prefix}", self.etcd.client_port()),
            polling_interval: "1s".into(),
            schema_mode: mode,
            batch_size: 1000,
            connect_timeout: "10s".into(),
            max_outage: "0".into(),
            skip_migrations: false,
            history_retention: "0".into(),
        };
        Settings::validate(&raw, &|_| None).unwrap()
    }

    pub async fn pg(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.pg.conninfo(&self.db), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    pub async fn etcd(&self) -> EtcdClient {
        EtcdClient::connect([self.etcd.endpoint()], None)
            .await
            .unwrap()
    }
}

/// Records every PUT/DELETE under a prefix from a revision on.
pub struct WatchLogger {
    events: std::sync::Arc<std::sync::Mutex<Vec<(String, bool, i64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchLogger {
    pub async fn start(client: &EtcdClient, prefix: &str, from: i64) -> WatchLogger {
        let mut watch = client.watch_client();
        let mut stream = watch
            .watch(
                prefix,
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            )
            .await
            .unwrap();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for ev in resp.events() {
                    let kv = ev.kv().unwrap();
                    sink.lock().unwrap().push((
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        ev.event_type() == EventType::Put,
                        kv.mod_revision(),
                    ));
                }
            }
        });
        WatchLogger { events, task }
    }

    /// PUTs seen for `key`.
    pub fn puts(&self, key: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, put, _)| k == key && *put)
            .count()
    }

    pub fn all(&self) -> Vec<(String, bool, i64)> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for WatchLogger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 10 ms until it returns Some, or panics after `limit`.
pub async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn revision(client: &EtcdClient) -> i64 {
    client
        .kv_client()
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}
