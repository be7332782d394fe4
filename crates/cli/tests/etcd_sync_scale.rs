//! etcd-sync acceptance scenarios 15 (bulk), 16 (idle latency: correctness
//! only, timings printed; the targets are the benchmark's job) and 26 (large
//! values), etcd-sync.md §5.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod etcd_harness;

use std::time::Instant;

use etcd_harness::*;
use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

both_pg! {
    s15_bulk => s15;
    s16_idle_latency => s16;
    s26_large_values => s26;
}

/// Scenario 15: 10,000 etcd puts from 32 clients; 10,000 `etcd_set` rows in 10 transactions.
async fn s15(v: Pg) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..32 {
        let mut etcd = env.etcd_client().await;
        tasks.push(tokio::spawn(async move {
            for i in (task..10_000).step_by(32) {
                put(&mut etcd, format!("/t/e{i:05}"), "bulk").await;
            }
        }));
    }
    for t in 0..10 {
        pg.execute(
            "SELECT etcd_set('/t/p' || lpad(g::text, 5, '0'), 'bulk') \
             FROM generate_series($1::int, $1::int + 999) g",
            &[&(t * 1000)],
        )
        .await
        .unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("10,000 etcd keys in PG", SLOW, async || {
        scalar_i64(&pg, "SELECT count(*) FROM etcd WHERE key LIKE '/t/e%'").await == 10_000
    })
    .await;
    wait_until("10,000 queue rows applied", SLOW, async || {
        wal_count(&pg, "success").await == 10_000
    })
    .await;
    println!("observed: both directions done after {:?}", start.elapsed());
    logger.sync(&mut etcd).await;
    let pg_puts = logger.under("/t/p").into_iter().filter(|e| e.put).count();
    assert_eq!(pg_puts, 10_000, "exactly one PUT per PG-side row");
    let e_events = logger.under("/t/e");
    assert!(missing_events(&pg, &e_events).await.is_empty());
    wait_settled(&pg, &logger, &mut etcd, PREFIX, true).await;
    assert_eq!(wal_count(&pg, "pending").await, 0);
}

/// Scenario 16: 100 idle samples each way with 1 s polling.
async fn s16(v: Pg) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    let mut to_pg = Vec::new();
    for i in 0..100 {
        let key = format!("/t/lat-e{i}");
        let start = Instant::now();
        let rev = put(&mut etcd, key.as_str(), "x").await;
        wait_until("etcd→PG sample", SOON, async || {
            has_row(&pg, &key, rev).await
        })
        .await;
        to_pg.push(start.elapsed());
    }
    let mut to_etcd = Vec::new();
    for i in 0..100 {
        let key = format!("/t/lat-p{i}");
        let start = Instant::now();
        pg.execute("SELECT etcd_set($1, 'x')", &[&key])
            .await
            .unwrap();
        let seen = wait_for("PG→etcd sample", SOON, async || {
            logger.puts_for(&key).first().map(|e| e.seen_at)
        })
        .await;
        to_etcd.push(seen.duration_since(start));
    }
    let (p50, p99, max) = percentiles(&mut to_pg);
    println!("observed: etcd→PG idle latency p50 {p50:?} p99 {p99:?} max {max:?}");
    let (p50, p99, max) = percentiles(&mut to_etcd);
    println!("observed: PG→etcd idle latency p50 {p50:?} p99 {p99:?} max {max:?}");
    logger.sync(&mut etcd).await;
    assert_eq!(logger.under("/t/lat-p").len(), 100);
}

/// Scenario 26: 100 KB through NOTIFY (`value_omitted`), a 1 MiB etcd put, and
/// a 2 MiB `etcd_set` that fails alone while the rest of its batch applies.
async fn s26(v: Pg) {
    let env = Env::start(v).await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let mut pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    // Our own listener sees the payload the service is woken with.
    let (listener, mut connection) =
        tokio_postgres::connect(&env.pg_dsn(&env.db), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = stream.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN etcd_changes").await.unwrap();

    let big = "x".repeat(100 * 1024);
    pg.execute("SELECT etcd_set('/t/100k', $1)", &[&big])
        .await
        .unwrap();
    let payload = tokio::time::timeout(SOON, notes.recv())
        .await
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(json["key"], "/t/100k");
    assert!(json["value"].is_null(), "{payload}");
    assert_eq!(json["value_omitted"], true);
    assert_eq!(json["operation"], "CREATE");
    let row = wait_wal_done(&pg, "/t/100k").await;
    assert_eq!(row.status, "success");
    assert_eq!(
        get(&mut etcd, "/t/100k").await.map(|(v, _)| v.len()),
        Some(big.len())
    );

    let mib = "y".repeat(1024 * 1024);
    let rev = put(&mut etcd, "/t/1m", mib.as_str()).await;
    wait_until("the 1 MiB value in PG", SOON, async || {
        has_row(&pg, "/t/1m", rev).await
    })
    .await;
    assert_eq!(
        etcd_rows(&pg, "/t/1m").await[0].value.as_deref(),
        Some(mib.as_str())
    );

    let huge = "z".repeat(2 * 1024 * 1024);
    let txn = pg.transaction().await.unwrap();
    txn.execute("SELECT etcd_set('/t/r1', 'small')", &[])
        .await
        .unwrap();
    txn.execute("SELECT etcd_set('/t/2m', $1)", &[&huge])
        .await
        .unwrap();
    txn.execute("SELECT etcd_set('/t/r2', 'small')", &[])
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let failed = wait_wal_done(&pg, "/t/2m").await;
    let error = failed.error_message.clone().unwrap_or_default();
    assert_eq!(
        (failed.status.as_str(), failed.revision),
        ("failed", Some(-1)),
        "{error}"
    );
    // etcd 3.4 refuses a 2 MiB request either in etcdserver ("request is too
    // large") or, past max-request-bytes + gRPC overhead, in its gRPC layer.
    assert!(
        error.contains("etcdserver: request is too large") || error.contains("larger than max"),
        "{error}"
    );
    for key in ["/t/r1", "/t/r2"] {
        assert_eq!(wait_wal_done(&pg, key).await.status, "success", "{key}");
        assert_eq!(
            get(&mut etcd, key).await.map(|(v, _)| v),
            Some("small".into())
        );
    }
    assert!(get(&mut etcd, "/t/2m").await.is_none());
}
