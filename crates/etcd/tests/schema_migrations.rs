//! Migrations against real PostgreSQL 15 and 18 (spec §3.1 step 3, scenario 19).
#![allow(clippy::unwrap_used)]

mod common;

use common::World;
use pgtandem_etcd::schema::migrate;
use pgtandem_etcd::{SchemaMode, SyncError};
use pgtandem_testkit::Pg;

async fn recorded(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT version FROM pg_etcd_migrations ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn empty_db_then_idempotent(version: Pg) {
    let w = World::start(version);
    let mut c = w.pg().await;
    assert_eq!(
        migrate(&mut c, None, false).await.unwrap(),
        SchemaMode::TwoTable
    );
    assert_eq!(
        recorded(&c).await,
        ["001_create_tables", "002_sync_state", "004_two_table"]
    );
    assert_eq!(
        migrate(&mut c, None, false).await.unwrap(),
        SchemaMode::TwoTable
    );
    assert_eq!(recorded(&c).await.len(), 3, "second run changes nothing");
    // --skip-migrations on a migrated DB passes; single-table on it is refused.
    assert_eq!(
        migrate(&mut c, None, true).await.unwrap(),
        SchemaMode::TwoTable
    );
    assert!(matches!(
        migrate(&mut c, Some(SchemaMode::SingleTable), false).await,
        Err(SyncError::Config(_))
    ));
    // The SQL API works: etcd_set captures a base and queues the write.
    c.batch_execute("INSERT INTO etcd(key,value,revision) VALUES ('/t/a','v',5)")
        .await
        .unwrap();
    c.batch_execute("SELECT etcd_set('/t/a','w')")
        .await
        .unwrap();
    let row = c
        .query_one("SELECT base_revision, status FROM etcd_wal", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), Some(5));
    assert_eq!(row.get::<_, String>(1), "pending");
    // Two etcd_set calls on one key in one transaction do not collide.
    c.batch_execute("BEGIN; SELECT etcd_set('/t/b','1'); SELECT etcd_set('/t/b','2'); COMMIT;")
        .await
        .unwrap();
}

#[tokio::test]
async fn migrations_on_empty_db_are_recorded_once_pg15() {
    empty_db_then_idempotent(Pg::V15).await;
}

#[tokio::test]
async fn migrations_on_empty_db_are_recorded_once_pg18() {
    empty_db_then_idempotent(Pg::V18).await;
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let w = World::start(Pg::V15);
    let mut a = w.pg().await;
    let mut b = w.pg().await;
    let (ra, rb) = tokio::join!(migrate(&mut a, None, false), migrate(&mut b, None, false));
    assert_eq!(ra.unwrap(), SchemaMode::TwoTable);
    assert_eq!(rb.unwrap(), SchemaMode::TwoTable);
    assert_eq!(
        recorded(&a).await,
        ["001_create_tables", "002_sync_state", "004_two_table"]
    );
}

#[tokio::test]
async fn skip_migrations_on_empty_db_is_a_config_error() {
    let w = World::start(Pg::V15);
    let mut c = w.pg().await;
    let err = migrate(&mut c, None, true).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Config(ref m) if m.contains("001_create_tables")),
        "{err}"
    );
}

#[tokio::test]
async fn hand_made_single_table_is_adopted_then_converted() {
    let w = World::start(Pg::V15);
    let mut c = w.pg().await;
    c.batch_execute(
        "CREATE TABLE etcd (ts timestamptz NOT NULL DEFAULT now(), key text NOT NULL, value text, \
         revision bigint NOT NULL, tombstone boolean NOT NULL DEFAULT false, PRIMARY KEY (key, revision)); \
         INSERT INTO etcd(key,value,revision,ts) VALUES ('/t/p','old',3, now() - interval '1 min'); \
         INSERT INTO etcd(key,value,revision) VALUES ('/t/p','pending',-1);",
    )
    .await
    .unwrap();
    assert_eq!(
        migrate(&mut c, None, false).await.unwrap(),
        SchemaMode::SingleTable
    );
    assert_eq!(
        recorded(&c).await,
        [
            "001_create_tables",
            "002_sync_state",
            "003_single_table_notify"
        ]
    );
    // Coalescing etcd_put: a second call updates the pending row instead of failing.
    c.batch_execute("SELECT etcd_put('/t/q','1'); SELECT etcd_put('/t/q','2');")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM etcd WHERE key='/t/q'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // An explicit two-table moves the pending rows into the queue with their base.
    assert_eq!(
        migrate(&mut c, Some(SchemaMode::TwoTable), false)
            .await
            .unwrap(),
        SchemaMode::TwoTable
    );
    let rows = c
        .query(
            "SELECT key, value, base_revision FROM etcd_wal ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), "/t/p");
    assert_eq!(rows[0].get::<_, Option<i64>>(2), Some(3));
    let pending: i64 = c
        .query_one("SELECT count(*) FROM etcd WHERE revision=-1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn foreign_or_mistyped_etcd_relation_is_refused() {
    let w = World::start(Pg::V15);
    let mut c = w.pg().await;
    c.batch_execute("CREATE VIEW etcd AS SELECT now() AS ts, 'k'::text AS key")
        .await
        .unwrap();
    assert!(matches!(
        migrate(&mut c, None, false).await,
        Err(SyncError::Config(_))
    ));
}
