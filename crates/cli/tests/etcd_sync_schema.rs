//! etcd-sync acceptance scenarios 19 (schema bootstrap), 20 (unrepresentable
//! data) and 21 (multi-instance), etcd-sync.md §5.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod etcd_harness;

use std::time::Instant;

use etcd_harness::*;

both_pg! {
    s19_schema_bootstrap => s19;
    s19_hand_made_single_table => s19_hand_made;
    s19_refusals_exit_1 => s19_refusals;
    s20_unrepresentable_data => s20;
    s21_multi_instance => s21;
}

const ALL_TWO_TABLE: [&str; 3] = ["001_create_tables", "002_sync_state", "004_two_table"];

/// Scenario 19: migrations recorded once, in order, even when two start at once.
async fn s19(v: Pg) {
    let env = Env::start(v).await;
    let pg = env.pg_client().await;
    let migrate = env.service().action(&["migrate"]);
    assert_eq!(migrate.run(SLOW).await.code, Some(0));
    assert_eq!(migrations(&pg).await, ALL_TWO_TABLE);
    let fingerprint = async || -> Vec<String> {
        pg.query(
            "SELECT c.relname || ':' || c.relkind::text || ':' || c.oid::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let before = fingerprint().await;
    assert_eq!(migrate.run(SLOW).await.code, Some(0));
    assert_eq!(
        fingerprint().await,
        before,
        "a second start changes nothing"
    );
    assert_eq!(migrations(&pg).await, ALL_TWO_TABLE);

    // Two simultaneous starts on a fresh database apply each migration once.
    let db = env.create_database("twice");
    let both = env.service_on(&db, PREFIX).action(&["migrate"]);
    let (a, b) = tokio::join!(both.run(SLOW), both.run(SLOW));
    assert_eq!((a.code, b.code), (Some(0), Some(0)));
    assert_eq!(
        migrations(&env.pg_client_for(&db).await).await,
        ALL_TWO_TABLE
    );
}

/// The reference's hand-made single-table schema with one pending row.
const HAND_MADE: &str = "CREATE TABLE etcd (\
     ts timestamptz NOT NULL DEFAULT now(), key text NOT NULL, value text, \
     revision bigint NOT NULL, tombstone boolean NOT NULL DEFAULT false, \
     CONSTRAINT etcd_pkey PRIMARY KEY (key, revision)); \
     CREATE INDEX idx_etcd_ts ON etcd (ts); \
     CREATE INDEX idx_etcd_pending ON etcd (key) WHERE revision = -1;";

/// Scenario 19: a hand-made reference DB stays single-table (WARN) unless
/// `--schema-mode two-table` is explicit, which moves the row to `etcd_wal`.
async fn s19_hand_made(v: Pg) {
    let env = Env::start(v).await;
    let mut etcd = env.etcd_client().await;
    let pg = env.pg_client().await;
    pg.batch_execute(HAND_MADE).await.unwrap();
    pg.execute(
        "INSERT INTO etcd(key, value, revision) VALUES ('/t/h', 'handmade', -1)",
        &[],
    )
    .await
    .unwrap();
    let svc = env.service().without("--schema-mode").spawn();
    svc.wait_ready().await;
    assert!(
        svc.log()
            .iter()
            .any(|l| l.contains("[WARN]") && l.contains("single-table")),
        "an existing single-table DB stays single-table with a WARN"
    );
    wait_until("etcd holds /t/h", SOON, async || {
        get(&mut etcd, "/t/h")
            .await
            .is_some_and(|(v, _)| v == "handmade")
    })
    .await;
    let applied = wait_applied(&pg, Mode::SingleTable, "/t/h").await;
    assert_eq!(applied.status, "success");
    let names = migrations(&pg).await;
    assert!(names.contains(&"001_create_tables".to_owned()), "{names:?}");
    assert!(!names.contains(&"004_two_table".to_owned()), "{names:?}");
    assert_eq!(
        scalar_i64(
            &pg,
            "SELECT count(*) FROM pg_class WHERE relname = 'etcd_wal'"
        )
        .await,
        0
    );
    svc.terminate().await;

    let db = env.create_database("converted");
    let pg2 = env.pg_client_for(&db).await;
    pg2.batch_execute(HAND_MADE).await.unwrap();
    pg2.execute(
        "INSERT INTO etcd(key, value, revision) VALUES ('/t/h2', 'moved', -1)",
        &[],
    )
    .await
    .unwrap();
    let svc = env.service_on(&db, PREFIX).mode(Mode::TwoTable).spawn();
    svc.wait_ready().await;
    let row = wait_wal_done(&pg2, "/t/h2").await;
    assert_eq!(row.status, "success");
    assert_eq!(
        get(&mut etcd, "/t/h2").await.map(|(v, _)| v),
        Some("moved".into())
    );
    assert_eq!(
        scalar_i64(&pg2, "SELECT count(*) FROM etcd WHERE revision = -1").await,
        0,
        "the pending row moved to etcd_wal"
    );
    assert!(migrations(&pg2).await.contains(&"004_two_table".to_owned()));
}

/// Scenario 19: exit 1 for a mode conflict, `--skip-migrations` on an empty DB,
/// and a foreign table (or a view) named `etcd`.
async fn s19_refusals(v: Pg) {
    let env = Env::start(v).await;
    assert_eq!(
        env.service().action(&["migrate"]).run(SLOW).await.code,
        Some(0)
    );
    let out = env.service().mode(Mode::SingleTable).run(SLOW).await;
    assert_eq!(out.code, Some(1), "single-table on a two-table DB");

    let empty = env.create_database("empty");
    let out = env
        .service_on(&empty, PREFIX)
        .flag("--skip-migrations")
        .run(SLOW)
        .await;
    assert_eq!(out.code, Some(1), "--skip-migrations on an empty DB");
    let pg = env.pg_client_for(&empty).await;
    assert_eq!(
        scalar_i64(
            &pg,
            "SELECT count(*) FROM pg_class WHERE relname IN ('etcd', 'etcd_wal')"
        )
        .await,
        0,
        "--skip-migrations runs no DDL"
    );

    let foreign = env.create_database("foreign");
    env.pg_client_for(&foreign)
        .await
        .batch_execute(
            "CREATE EXTENSION file_fdw; CREATE SERVER files FOREIGN DATA WRAPPER file_fdw; \
             CREATE FOREIGN TABLE etcd (ts timestamptz, key text, value text, revision bigint, \
             tombstone boolean) SERVER files OPTIONS (filename '/dev/null');",
        )
        .await
        .unwrap();
    let out = env.service_on(&foreign, PREFIX).run(SLOW).await;
    assert_eq!(out.code, Some(1), "a foreign table named etcd");

    let view = env.create_database("view");
    env.pg_client_for(&view)
        .await
        .batch_execute(
            "CREATE VIEW etcd AS SELECT now() AS ts, 'k'::text AS key, 'v'::text AS value, \
             1::bigint AS revision, false AS tombstone",
        )
        .await
        .unwrap();
    let out = env.service_on(&view, PREFIX).run(SLOW).await;
    assert_eq!(out.code, Some(1), "a view named etcd");
}

/// A `pg_etcd_rejects` row: key, value, revision, tombstone, reason.
type Reject = (Vec<u8>, Option<Vec<u8>>, i64, bool, String);

/// Scenario 20: events `text` cannot hold go to `pg_etcd_rejects`.
async fn s20(v: Pg) {
    let env = Env::start(v).await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;
    let errors_before = svc.count_log("[ERROR]");

    let r1 = put(&mut etcd, "/t/u1", vec![0xffu8, 0xfe]).await;
    let r2 = put(&mut etcd, "/t/u2", b"a\0b".to_vec()).await;
    let r3 = put(&mut etcd, b"/t/\xff".to_vec(), "v").await;
    let r4 = put(&mut etcd, "/t/ok", "fine").await;
    wait_until("/t/ok synced", SOON, async || {
        has_row(&pg, "/t/ok", r4).await
    })
    .await;

    assert_eq!(
        scalar_i64(&pg, "SELECT count(*) FROM etcd").await,
        1,
        "only the normal put has an etcd row"
    );
    let rejects: Vec<Reject> = pg
        .query(
            "SELECT key, value, revision, tombstone, reason FROM pg_etcd_rejects ORDER BY revision",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rejects,
        vec![
            (
                b"/t/u1".to_vec(),
                Some(vec![0xff, 0xfe]),
                r1,
                false,
                "value_not_utf8".into()
            ),
            (
                b"/t/u2".to_vec(),
                Some(b"a\0b".to_vec()),
                r2,
                false,
                "nul_byte".into()
            ),
            (
                b"/t/\xff".to_vec(),
                Some(b"v".to_vec()),
                r3,
                false,
                "key_not_utf8".into()
            ),
        ]
    );
    assert_eq!(
        svc.count_log("[ERROR]") - errors_before,
        3,
        "one ERROR line per reject"
    );
    let cp = checkpoint(&pg, PREFIX).await.unwrap();
    assert!(cp >= r4, "the checkpoint passes all four ({cp} < {r4})");
    let status = env.status().await;
    assert_eq!(status.json()["rejects"], 3);
    let validate = env.validate(&[]).await;
    assert_eq!(validate.code, Some(4));
    let json = validate.json();
    assert_eq!(json["ok"], false);
    let kinds: Vec<&str> = json["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"unrepresentable"), "{json}");
}

/// Scenario 21: one leader per prefix; exactly-once PUTs; takeover after SIGKILL.
async fn s21(v: Pg) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;
    let a = env.service().spawn();
    a.wait_ready().await;
    let b = env.pg_etcd().spawn();
    // The first "waiting" line comes at once; later ones every 30 s.
    b.wait_log("waiting for leader lock", SLOW).await;
    assert!(
        !b.has_log("Started etcd watch"),
        "B must not lead while A does"
    );

    pg.execute(
        "SELECT etcd_set('/t/m' || g, 'v') FROM generate_series(1, 1000) g",
        &[],
    )
    .await
    .unwrap();
    wait_until("1000 rows applied", SLOW, async || {
        wal_count(&pg, "success").await == 1000
    })
    .await;
    logger.sync(&mut etcd).await;
    assert_eq!(logger.under("/t/m").iter().filter(|e| e.put).count(), 1000);

    let killed = Instant::now();
    a.kill9();
    b.wait_ready().await;
    println!(
        "observed: takeover {:?} after SIGKILL of the leader",
        killed.elapsed()
    );
    let rev = put(&mut etcd, "/t/after", "b").await;
    wait_until("B syncs", SOON, async || {
        has_row(&pg, "/t/after", rev).await
    })
    .await;
    drop(b);

    // Different prefixes in one database are independent leaders.
    let one = env.service_on(&env.db, "/t1/").spawn();
    let two = env.service_on(&env.db, "/t2/").spawn();
    one.wait_ready().await;
    two.wait_ready().await;
    let r1 = put(&mut etcd, "/t1/a", "1").await;
    let r2 = put(&mut etcd, "/t2/a", "2").await;
    wait_until("both prefixes synced", SOON, async || {
        has_row(&pg, "/t1/a", r1).await && has_row(&pg, "/t2/a", r2).await
    })
    .await;
    assert!(!one.has_log("waiting for leader lock") && !two.has_log("waiting for leader lock"));
}
