//! The `pg` layer's raw COPY pipe against `psql -c 'COPY … TO STDOUT' | psql -c 'COPY … FROM STDIN'`.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use pgtandem_core::conninfo::ConnInfo;
use pgtandem_pg::CopyFormat;
use pgtandem_testkit::{Pg, PgCluster};

/// Rows of the benchmark table (about 130 MB of COPY text).
const COPY_ROWS: u64 = 2_000_000;

/// The `pg` layer's raw COPY pipe against its anchor, `psql -c 'COPY … TO STDOUT' | psql -c 'COPY …
/// FROM STDIN'`, moving the same table between the same two PostgreSQL 18 clusters.
pub fn run() -> Result<()> {
    println!("== bench copy: {COPY_ROWS} rows between two local PostgreSQL 18 clusters");
    let src = start()?;
    let dst = start()?;
    src.psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id bigint PRIMARY KEY, a text, b numeric, c timestamptz, d jsonb);
             INSERT INTO t SELECT g, md5(g::text) || repeat('x', g % 50), g * 1.5,
                    now() - g * interval '1 s', jsonb_build_object('g', g)
             FROM generate_series(1, {COPY_ROWS}) g;
             VACUUM ANALYZE t"
        ),
    )?;
    let table_bytes: u64 = src
        .psql("postgres", "SELECT pg_table_size('t')")?
        .parse()
        .context("pg_table_size")?;
    dst.psql(
        "postgres",
        "CREATE UNLOGGED TABLE t (id bigint, a text, b numeric, c timestamptz, d jsonb)",
    )?;

    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for (label, format) in [
        ("pgtandem copy_between (text)", CopyFormat::Text),
        ("pgtandem copy_between (binary)", CopyFormat::Binary),
    ] {
        dst.psql("postgres", "TRUNCATE t")?;
        let secs = runtime.block_on(pipe_copy(&src, &dst, format))?;
        results.push((label, secs));
    }
    dst.psql("postgres", "TRUNCATE t")?;
    let anchor = psql_pipe(&src, &dst)?;
    let rows: u64 = dst.psql("postgres", "SELECT count(*) FROM t")?.parse()?;
    ensure!(rows == COPY_ROWS, "anchor copied {rows} rows");

    let mb = table_bytes as f64 / 1e6;
    println!("   table size {mb:.1} MB");
    println!(
        "   {:<34} {:>8.2}s {:>8.1} MB/s  1.00x",
        "psql COPY | psql COPY (anchor)",
        anchor,
        mb / anchor
    );
    for (label, secs) in results {
        println!(
            "   {label:<34} {secs:>8.2}s {:>8.1} MB/s  {:.2}x",
            mb / secs,
            anchor / secs
        );
    }
    Ok(())
}

fn start() -> Result<PgCluster> {
    Ok(PgCluster::builder(Pg::V18)
        .guc("shared_buffers", "256MB")
        .guc("max_wal_size", "4GB")
        .start()?)
}

async fn pipe_copy(src: &PgCluster, dst: &PgCluster, format: CopyFormat) -> Result<f64> {
    let src_info: ConnInfo = src.conninfo("postgres").parse()?;
    let dst_info: ConnInfo = dst.conninfo("postgres").parse()?;
    let a = pgtandem_pg::connect(&src_info).await?;
    let b = pgtandem_pg::connect(&dst_info).await?;
    let started = Instant::now();
    let stats = pgtandem_pg::copy_between(
        &a,
        &pgtandem_pg::copy_out_sql("public", "t", &[], format),
        &b,
        &pgtandem_pg::copy_in_sql("public", "t", &[], format),
        |_| {},
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(stats.rows == COPY_ROWS, "copied {} rows", stats.rows);
    Ok(secs)
}

fn psql_pipe(src: &PgCluster, dst: &PgCluster) -> Result<f64> {
    let started = Instant::now();
    let mut out = Command::new(src.bin("psql"))
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(src.conninfo("postgres"))
        .args(["-c", "COPY t TO STDOUT"])
        .stdout(Stdio::piped())
        .spawn()
        .context("psql COPY TO")?;
    let stdout = out.stdout.take().context("psql stdout")?;
    let status_in = Command::new(dst.bin("psql"))
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(dst.conninfo("postgres"))
        .args(["-c", "COPY t FROM STDIN"])
        .stdin(stdout)
        .status()
        .context("psql COPY FROM")?;
    let status_out = out.wait()?;
    ensure!(
        status_in.success() && status_out.success(),
        "psql pipe failed"
    );
    Ok(started.elapsed().as_secs_f64())
}
