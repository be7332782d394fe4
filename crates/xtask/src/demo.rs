//! `make demo`: the main job on two embedded PostgreSQL 18 nodes, start to finish, unattended.
//!
//! Until the engines land this shows the foundation they stand on, for real: two local nodes from
//! the test kit, a table streamed between them through pgtandem's raw COPY pipe and proved equal by
//! checksum, a logical slot with an exported snapshot, and the drop-in names. Every later capability
//! adds its own step here. Everything started is removed at the end, also on failure.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use pgtandem_core::conninfo::ConnInfo;
use pgtandem_pg::{CopyFormat, ReplicationConnection, ReplicationMode, SnapshotAction};
use pgtandem_testkit::{Etcd, Pg, PgCluster};

/// Rows in the demo table: enough to see a rate, small enough to run in seconds.
const DEMO_ROWS: u64 = 200_000;

const CREATE_TABLE: &str = "CREATE TABLE public.accounts (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(12,2) NOT NULL,
    opened timestamptz NOT NULL,
    tags jsonb)";

const CHECKSUM: &str = "SELECT count(*)::text || ' rows, md5 ' || \
    md5(string_agg(row_to_json(a)::text, E'\\n' ORDER BY id)) FROM public.accounts a";

pub fn run() -> Result<()> {
    let started = Instant::now();
    step("pgtandem demo: two embedded PostgreSQL 18 nodes on this machine");
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;

    let node_a = start_node("node A")?;
    let node_b = start_node("node B")?;

    let mut result = runtime.block_on(demo_steps(&node_a, &node_b));
    if result.is_ok() {
        result = runtime.block_on(etcd_sync_step(&node_a));
    }
    if result.is_ok() {
        show_drop_in_names()?;
    }
    step("stopping both nodes and removing their directories");
    drop(node_a);
    drop(node_b);
    result?;
    step(&format!(
        "demo finished in {:.1}s; nothing left running",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn start_node(name: &str) -> Result<PgCluster> {
    let cluster = PgCluster::builder(Pg::V18)
        .guc("wal_level", "logical")
        .guc("max_replication_slots", "4")
        .guc("max_wal_senders", "4")
        .start()
        .with_context(|| format!("starting {name} (PostgreSQL 18); run `make deps` first"))?;
    let version = cluster.psql("postgres", "SHOW server_version")?;
    say(&format!(
        "{name}: PostgreSQL {version} on 127.0.0.1:{} (data {}, running as OS user {})",
        cluster.port(),
        cluster.data_dir().display(),
        cluster.owner().name()
    ));
    Ok(cluster)
}

async fn demo_steps(node_a: &PgCluster, node_b: &PgCluster) -> Result<()> {
    let a_info: ConnInfo = node_a.conninfo("postgres").parse()?;
    let b_info: ConnInfo = node_b.conninfo("postgres").parse()?;

    step(&format!(
        "filling public.accounts on node A with {DEMO_ROWS} rows"
    ));
    node_a.psql("postgres", CREATE_TABLE)?;
    node_a.psql(
        "postgres",
        &format!(
            "INSERT INTO public.accounts
             SELECT g, 'owner ' || g || CASE WHEN g % 7 = 0 THEN ' O''Brien \\ tab' ELSE '' END,
                    (g * 37 % 100000) / 100.0,
                    timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
                    CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'even', g % 2 = 0) END
             FROM generate_series(1, {DEMO_ROWS}) g"
        ),
    )?;
    node_b.psql("postgres", CREATE_TABLE)?;

    step("streaming it to node B through pgtandem's raw COPY pipe (rows are never decoded)");
    let src = pgtandem_pg::connect(&a_info).await?;
    let dst = pgtandem_pg::connect(&b_info).await?;
    let copy_started = Instant::now();
    let stats = pgtandem_pg::copy_between(
        &src,
        &pgtandem_pg::copy_out_sql("public", "accounts", &[], CopyFormat::Binary),
        &dst,
        &pgtandem_pg::copy_in_sql("public", "accounts", &[], CopyFormat::Binary),
        |_| {},
    )
    .await?;
    let secs = copy_started.elapsed().as_secs_f64().max(1e-6);
    say(&format!(
        "copied {} rows, {:.1} MB in {:.2}s ({:.1} MB/s)",
        stats.rows,
        stats.bytes as f64 / 1e6,
        secs,
        stats.bytes as f64 / 1e6 / secs
    ));

    step("comparing row_to_json checksums of both sides");
    let sum_a = node_a.psql("postgres", CHECKSUM)?;
    let sum_b = node_b.psql("postgres", CHECKSUM)?;
    say(&format!("node A: {sum_a}"));
    say(&format!("node B: {sum_b}"));
    ensure!(sum_a == sum_b, "node B differs from node A");
    say("identical");

    step("creating a logical slot with an exported snapshot on a replication connection");
    let mut repl = ReplicationConnection::connect(&a_info, ReplicationMode::Logical).await?;
    let system = repl.identify_system().await?;
    say(&format!(
        "IDENTIFY_SYSTEM: system id {}, timeline {}, WAL at {}",
        system.system_id, system.timeline, system.xlogpos
    ));
    let slot = repl
        .create_logical_slot("pgtandem_demo", "pgoutput", true, SnapshotAction::Export)
        .await?;
    let Some(snapshot) = slot.snapshot_name.clone() else {
        bail!("the server exported no snapshot");
    };
    say(&format!(
        "slot {} consistent at {}, snapshot {snapshot}",
        slot.slot_name, slot.consistent_point
    ));
    // Rows committed after the consistent point must not be in the snapshot.
    node_a.psql(
        "postgres",
        "INSERT INTO public.accounts VALUES (0, 'after the slot', 0, now(), NULL)",
    )?;
    let reader = pgtandem_pg::connect(&a_info).await?;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            pgtandem_core::quoting::quote_literal(&snapshot)
        ))
        .await?;
    let in_snapshot: i64 = reader
        .query_one("SELECT count(*) FROM public.accounts", &[])
        .await?
        .get(0);
    reader.batch_execute("COMMIT").await?;
    let now: String = node_a.psql("postgres", "SELECT count(*) FROM public.accounts")?;
    say(&format!(
        "a session importing the snapshot sees {in_snapshot} rows; the table now has {now}: \
         the row committed after the consistent point is left to the slot"
    ));
    ensure!(
        u64::try_from(in_snapshot)? == DEMO_ROWS,
        "snapshot saw {in_snapshot} rows"
    );
    repl.close().await?;
    let left = node_a.psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgtandem_demo'",
    )?;
    say(&format!(
        "temporary slot gone after the connection closed: {}",
        left == "0"
    ));
    ensure!(left == "0", "temporary slot survived its connection");
    Ok(())
}

/// A key flowing both ways between a local etcd and node A through the real `pgtandem etcd-sync`.
async fn etcd_sync_step(node: &PgCluster) -> Result<()> {
    use crate::bench::etcd_sync::{Service, etcd_connect, pg_connect, wait_for};
    step("etcd ⇄ PostgreSQL: `pgtandem etcd-sync` between a local etcd 3.4 and node A");
    let etcd = Etcd::start()?;
    node.create_database("etcd_demo")?;
    let service = Service::spawn(&etcd, node, "etcd_demo", "/demo/")?;
    say(&format!(
        "service started: prefix /demo/, etcd {}, database etcd_demo",
        etcd.endpoint()
    ));
    let pg = pg_connect(node, "etcd_demo").await?;
    let mut kv = etcd_connect(&etcd).await?;
    wait_for("the service's first checkpoint", || async {
        Ok(pg
            .query_opt("SELECT 1 FROM pg_etcd_state LIMIT 1", &[])
            .await
            .ok()
            .flatten()
            .is_some())
    })
    .await
    .map_err(|e| service.explain(e))?;

    kv.put("/demo/greeting", "hello from etcd", None).await?;
    wait_for("the etcd put to reach PostgreSQL", || async {
        Ok(pg
            .query_opt("SELECT 1 FROM etcd WHERE key = '/demo/greeting'", &[])
            .await?
            .is_some())
    })
    .await
    .map_err(|e| service.explain(e))?;
    let row = pg
        .query_one(
            "SELECT value, revision FROM etcd_get('/demo/greeting')",
            &[],
        )
        .await?;
    let (value, revision): (String, i64) = (row.get(0), row.get(1));
    say(&format!(
        "put /demo/greeting → PostgreSQL etcd_get: {value:?} at revision {revision}"
    ));

    pg.execute(
        "SELECT etcd_set('/demo/reply', 'hello from PostgreSQL')",
        &[],
    )
    .await?;
    let mut reader = kv.clone();
    wait_for("the PostgreSQL write to reach etcd", || {
        let mut reader = reader.clone();
        async move { Ok(!reader.get("/demo/reply", None).await?.kvs().is_empty()) }
    })
    .await
    .map_err(|e| service.explain(e))?;
    let got = reader.get("/demo/reply", None).await?;
    let kv0 = got.kvs().first().context("key vanished")?;
    let status: String = pg
        .query_one(
            "SELECT status FROM etcd_wal WHERE key = '/demo/reply' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    say(&format!(
        "SELECT etcd_set('/demo/reply', …) → etcd: {:?} at revision {} (queue row: {status})",
        kv0.value_str().unwrap_or("<binary>"),
        kv0.mod_revision()
    ));
    drop(service);
    say("service stopped with SIGTERM; etcd removed");
    Ok(())
}

/// Shows that one binary answers under every drop-in name.
fn show_drop_in_names() -> Result<()> {
    step("one binary, five names (symlinks made by `pgtandem install-links`)");
    let pgtandem = crate::pgtandem_binary()?;
    let links = tempfile::Builder::new()
        .prefix("pgtandem-demo-")
        .tempdir()?;
    run_checked(
        Command::new(&pgtandem)
            .arg("install-links")
            .arg(links.path()),
    )?;
    for (name, arg) in [
        ("pgtandem", "--version"),
        ("pgclone", "--version"),
        ("steep-repl", "--version"),
        ("pg-bootstrap-sync", "--version"),
        ("pg_etcd", "--version"),
    ] {
        let exe = if name == "pgtandem" {
            pgtandem.clone()
        } else {
            links.path().join(name)
        };
        let out = run_checked(Command::new(&exe).arg(arg))?;
        let first = out.lines().next().unwrap_or_default();
        say(&format!("{name} {arg}: {first}"));
    }
    Ok(())
}

fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn say(msg: &str) {
    println!("    {msg}");
}
