//! SQL connections, versions, TLS policy, retries and pools against real
//! PostgreSQL 15 and 18.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, conninfo, scalar, socket, tcp};
use pgtandem_core::error::ErrorKind;
use pgtandem_pg::{Pool, PoolOptions, RetryPolicy};
use pgtandem_testkit::Pg;

async fn versions_and_connections(version: Pg) {
    let pg = cluster(version);

    // TCP and Unix socket both reach the same server.
    let client = pgtandem_pg::connect(&tcp(&pg, "postgres")).await.unwrap();
    let via_socket = pgtandem_pg::connect(&socket(&pg, "postgres"))
        .await
        .unwrap();
    assert_eq!(
        scalar(&via_socket, "SELECT inet_server_addr() IS NULL")
            .await
            .as_deref(),
        Some("t"),
        "a Unix socket connection has no server address"
    );

    let v = pgtandem_pg::server_version(&client).await.unwrap();
    assert_eq!(v.major, version.major());
    let num: u32 = scalar(&client, "SHOW server_version_num")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(v.minor, num % 10_000);

    assert_eq!(pgtandem_pg::require_version(&client, 15).await.unwrap(), v);
    let need16 = pgtandem_pg::require_version(&client, 16).await;
    if version.major() < 16 {
        let e = need16.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let text = e.to_string();
        assert!(
            text.contains("16") && text.contains(&v.to_string()),
            "{text}"
        );
    } else {
        assert_eq!(need16.unwrap(), v);
    }

    // application_name and options reach the server.
    let named = pgtandem_pg::connect(&conninfo(&format!(
        "{} application_name=pgt-test options='-c work_mem=7MB'",
        pg.conninfo("postgres")
    )))
    .await
    .unwrap();
    assert_eq!(
        scalar(&named, "SHOW application_name").await.as_deref(),
        Some("pgt-test")
    );
    assert_eq!(
        scalar(&named, "SHOW work_mem").await.as_deref(),
        Some("7MB")
    );

    // Server errors keep their SQLSTATE and verbatim message.
    let e: pgtandem_pg::Error = client
        .batch_execute("SELECT * FROM no_such_table")
        .await
        .unwrap_err()
        .into();
    assert_eq!(e.sqlstate(), Some("42P01"));
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "ERROR: relation \"no_such_table\" does not exist"
    );

    // A database that does not exist is reported by the server.
    let e = pgtandem_pg::connect(&tcp(&pg, "no_such_db"))
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("3D000"), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn versions_and_connections_pg15() {
    versions_and_connections(Pg::V15).await;
}

#[tokio::test]
async fn versions_and_connections_pg18() {
    versions_and_connections(Pg::V18).await;
}

#[tokio::test]
async fn tls_modes_are_refused_not_downgraded() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let info = conninfo(&format!("host=127.0.0.1 port=1 user=x sslmode={mode}"));
        let e = pgtandem_pg::connect(&info).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("TLS"), "{e}");
        let e = pgtandem_pg::ReplicationConnection::connect(
            &info,
            pgtandem_pg::ReplicationMode::Physical,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    }
}

#[tokio::test]
async fn retry_gives_up_on_a_dead_server_and_reaches_a_live_one() {
    let mut pg = cluster(Pg::V18);
    let info = tcp(&pg, "postgres");
    let quick = RetryPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
    };
    assert!(pgtandem_pg::connect_with_retry(&info, quick).await.is_ok());

    pg.stop().unwrap();
    let started = std::time::Instant::now();
    let e = pgtandem_pg::connect_with_retry(&info, quick)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.is_retryable());
    // Three attempts with 20 ms + 40 ms of backoff in between.
    assert!(started.elapsed() >= Duration::from_millis(60));

    // The server comes back while we are retrying.
    let patient = RetryPolicy {
        max_attempts: 50,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(60),
    };
    let retrying =
        tokio::spawn(async move { pgtandem_pg::connect_with_retry(&info, patient).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.start().unwrap();
        pg
    })
    .await
    .unwrap();
    let client = retrying.await.unwrap().unwrap();
    assert_eq!(scalar(&client, "SELECT 1").await.as_deref(), Some("1"));
    drop(pg);
}

#[tokio::test]
async fn pool_reuses_connections_and_times_out_when_exhausted() {
    let pg = cluster(Pg::V18);
    let pool = Pool::new(
        &tcp(&pg, "postgres"),
        PoolOptions {
            max_size: 2,
            timeout: Duration::from_millis(500),
        },
    )
    .unwrap();

    let first_pid = {
        let c = pool.get().await.unwrap();
        scalar(&c, "SELECT pg_backend_pid()").await.unwrap()
    };
    // Returned to the pool and reused.
    let c1 = pool.get().await.unwrap();
    assert_eq!(
        scalar(&c1, "SELECT pg_backend_pid()").await.unwrap(),
        first_pid
    );
    let c2 = pool.get().await.unwrap();
    assert_ne!(
        scalar(&c2, "SELECT pg_backend_pid()").await.unwrap(),
        first_pid
    );
    assert_eq!(pool.size(), 2);

    let e = pool.get().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());

    // A connection the server killed is replaced, not handed out.
    let killer = pgtandem_pg::connect(&tcp(&pg, "postgres")).await.unwrap();
    let c1_pid = scalar(&c1, "SELECT pg_backend_pid()").await.unwrap();
    drop(c1);
    drop(c2);
    killer
        .batch_execute(&format!("SELECT pg_terminate_backend({c1_pid})"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Both pooled connections at once: the killed one must have been replaced.
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    for c in [&a, &b] {
        assert_ne!(scalar(c, "SELECT pg_backend_pid()").await.unwrap(), c1_pid);
    }
}
