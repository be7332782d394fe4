//! `pgtandem clone` with the default rsync-over-ssh transport, through the
//! test kit's private sshd (the primary is local, reached as `postgres`):
//! a clone that starts as a streaming standby, a re-sync, the remote daemon
//! gone afterwards, and `SSH test failed` for a wrong key.
#![allow(clippy::unwrap_used)]

mod clone_harness;

use std::fs;
use std::path::Path;
use std::time::Duration;

use clone_harness::*;
use pgtandem_testkit::{OsUser, Pg, PgCluster, Sshd};

fn rsync_args(
    pg: &PgCluster,
    sshd: &Sshd,
    key: &Path,
    replica: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args = clone_args(pg, replica, extra);
    // clone_args picks the local transport; this suite uses the default.
    let at = args.iter().position(|a| a == "--transport").unwrap();
    args.drain(at..at + 2);
    args.extend([
        "--ssh-user".to_owned(),
        "postgres".to_owned(),
        "--ssh-port".to_owned(),
        sshd.port().to_string(),
        "--ssh-key".to_owned(),
        key.display().to_string(),
        "--insecure-ssh".to_owned(),
    ]);
    args
}

/// Remote daemon dirs (`/tmp/pgclone_XXXXXXXX`) serving this primary.
fn daemon_dirs_for(pg: &PgCluster) -> usize {
    let data = pg.data_dir().display().to_string();
    fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("pgclone_") && n.len() == "pgclone_".len() + 8
        })
        .filter(|e| {
            fs::read_to_string(e.path().join("rsyncd.conf")).is_ok_and(|c| c.contains(&data))
        })
        .count()
}

fn rsync_happy_path(version: Pg) {
    let pg = primary(version);
    let sshd = Sshd::start().unwrap();
    let key = sshd
        .client_key_for(&OsUser::postgres_server().unwrap())
        .unwrap();
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let port = pgtandem_testkit::free_port().unwrap().to_string();
    let args = rsync_args(
        &pg,
        &sshd,
        &key,
        &replica,
        &["-R", "--start", "--standby-port", &port, "--verbose"],
    );
    let out = run(&bin, &args, &[]);
    let standby = Standby::adopt(&pg, &replica, port.parse().unwrap());
    assert_ok(&out);
    let stdout = text(&out.stdout);
    eprintln!(
        "--- clone stdout:\n{stdout}\n--- clone stderr:\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("\nTotal (all modules):\nNumber of files: "),
        "{stdout}"
    );
    // rsync's own byte counters made it into the summary.
    let received = stdout
        .lines()
        .rfind(|l| l.starts_with("Total bytes received: "))
        .unwrap();
    assert_ne!(received, "Total bytes received: 0.0B", "{stdout}");
    standby.assert_streams_and_replays("rsync");
    drop(standby);
    assert!(eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0));
    assert!(
        eventually(Duration::from_secs(10), || daemon_dirs_for(&pg) == 0),
        "the remote rsyncd dir survived"
    );

    // Re-sync in place: quick-check leaves nearly everything alone.
    fs::remove_file(replica.join("standby.signal")).unwrap();
    pg.psql(
        "postgres",
        "UPDATE pgbench_branches SET bbalance = bbalance + 1",
    )
    .unwrap();
    let out = run(
        &bin,
        &rsync_args(&pg, &sshd, &key, &replica, &["--json"]),
        &[],
    );
    assert_ok(&out);
    let summary: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["ok"], true);
    let total = summary["bytes_total"].as_u64().unwrap();
    let sent = summary["bytes_transferred"].as_u64().unwrap();
    assert!(sent * 4 < total, "re-sync rewrote {sent} of {total} bytes");
    assert!(eventually(Duration::from_secs(10), || daemon_dirs_for(&pg) == 0));
}

#[test]
fn rsync_transport_clone_streams_pg15() {
    rsync_happy_path(Pg::V15);
}

#[test]
fn rsync_transport_clone_streams_pg18() {
    rsync_happy_path(Pg::V18);
}

#[test]
fn wrong_ssh_key_is_ssh_test_failed() {
    let pg = primary(Pg::V15);
    let sshd = Sshd::start().unwrap();
    let bin = binary();
    let dir = scratch();
    // A key the server does not know, readable by postgres.
    let other = Sshd::start().unwrap();
    let wrong = other
        .client_key_for(&OsUser::postgres_server().unwrap())
        .unwrap();
    let replica = dir.path().join("replica");
    let out = run(
        &bin,
        &rsync_args(&pg, &sshd, &wrong, &replica, &["--drop-existing"]),
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("] FATAL: SSH test failed"), "{stderr}");
    assert!(!replica.exists());
}

#[test]
fn bypass_rep_traffic_tunnels_postgres_without_a_password() {
    // The primary answers on 127.0.0.2 with SCRAM, and trusts 127.0.0.1 (the
    // tunnel's far end), like the harness of clone.md §5.
    let pg = PgCluster::builder(Pg::V15)
        .password(PASSWORD)
        .fsync(false)
        .guc("listen_addresses", "127.0.0.1,127.0.0.2")
        .hba_line("host all all 127.0.0.1/32 trust")
        .hba_line("host replication all 127.0.0.1/32 trust")
        .hba_line("host all all 127.0.0.2/32 scram-sha-256")
        .hba_line("host replication all 127.0.0.2/32 scram-sha-256")
        .start()
        .unwrap();
    pg.pgbench_init("postgres", 1).unwrap();
    let sshd = Sshd::start().unwrap();
    let key = sshd
        .client_key_for(&OsUser::postgres_server().unwrap())
        .unwrap();
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let mut args = rsync_args(
        &pg,
        &sshd,
        &key,
        &replica,
        &["--slot", "--ssh-option", "HostName=127.0.0.1", "-R"],
    );
    let host = args.iter().position(|a| a == "--pghost").unwrap() + 1;
    args[host] = "127.0.0.2".into();

    // No password source and no tunnel: refused before anything happens.
    let out = command(&bin, &args, &[])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "FATAL: Authentication required: set PGPASSWORD or create readable ~/.pgpass"
        ),
        "{}",
        text(&out.stderr)
    );
    assert!(!replica.exists());

    args.push("--bypass-rep-traffic".into());
    let out = command(&bin, &args, &[])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(replica.join("global/pg_control").is_file());
    assert!(wal_files_exist(&replica.join("pg_wal")));
    // primary_conninfo names the real endpoint, never the tunnel.
    let auto = fs::read_to_string(replica.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("host=127.0.0.2 port={}", pg.port())),
        "{auto}"
    );
    assert!(eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0));
    assert!(eventually(Duration::from_secs(10), || daemon_dirs_for(&pg) == 0));
    assert_eq!(
        scalar(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgclone-%'"
        ),
        "0"
    );
}

fn wal_files_exist(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn kill9_mid_copy_leaves_no_daemon_slot_or_children() {
    use std::io::{BufRead, BufReader};
    let pg = primary(Pg::V15);
    let sshd = Sshd::start().unwrap();
    let key = sshd
        .client_key_for(&OsUser::postgres_server().unwrap())
        .unwrap();
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let args = rsync_args(&pg, &sshd, &key, &replica, &["--parallel", "1"]);
    let mut child = command(&bin, &args, &[("PGTANDEM_TEST_STOP", "during_copy")])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        if line.contains("TEST_stop_point_during_copy") {
            break;
        }
    }
    assert!(seen.contains("TEST_stop_point_during_copy"), "{seen}");
    assert_eq!(daemon_dirs_for(&pg), 1, "no rsync daemon while copying");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0),
        "slot survived kill -9"
    );
    assert!(
        eventually(Duration::from_secs(10), || daemon_dirs_for(&pg) == 0),
        "the remote daemon survived kill -9"
    );
    // The ssh session's argv (and the remote bash's) carries the daemon
    // script naming the primary's data dir; rsync clients name the replica.
    let data = pg.data_dir().display().to_string();
    assert!(
        eventually(Duration::from_secs(10), || processes_mentioning(
            &replica.display().to_string()
        )
        .is_empty()),
        "rsync clients survived"
    );
    assert!(
        eventually(Duration::from_secs(10), || processes_mentioning(&data)
            .iter()
            .all(|c| !c.contains("rsync") && !c.contains("ssh"))),
        "children survived: {:?}",
        processes_mentioning(&data)
    );
    // And the next run succeeds.
    assert_ok(&run(&bin, &args, &[]));
    assert!(replica.join("global/pg_control").is_file());
}
