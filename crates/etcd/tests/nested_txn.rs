//! PG→etcd batches really are one nested Txn on etcd 3.4 (spec §3.4 step 5):
//! a full 128-row claim commits at a single etcd revision, which single-row
//! fallback Txns could never do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{WatchLogger, World};
use pgtandem_etcd::applier::Applier;
use pgtandem_etcd::etcd_session::EtcdSession;
use pgtandem_etcd::{SchemaMode, Settings};
use pgtandem_testkit::Pg;

async fn head(etcd: &etcd_client::Client) -> i64 {
    let mut kv = etcd.kv_client();
    kv.get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

async fn drain(w: &World, settings: &Settings, batch: usize) {
    let session = EtcdSession::connect(&settings.etcd).await.unwrap();
    let mut applier = Applier::new(session.kv(), "/t/", SchemaMode::TwoTable, batch);
    let mut pg = w.pg().await;
    while applier.apply_once(&mut pg).await.unwrap() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_commit_at_one_revision_each() {
    let w = World::start(Pg::V15);
    let etcd = w.etcd().await;
    let mut pg = w.pg().await;
    pgtandem_etcd::schema::migrate(&mut pg, None, false)
        .await
        .unwrap();
    // One key already exists, so the batch mixes an update (mod_revision compare) with creates.
    let mut kv = etcd.kv_client();
    kv.put("/t/k1", "old", None).await.unwrap();
    let before = head(&etcd).await;
    let logger = WatchLogger::start(&etcd, "/t/", before + 1).await;
    pg.execute(
        "INSERT INTO etcd (key, value, revision) VALUES ('/t/k1', 'old', $1)",
        &[&before],
    )
    .await
    .unwrap();
    pg.batch_execute("SELECT etcd_set('/t/k' || g, 'v' || g) FROM generate_series(1, 256) g")
        .await
        .unwrap();
    let settings = w.settings("/t/", None);
    drain(&w, &settings, 128).await;

    let rows = pg
        .query(
            "SELECT status, count(*), count(DISTINCT revision) FROM etcd_wal GROUP BY status",
            &[],
        )
        .await
        .unwrap();
    let summary: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        summary,
        vec![("success".to_owned(), 256, 2)],
        "256 rows in two 128-row Txns: two revisions"
    );
    assert_eq!(head(&etcd).await, before + 2, "two etcd revisions in all");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(logger.all().len(), 256, "each row Put exactly once");
    let synced: i64 = pg
        .query_one(
            "SELECT count(*) FROM etcd e JOIN etcd_wal w ON w.key = e.key AND w.revision = e.revision",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(synced, 256, "every applied row is recorded in etcd history");
}
