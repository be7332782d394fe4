//! etcd-sync acceptance scenarios 1–7 (etcd-sync.md §5), plus their
//! single-table reruns of scenario 25 (1–3, 5, 6), against the real binary,
//! real etcd 3.4 and real PostgreSQL 15 and 18.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod etcd_harness;

use etcd_harness::*;

both_pg! {
    s01_etcd_to_pg_put => s01;
    s02_history => s02;
    s03_etcd_to_pg_delete => s03;
    s04_prefix_scoping => s04;
    s05_pg_to_etcd_put => s05;
    s06_pg_to_etcd_delete => s06;
    s07_direct_inserts => s07;
    s25_single_table_etcd_to_pg_put => s25_put;
    s25_single_table_history => s25_history;
    s25_single_table_etcd_to_pg_delete => s25_delete;
    s25_single_table_pg_to_etcd_put => s25_pg_put;
    s25_single_table_pg_to_etcd_delete => s25_pg_delete;
}

async fn s01(v: Pg) {
    etcd_put(v, Mode::TwoTable).await
}
async fn s02(v: Pg) {
    history(v, Mode::TwoTable).await
}
async fn s03(v: Pg) {
    etcd_delete(v, Mode::TwoTable).await
}
async fn s05(v: Pg) {
    pg_put(v, Mode::TwoTable).await
}
async fn s06(v: Pg) {
    pg_delete(v, Mode::TwoTable).await
}
async fn s25_put(v: Pg) {
    etcd_put(v, Mode::SingleTable).await
}
async fn s25_history(v: Pg) {
    history(v, Mode::SingleTable).await
}
async fn s25_delete(v: Pg) {
    etcd_delete(v, Mode::SingleTable).await
}
async fn s25_pg_put(v: Pg) {
    pg_put(v, Mode::SingleTable).await
}
async fn s25_pg_delete(v: Pg) {
    pg_delete(v, Mode::SingleTable).await
}

/// Scenario 1: one etcd put becomes exactly one row at its mod_revision.
async fn etcd_put(v: Pg, mode: Mode) {
    let env = Env::start(v).await;
    let svc = env.service().mode(mode).spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    let rev = put(&mut etcd, "/t/a", "v1").await;
    let took = wait_until("a row for /t/a", SOON, async || {
        !etcd_rows(&pg, "/t/a").await.is_empty()
    })
    .await;
    println!("observed: etcd→PG put visible after {took:?}");
    assert_eq!(
        etcd_rows(&pg, "/t/a").await,
        vec![EtcdRow::new("/t/a", Some("v1"), rev, false)]
    );
    let got = pg
        .query_one(
            "SELECT key, value, revision, tombstone FROM etcd_get('/t/a')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            got.get::<_, String>(0),
            got.get::<_, Option<String>>(1),
            got.get::<_, i64>(2),
            got.get::<_, bool>(3)
        ),
        ("/t/a".to_owned(), Some("v1".to_owned()), rev, false)
    );
    let cp = checkpoint(&pg, PREFIX)
        .await
        .expect("pg_etcd_state row for /t/");
    assert!(cp >= rev, "checkpoint {cp} must be >= {rev}");
}

/// Scenario 2: three puts keep three rows at etcd's exact revisions.
async fn history(v: Pg, mode: Mode) {
    let env = Env::start(v).await;
    let svc = env.service().mode(mode).spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    let mut revs = Vec::new();
    for value in ["one", "two", "three"] {
        revs.push(put(&mut etcd, "/t/a", value).await);
    }
    wait_until("3 rows for /t/a", SOON, async || {
        etcd_rows(&pg, "/t/a").await.len() == 3
    })
    .await;
    assert_eq!(
        etcd_rows(&pg, "/t/a").await,
        vec![
            EtcdRow::new("/t/a", Some("one"), revs[0], false),
            EtcdRow::new("/t/a", Some("two"), revs[1], false),
            EtcdRow::new("/t/a", Some("three"), revs[2], false),
        ]
    );
    let newer: Vec<i64> = pg
        .query("SELECT revision FROM etcd_get_all('/t/a', $1)", &[&revs[0]])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        newer,
        vec![revs[1], revs[2]],
        "etcd_get_all ascending, > r1"
    );
}

/// Scenario 3: an etcd delete becomes a tombstone at the delete revision.
async fn etcd_delete(v: Pg, mode: Mode) {
    let env = Env::start(v).await;
    let svc = env.service().mode(mode).spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    let put_rev = put(&mut etcd, "/t/a", "v1").await;
    let del_rev = del(&mut etcd, "/t/a").await;
    wait_until("the tombstone of /t/a", SOON, async || {
        has_row(&pg, "/t/a", del_rev).await
    })
    .await;
    assert_eq!(
        etcd_rows(&pg, "/t/a").await,
        vec![
            EtcdRow::new("/t/a", Some("v1"), put_rev, false),
            EtcdRow::new("/t/a", mode.tombstone_value(), del_rev, true),
        ]
    );
    let latest = pg
        .query_one("SELECT revision, tombstone FROM etcd_get('/t/a')", &[])
        .await
        .unwrap();
    assert_eq!(
        (latest.get::<_, i64>(0), latest.get::<_, bool>(1)),
        (del_rev, true)
    );
}

/// Scenario 4: only in-prefix keys get rows; `starts_with`, never `LIKE`.
async fn s04(v: Pg) {
    let env = Env::start(v).await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;
    put(&mut etcd, "/other/x", "o").await;
    put(&mut etcd, "/tx", "o").await;
    let in_rev = put(&mut etcd, "/t/in", "i").await;

    let svc = env.service().spawn();
    svc.wait_ready().await;
    put(&mut etcd, "/other/y", "o").await;
    let live_rev = put(&mut etcd, "/t/live", "l").await;
    wait_until("/t/live in PG", SOON, async || {
        has_row(&pg, "/t/live", live_rev).await
    })
    .await;
    let keys: Vec<(String, i64)> = pg
        .query("SELECT key, revision FROM etcd ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("/t/in".to_owned(), in_rev),
            ("/t/live".to_owned(), live_rev)
        ]
    );
    let status = env.status().await;
    let json = status.json();
    assert_eq!(
        json["etcd"]["keys_in_prefix"].as_i64(),
        Some(count_prefix(&mut etcd, "/t/").await),
        "status.keys_in_prefix = etcdctl get --prefix --count-only"
    );
    assert_eq!(json["prefix"], "/t/");
    svc.terminate().await;

    // `_` is a LIKE wildcard: /aXb/ must not match the prefix /a_b/.
    let db = env.create_database("underscore");
    let pg2 = env.pg_client_for(&db).await;
    put(&mut etcd, "/aXb/k", "wrong").await;
    let a_rev = put(&mut etcd, "/a_b/k", "right").await;
    let svc = env.service_on(&db, "/a_b/").spawn();
    svc.wait_ready().await;
    put(&mut etcd, "/aXb/k2", "wrong").await;
    let a_live = put(&mut etcd, "/a_b/live", "right").await;
    wait_until("/a_b/live in PG", SOON, async || {
        has_row(&pg2, "/a_b/live", a_live).await
    })
    .await;
    let keys: Vec<(String, i64)> = pg2
        .query("SELECT key, revision FROM etcd ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("/a_b/k".to_owned(), a_rev),
            ("/a_b/live".to_owned(), a_live)
        ]
    );
    let status = env
        .service_on(&db, "/a_b/")
        .action(&["status"])
        .opt("--connect-timeout", "3s")
        .run(SLOW)
        .await;
    assert_eq!(
        status.json()["etcd"]["keys_in_prefix"].as_i64(),
        Some(count_prefix(&mut etcd, "/a_b/").await)
    );
}

/// Scenario 5: a PG-side put reaches etcd through NOTIFY (30 s polling), once.
async fn pg_put(v: Pg, mode: Mode) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let svc = env
        .service()
        .mode(mode)
        .opt("--polling-interval", "30s")
        .spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    // Single-table mode has no etcd_set (§2.6): it uses etcd_put only.
    let calls: &[(&str, &str)] = match mode {
        Mode::TwoTable => &[("etcd_set", "/t/b"), ("etcd_put", "/t/b2")],
        Mode::SingleTable => &[("etcd_put", "/t/b")],
    };
    for (func, key) in calls {
        pg.execute(&format!("SELECT {func}($1, 'pg')"), &[key])
            .await
            .unwrap();
        // Well under the 30 s poll: only NOTIFY can be this quick.
        let took = wait_until(&format!("{func}: etcd holds {key}"), SOON, async || {
            get(&mut etcd, key).await.is_some_and(|(v, _)| v == "pg")
        })
        .await;
        println!("observed: {func} PG→etcd after {took:?}");
        let (_, mod_rev) = get(&mut etcd, key).await.unwrap();
        let applied = wait_applied(&pg, mode, key).await;
        assert_eq!(
            applied,
            Applied {
                status: "success".into(),
                revision: Some(mod_rev)
            }
        );
        wait_until("the synced row", SOON, async || {
            has_row(&pg, key, mod_rev).await
        })
        .await;
        let rows = etcd_rows(&pg, key).await;
        assert_eq!(rows, vec![EtcdRow::new(key, Some("pg"), mod_rev, false)]);
        logger.sync(&mut etcd).await;
        let puts = logger.puts_for(key);
        assert_eq!(puts.len(), 1, "exactly one PUT for {key}: {puts:?}");
        assert_eq!(puts[0].mod_revision, mod_rev);
    }
}

/// Scenario 6: a PG-side delete; deleting an absent key is a no-op.
async fn pg_delete(v: Pg, mode: Mode) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let svc = env
        .service()
        .mode(mode)
        .opt("--polling-interval", "30s")
        .spawn();
    svc.wait_ready().await;
    let pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    pg_write(&pg, mode, "/t/b", Some("pg")).await;
    assert_eq!(wait_applied(&pg, mode, "/t/b").await.status, "success");
    pg_write(&pg, mode, "/t/b", None).await;
    let took = wait_until("/t/b gone from etcd", SOON, async || {
        get(&mut etcd, "/t/b").await.is_none()
    })
    .await;
    println!("observed: PG→etcd delete after {took:?}");
    logger.sync(&mut etcd).await;
    let events = logger.for_key("/t/b");
    assert_eq!(events.len(), 2, "one PUT and one DELETE: {events:?}");
    assert!(!events[1].put);
    let del_rev = events[1].mod_revision;
    if mode == Mode::TwoTable {
        let applied = wait_applied(&pg, mode, "/t/b").await;
        assert_eq!(
            applied,
            Applied {
                status: "success".into(),
                revision: Some(del_rev)
            }
        );
    } else {
        wait_applied(&pg, mode, "/t/b").await;
    }
    wait_until("the tombstone of /t/b", SOON, async || {
        has_row(&pg, "/t/b", del_rev).await
    })
    .await;
    let last = etcd_rows(&pg, "/t/b").await.pop().unwrap();
    assert_eq!(
        last,
        EtcdRow::new("/t/b", mode.tombstone_value(), del_rev, true)
    );

    pg_write(&pg, mode, "/t/never", None).await;
    let applied = wait_applied(&pg, mode, "/t/never").await;
    if mode == Mode::TwoTable {
        assert_eq!(applied.status, "noop");
    }
    logger.sync(&mut etcd).await;
    assert!(
        logger.for_key("/t/never").is_empty(),
        "deleting an absent key must not reach etcd"
    );
}

/// Scenario 7: direct inserts and two writes to one key in one transaction.
async fn s07(v: Pg) {
    let env = Env::start(v).await;
    let logger = env.logger().await;
    let svc = env.service().opt("--polling-interval", "30s").spawn();
    svc.wait_ready().await;
    let mut pg = env.pg_client().await;
    let mut etcd = env.etcd_client().await;

    pg.execute(
        "INSERT INTO etcd_wal(key, value) VALUES ('/t/w', 'direct')",
        &[],
    )
    .await
    .unwrap();
    wait_until("etcd holds /t/w", SOON, async || {
        get(&mut etcd, "/t/w")
            .await
            .is_some_and(|(v, _)| v == "direct")
    })
    .await;
    let (_, rev) = get(&mut etcd, "/t/w").await.unwrap();
    let row = wait_wal_done(&pg, "/t/w").await;
    assert_eq!((row.status.as_str(), row.revision), ("success", Some(rev)));
    assert!(row.base_revision.is_none(), "unknown key: NULL base");

    let tx = pg.transaction().await.unwrap();
    tx.execute("SELECT etcd_set('/t/two', '1')", &[])
        .await
        .unwrap();
    tx.execute("SELECT etcd_set('/t/two', '2')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_until("both /t/two rows applied", SOON, async || {
        let rows = wal_rows(&pg, "/t/two").await;
        rows.len() == 2 && rows.iter().all(|r| r.status != "pending")
    })
    .await;
    let rows = wal_rows(&pg, "/t/two").await;
    assert!(rows.iter().all(|r| r.status == "success"), "{rows:?}");
    logger.sync(&mut etcd).await;
    let puts: Vec<(String, i64)> = logger
        .puts_for("/t/two")
        .iter()
        .map(|e| (e.value_str(), e.mod_revision))
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!((puts[0].0.as_str(), puts[1].0.as_str()), ("1", "2"));
    assert!(puts[0].1 < puts[1].1, "PUTs in queue order");
    assert_eq!(rows[0].revision, Some(puts[0].1));
    assert_eq!(rows[1].revision, Some(puts[1].1));
    svc.terminate().await;

    // Single-table mode on a fresh database.
    let db = env.create_database("single");
    let pg1 = env.pg_client_for(&db).await;
    let svc = env
        .service_on(&db, PREFIX)
        .mode(Mode::SingleTable)
        .opt("--polling-interval", "30s")
        .spawn();
    svc.wait_ready().await;
    pg1.execute(
        "INSERT INTO etcd(key, value, revision) VALUES ('/t/c', 'x', -1)",
        &[],
    )
    .await
    .unwrap();
    wait_until("etcd holds /t/c", SOON, async || {
        get(&mut etcd, "/t/c").await.is_some_and(|(v, _)| v == "x")
    })
    .await;
    let (_, c_rev) = get(&mut etcd, "/t/c").await.unwrap();
    wait_until("/t/c synced in PG", SOON, async || {
        etcd_rows(&pg1, "/t/c").await == vec![EtcdRow::new("/t/c", Some("x"), c_rev, false)]
    })
    .await;

    let mut pg1 = pg1;
    let tx = pg1.transaction().await.unwrap();
    tx.execute("SELECT etcd_put('/t/d', '1')", &[])
        .await
        .unwrap();
    tx.execute("SELECT etcd_put('/t/d', '2')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_until("etcd holds /t/d", SOON, async || {
        get(&mut etcd, "/t/d").await.is_some_and(|(v, _)| v == "2")
    })
    .await;
    wait_applied(&pg1, Mode::SingleTable, "/t/d").await;
    logger.sync(&mut etcd).await;
    let puts = logger.puts_for("/t/d");
    assert_eq!(puts.len(), 1, "two etcd_put calls coalesce: {puts:?}");
    assert_eq!(puts[0].value_str(), "2");
    assert_eq!(logger.puts_for("/t/c").len(), 1);
}
