//! The engine end to end (library level) against real etcd 3.4 and
//! PostgreSQL: resync, watch ingest, queue applier, conflicts, echo safety,
//! status, validate and compaction recovery.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{WatchLogger, World, revision, within};
use pgtandem_etcd::applier::Applier;
use pgtandem_etcd::etcd_session::EtcdSession;
use pgtandem_etcd::{ExitCode, SchemaMode, service, status, validate};
use pgtandem_testkit::Pg;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ExitCode>,
}

fn spawn_service(w: &World, prefix: &str) -> Running {
    let settings = w.settings(prefix, None);
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        service::run(&settings, async {
            let _ = rx.await;
        })
        .await
    });
    Running { stop, task }
}

impl Running {
    async fn shutdown(self) -> ExitCode {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

async fn row(pg: &tokio_postgres::Client, key: &str, rev: i64) -> Option<(Option<String>, bool)> {
    pg.query_opt(
        "SELECT value, tombstone FROM etcd WHERE key=$1 AND revision=$2",
        &[&key, &rev],
    )
    .await
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1)))
}

async fn full_round_trip(version: Pg) {
    let w = World::start(version);
    let mut etcd = w.etcd().await;
    let pre = etcd
        .put("/t/pre", "p", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.put("/other/x", "o", None).await.unwrap();
    etcd.put("/tx", "o", None).await.unwrap();
    let logger = WatchLogger::start(&etcd, "/t/", revision(&etcd).await + 1).await;
    let svc = spawn_service(&w, "/t/");
    let pg = w.pg().await;

    // Startup resync: exact mod_revision, prefix-scoped.
    within(WAIT, "resync of /t/pre", || async {
        row(&pg, "/t/pre", pre).await
    })
    .await;
    let outside: i64 = pg
        .query_one(
            "SELECT count(*) FROM etcd WHERE NOT starts_with(key,'/t/')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outside, 0);

    // etcd→PG: history of puts, then a delete.
    let mut revs = Vec::new();
    for v in ["v1", "v2", "v3"] {
        revs.push(
            etcd.put("/t/a", v, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision(),
        );
    }
    let del = etcd
        .delete("/t/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    within(WAIT, "tombstone of /t/a", || async {
        row(&pg, "/t/a", del).await
    })
    .await;
    let history = pg
        .query(
            "SELECT revision, value, tombstone FROM etcd_get_all('/t/a', 0)",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<i64> = history.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, [revs[0], revs[1], revs[2], del]);
    assert_eq!(
        history[3].get::<_, Option<String>>(1),
        None,
        "two-table tombstone holds NULL"
    );
    let from_r1 = pg
        .query("SELECT * FROM etcd_get_all('/t/a', $1)", &[&revs[0]])
        .await
        .unwrap();
    assert_eq!(from_r1.len(), 3);
    let cp: i64 = pg
        .query_one("SELECT revision FROM pg_etcd_state WHERE prefix='/t/'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(cp >= del);

    // PG→etcd: applied once, recorded with etcd's revision, exactly one PUT.
    pg.batch_execute("SELECT etcd_set('/t/b','pg')")
        .await
        .unwrap();
    let applied: i64 = within(WAIT, "etcd_set applied", || async {
        pg.query_opt(
            "SELECT revision FROM etcd_wal WHERE key='/t/b' AND status='success'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
    })
    .await;
    let got = etcd.get("/t/b", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"pg");
    assert_eq!(got.kvs()[0].mod_revision(), applied);
    assert_eq!(
        row(&pg, "/t/b", applied).await,
        Some((Some("pg".into()), false))
    );
    pg.batch_execute("SELECT etcd_delete('/t/never')")
        .await
        .unwrap();
    within(WAIT, "noop delete", || async {
        pg.query_opt(
            "SELECT 1 FROM etcd_wal WHERE key='/t/never' AND status='noop'",
            &[],
        )
        .await
        .unwrap()
    })
    .await;

    // Conflict: etcd wins atomically.
    let r = etcd
        .put("/t/k", "v0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    within(WAIT, "/t/k synced", || async { row(&pg, "/t/k", r).await }).await;
    let mut writer = w.pg().await;
    let tx = writer.transaction().await.unwrap();
    tx.batch_execute("SELECT etcd_set('/t/k','pgval')")
        .await
        .unwrap();
    let r2 = etcd
        .put("/t/k", "etcdval", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    tx.commit().await.unwrap();
    let msg: String = within(WAIT, "conflict recorded", || async {
        pg.query_opt("SELECT error_message FROM etcd_wal WHERE key='/t/k' AND status='conflict' AND revision=-1", &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    assert_eq!(msg, format!("etcd has newer revision {r2} > {r}"));
    let now = etcd.get("/t/k", None).await.unwrap();
    assert_eq!(now.kvs()[0].value(), b"etcdval");
    assert_eq!(now.kvs()[0].mod_revision(), r2);

    // Unrepresentable value goes to rejects, the next put still syncs.
    etcd.put("/t/bin", vec![0xffu8, 0xfe], None).await.unwrap();
    let ok = etcd
        .put("/t/after", "fine", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    within(WAIT, "put after reject", || async {
        row(&pg, "/t/after", ok).await
    })
    .await;
    let rejects: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_etcd_rejects WHERE value = '\\xfffe'::bytea",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rejects, 1);

    // Echo safety: one PUT per PG-originated write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(logger.puts("/t/b"), 1, "{:?}", logger.all());
    assert_eq!(
        logger.puts("/t/k"),
        2,
        "v0 and etcdval only: {:?}",
        logger.all()
    );

    // status: leader held, one conflict, one reject.
    let settings = w.settings("/t/", None);
    let (report, code) = Box::pin(status::collect(&settings)).await;
    assert!(report.leader.held, "{report:?}");
    assert_eq!(report.queue.conflict, 1);
    assert_eq!(report.queue.failed, 0);
    assert_eq!(report.rejects, 1);
    assert_eq!(report.schema_version.as_deref(), Some("004_two_table"));
    assert_eq!(report.etcd.keys_in_prefix, Some(5), "{report:?}");
    assert_eq!(code, ExitCode::Success, "{report:?}");
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.starts_with("{\"prefix\":\"/t/\",\"schema_mode\":\"two-table\",\"schema_version\":\"004_two_table\",\"leader\":{\"held\":true"), "{json}");

    // validate: exact, with the reject reported as unrepresentable.
    let session = EtcdSession::connect(&settings.etcd).await.unwrap();
    let mut vpg = w.pg().await;
    let report = validate::compare(&mut vpg, &session, "/t/", 100)
        .await
        .unwrap();
    assert_eq!(report.mode, "exact");
    assert_eq!(report.counts.get("unrepresentable"), Some(&1), "{report:?}");
    assert_eq!(report.counts.len(), 1, "{report:?}");
    pg.batch_execute("UPDATE etcd SET value='x' WHERE key='/t/pre'")
        .await
        .unwrap();
    let report = validate::compare(&mut vpg, &session, "/t/", 100)
        .await
        .unwrap();
    assert_eq!(report.counts.get("value_mismatch"), Some(&1), "{report:?}");
    assert!(!report.ok);

    assert_eq!(svc.shutdown().await, ExitCode::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_pg15() {
    Box::pin(full_round_trip(Pg::V15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_pg18() {
    Box::pin(full_round_trip(Pg::V18)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliers_never_double_apply() {
    let w = World::start(Pg::V15);
    let etcd = w.etcd().await;
    let mut pg = w.pg().await;
    pgtandem_etcd::schema::migrate(&mut pg, None, false)
        .await
        .unwrap();
    let logger = WatchLogger::start(&etcd, "/t/", revision(&etcd).await + 1).await;
    pg.batch_execute("SELECT etcd_set('/t/k' || g, 'v' || g) FROM generate_series(1, 300) g")
        .await
        .unwrap();
    let settings = w.settings("/t/", None);
    let session = EtcdSession::connect(&settings.etcd).await.unwrap();
    let drain = |mut client: tokio_postgres::Client| {
        let mut applier = Applier::new(session.kv(), "/t/", SchemaMode::TwoTable, 32);
        async move { while applier.apply_once(&mut client).await.unwrap() {} }
    };
    let (a, b) = (w.pg().await, w.pg().await);
    tokio::join!(drain(a), drain(b));
    let ok: i64 = pg
        .query_one("SELECT count(*) FROM etcd_wal WHERE status='success'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 300);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(logger.all().len(), 300, "each row was Put exactly once");
    // Re-applying after a lost PG commit is idempotent: reset one row to pending.
    pg.batch_execute("UPDATE etcd_wal SET status='pending' WHERE key='/t/k7'")
        .await
        .unwrap();
    let mut applier = Applier::new(session.kv(), "/t/", SchemaMode::TwoTable, 32);
    let mut c = w.pg().await;
    while applier.apply_once(&mut c).await.unwrap() {}
    let st: String = pg
        .query_one("SELECT status FROM etcd_wal WHERE key='/t/k7'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "success");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(logger.all().len(), 300, "no second Put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_down_triggers_resync_with_tombstones() {
    let w = World::start(Pg::V15);
    let mut etcd = w.etcd().await;
    let gone = etcd
        .put("/t/gone", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let svc = spawn_service(&w, "/t/");
    let pg = w.pg().await;
    within(WAIT, "initial sync", || async {
        row(&pg, "/t/gone", gone).await
    })
    .await;
    assert_eq!(svc.shutdown().await, ExitCode::Success);

    etcd.delete("/t/gone", None).await.unwrap();
    for i in 0..20 {
        etcd.put(format!("/t/n{i}"), "v", None).await.unwrap();
    }
    let head = revision(&etcd).await;
    etcd.compact(
        head,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();

    let svc = spawn_service(&w, "/t/");
    let reason: String = within(WAIT, "compaction resync", || async {
        pg.query_opt("SELECT last_resync_reason FROM pg_etcd_state WHERE prefix='/t/' AND last_resync_reason='compacted'", &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    assert_eq!(reason, "compacted");
    let tomb: (i64, bool) = pg
        .query_one("SELECT revision, tombstone FROM etcd WHERE key='/t/gone' ORDER BY revision DESC LIMIT 1", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        tomb.1 && tomb.0 >= head,
        "vanished key tombstoned at R0: {tomb:?}"
    );
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM etcd WHERE starts_with(key,'/t/n')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    let settings = w.settings("/t/", None);
    let session = EtcdSession::connect(&settings.etcd).await.unwrap();
    let mut vpg = w.pg().await;
    let report = validate::compare(&mut vpg, &session, "/t/", 100)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(svc.shutdown().await, ExitCode::Success);
}
