//! etcd-sync acceptance scenarios 10–14 (resync, restart, compaction, etcd and
//! PG outages), plus the single-table reruns of 11 and 14 (scenario 25).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod etcd_harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::CompactionOptions;
use etcd_harness::*;
use nix::sys::signal::Signal;

both_pg! {
    s10_startup_resync => s10;
    s11_restart_replays => s11;
    s12_compaction_resync => s12;
    s12_compaction_during_sigstop => s12_sigstop;
    s13_etcd_outage => s13;
    s13_max_outage_exits_4 => s13_max_outage;
    s14_pg_outage => s14;
    s25_single_table_restart => s25_restart;
    s25_single_table_pg_outage => s25_pg_outage;
}

/// Scenario 10: 10,000 keys copied at one revision, committed before live events.
async fn s10(v: Pg) {
    const KEYS: usize = 10_000;
    let env = Env::start(v).await;
    let pg = env.pg_client().await;
    let mut loaders = Vec::new();
    for task in 0..16 {
        let mut etcd = env.etcd_client().await;
        loaders.push(tokio::spawn(async move {
            for i in (task..KEYS).step_by(16) {
                put(&mut etcd, format!("/t/key{i:05}"), format!("value-{i}")).await;
            }
        }));
    }
    for l in loaders {
        l.await.unwrap();
    }
    let mut etcd = env.etcd_client().await;
    let svc = env.service().spawn();
    svc.wait_log("Copied 10000 keys from etcd to PostgreSQL", SLOW)
        .await;
    let took = svc.wait_ready().await;
    println!("observed: startup resync of {KEYS} keys ready after {took:?}");
    let live = put(&mut etcd, "/t/live", "after-start").await;
    wait_until("the live put", SOON, async || {
        has_row(&pg, "/t/live", live).await
    })
    .await;

    let (r0, reason) = last_resync(&pg, PREFIX).await;
    let r0 = r0.expect("last_resync_revision");
    assert_eq!(reason.as_deref(), Some("initial"));
    assert!(live > r0, "the live event comes after the snapshot R0={r0}");
    let snapshot = etcd_snapshot(&mut etcd, "/t/key").await;
    assert_eq!(snapshot.len(), KEYS);
    let keys: Vec<String> = snapshot.iter().map(|s| s.0.clone()).collect();
    let values: Vec<String> = snapshot.iter().map(|s| s.1.clone()).collect();
    let revs: Vec<i64> = snapshot.iter().map(|s| s.2).collect();
    let exact = scalar_count(
        &pg,
        "SELECT count(*) FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(k, v, r) \
         JOIN etcd e ON e.key = u.k AND e.value = u.v AND e.revision = u.r AND NOT e.tombstone",
        &keys,
        &values,
        &revs,
    )
    .await;
    assert_eq!(exact, KEYS as i64, "every key at its exact mod_revision");
    assert_eq!(
        scalar_i64(&pg, "SELECT count(*) FROM etcd WHERE key LIKE '/t/key%'").await,
        KEYS as i64
    );
    assert!(revs.iter().all(|r| *r <= r0));
}

async fn scalar_count(
    pg: &tokio_postgres::Client,
    sql: &str,
    a: &[String],
    b: &[String],
    c: &[i64],
) -> i64 {
    pg.query_one(sql, &[&a, &b, &c]).await.unwrap().get(0)
}

async fn s11(v: Pg) {
    restart(v, Mode::TwoTable).await
}
async fn s25_restart(v: Pg) {
    restart(v, Mode::SingleTable).await
}

/// Scenario 11: changes made while the service is down are replayed exactly.
async fn restart(v: Pg, mode: Mode) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;
    let svc = env.service().mode(mode).spawn();
    svc.wait_ready().await;
    let (resync_rev, _) = last_resync(&pg, PREFIX).await;
    svc.terminate().await;

    let mut put_revs = Vec::new();
    for i in 0..100 {
        put_revs.push(put(&mut etcd, format!("/t/p{i}"), format!("v{i}")).await);
    }
    let mut del_revs = Vec::new();
    for i in 0..20 {
        del_revs.push(del(&mut etcd, &format!("/t/p{i}")).await);
    }
    for i in 0..50 {
        pg_write(&pg, mode, &format!("/t/s{i}"), Some("from-pg")).await;
    }

    // The second run goes through the pg_etcd link.
    let svc = env.pg_etcd().mode(mode).spawn();
    svc.wait_ready().await;
    for i in 0..50 {
        let applied = wait_applied(&pg, mode, &format!("/t/s{i}")).await;
        assert_eq!(applied.status, "success", "/t/s{i}");
    }
    wait_until("all 100 puts and 20 deletes", SOON, async || {
        has_row(&pg, "/t/p99", put_revs[99]).await && has_row(&pg, "/t/p19", del_revs[19]).await
    })
    .await;
    for (i, rev) in put_revs.iter().enumerate() {
        assert!(has_row(&pg, &format!("/t/p{i}"), *rev).await, "/t/p{i}");
    }
    for (i, rev) in del_revs.iter().enumerate() {
        let last = etcd_rows(&pg, &format!("/t/p{i}")).await.pop().unwrap();
        assert_eq!(
            last,
            EtcdRow::new(&format!("/t/p{i}"), mode.tombstone_value(), *rev, true),
            "tombstone at the exact delete revision (replay, not resync)"
        );
    }
    assert_eq!(
        last_resync(&pg, PREFIX).await.0,
        resync_rev,
        "no resync on restart"
    );
    assert!(
        !svc.has_log("Copied "),
        "a restart replays, it does not resync"
    );
    logger.sync(&mut etcd).await;
    for i in 0..50 {
        assert_eq!(logger.puts_for(&format!("/t/s{i}")).len(), 1, "/t/s{i}");
    }

    // A SIGKILL during load still ends consistent.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let mut etcd = env.etcd_client().await;
        let pg = env.pg_client().await;
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                put(&mut etcd, format!("/t/load{}", n % 40), format!("e{n}")).await;
                pg_write(
                    &pg,
                    mode,
                    &format!("/t/pgload{}", n % 40),
                    Some(&format!("p{n}")),
                )
                .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    svc.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let svc = env.service().mode(mode).spawn();
    svc.wait_ready().await;
    wait_settled(&pg, &logger, &mut etcd, PREFIX, mode == Mode::TwoTable).await;
    let validate = env.validate(&[]).await;
    assert_eq!(validate.code, Some(0), "validate after SIGKILL under load");
}

/// Prepares scenario 12: 20 keys synced, then (while the service cannot see it)
/// 50 puts, 20 deletes of those keys, and a physical compaction at the head.
/// Returns the revision compacted at.
async fn changes_and_compaction(etcd: &mut etcd_client::Client) -> i64 {
    for i in 0..50 {
        put(etcd, format!("/t/new{i}"), format!("n{i}")).await;
    }
    for i in 0..20 {
        del(etcd, &format!("/t/v{i}")).await;
    }
    let head = head_revision(etcd).await;
    etcd.compact(head, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    head
}

/// Scenario 12: a compacted checkpoint forces exactly one resync.
async fn s12(v: Pg) {
    let env = Env::start(v).await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let mut vrevs = Vec::new();
    for i in 0..20 {
        vrevs.push(put(&mut etcd, format!("/t/v{i}"), "live").await);
    }
    wait_until("the 20 keys synced", SOON, async || {
        has_row(&pg, "/t/v19", vrevs[19]).await
    })
    .await;
    svc.terminate().await;

    let compacted = changes_and_compaction(&mut etcd).await;
    let svc = env.service().spawn();
    svc.wait_log("Copied ", SLOW).await;
    svc.wait_ready().await;
    let (r0, reason) = last_resync(&pg, PREFIX).await;
    let r0 = r0.unwrap();
    assert_eq!(reason.as_deref(), Some("compacted"));
    assert!(r0 >= compacted);
    for i in 0..20 {
        let last = etcd_rows(&pg, &format!("/t/v{i}")).await.pop().unwrap();
        assert_eq!(
            last,
            EtcdRow::new(&format!("/t/v{i}"), None, r0, true),
            "vanished key tombstoned at R0"
        );
    }
    for i in 0..50 {
        assert_eq!(etcd_rows(&pg, &format!("/t/new{i}")).await.len(), 1);
    }
    let validate = env.validate(&[]).await;
    assert_eq!(validate.code, Some(0));
    let status = env.status().await.json();
    assert_eq!(status["last_resync"]["reason"], "compacted");
    // No re-watch loop: a few seconds later still one resync, one watch start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(svc.count_log("Copied "), 1, "exactly one resync");
    assert_eq!(last_resync(&pg, PREFIX).await.0, Some(r0));
    let live = put(&mut etcd, "/t/after", "x").await;
    wait_until("live sync after the resync", SOON, async || {
        has_row(&pg, "/t/after", live).await
    })
    .await;
}

/// Scenario 12 with SIGSTOP/SIGCONT around the changes and the compaction.
/// Whether etcd cancels the stopped watcher (→ resync at R0) or had already
/// queued its events (→ replay at the exact revisions) is etcd's choice; either
/// way the data must end consistent, vanished keys tombstoned, with no loop.
async fn s12_sigstop(v: Pg) {
    let env = Env::start(v).await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let mut vrevs = Vec::new();
    for i in 0..20 {
        vrevs.push(put(&mut etcd, format!("/t/v{i}"), "live").await);
    }
    wait_until("the 20 keys synced", SOON, async || {
        has_row(&pg, "/t/v19", vrevs[19]).await
    })
    .await;
    svc.signal(Signal::SIGSTOP);
    changes_and_compaction(&mut etcd).await;
    svc.signal(Signal::SIGCONT);
    wait_until("vanished keys tombstoned", SLOW, async || {
        let mut all = true;
        for i in 0..20 {
            let last = etcd_rows(&pg, &format!("/t/v{i}")).await.pop().unwrap();
            all &= last.tombstone;
        }
        all
    })
    .await;
    wait_until("new keys synced", SLOW, async || {
        scalar_i64(
            &pg,
            "SELECT count(DISTINCT key) FROM etcd WHERE key LIKE '/t/new%'",
        )
        .await
            == 50
    })
    .await;
    let validate = env.validate(&[]).await;
    assert_eq!(validate.code, Some(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        svc.count_log("Copied ") <= 2,
        "at most the initial and one compaction resync"
    );
    assert!(svc.is_running());
}

/// Scenario 13: an etcd SIGKILL of 20 s; queue rows wait and then apply.
async fn s13(v: Pg) {
    let mut env = Env::start(v).await;
    let pg = env.pg_client().await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    let (resync_rev, _) = last_resync(&pg, PREFIX).await;

    blocking(|| env.etcd.kill9()).unwrap();
    let down = Instant::now();
    for i in 0..100 {
        pg.execute(
            "SELECT etcd_set($1, 'during-outage')",
            &[&format!("/t/o{i}")],
        )
        .await
        .unwrap();
    }
    while down.elapsed() < Duration::from_secs(20) {
        assert!(svc.is_running(), "the service must survive an etcd outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        wal_count(&pg, "failed").await,
        0,
        "transient errors keep rows pending"
    );
    blocking(|| env.etcd.restart()).unwrap();
    let took = wait_until("all 100 rows applied after recovery", SLOW, async || {
        wal_count(&pg, "success").await == 100
    })
    .await;
    println!("observed: queue drained {took:?} after etcd came back");
    let mut etcd = env.etcd_client().await;
    assert_eq!(count_prefix(&mut etcd, "/t/o").await, 100);
    assert_eq!(last_resync(&pg, PREFIX).await.0, resync_rev, "no resync");
    assert_eq!(svc.count_log("Copied "), 1);
    let live = put(&mut etcd, "/t/after", "x").await;
    wait_until("the watch resumed", SOON, async || {
        has_row(&pg, "/t/after", live).await
    })
    .await;
}

/// Scenario 13 with `--max-outage 5s`: exit 4 and `Synchronization failed`.
async fn s13_max_outage(v: Pg) {
    let mut env = Env::start(v).await;
    let svc = env.service().opt("--max-outage", "5s").spawn();
    svc.wait_ready().await;
    blocking(|| env.etcd.kill9()).unwrap();
    let code = svc.wait_exit(SLOW).await;
    assert_eq!(code, 4, "outage longer than --max-outage");
    svc.wait_log("Synchronization failed", SOON).await;
}

async fn s14(v: Pg) {
    pg_outage(v, Mode::TwoTable).await
}
async fn s25_pg_outage(v: Pg) {
    pg_outage(v, Mode::SingleTable).await
}

/// Scenario 14: PG restarts (fast, then immediate = crash) under 20 puts/s.
async fn pg_outage(v: Pg, mode: Mode) {
    let mut env = Env::start(v).await;
    let logger = env.logger().await;
    let mut etcd = env.etcd_client().await;
    let svc = env
        .service()
        .mode(mode)
        .opt("--polling-interval", "30s")
        .spawn();
    svc.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let mut etcd = env.etcd_client().await;
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                put(&mut etcd, format!("/t/w{n}"), "x").await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    blocking(|| env.pg.restart()).unwrap(); // pg_ctl restart -m fast
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking(|| {
        env.pg.kill9()?; // -m immediate
        env.pg.start()
    })
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let n = writer.await.unwrap();
    println!("observed: {n} etcd puts across two PG restarts");
    assert!(svc.is_running(), "the service survives PG restarts");

    let pg = env.pg_client().await;
    wait_settled(&pg, &logger, &mut etcd, PREFIX, mode == Mode::TwoTable).await;
    let events = logger.under("/t/w");
    assert_eq!(events.len(), n);
    assert!(
        missing_events(&pg, &events).await.is_empty(),
        "no revision gaps"
    );

    wait_until("the leader lock is held again", SLOW, async || {
        let out = env.status().await;
        out.stdout.contains("\"held\"") && out.json()["leader"]["held"] == true
    })
    .await;
    pg_write(&pg, mode, "/t/relisten", Some("pg")).await;
    // Well under the 30 s poll: only a re-LISTEN can be this quick.
    let took = wait_until("etcd holds /t/relisten", SOON, async || {
        get(&mut etcd, "/t/relisten").await.is_some()
    })
    .await;
    println!("observed: PG→etcd after the restarts in {took:?}");
}
