//! etcd-sync acceptance scenarios 17 (CLI contract) and 18 (etcd DSN, live RBAC
//! and live TLS), etcd-sync.md §5 and §2.1–2.3.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod etcd_harness;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use etcd_client::{ConnectOptions, Permission};
use etcd_harness::*;
use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

both_pg! {
    s17_unreachable_peers_exit_2 => s17_unreachable;
    s17_signals_exit_0 => s17_signals;
    s17_env_precedence => s17_env;
    s18_dsn_grammar => s18_dsn;
    s18_live_rbac => s18_rbac;
    s18_live_tls => s18_tls;
}

fn all_output(out: &RunOutput) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

#[tokio::test]
async fn s17_help_and_version() {
    let links = install_links();
    let out = ServiceBuilder::pgtandem().flag("--help").run(SOON).await;
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("Usage"), "help goes to stdout");
    let out = ServiceBuilder::link(links.path().join("pg_etcd"))
        .flag("-h")
        .run(SOON)
        .await;
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("Usage"));
    for name in ["pg_etcd", "etcd_fdw"] {
        let out = ServiceBuilder::link(links.path().join(name))
            .flag("-v")
            .run(SOON)
            .await;
        assert_eq!(out.code, Some(0), "{name} -v");
        assert!(
            out.stdout.starts_with(&format!("{name} version ")),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("commit:") && out.stdout.contains("built:"));
    }
    // -v is checked before any other parsing.
    let out = ServiceBuilder::link(links.path().join("pg_etcd"))
        .flag("--bogus")
        .flag("-v")
        .run(SOON)
        .await;
    assert_eq!(out.code, Some(0));
}

#[tokio::test]
async fn s17_configuration_errors_exit_1_without_connecting() {
    // Both peers point at a listener we hold: nothing may connect to it.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    let base = ServiceBuilder::pgtandem()
        .opt(
            "--postgres-dsn",
            &format!("host=127.0.0.1 port={port} user=postgres sslmode=disable"),
        )
        .opt("--etcd-dsn", &format!("etcd://127.0.0.1:{port}/t/"));

    let out = base.clone().opt("--log-level", "loud").run(SOON).await;
    assert_eq!(out.code, Some(1), "--log-level=loud");
    let out = base.clone().flag("--dry-run").run(SOON).await;
    assert_eq!(out.code, Some(1), "--dry-run stays unknown");
    assert!(all_output(&out).contains("unknown flag"), "{out:?}");
    let out = base.clone().action(&["bogus"]).run(SOON).await;
    assert_eq!(out.code, Some(1), "an unknown positional word");
    for bad in ["abc", "0"] {
        let out = base.clone().opt("--polling-interval", bad).run(SOON).await;
        assert_eq!(out.code, Some(1), "--polling-interval={bad}");
        assert!(
            out.stderr.contains("Invalid polling interval format"),
            "{out:?}"
        );
        println!(
            "observed: --polling-interval={bad} exited after {:?}",
            out.elapsed
        );
    }
    let out = base
        .clone()
        .opt("--etcd-dsn", "http://127.0.0.1:2379/")
        .run(SOON)
        .await;
    assert_eq!(out.code, Some(1));
    assert!(all_output(&out).contains("etcd DSN must start with etcd://"));
    let out = base
        .clone()
        .opt(
            "--etcd-dsn",
            &format!("etcd://127.0.0.1:{port}/t/?dial_timeout=abc"),
        )
        .run(SOON)
        .await;
    assert_eq!(out.code, Some(1), "dial_timeout=abc");
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "configuration must be checked before any connection"
    );
}

/// PG or etcd unreachable with `--connect-timeout 2s` → exit 2 with its message.
async fn s17_unreachable(v: Pg) {
    let env = Env::start(v).await;
    let out = env
        .service()
        .opt(
            "--postgres-dsn",
            &format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable",
                closed_port()
            ),
        )
        .opt("--connect-timeout", "2s")
        .run(SLOW)
        .await;
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("Failed to connect to PostgreSQL after retries")
    );
    println!("observed: PG unreachable exit after {:?}", out.elapsed);

    let out = env
        .service()
        .opt(
            "--etcd-dsn",
            &format!("etcd://127.0.0.1:{}/t/", closed_port()),
        )
        .opt("--connect-timeout", "2s")
        .run(SLOW)
        .await;
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("Failed to connect to etcd after retries")
    );
    println!("observed: etcd unreachable exit after {:?}", out.elapsed);
}

/// SIGTERM and SIGINT → exit 0 with `Graceful shutdown completed`.
async fn s17_signals(v: Pg) {
    let env = Env::start(v).await;
    let svc = env.service().spawn();
    svc.wait_ready().await;
    assert!(svc.has_log("pg_etcd logging initialized"));
    assert!(svc.has_log("Connected to etcd successfully"));
    svc.terminate().await;

    let svc = env.pg_etcd().spawn();
    svc.wait_ready().await;
    svc.signal(Signal::SIGINT);
    assert_eq!(svc.wait_exit(SOON).await, 0, "SIGINT exits 0");
    svc.wait_log("Graceful shutdown completed", SOON).await;
}

/// flag > `pg_etcd_*` > `ETCD_FDW_*` > default; an empty variable is unset.
async fn s17_env(v: Pg) {
    let env = Env::start(v).await;
    let good = env.etcd_dsn(PREFIX);
    let bad = format!("etcd://127.0.0.1:{}/t/", closed_port());
    let bare = || {
        env.service()
            .without("--etcd-dsn")
            .opt("--connect-timeout", "2s")
    };

    // Legacy aliases alone (also for the PostgreSQL DSN).
    let svc = bare()
        .without("--postgres-dsn")
        .env("ETCD_FDW_POSTGRES_DSN", &env.pg_dsn(&env.db))
        .env("ETCD_FDW_ETCD_DSN", &good)
        .spawn();
    svc.wait_ready().await;
    svc.terminate().await;
    // pg_etcd_* beats ETCD_FDW_*.
    let svc = bare()
        .env("pg_etcd_ETCD_DSN", &good)
        .env("ETCD_FDW_ETCD_DSN", &bad)
        .spawn();
    svc.wait_ready().await;
    svc.terminate().await;
    let out = bare()
        .env("pg_etcd_ETCD_DSN", &bad)
        .env("ETCD_FDW_ETCD_DSN", &good)
        .run(SLOW)
        .await;
    assert_eq!(
        out.code,
        Some(2),
        "pg_etcd_ETCD_DSN wins over ETCD_FDW_ETCD_DSN"
    );
    // An empty primary variable counts as unset.
    let svc = bare()
        .env("pg_etcd_ETCD_DSN", "")
        .env("ETCD_FDW_ETCD_DSN", &good)
        .spawn();
    svc.wait_ready().await;
    svc.terminate().await;
    // The flag beats both.
    let svc = bare()
        .opt("--etcd-dsn", &good)
        .env("pg_etcd_ETCD_DSN", &bad)
        .env("ETCD_FDW_ETCD_DSN", &bad)
        .spawn();
    svc.wait_ready().await;
    svc.terminate().await;
}

/// Scenario 18, the DSN grammar as the binary shows it (prefix in `status`,
/// endpoints in the connect log, default port, WARN for unknown params).
async fn s18_dsn(v: Pg) {
    let env = Env::start(v).await;
    let port = env.etcd.client_port();
    for (dsn, prefix) in [
        (format!("etcd://127.0.0.1:{port}"), "/"),
        (format!("etcd://127.0.0.1:{port}/con%66ig/"), "/config/"),
    ] {
        let db = env.create_database(&format!("p{}", prefix.len()));
        let run = |action: &[&str]| {
            env.service_on(&db, PREFIX)
                .opt("--etcd-dsn", &dsn)
                .opt("--connect-timeout", "3s")
                .action(action)
        };
        assert_eq!(run(&["migrate"]).run(SLOW).await.code, Some(0));
        let status = run(&["status"]).run(SLOW).await;
        assert_eq!(status.json()["prefix"], prefix, "{dsn}");
    }

    let dsn = format!("etcd://localhost,127.0.0.1:{port}/t/?dial_timeout=2s&frobnicate=1");
    let svc = env.service().opt("--etcd-dsn", &dsn).spawn();
    svc.wait_ready().await;
    let connected = svc.wait_log("Connected to etcd successfully", SOON).await;
    assert!(
        connected.contains("localhost:2379"),
        "default port: {connected}"
    );
    assert!(
        connected.contains(&format!("127.0.0.1:{port}")),
        "{connected}"
    );
    assert!(
        svc.log()
            .iter()
            .any(|l| l.contains("[WARN]") && l.contains("frobnicate")),
        "unknown params get a WARN"
    );
}

/// Live RBAC: a readwrite user on `/t/` works; `username=` overrides the
/// userinfo; a wrong password exits 2; no password is ever logged.
async fn s18_rbac(v: Pg) {
    let env = Env::start(v).await;
    let mut admin = env.etcd_client().await;
    admin.role_add("t-rw").await.unwrap();
    admin
        .role_grant_permission("t-rw", Permission::read_write("/t/").with_prefix())
        .await
        .unwrap();
    admin.user_add("tuser", "tpass-s3cret", None).await.unwrap();
    admin.user_grant_role("tuser", "t-rw").await.unwrap();
    admin.user_add("root", "secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    drop(admin);
    let root = ConnectOptions::new().with_user("root", "secret");
    let mut etcd = etcd_client::Client::connect([env.etcd.endpoint()], Some(root.clone()))
        .await
        .unwrap();
    let port = env.etcd.client_port();
    let pg = env.pg_client().await;

    let svc = env
        .service()
        .opt(
            "--etcd-dsn",
            &format!("etcd://tuser:tpass-s3cret@127.0.0.1:{port}/t/"),
        )
        .spawn();
    svc.wait_ready().await;
    let rev = put(&mut etcd, "/t/a", "v1").await;
    wait_until("/t/a synced under RBAC", SOON, async || {
        has_row(&pg, "/t/a", rev).await
    })
    .await;
    pg.execute("SELECT etcd_set('/t/b', 'pg')", &[])
        .await
        .unwrap();
    assert_eq!(wait_wal_done(&pg, "/t/b").await.status, "success");
    svc.terminate().await;
    assert!(
        !svc.log_text().contains("tpass-s3cret"),
        "password in the log"
    );

    let svc = env
        .service()
        .opt(
            "--etcd-dsn",
            &format!(
                "etcd://nobody:wrong-pw@127.0.0.1:{port}/t/?username=tuser&password=tpass-s3cret"
            ),
        )
        .spawn();
    svc.wait_ready().await;
    svc.terminate().await;
    assert!(!svc.log_text().contains("tpass-s3cret"));

    let out = env
        .service()
        .opt(
            "--etcd-dsn",
            &format!("etcd://tuser:Wr0ngPass@127.0.0.1:{port}/t/"),
        )
        .opt("--connect-timeout", "2s")
        .run(SLOW)
        .await;
    assert_eq!(out.code, Some(2), "a wrong password exits 2");
    assert!(
        !all_output(&out).contains("Wr0ngPass"),
        "password in the output"
    );
}

/// A CA and a server certificate for 127.0.0.1, written as PEM files.
fn make_ca(dir: &Path, name: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("pgtandem test CA {name}"),
    );
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (path, Issuer::new(params, key))
}

fn make_server_cert(dir: &Path, ca: &Issuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// An etcd serving clients over TLS (the test kit's Etcd speaks plain HTTP).
struct TlsEtcd {
    child: Child,
    port: u16,
}

impl TlsEtcd {
    async fn start(dir: &Path, cert: &Path, key: &Path, ca: &Path) -> TlsEtcd {
        let ports = pgtandem_testkit::free_ports(2).unwrap();
        let (port, peer) = (ports[0], ports[1]);
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("/usr/bin/etcd")
            .env_clear()
            .current_dir(dir)
            .arg("--name=tls")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=tls={peer_url}"))
            .arg(format!("--cert-file={}", cert.display()))
            .arg(format!("--key-file={}", key.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let etcd = TlsEtcd { child, port };
        wait_until("TLS etcd healthy", SLOW, async || {
            etcd.etcdctl(ca, &["endpoint", "health"]).status.success()
        })
        .await;
        etcd
    }

    fn etcdctl(&self, ca: &Path, args: &[&str]) -> std::process::Output {
        Command::new("/usr/bin/etcdctl")
            .env_clear()
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://127.0.0.1:{}", self.port))
            .arg(format!("--cacert={}", ca.display()))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live TLS: the right `cacert` works, a wrong CA exits 2, `tls=enabled`
/// without a CA connects with a WARN.
async fn s18_tls(v: Pg) {
    let env = Env::start(v).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, ca) = make_ca(dir.path(), "right");
    let (wrong_ca, _) = make_ca(dir.path(), "wrong");
    let (cert, key) = make_server_cert(dir.path(), &ca);
    let tls = TlsEtcd::start(dir.path(), &cert, &key, &ca_path).await;
    let pg = env.pg_client().await;
    let dsn = |query: &str| format!("etcd://127.0.0.1:{}/t/?{query}", tls.port);

    let svc = env
        .service()
        .opt("--etcd-dsn", &dsn(&format!("cacert={}", ca_path.display())))
        .spawn();
    svc.wait_ready().await;
    let out = tls.etcdctl(&ca_path, &["put", "/t/tls", "secure", "-w", "json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rev = json["header"]["revision"].as_i64().unwrap();
    wait_until("/t/tls synced over TLS", SOON, async || {
        has_row(&pg, "/t/tls", rev).await
    })
    .await;
    pg.execute("SELECT etcd_set('/t/from-pg', 'pg')", &[])
        .await
        .unwrap();
    assert_eq!(wait_wal_done(&pg, "/t/from-pg").await.status, "success");
    svc.terminate().await;

    let started = Instant::now();
    let out = env
        .service()
        .opt(
            "--etcd-dsn",
            &dsn(&format!("cacert={}", wrong_ca.display())),
        )
        .opt("--connect-timeout", "2s")
        .run(SLOW)
        .await;
    assert_eq!(out.code, Some(2), "a wrong CA exits 2");
    println!("observed: wrong CA exit after {:?}", started.elapsed());

    let svc = env.service().opt("--etcd-dsn", &dsn("tls=enabled")).spawn();
    svc.wait_ready().await;
    assert!(
        svc.log().iter().any(|l| l.contains("[WARN]")),
        "tls=enabled without a CA logs a WARN"
    );
    svc.terminate().await;
}
