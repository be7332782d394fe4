//! COPY acceptance: a million varied rows streamed between two different
//! clusters arrive byte-for-byte equal (same md5 over their JSON form).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{cluster, scalar, tcp};
use pgtandem_pg::{Client, CopyFormat, copy_between, copy_in_sql, copy_out_sql};
use pgtandem_testkit::Pg;

const ROWS: u64 = 1_000_000;

const CREATE: &str = "CREATE TABLE t(id bigint primary key, txt text, n numeric, \
                      ts timestamptz, j jsonb, b bytea)";

/// NULLs in every nullable column, quotes, backslashes, tabs, newlines and
/// non-ASCII text, numerics with many digits, json with nested values.
const FILL: &str = r#"
INSERT INTO t
SELECT i,
       CASE WHEN i % 7 = 0 THEN NULL
            ELSE 'row ' || i || E' quote '' dq " backslash \\ tab\t nl\n ünïcødé ✓ ' || repeat('x', i % 13) END,
       CASE WHEN i % 11 = 0 THEN NULL ELSE (i * 1.000123)::numeric / 7 END,
       CASE WHEN i % 13 = 0 THEN NULL
            ELSE timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second 17 microseconds' END,
       CASE WHEN i % 17 = 0 THEN NULL
            ELSE jsonb_build_object('i', i, 's', 'v"\' || i, 'a', jsonb_build_array(i, i % 3 = 0, NULL)) END,
       CASE WHEN i % 19 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') END
FROM generate_series(1, 1000000) AS i
"#;

/// Order-sensitive digest of every value; TimeZone pinned so timestamptz
/// renders identically on both servers.
const CHECKSUM: &str = "SET TimeZone = 'UTC'; \
    SELECT count(*) || ':' || md5(string_agg(row_to_json(t)::text, E'\\n' ORDER BY id)) FROM t";

async fn checksum(client: &Client) -> String {
    // Two statements: the second result row is the digest.
    let messages = client.simple_query(CHECKSUM).await.unwrap();
    messages
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

async fn copy_million_rows(src_version: Pg, dst_version: Pg) {
    let src_pg = cluster(src_version);
    let dst_pg = cluster(dst_version);
    assert_ne!(src_pg.port(), dst_pg.port());
    let src = pgtandem_pg::connect(&tcp(&src_pg, "postgres"))
        .await
        .unwrap();
    let dst = pgtandem_pg::connect(&tcp(&dst_pg, "postgres"))
        .await
        .unwrap();
    src.batch_execute(CREATE).await.unwrap();
    src.batch_execute(FILL).await.unwrap();
    dst.batch_execute(CREATE).await.unwrap();
    assert_eq!(
        scalar(&dst, "SELECT count(*) FROM t").await.as_deref(),
        Some("0")
    );

    let reported = AtomicU64::new(0);
    let stats = copy_between(
        &src,
        &copy_out_sql("public", "t", &[], CopyFormat::Binary),
        &dst,
        &copy_in_sql("public", "t", &[], CopyFormat::Binary),
        |delta| {
            reported.fetch_add(delta, Ordering::Relaxed);
        },
    )
    .await
    .unwrap();

    assert_eq!(stats.rows, ROWS);
    assert!(stats.bytes > ROWS * 50, "only {} bytes", stats.bytes);
    assert_eq!(reported.load(Ordering::Relaxed), stats.bytes);

    let expected = checksum(&src).await;
    assert!(expected.starts_with("1000000:"), "{expected}");
    assert_eq!(checksum(&dst).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_million_rows_18_to_18() {
    copy_million_rows(Pg::V18, Pg::V18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_million_rows_15_to_18() {
    copy_million_rows(Pg::V15, Pg::V18).await;
}

#[tokio::test]
async fn failed_copies_leave_destination_empty_and_never_misattribute() {
    let src_pg = cluster(Pg::V18);
    let dst_pg = cluster(Pg::V18);
    let src = pgtandem_pg::connect(&tcp(&src_pg, "postgres"))
        .await
        .unwrap();
    let dst = pgtandem_pg::connect(&tcp(&dst_pg, "postgres"))
        .await
        .unwrap();
    src.batch_execute("CREATE TABLE u(id int, s text); INSERT INTO u VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    // Destination has a narrower column type: binary COPY must be rejected.
    dst.batch_execute("CREATE TABLE u(id int, s int)")
        .await
        .unwrap();
    let e = copy_between(
        &src,
        &copy_out_sql("public", "u", &["id", "s"], CopyFormat::Binary),
        &dst,
        &copy_in_sql("public", "u", &["id", "s"], CopyFormat::Binary),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(e.sqlstate().is_some(), "expected a server error, got {e}");
    // A failure inside copy mode leaves both connections usable.
    assert_eq!(
        scalar(&dst, "SELECT count(*) FROM u").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        scalar(&src, "SELECT count(*) FROM u").await.as_deref(),
        Some("2")
    );

    // A syntax error is caught by prepare and leaves the destination usable.
    let e = copy_between(&src, "COPY u TO STDOUT", &dst, "COPY u FRM STDIN", |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42601"), "{e}");
    assert!(!dst.is_closed());

    // A missing destination table fails before the source starts.
    let e = copy_between(
        &src,
        &copy_out_sql("public", "u", &[], CopyFormat::Text),
        &dst,
        &copy_in_sql("public", "missing", &[], CopyFormat::Text),
        |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42P01"), "{e}");
    // tokio-postgres would misattribute later results on this connection
    // (rust-postgres#789), so copy_between guarantees it is closed instead.
    assert!(dst.is_closed());
    let dst = pgtandem_pg::connect(&tcp(&dst_pg, "postgres"))
        .await
        .unwrap();
    assert_eq!(
        scalar(&dst, "SELECT count(*) FROM u").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        scalar(&src, "SELECT count(*) FROM u").await.as_deref(),
        Some("2")
    );

    // Text format works once the column type is fixed.
    dst.batch_execute("ALTER TABLE u ALTER COLUMN s TYPE text")
        .await
        .unwrap();
    let stats = copy_between(
        &src,
        &copy_out_sql("public", "u", &[], CopyFormat::Text),
        &dst,
        &copy_in_sql("public", "u", &[], CopyFormat::Text),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(stats.rows, 2);
    assert_eq!(
        scalar(&dst, "SELECT string_agg(id || s, ',' ORDER BY id) FROM u")
            .await
            .as_deref(),
        Some("1a,2b")
    );
}
