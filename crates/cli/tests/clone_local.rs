//! `pgtandem clone --transport local` end to end against real PostgreSQL 15
//! and 18 primaries: a clone that starts as a streaming standby, a re-sync
//! that removes a dropped table's files, the safety refusals, slot hygiene
//! after success and after `kill -9`, and a loop of consecutive clones.
#![allow(clippy::unwrap_used)]

mod clone_harness;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use clone_harness::*;
use pgtandem_testkit::{OsUser, Pg, PgCluster};

fn wal_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .count()
}

fn happy_path(version: Pg) {
    let pg = primary(version);
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let port = pgtandem_testkit::free_port().unwrap().to_string();
    let args = clone_args(
        &pg,
        &replica,
        &[
            "-R",
            "--start",
            "--standby-port",
            &port,
            "--verbose",
            "--progress",
            "plain",
            "--standby-slot",
            "s1",
        ],
    );
    let out = run(&bin, &args, &[]);
    let standby = Standby::adopt(&pg, &replica, port.parse().unwrap());
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    // Result layout (§2.7).
    // The started standby has consumed backup_label (renamed to .old).
    let label = fs::read_to_string(replica.join("backup_label"))
        .or_else(|_| fs::read_to_string(replica.join("backup_label.old")))
        .unwrap();
    assert!(label.contains("LABEL: pgclone"), "{label}");
    assert!(replica.join("global/pg_control").is_file());
    assert!(!replica.join("global/pg_control.pgtandem.tmp").exists());
    assert!(
        !replica.join("pgtandem_clone.state").exists(),
        "journal left behind"
    );
    assert!(replica.join("standby.signal").is_file());
    assert!(wal_files(&replica.join("pg_wal")) >= 1, "pg_wal is empty");
    assert!(replica.join("pg_wal/archive_status").is_dir());
    let auto = fs::read_to_string(replica.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("host={} port={}", pg.host(), pg.port())),
        "{auto}"
    );
    assert!(auto.contains(&format!("port = {port}")));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&replica).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Output contract (§2.5, §2.6).
    assert!(
        stdout.contains("\nModule base:\nNumber of files: "),
        "{stdout}"
    );
    assert!(stdout.contains("\nTotal (all modules):\nNumber of files: "));
    assert!(
        stdout.lines().last().unwrap().starts_with("sent "),
        "{stdout}"
    );
    assert!(
        stderr.contains("[pgclone] Running cleanup (rc=0)..."),
        "{stderr}"
    );
    assert!(stderr.contains("[pgclone] Cleanup complete (rc=0)"));
    // (No `Partial WAL segment renamed` line when the stream ended exactly
    // at a segment boundary, as pg_backup_stop's switch often leaves it.)
    assert!(
        !fs::read_dir(replica.join("pg_wal"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    );
    assert!(
        stderr.contains("] 100 %  ("),
        "no final plain progress line: {stderr}"
    );
    // The tool waited for streaming; prove replay too.
    standby.assert_streams_and_replays("happy");
    assert!(auto.contains("primary_slot_name = 's1'"), "{auto}");
    assert!(
        eventually(Duration::from_secs(10), || scalar(
            &pg,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 's1'"
        ) == "t"),
        "the standby does not use its slot s1"
    );
    assert!(
        eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0),
        "a pgclone_ slot survived the clone"
    );
    assert_eq!(
        scalar(
            &pg,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'pgclone-%'"
        ),
        "0"
    );
}

#[test]
fn happy_path_starts_a_streaming_standby_pg15() {
    happy_path(Pg::V15);
}

#[test]
fn happy_path_starts_a_streaming_standby_pg18() {
    happy_path(Pg::V18);
}

fn resync_after_drop(version: Pg) {
    let pg = primary(version);
    pg.psql(
        "postgres",
        "CREATE TABLE doomed AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let rel = scalar(&pg, "SELECT pg_relation_filepath('doomed')");
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let out = run(&bin, &clone_args(&pg, &replica, &[]), &[]);
    assert_ok(&out);
    assert!(replica.join(&rel).is_file(), "{rel} was not cloned");
    assert!(replica.join("backup_label").is_file());
    assert!(
        !replica.join("standby.signal").exists(),
        "standby.signal without -R"
    );
    // A planted orphan and foreign WAL must go too.
    fs::write(replica.join("base/1/999999"), b"orphan").unwrap();
    fs::write(replica.join("pg_wal/00000009.history"), b"x").unwrap();

    pg.psql("postgres", "DROP TABLE doomed; CHECKPOINT; CHECKPOINT;")
        .unwrap();
    let out = run(
        &bin,
        &clone_args(&pg, &replica, &["--progress", "none"]),
        &[],
    );
    assert_ok(&out);
    assert!(!replica.join(&rel).exists(), "{rel} survived the re-sync");
    let prefix = Path::new(&rel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let leftovers: Vec<_> = fs::read_dir(replica.join(Path::new(&rel).parent().unwrap()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == &prefix
                || n.starts_with(&format!("{prefix}."))
                || n.starts_with(&format!("{prefix}_"))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "forks of the dropped table left: {leftovers:?}"
    );
    assert!(!replica.join("base/1/999999").exists());
    assert!(!replica.join("pg_wal/00000009.history").exists());
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("Number of deleted files: 0\n\nsent") || stdout.contains("Total"));
    let standby = Standby::start_manually(&pg, &replica);
    standby.assert_streams_and_replays("resync");
}

#[test]
fn resync_after_drop_table_removes_its_files_pg15() {
    resync_after_drop(Pg::V15);
}

#[test]
fn resync_after_drop_table_removes_its_files_pg18() {
    resync_after_drop(Pg::V18);
}

/// Everything below `dir` as (path, size, mtime) — to prove "unchanged".
fn listing(dir: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((
                e.path().display().to_string(),
                m.len(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
            ));
        }
    }
    out.sort();
    out
}

fn fatal_line(out: &std::process::Output, message: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("FATAL: "))
        .unwrap_or_else(|| panic!("no FATAL line in {stderr}"));
    let (ts, msg) = line.split_once("] FATAL: ").unwrap();
    assert_eq!(ts.len(), "[YYYY-MM-DD HH:MM:SS".len(), "{line}");
    assert!(msg.starts_with(message), "{line}");
}

#[test]
fn safety_refusals_leave_target_and_primary_untouched() {
    let pg = primary(Pg::V15);
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let postgres = OsUser::postgres_server().unwrap();

    // Root is refused before anything else.
    let args = clone_args(&pg, &replica, &["--drop-existing"]);
    let out = std::process::Command::new(&bin.path)
        .args(&args)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    fatal_line(&out, "This script must not be run as root");
    assert!(!replica.exists());

    // A first clone gives us a target to protect.
    assert_ok(&run(&bin, &clone_args(&pg, &replica, &[]), &[]));
    let before = listing(&replica);
    let primary_before = listing(&pg.data_dir().join("base"));

    // Held lock (created by another user, as pgclone.sh would) + --drop-existing.
    let canonical = fs::canonicalize(&replica).unwrap();
    let digest = {
        use sha2_compat::digest_hex;
        digest_hex(canonical.as_os_str().as_encoded_bytes())
    };
    let lock_path = format!("/tmp/pgclone_{digest}.lock");
    let lock = fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let out = run(&bin, &args, &[]);
    fatal_line(
        &out,
        &format!(
            "Another pgclone is running for {} (lock: {lock_path})",
            canonical.display()
        ),
    );
    drop(lock);
    let _ = fs::remove_file(&lock_path);
    assert_eq!(
        listing(&replica),
        before,
        "--drop-existing ran before the lock check"
    );

    // A running postmaster in the target + --drop-existing.
    let other = PgCluster::builder(Pg::V15).fsync(false).start().unwrap();
    let other_before = listing(&other.data_dir().join("global"));
    let args_other = clone_args(&pg, &other.data_dir(), &["--drop-existing"]);
    let out = run(&bin, &args_other, &[]);
    fatal_line(
        &out,
        &format!(
            "Seems like PostgreSQL instance already running or stale postmaster.pid has found (PID {}) in {}.",
            other.server_pid().unwrap(),
            other.data_dir().display()
        ),
    );
    assert_eq!(listing(&other.data_dir().join("global")), other_before);

    // The primary's own directory as target + --drop-existing.
    let own = clone_args(&pg, &pg.data_dir().join("sub"), &["--drop-existing"]);
    let out = run(&bin, &own, &[]);
    fatal_line(
        &out,
        &format!(
            "Target {} is the primary's own directory",
            pg.data_dir().join("sub").display()
        ),
    );
    assert!(!pg.data_dir().join("sub").exists());

    // Not a superuser-less failure: an unknown mapping is named.
    let bad_map = clone_args(
        &pg,
        &replica,
        &["--drop-existing", "--tablespace-mapping", "/nope=/tmp/x"],
    );
    let out = run(&bin, &bad_map, &[]);
    fatal_line(
        &out,
        "--tablespace-mapping: no tablespace at /nope on the primary",
    );
    assert_eq!(listing(&replica), before);
    assert_eq!(listing(&pg.data_dir().join("base")), primary_before);
    assert_eq!(pgclone_slots(&pg), 0);
    let _ = postgres;
}

/// sha256 without a new dev-dependency: `sha256sum` from coreutils.
mod sha2_compat {
    use std::io::Write;
    use std::process::{Command, Stdio};

    pub fn digest_hex(bytes: &[u8]) -> String {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    }
}

fn kill9_mid_copy(version: Pg, resume: bool) {
    let pg = primary(version);
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let mut child = command(
        &bin,
        &clone_args(&pg, &replica, &["--parallel", "1"]),
        &[("PGTANDEM_TEST_STOP", "during_copy")],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("TEST_stop_point_during_copy") {
            break;
        }
    }
    assert!(seen.contains("TEST_stop_point_during_copy"), "{seen}");
    // Mid-copy: the temporary slot and walsender exist, pg_control does not.
    assert_eq!(
        scalar(
            &pg,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgclone_{pid}'")
        ),
        "1"
    );
    assert!(!replica.join("global/pg_control").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0),
        "slot survived kill -9"
    );
    assert!(
        eventually(Duration::from_secs(10), || scalar(
            &pg,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'pgclone-%'"
        ) == "0"),
        "walsender survived kill -9"
    );
    assert!(
        !replica.join("global/pg_control").exists(),
        "a half clone looks complete"
    );
    assert!(
        replica.join("pgtandem_clone.state").exists(),
        "no journal of the interrupted clone"
    );
    // The rerun completes the same target.
    if resume {
        let out = run(
            &bin,
            &clone_args(&pg, &replica, &["--resume", "--json"]),
            &[],
        );
        assert_ok(&out);
        let stdout = text(&out.stdout);
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(summary["event"], "summary", "{stdout}");
        let skipped = summary["resume_skipped_bytes"].as_u64().unwrap();
        let copied = summary["bytes_transferred"].as_u64().unwrap();
        // --parallel 1, largest batch first: `base` was journalled before the stop.
        assert!(
            skipped >= 20_000_000,
            "only {skipped} bytes skipped: {stdout}"
        );
        assert!(copied < skipped, "{copied} copied vs {skipped} skipped");
        assert!(!replica.join("pgtandem_clone.state").exists());
        // A finished clone has no journal to resume from.
        let again = run(&bin, &clone_args(&pg, &replica, &["--resume"]), &[]);
        fatal_line(&again, "Cannot resume: no journal");
    } else {
        let out = run(&bin, &clone_args(&pg, &replica, &["--verbose"]), &[]);
        assert_ok(&out);
        assert!(
            text(&out.stderr).contains("Found interrupted clone state; use --resume"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(replica.join("global/pg_control").exists());
    assert!(eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0));
    let standby = Standby::start_manually(&pg, &replica);
    standby.assert_streams_and_replays("after-kill");
}

#[test]
fn kill9_mid_copy_leaves_no_slot_and_rerun_succeeds_pg15() {
    kill9_mid_copy(Pg::V15, false);
}

#[test]
fn resume_after_kill9_skips_journalled_files_pg15() {
    kill9_mid_copy(Pg::V15, true);
}

#[test]
fn resume_after_kill9_skips_journalled_files_pg18() {
    kill9_mid_copy(Pg::V18, true);
}

#[test]
fn kill9_mid_copy_leaves_no_slot_and_rerun_succeeds_pg18() {
    kill9_mid_copy(Pg::V18, false);
}

fn consecutive_clones(version: Pg, runs: usize) {
    let pg = primary(version);
    let bin = binary();
    let dir = scratch();
    for i in 0..runs {
        // Alternate fresh targets and in-place re-syncs.
        let replica = dir.path().join(format!("replica{}", i % 2));
        let out = run(
            &bin,
            &clone_args(&pg, &replica, &["--no-sync", "--json"]),
            &[],
        );
        assert_ok(&out);
        let stdout = text(&out.stdout);
        let events: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let summaries: Vec<_> = events.iter().filter(|e| e["event"] == "summary").collect();
        assert_eq!(summaries.len(), 1, "run {i}: {stdout}");
        assert_eq!(events.last().unwrap()["event"], "summary");
        assert_eq!(summaries[0]["ok"], true);
        assert!(summaries[0]["wal_bytes"].as_u64().unwrap() > 0);
        let progress = events
            .iter()
            .rfind(|e| e["event"] == "progress")
            .unwrap_or_else(|| panic!("no progress event: {stdout}"));
        assert_eq!(progress["bytes_done"], progress["bytes_total"]);
        assert!(progress["wal_flush_lsn"].is_string(), "{progress}");
        // The run dir of this run is gone.
        let pid = events[0]["pid"].as_u64().unwrap().to_string();
        let leftover = fs::read_dir("/tmp").unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("pgclone_.")
                && fs::read_to_string(e.path().join("pgclone.pid")).is_ok_and(|p| p.trim() == pid)
        });
        assert!(!leftover, "run dir of pid {pid} left behind");
        assert!(wal_files(&replica.join("pg_wal")) >= 1, "run {i}");
        assert!(replica.join("global/pg_control").exists(), "run {i}");
    }
    assert!(eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0));
    let standby =
        Standby::start_manually(&pg, &dir.path().join(format!("replica{}", (runs - 1) % 2)));
    standby.assert_streams_and_replays("loop");
}

#[test]
fn twenty_consecutive_clones_of_a_quiet_primary_pg15() {
    consecutive_clones(Pg::V15, 20);
}

#[test]
fn twenty_consecutive_clones_of_a_quiet_primary_pg18() {
    consecutive_clones(Pg::V18, 20);
}

fn tablespaces_mapped(version: Pg) {
    let pg = primary(version);
    let bin = binary();
    let dir = scratch();
    let spaces = scratch();
    let (ts1, ts2) = (spaces.path().join("ts one"), spaces.path().join("ts2"));
    for ts in [&ts1, &ts2] {
        fs::create_dir(ts).unwrap();
        OsUser::postgres_server()
            .unwrap()
            .take_ownership(ts)
            .unwrap();
    }
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE t1 LOCATION '{}'; CREATE TABLESPACE t2 LOCATION '{}';\
             CREATE TABLE in_t1 TABLESPACE t1 AS SELECT g AS id FROM generate_series(1, 5000) g;\
             CREATE TABLE in_t2 TABLESPACE t2 AS SELECT g AS id FROM generate_series(1, 7000) g;",
            ts1.display(),
            ts2.display()
        ),
    )
    .unwrap();
    let replica = dir.path().join("replica");
    let (new1, new2) = (dir.path().join("new one"), dir.path().join("new2"));
    // Unmapped tablespaces would be the primary's own directories.
    let out = run(
        &bin,
        &clone_args(
            &pg,
            &replica,
            &[
                "--drop-existing",
                "--tablespace-mapping",
                &format!("{}={}", ts1.display(), new1.display()),
            ],
        ),
        &[],
    );
    fatal_line(
        &out,
        &format!("Target {} is the primary's own directory", ts2.display()),
    );
    assert!(!replica.exists());

    let out = run(
        &bin,
        &clone_args(
            &pg,
            &replica,
            &[
                "--tablespace-mapping",
                &format!("{}={}", ts1.display(), new1.display()),
                "--tablespace-mapping",
                &format!("{}={}", ts2.display(), new2.display()),
            ],
        ),
        &[],
    );
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let oid1 = scalar(&pg, "SELECT oid FROM pg_tablespace WHERE spcname = 't1'");
    let oid2 = scalar(&pg, "SELECT oid FROM pg_tablespace WHERE spcname = 't2'");
    assert!(
        stdout.contains(&format!("\nModule spc_{oid1}:\n")),
        "{stdout}"
    );
    assert_eq!(
        fs::read_link(replica.join("pg_tblspc").join(&oid1)).unwrap(),
        new1
    );
    assert_eq!(
        fs::read_link(replica.join("pg_tblspc").join(&oid2)).unwrap(),
        new2
    );
    let map = fs::read_to_string(replica.join("tablespace_map")).unwrap();
    assert!(
        map.contains(&format!("{oid1} {}\n", new1.display())),
        "{map}"
    );
    assert!(
        map.contains(&format!("{oid2} {}\n", new2.display())),
        "{map}"
    );
    let rel = scalar(&pg, "SELECT pg_relation_filepath('in_t2')");
    let in_space = rel
        .split_once(&format!("pg_tblspc/{oid2}/"))
        .unwrap()
        .1
        .to_owned();
    assert!(
        new2.join(in_space).is_file(),
        "{rel} not in the mapped tablespace"
    );
    let standby = Standby::start_manually(&pg, &replica);
    standby.assert_streams_and_replays("tablespaces");
    for (table, sum) in [("in_t1", "12502500"), ("in_t2", "24503500")] {
        assert_eq!(
            standby
                .psql(&format!("SELECT sum(id) FROM {table}"))
                .unwrap(),
            sum
        );
    }
}

#[test]
fn tablespaces_are_mapped_and_unmapped_ones_refused_pg15() {
    tablespaces_mapped(Pg::V15);
}

#[test]
fn tablespaces_are_mapped_and_unmapped_ones_refused_pg18() {
    tablespaces_mapped(Pg::V18);
}

#[test]
fn paranoid_compares_content_not_size_and_mtime() {
    let pg = primary(Pg::V15);
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let probe = pg.data_dir().join("pgt_probe");
    fs::write(&probe, vec![b'A'; 4096]).unwrap();
    OsUser::postgres_server()
        .unwrap()
        .take_ownership(&probe)
        .unwrap();
    // (Also the progress formats of §2.6: bar here, none below.)
    let out = run(
        &bin,
        &clone_args(&pg, &replica, &["--progress", "bar"]),
        &[],
    );
    assert_ok(&out);
    let full = format!("\r\x1b[K[{}] 100 % (", "#".repeat(40));
    assert!(
        text(&out.stderr).contains(&full),
        "no final bar line: {:?}",
        text(&out.stderr)
    );
    assert_eq!(
        fs::read(replica.join("pgt_probe")).unwrap(),
        vec![b'A'; 4096]
    );
    // Same size, same mtime, other content.
    let mtime = fs::metadata(&probe).unwrap().modified().unwrap();
    fs::write(&probe, vec![b'B'; 4096]).unwrap();
    fs::File::options()
        .write(true)
        .open(&probe)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = run(
        &bin,
        &clone_args(&pg, &replica, &["--progress", "none"]),
        &[],
    );
    assert_ok(&out);
    assert!(!text(&out.stderr).contains("100 % ("));
    assert_eq!(
        fs::read(replica.join("pgt_probe")).unwrap(),
        vec![b'A'; 4096]
    );
    assert_ok(&run(&bin, &clone_args(&pg, &replica, &["--paranoid"]), &[]));
    assert_eq!(
        fs::read(replica.join("pgt_probe")).unwrap(),
        vec![b'B'; 4096]
    );
}

#[test]
fn sigterm_mid_copy_cleans_up_a_persistent_slot() {
    let pg = primary(Pg::V15);
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let mut child = command(
        &bin,
        &clone_args(&pg, &replica, &["--parallel", "1", "--slot", "--verbose"]),
        &[("PGTANDEM_TEST_STOP", "during_copy")],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains("TEST_stop_point_during_copy") {
            break;
        }
    }
    assert!(seen.contains("TEST_stop_point_during_copy"), "{seen}");
    let slot = format!("pgclone_{pid}");
    assert_eq!(
        scalar(
            &pg,
            &format!("SELECT temporary FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "f",
        "--slot must be persistent"
    );
    let target = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM).unwrap();
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{seen}{rest}");
    assert!(rest.contains("Running cleanup (rc=1)..."), "{rest}");
    assert!(rest.contains("FATAL: Interrupted by SIGTERM"), "{rest}");
    assert_eq!(pgclone_slots(&pg), 0, "the persistent slot survived");
    assert!(!replica.join("global/pg_control").exists());
    assert_eq!(
        scalar(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgclone-%'"
        ),
        "0"
    );
}

fn with_pg_receivewal(version: Pg) {
    let pg = primary(version);
    let bin = binary();
    let dir = scratch();
    let replica = dir.path().join("replica");
    let temp = dir.path().join("temp wal");
    fs::create_dir(&temp).unwrap();
    let planted = temp.join("000000010000000000007777");
    fs::write(&planted, b"not wal").unwrap();
    OsUser::postgres_server()
        .unwrap()
        .take_ownership(&temp)
        .unwrap();
    OsUser::postgres_server()
        .unwrap()
        .take_ownership(&planted)
        .unwrap();
    let out = run(
        &bin,
        &clone_args(
            &pg,
            &replica,
            &[
                "--wal-method",
                "pg_receivewal",
                "--slot",
                "--temp-waldir",
                &temp.display().to_string(),
                "--verbose",
            ],
        ),
        &[],
    );
    assert_ok(&out);
    assert!(temp.is_dir(), "a pre-existing temp waldir must survive");
    assert!(!planted.exists(), "WAL names must leave the temp waldir");
    assert!(
        fs::read_dir(&temp).unwrap().next().is_none(),
        "temp waldir not emptied of WAL"
    );
    assert!(!replica.join("pg_wal/000000010000000000007777").exists());
    assert!(wal_files(&replica.join("pg_wal")) >= 1);
    assert!(
        eventually(Duration::from_secs(10), || pgclone_slots(&pg) == 0),
        "the --slot slot survived"
    );
    let standby = Standby::start_manually(&pg, &replica);
    standby.assert_streams_and_replays("receivewal");
}

#[test]
fn pg_receivewal_method_with_slot_and_temp_waldir_pg15() {
    with_pg_receivewal(Pg::V15);
}

#[test]
fn pg_receivewal_method_with_slot_and_temp_waldir_pg18() {
    with_pg_receivewal(Pg::V18);
}
