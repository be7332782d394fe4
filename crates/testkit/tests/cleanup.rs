#![allow(clippy::unwrap_used)]
//! Nothing outlives a test: drop (also during a panic) kills every server and
//! removes its files; a killed test process takes its servers along.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgtandem_testkit::{Etcd, Pg, PgCluster, Redis, Sshd, process_alive};

fn assert_gone(pid: u32, dir: &std::path::Path) {
    assert!(!process_alive(pid), "pid {pid} still alive");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn dropping_a_cluster_kills_it_and_removes_its_dir() -> anyhow::Result<()> {
    let cluster = PgCluster::builder(Pg::V18).start()?;
    let pid = cluster.server_pid().unwrap();
    let dir = cluster.base_dir().to_owned();
    assert!(process_alive(pid) && dir.join("data/PG_VERSION").exists());
    drop(cluster);
    assert_gone(pid, &dir);
    Ok(())
}

#[test]
fn a_panicking_test_still_cleans_up_its_cluster() {
    let mut seen: Option<(u32, PathBuf)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = PgCluster::builder(Pg::V15).start().unwrap();
        // A live backend too, so the whole tree has to go.
        cluster.psql("postgres", "SELECT 1").unwrap();
        seen = Some((cluster.server_pid().unwrap(), cluster.base_dir().to_owned()));
        panic!("test failure while the cluster is alive");
    }));
    assert!(outcome.is_err());
    let (pid, dir) = seen.unwrap();
    assert_gone(pid, &dir);
}

#[test]
fn dropping_etcd_redis_and_sshd_removes_them() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let redis = Redis::start()?;
    let sshd = Sshd::start()?;
    let gone = [
        (etcd.pid().unwrap(), etcd.base_dir().to_owned()),
        (redis.pid().unwrap(), redis.base_dir().to_owned()),
        (sshd.pid().unwrap(), sshd.base_dir().to_owned()),
    ];
    for (pid, dir) in &gone {
        assert!(process_alive(*pid) && dir.exists());
    }
    drop((etcd, redis, sshd));
    for (pid, dir) in &gone {
        assert_gone(*pid, dir);
    }
    Ok(())
}

#[test]
fn a_server_outlives_the_thread_that_started_it() -> anyhow::Result<()> {
    // Servers are forked from a process-lifetime thread, so the parent-death
    // signal does not fire when a short-lived starting thread ends.
    let redis = std::thread::spawn(Redis::start).join().unwrap()?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = redis.pid().unwrap();
    assert!(process_alive(pid));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port()))?;
    use std::io::{Read, Write};
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    assert_eq!(&reply, b"+PONG\r\n");
    Ok(())
}

const HELPER_ENV: &str = "PGTANDEM_TESTKIT_HELPER_OUT";

/// Not a test: the child process of `a_killed_test_process_takes_its_servers_along`.
#[test]
#[ignore = "helper process, started by a_killed_test_process_takes_its_servers_along"]
fn helper_start_redis_then_hang() {
    let out = std::env::var_os(HELPER_ENV).expect("run only by its parent test");
    let redis = Redis::start().unwrap();
    let report = format!("{} {}\n", redis.pid().unwrap(), redis.base_dir().display());
    let tmp = PathBuf::from(&out).with_extension("tmp");
    std::fs::write(&tmp, report).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_killed_test_process_takes_its_servers_along() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let out = scratch.path().join("report");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "helper_start_redis_then_hang",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, &out)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        if let Ok(text) = std::fs::read_to_string(&out) {
            break text;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("helper exited early: {status}");
        }
        anyhow::ensure!(Instant::now() < deadline, "helper never reported");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (pid, dir) = report.trim().split_once(' ').unwrap();
    let pid: u32 = pid.parse()?;
    assert!(process_alive(pid));

    child.kill()?; // SIGKILL: no unwinding, no Drop.
    child.wait()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !process_alive(pid),
        "redis survived its killed test process"
    );
    // Without Drop, the files stay; clean them up here.
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
