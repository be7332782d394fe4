//! Replication connections against real PostgreSQL 15 and 18: system
//! identity, physical slots, logical slots with an exported snapshot, and
//! authentication.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{cluster, conninfo, eventually, logical_cluster, scalar, socket, tcp};
use pgtandem_core::error::ErrorKind;
use pgtandem_core::lsn::Lsn;
use pgtandem_pg::{Client, ReplicationConnection, ReplicationMode, SlotOptions, SnapshotAction};
use pgtandem_testkit::{Pg, PgCluster};

async fn slot_row(client: &Client, slot: &str) -> Option<String> {
    scalar(
        client,
        &format!(
            "SELECT slot_type || ',' || temporary || ',' || (restart_lsn IS NOT NULL) \
             FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
    .await
}

async fn physical(version: Pg) {
    let pg = cluster(version);
    let sql = pgtandem_pg::connect(&tcp(&pg, "postgres")).await.unwrap();

    // Over the Unix socket, named like pgclone's walsender.
    let params = pgtandem_pg::ConnParams::from_conninfo(&socket(&pg, "postgres"))
        .unwrap()
        .with_application_name("pgclone-4242");
    let mut repl = ReplicationConnection::connect_params(&params, ReplicationMode::Physical)
        .await
        .unwrap();

    let id = repl.identify_system().await.unwrap();
    let expected_id = scalar(&sql, "SELECT system_identifier FROM pg_control_system()")
        .await
        .unwrap();
    assert_eq!(id.system_id, expected_id);
    assert_eq!(id.timeline, 1);
    assert_eq!(id.dbname, None);
    let current =
        Lsn::from_str(&scalar(&sql, "SELECT pg_current_wal_lsn()").await.unwrap()).unwrap();
    assert!(
        id.xlogpos.is_valid() && id.xlogpos <= current,
        "{} > {}",
        id.xlogpos,
        current
    );

    let walsender = scalar(
        &sql,
        &format!(
            "SELECT application_name FROM pg_stat_activity WHERE pid = {}",
            repl.backend_pid().unwrap()
        ),
    )
    .await;
    assert_eq!(walsender.as_deref(), Some("pgclone-4242"));
    assert_eq!(repl.show("wal_segment_size").await.unwrap(), "16MB");
    assert_eq!(repl.server_version().await.unwrap().major, version.major());
    assert!(
        repl.parameter("server_version")
            .unwrap()
            .starts_with(&version.major().to_string())
    );

    // Timeline 1 has no history file; the server says so.
    let e = repl.timeline_history(1).await.unwrap_err();
    assert!(e.sqlstate().is_some(), "{e}");

    // Temporary slot with reserved WAL: visible while we are connected.
    repl.create_physical_slot(
        "pgclone_tmp",
        SlotOptions {
            temporary: true,
            reserve_wal: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        slot_row(&sql, "pgclone_tmp").await.as_deref(),
        Some("physical,true,true")
    );

    // A server error is verbatim, classified, and the connection survives it.
    let e = repl
        .create_physical_slot("pgclone_tmp", SlotOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42710"));
    assert_eq!(
        e.to_string(),
        "ERROR: replication slot \"pgclone_tmp\" already exists"
    );
    assert!(!e.is_retryable());
    assert_eq!(repl.identify_system().await.unwrap().system_id, expected_id);

    // Logical commands need a logical connection.
    let e = repl
        .create_logical_slot("x", "pgoutput", true, SnapshotAction::NoExport)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);

    // Persistent slot without reserved WAL, created and dropped.
    repl.create_physical_slot("keep_me", SlotOptions::default())
        .await
        .unwrap();
    assert_eq!(
        slot_row(&sql, "keep_me").await.as_deref(),
        Some("physical,false,false")
    );
    repl.drop_slot("keep_me", true).await.unwrap();
    assert_eq!(slot_row(&sql, "keep_me").await, None);
    let e = repl.drop_slot("keep_me", false).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"));
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Closing the connection releases the temporary slot.
    repl.close().await.unwrap();
    let gone = eventually(Duration::from_secs(10), || async {
        slot_row(&sql, "pgclone_tmp").await.is_none()
    })
    .await;
    assert!(gone, "temporary slot survived its connection");
}

#[tokio::test]
async fn physical_replication_pg15() {
    physical(Pg::V15).await;
}

#[tokio::test]
async fn physical_replication_pg18() {
    physical(Pg::V18).await;
}

/// Inserts rows one autocommit transaction at a time until told to stop.
fn spawn_inserter(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<BTreeSet<i64>> {
    tokio::spawn(async move {
        let insert = client
            .prepare("INSERT INTO s(v) VALUES ($1) RETURNING id")
            .await
            .unwrap();
        let mut committed = BTreeSet::new();
        let mut v = 0i32;
        while !stop.load(Ordering::Relaxed) {
            v += 1;
            let row = client.query_one(&insert, &[&v]).await.unwrap();
            committed.insert(row.get::<_, i64>(0));
        }
        committed
    })
}

async fn ids(client: &Client, sql: &str) -> BTreeSet<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

async fn count(client: &Client) -> usize {
    scalar(client, "SELECT count(*) FROM s")
        .await
        .unwrap()
        .parse()
        .unwrap()
}

/// The exported snapshot contains exactly the rows committed before the
/// slot's consistent point: every other row is decoded from the slot.
async fn exported_snapshot(version: Pg) {
    let pg = logical_cluster(version);
    let info = tcp(&pg, "postgres");
    let sql = pgtandem_pg::connect(&info).await.unwrap();
    sql.batch_execute("CREATE TABLE s(id bigserial PRIMARY KEY, v int)")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let inserter = spawn_inserter(pgtandem_pg::connect(&info).await.unwrap(), stop.clone());
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&sql).await >= 200
        })
        .await
    );

    let mut repl = ReplicationConnection::connect(&info, ReplicationMode::Logical)
        .await
        .unwrap();
    let id = repl.identify_system().await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some("postgres"));
    let slot = repl
        .create_logical_slot("snap_slot", "test_decoding", false, SnapshotAction::Export)
        .await
        .unwrap();
    assert_eq!(slot.slot_name, "snap_slot");
    assert_eq!(slot.output_plugin.as_deref(), Some("test_decoding"));
    assert!(slot.consistent_point.is_valid());
    let snapshot_name = slot.snapshot_name.clone().unwrap();

    // The replication connection stays idle while another session imports.
    let reader = pgtandem_pg::connect(&info).await.unwrap();
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            pgtandem_core::quoting::quote_literal(&snapshot_name)
        ))
        .await
        .unwrap();
    let in_snapshot = ids(&reader, "SELECT id FROM s").await;
    let snap_count: usize = scalar(&reader, "SELECT count(*) FROM s")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let snap_max: i64 = scalar(&reader, "SELECT max(id) FROM s")
        .await
        .unwrap()
        .parse()
        .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(snap_count, in_snapshot.len());
    assert_eq!(snap_max, *in_snapshot.last().unwrap());

    // Let the inserter commit well past the consistent point, then stop it.
    let target = count(&sql).await + 200;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&sql).await >= target
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);
    let committed = inserter.await.unwrap();
    repl.close().await.unwrap();

    let changes = sql
        .query(
            "SELECT data FROM pg_logical_slot_get_changes('snap_slot', NULL, NULL)",
            &[],
        )
        .await
        .unwrap();
    let decoded: BTreeSet<i64> = changes
        .iter()
        .filter_map(|r| {
            let line: String = r.get(0);
            let rest = line.strip_prefix("table public.s: INSERT: id[bigint]:")?;
            rest.split(' ').next()?.parse().ok()
        })
        .collect();
    let all = ids(&sql, "SELECT id FROM s").await;

    assert_eq!(committed, all, "the inserter's commits are the table");
    assert!(!in_snapshot.is_empty(), "no rows before the slot");
    assert!(!decoded.is_empty(), "no rows after the slot");
    assert!(
        in_snapshot.is_disjoint(&decoded),
        "a row is both in the snapshot and decoded"
    );
    let union: BTreeSet<i64> = in_snapshot.union(&decoded).copied().collect();
    assert_eq!(union, all, "snapshot ∪ decoded must be every row");

    sql.batch_execute("SELECT pg_drop_replication_slot('snap_slot')")
        .await
        .unwrap();

    // pgoutput with an exported snapshot, temporary: gone after close.
    let mut repl = ReplicationConnection::connect(&info, ReplicationMode::Logical)
        .await
        .unwrap();
    let slot = repl
        .create_logical_slot("pgout_tmp", "pgoutput", true, SnapshotAction::Export)
        .await
        .unwrap();
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));
    assert!(slot.snapshot_name.is_some());
    let no_export = repl
        .create_logical_slot("pgout_tmp2", "pgoutput", true, SnapshotAction::NoExport)
        .await
        .unwrap();
    assert_eq!(no_export.snapshot_name, None);
    assert!(no_export.consistent_point >= slot.consistent_point);
    repl.close().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            scalar(&sql, "SELECT count(*) FROM pg_replication_slots")
                .await
                .as_deref()
                == Some("0")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_snapshot_pg15() {
    exported_snapshot(Pg::V15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_snapshot_pg18() {
    exported_snapshot(Pg::V18).await;
}

fn password_cluster(version: Pg) -> PgCluster {
    PgCluster::builder(version)
        .fsync(false)
        .password("s3cret 'pw'")
        .start()
        .unwrap()
}

async fn scram(version: Pg) {
    let pg = password_cluster(version);
    let good = tcp(&pg, "postgres");

    let mut repl = ReplicationConnection::connect(&good, ReplicationMode::Physical)
        .await
        .unwrap();
    assert!(!repl.identify_system().await.unwrap().system_id.is_empty());
    repl.close().await.unwrap();
    let sql = pgtandem_pg::connect(&good).await.unwrap();
    assert_eq!(
        scalar(&sql, "SELECT auth_method FROM pg_hba_file_rules WHERE 'replication' = ANY(database) AND address = '127.0.0.1'")
            .await
            .as_deref(),
        Some("scram-sha-256")
    );

    let base = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port()
    );
    let wrong = conninfo(&format!("{base} password=wrong"));
    for mode in [ReplicationMode::Physical, ReplicationMode::Logical] {
        let e = ReplicationConnection::connect(&wrong, mode)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
        assert!(!e.is_retryable());
        assert_eq!(e.sqlstate(), Some("28P01"));
        assert!(
            e.to_string().contains("password authentication failed"),
            "{e}"
        );
    }
    let e = pgtandem_pg::connect(&wrong).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(!e.is_retryable());

    // No password anywhere: a client-side Auth error, not a hang.
    let none = conninfo(&format!("{base} passfile=/nonexistent/pgpass"));
    let e = ReplicationConnection::connect(&none, ReplicationMode::Physical)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");

    // .pgpass: physical connections look up the database "replication".
    let dir = tempfile_dir();
    let passfile = dir.join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:replication:postgres:s3cret 'pw'\n", pg.port()),
    )
    .unwrap();
    set_mode_600(&passfile);
    let via_pgpass = conninfo(&format!("{base} passfile={}", passfile.display()));
    let mut repl = ReplicationConnection::connect(&via_pgpass, ReplicationMode::Physical)
        .await
        .unwrap();
    assert!(repl.identify_system().await.is_ok());
    repl.close().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgt-pgpass-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn set_mode_600(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn scram_authentication_pg15() {
    scram(Pg::V15).await;
}

#[tokio::test]
async fn scram_authentication_pg18() {
    scram(Pg::V18).await;
}
