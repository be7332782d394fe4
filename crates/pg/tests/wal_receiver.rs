//! The native physical WAL receiver against real PostgreSQL 15 and 18: the
//! files it writes are the primary's own segments byte for byte, usable by
//! `pg_waldump`, marked `.done`; the server sees its flush position; a
//! temporary slot dies with it; a terminated walsender is a prompt error that
//! leaves a durable `.partial`.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use common::{cluster, eventually, scalar, tcp};
use pgtandem_core::error::ErrorKind;
use pgtandem_core::lsn::Lsn;
use pgtandem_pg::replication::{StreamMessage, TimelineSwitch};
use pgtandem_pg::{
    Client, PhysicalStream, ReplicationConnection, ReplicationMode, SlotOptions, WalReceiveError,
    WalReceiver, WalReceiverOptions,
};
use pgtandem_testkit::{Pg, PgCluster};
use tokio_util::sync::CancellationToken;

const SLOT: &str = "pgclone_4242";

async fn lsn(client: &Client, sql: &str) -> Lsn {
    Lsn::from_str(&scalar(client, sql).await.unwrap()).unwrap()
}

async fn current_lsn(client: &Client) -> Lsn {
    lsn(client, "SELECT pg_current_wal_lsn()").await
}

async fn system_id(client: &Client) -> String {
    scalar(client, "SELECT system_identifier FROM pg_control_system()")
        .await
        .unwrap()
}

/// Runs blocking test-kit calls (psql, pgbench) without stalling the
/// receiver task on the other worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// pgbench's schema plus three segment switches, then a little WAL so the
/// last segment is incomplete.
fn generate_wal(pg: &PgCluster) {
    pg.pgbench_init("postgres", 1).unwrap();
    for i in 0..3 {
        pg.psql(
            "postgres",
            &format!(
                "CREATE TABLE filler_{i} AS SELECT g FROM generate_series(1, 20000) g; \
                 SELECT pg_switch_wal();"
            ),
        )
        .unwrap();
    }
    pg.psql(
        "postgres",
        "CREATE TABLE tail AS SELECT g FROM generate_series(1, 5000) g",
    )
    .unwrap();
}

/// Checks the target dir holds every segment from `start` to `flushed`:
/// complete ones byte-identical to the primary's copy (where it still has
/// one) with `archive_status/<seg>.done`, and the `.partial` holding exactly
/// the primary's bytes up to `flushed`, zeros after. Returns how many
/// complete segments were compared with the primary.
fn verify_against_primary(
    target: &Path,
    primary_wal: &Path,
    timeline: u32,
    seg_size: u64,
    start: Lsn,
    flushed: Lsn,
) -> usize {
    let mut compared = 0;
    let mut segment = start;
    while segment.0 + seg_size <= flushed.0 {
        let name = segment.wal_file_name(timeline, seg_size);
        let ours = fs::read(target.join(&name))
            .unwrap_or_else(|e| panic!("segment {name} missing from the target: {e}"));
        assert_eq!(ours.len() as u64, seg_size, "{name}");
        assert!(
            target
                .join("archive_status")
                .join(format!("{name}.done"))
                .exists(),
            "{name}.done missing"
        );
        assert!(!target.join(format!("{name}.partial")).exists());
        if let Ok(theirs) = fs::read(primary_wal.join(&name)) {
            assert!(ours == theirs, "{name} differs from the primary's copy");
            compared += 1;
        }
        segment = segment + seg_size;
    }
    let partial_name = format!("{}.partial", flushed.wal_file_name(timeline, seg_size));
    let partial = target.join(&partial_name);
    let valid = flushed.saturating_sub(flushed.segment_start(seg_size)) as usize;
    if valid == 0 {
        assert!(!partial.exists(), "{partial_name} at a segment boundary");
        return compared;
    }
    let ours = fs::read(&partial).unwrap_or_else(|e| panic!("{partial_name} missing: {e}"));
    assert_eq!(
        ours.len() as u64,
        seg_size,
        "partial is zero-filled to full size"
    );
    assert!(
        ours[valid..].iter().all(|&b| b == 0),
        "bytes past the flush position"
    );
    let theirs = fs::read(primary_wal.join(partial_name.trim_end_matches(".partial"))).unwrap();
    assert!(
        ours[..valid] == theirs[..valid],
        "{partial_name} differs from the primary's segment before {flushed}"
    );
    compared
}

/// `pg_waldump --stats` over the received WAL; returns the record count.
fn waldump(pg: &PgCluster, dir: &Path, timeline: u32, start: Lsn, end: Lsn) -> u64 {
    let output = std::process::Command::new(pg.bin("pg_waldump"))
        .arg("--stats")
        .arg("-p")
        .arg(dir)
        .args(["-t", &timeline.to_string()])
        .args(["-s", &start.to_string(), "-e", &end.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pg_waldump failed: {stderr}\n{stdout}"
    );
    assert!(!stderr.contains("error"), "{stderr}");
    let total = stdout
        .lines()
        .find(|l| l.starts_with("Total"))
        .unwrap_or_else(|| panic!("no Total line in {stdout}"));
    total.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn replication_flush_lsn(client: &Client, pid: i32) -> Option<Lsn> {
    scalar(
        client,
        &format!("SELECT flush_lsn FROM pg_stat_replication WHERE pid = {pid}"),
    )
    .await
    .map(|s| Lsn::from_str(&s).unwrap())
}

fn target_dir() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let wal = base.path().join("pg_wal");
    (base, wal)
}

async fn with_temporary_slot(version: Pg) {
    let pg = cluster(version);
    let info = tcp(&pg, "postgres");
    let sql = pgtandem_pg::connect(&info).await.unwrap();

    let mut conn = ReplicationConnection::connect(&info, ReplicationMode::Physical)
        .await
        .unwrap();
    conn.create_physical_slot(
        SLOT,
        SlotOptions {
            temporary: true,
            reserve_wal: true,
        },
    )
    .await
    .unwrap();
    let slot = conn.read_replication_slot(SLOT).await.unwrap().unwrap();
    let restart = slot.restart_lsn.unwrap();
    assert_eq!(slot.restart_timeline, Some(1));
    assert_eq!(
        conn.read_replication_slot("no_such_slot").await.unwrap(),
        None
    );

    let (_base, dir) = target_dir();
    let mut options = WalReceiverOptions::new(&dir);
    options.slot = Some(SLOT.to_owned());
    options.expected_system_id = Some(system_id(&sql).await);
    let cancel = CancellationToken::new();
    let mut receiver = WalReceiver::start(conn, options, &cancel).await.unwrap();
    let seg_size = receiver.wal_segment_size();
    assert_eq!(seg_size, 16 << 20);
    assert_eq!(receiver.start_lsn(), restart.segment_start(seg_size));
    assert_eq!(receiver.timeline(), 1);

    blocking(|| generate_wal(&pg));
    let target = current_lsn(&sql).await;
    let flushed = tokio::time::timeout(Duration::from_secs(120), receiver.wait_flushed(target))
        .await
        .expect("WAL did not arrive in time")
        .unwrap();
    assert!(flushed >= target);
    assert!(*receiver.flushed().borrow() >= target);

    // The server learns our durable position from the status updates.
    let pid = receiver.backend_pid().unwrap();
    let acknowledged = eventually(Duration::from_secs(30), || async {
        replication_flush_lsn(&sql, pid)
            .await
            .is_some_and(|server_sees| server_sees >= flushed)
    })
    .await;
    assert!(
        acknowledged,
        "pg_stat_replication.flush_lsn never reached {flushed}"
    );
    // The slot follows the acknowledged position too.
    let slot_restart = lsn(
        &sql,
        &format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    )
    .await;
    assert!(slot_restart > restart, "slot restart_lsn did not advance");

    let received = receiver.stop().await.unwrap();
    assert!(received.flushed >= flushed);
    assert_eq!(received.start, restart.segment_start(seg_size));
    assert!(
        received.completed_segments >= 3,
        "only {} segments completed",
        received.completed_segments
    );
    let primary_wal = pg.data_dir().join("pg_wal");
    let compared = verify_against_primary(
        &dir,
        &primary_wal,
        1,
        seg_size,
        received.start,
        received.flushed,
    );
    assert!(compared >= 3, "only {compared} segments compared");

    // The temporary slot died with the receiver's connection.
    let gone = eventually(Duration::from_secs(10), || async {
        scalar(&sql, "SELECT count(*) FROM pg_replication_slots")
            .await
            .as_deref()
            == Some("0")
    })
    .await;
    assert!(gone, "temporary slot survived the receiver");

    // The clone's last step: the .partial gets its final name, and the
    // whole range parses.
    let partial = received.partial.clone().unwrap();
    let finished = received.finish_partial().unwrap().unwrap();
    assert!(!partial.exists());
    assert_eq!(
        finished.file_name().unwrap().to_str().unwrap(),
        received.flushed.wal_file_name(1, seg_size)
    );
    let records = waldump(&pg, &dir, 1, received.start, received.flushed);
    assert!(records > 1000, "only {records} WAL records parsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_temporary_slot_pg15() {
    with_temporary_slot(Pg::V15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_temporary_slot_pg18() {
    with_temporary_slot(Pg::V18).await;
}

async fn without_slot_then_terminated(version: Pg) {
    let pg = cluster(version);
    let info = tcp(&pg, "postgres");
    let sql = pgtandem_pg::connect(&info).await.unwrap();
    let cancel = CancellationToken::new();
    let (_base, dir) = target_dir();

    // Another cluster's system id is refused before streaming.
    let conn = ReplicationConnection::connect(&info, ReplicationMode::Physical)
        .await
        .unwrap();
    let mut options = WalReceiverOptions::new(&dir);
    options.expected_system_id = Some("1".into());
    let e = WalReceiver::start(conn, options, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(e, WalReceiveError::SystemIdMismatch { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Config);

    let conn = ReplicationConnection::connect(&info, ReplicationMode::Physical)
        .await
        .unwrap();
    let mut options = WalReceiverOptions::new(&dir);
    options.expected_system_id = Some(system_id(&sql).await);
    options.status_interval = Duration::from_secs(1);
    let before = current_lsn(&sql).await;
    let mut receiver = WalReceiver::start(conn, options, &cancel).await.unwrap();
    let seg_size = receiver.wal_segment_size();
    let start = receiver.start_lsn();
    assert_eq!(
        start,
        before.segment_start(seg_size),
        "starts at the server's position"
    );

    blocking(|| {
        pg.psql(
            "postgres",
            "CREATE TABLE a AS SELECT g FROM generate_series(1, 50000) g; \
             SELECT pg_switch_wal(); \
             CREATE TABLE b AS SELECT g FROM generate_series(1, 20000) g;",
        )
        .unwrap()
    });
    let target = current_lsn(&sql).await;
    tokio::time::timeout(Duration::from_secs(60), receiver.wait_flushed(target))
        .await
        .expect("WAL did not arrive in time")
        .unwrap();
    let pid = receiver.backend_pid().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            replication_flush_lsn(&sql, pid)
                .await
                .is_some_and(|l| l >= target)
        })
        .await
    );

    let terminated = scalar(
        &sql,
        "SELECT bool_and(pg_terminate_backend(pid)) FROM pg_stat_replication",
    )
    .await;
    assert_eq!(terminated.as_deref(), Some("t"));
    let e = tokio::time::timeout(Duration::from_secs(30), receiver.wait())
        .await
        .expect("no error within 30 s of the walsender's death")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("terminating connection due to administrator command"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(e.is_retryable());
    // stop() after the failure reports the same failure.
    let flushed = receiver.flushed_lsn();
    assert_eq!(
        receiver.stop().await.unwrap_err().to_string(),
        e.to_string()
    );

    assert!(flushed >= target);
    let primary_wal = pg.data_dir().join("pg_wal");
    let compared = verify_against_primary(&dir, &primary_wal, 1, seg_size, start, flushed);
    assert!(compared >= 1, "no complete segment compared");
    assert!(
        dir.join(format!("{}.partial", flushed.wal_file_name(1, seg_size)))
            .exists(),
        "no .partial left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_slot_until_terminated_pg15() {
    without_slot_then_terminated(Pg::V15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_slot_until_terminated_pg18() {
    without_slot_then_terminated(Pg::V18).await;
}

/// Ends archive recovery without a target: the server replays its own
/// `pg_wal`, then opens on timeline 2 with `00000002.history`.
async fn switch_to_timeline_2(pg: &mut PgCluster) {
    use std::io::Write;
    pg.stop().unwrap();
    let data = pg.data_dir();
    fs::write(data.join("recovery.signal"), "").unwrap();
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    writeln!(conf, "restore_command = 'false'").unwrap();
    pg.start().unwrap();
    let promoted = eventually(Duration::from_secs(60), || async {
        pg.psql(
            "postgres",
            "SELECT NOT pg_is_in_recovery() AND timeline_id = 2 FROM pg_control_checkpoint()",
        )
        .is_ok_and(|out| out == "t")
    })
    .await;
    assert!(promoted, "the server did not switch to timeline 2");
}

async fn history_on_new_timeline(version: Pg) {
    let mut pg = cluster(version);
    blocking(|| {
        pg.psql(
            "postgres",
            "CREATE TABLE before_switch AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT",
        )
        .unwrap()
    });
    switch_to_timeline_2(&mut pg).await;
    let info = tcp(&pg, "postgres");
    let sql = pgtandem_pg::connect(&info).await.unwrap();

    let conn = ReplicationConnection::connect(&info, ReplicationMode::Physical)
        .await
        .unwrap();
    let (_base, dir) = target_dir();
    let cancel = CancellationToken::new();
    let mut receiver = WalReceiver::start(conn, WalReceiverOptions::new(&dir), &cancel)
        .await
        .unwrap();
    assert_eq!(receiver.timeline(), 2);
    let primary_wal = pg.data_dir().join("pg_wal");
    let history = fs::read(dir.join("00000002.history")).unwrap();
    assert_eq!(
        history,
        fs::read(primary_wal.join("00000002.history")).unwrap()
    );
    assert!(dir.join("archive_status/00000002.history.done").exists());

    // Streaming the old timeline ends at the fork point with the server's
    // CopyDone and a pointer to timeline 2; the connection stays usable.
    let history = String::from_utf8(history).unwrap();
    let fork = Lsn::from_str(history.split('\t').nth(1).unwrap()).unwrap();
    let conn = ReplicationConnection::connect(&info, ReplicationMode::Physical)
        .await
        .unwrap();
    let seg_size = receiver.wal_segment_size();
    let mut stream = PhysicalStream::start(conn, None, fork.segment_start(seg_size), 1)
        .await
        .unwrap();
    let mut end = fork.segment_start(seg_size);
    loop {
        match stream.next_message().await.unwrap() {
            StreamMessage::XLogData(x) => {
                assert_eq!(x.start, end, "contiguous");
                end = x.end();
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::ServerDone => break,
        }
    }
    assert_eq!(end, fork, "timeline 1 streams exactly up to the fork");
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(
        next,
        Some(TimelineSwitch {
            next_timeline: 2,
            start: fork
        })
    );
    assert_eq!(conn.identify_system().await.unwrap().timeline, 2);
    conn.close().await.unwrap();

    blocking(|| {
        pg.psql(
            "postgres",
            "CREATE TABLE after_switch AS SELECT g FROM generate_series(1, 20000) g",
        )
        .unwrap()
    });
    let target = current_lsn(&sql).await;
    tokio::time::timeout(Duration::from_secs(60), receiver.wait_flushed(target))
        .await
        .expect("WAL did not arrive in time")
        .unwrap();
    // The external token stops the receiver cleanly, like stop().
    cancel.cancel();
    let received = tokio::time::timeout(Duration::from_secs(30), receiver.wait())
        .await
        .expect("cancellation did not stop the receiver")
        .unwrap();
    assert_eq!(received.timeline, 2);
    assert!(received.flushed >= target);
    verify_against_primary(
        &dir,
        &primary_wal,
        2,
        received.wal_segment_size,
        received.start,
        received.flushed,
    );
    received.finish_partial().unwrap();
    let records = waldump(&pg, &dir, 2, received.start, received.flushed);
    assert!(records > 100, "only {records} WAL records parsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_file_on_timeline_2_pg15() {
    history_on_new_timeline(Pg::V15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_file_on_timeline_2_pg18() {
    history_on_new_timeline(Pg::V18).await;
}
