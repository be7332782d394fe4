//! `make bench BENCH=etcd-sync`: `pgtandem etcd-sync` against a re-creation of the reference
//! pg_etcd design on the same etcd and PostgreSQL (specs/etcd-sync.md §6).
//!
//! pgtandem runs as the real binary. The reference design runs in-process on the same crates:
//! etcd→PG is a watch with one INSERT transaction per event; PG→etcd is a 1 s poll of `revision = -1`
//! rows with one Put plus one UPDATE per row. Both sides get the same load shapes: sustained
//! throughput (a fixed event count, measured until PostgreSQL or etcd has all of it) and latency
//! probes at 50/s over a 1,000 ops/s background load. Counts come from `PGTANDEM_BENCH_EVENTS`
//! (default 200,000; the reference gets a tenth, since it runs near 1,000 ops/s) and the versions
//! from `PGTANDEM_BENCH_PG` (`15`, `18`, default both).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client as EtcdClient, EventType, WatchOptions};
use futures_util::StreamExt;
use pgtandem_testkit::{Etcd, Pg, PgCluster};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client as PgClient, NoTls};

use super::stats::Latencies;

/// Concurrent etcd writers for the etcd→PG load, as in the spec.
const ETCD_WRITERS: usize = 32;
/// Concurrent PostgreSQL sessions for the PG→etcd load, each committing this many rows per transaction.
const PG_WRITERS: usize = 4;
const PG_ROWS_PER_TX: u64 = 1000;
/// Latency probes: this many, at 50 per second, over a 1,000 ops/s background load.
const PROBES: usize = 100;
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
const BACKGROUND_PER_10MS: usize = 10;
/// Keys for the startup-resync measurement (target: < 10 s).
const RESYNC_KEYS: u64 = 100_000;
/// Values are 256 bytes, keys 16–32 bytes, as in etcd's performance guide.
const VALUE_LEN: usize = 256;
/// Upper bound for any wait; a run that needs longer is broken, not slow.
const WAIT_LIMIT: Duration = Duration::from_secs(900);

const PROBE_TRIGGER: &str = "
    CREATE FUNCTION bench_probe_notify() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_notify('bench_probe', NEW.key); RETURN NULL; END $$;
    CREATE TRIGGER bench_probe AFTER INSERT ON etcd FOR EACH ROW
        WHEN (position('/probe/' in NEW.key) > 0) EXECUTE FUNCTION bench_probe_notify();";

const REFERENCE_SCHEMA: &str = "
    CREATE TABLE etcd (ts timestamptz NOT NULL DEFAULT now(), key text NOT NULL, value text,
                       revision bigint NOT NULL, tombstone boolean NOT NULL DEFAULT false,
                       PRIMARY KEY (key, revision));
    CREATE INDEX idx_etcd_pending ON etcd (key) WHERE revision = -1;";

/// What one side measured.
#[derive(Default)]
struct Report {
    e2p_events: u64,
    e2p_secs: f64,
    e2p_lag_secs: f64,
    e2p_latency: Latencies,
    p2e_rows: u64,
    p2e_secs: f64,
    p2e_latency: Latencies,
    resync_secs: Option<f64>,
}

pub fn run() -> Result<()> {
    let events: u64 = std::env::var("PGTANDEM_BENCH_EVENTS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("PGTANDEM_BENCH_EVENTS")?
        .unwrap_or(200_000);
    let versions = match std::env::var("PGTANDEM_BENCH_PG").as_deref() {
        Ok("15") => vec![Pg::V15],
        Ok("18") => vec![Pg::V18],
        _ => vec![Pg::V15, Pg::V18],
    };
    let runtime = tokio::runtime::Runtime::new()?;
    for version in versions {
        println!("== bench etcd-sync: etcd 3.4 and {version} (fsync on)");
        let etcd = Etcd::start()?;
        let cluster = PgCluster::builder(version)
            .guc("max_connections", "100")
            .start()?;
        cluster.create_database("tandem")?;
        cluster.create_database("reference")?;
        cluster.create_database("resync")?;
        let tandem = runtime.block_on(bench_pgtandem(&etcd, &cluster, events))?;
        let reference =
            runtime.block_on(bench_reference(&etcd, &cluster, (events / 10).max(1000)))?;
        print_report(&tandem, &reference);
    }
    Ok(())
}

fn print_report(t: &Report, r: &Report) {
    let rate = |n: u64, s: f64| n as f64 / s.max(1e-9);
    let (te, re) = (
        rate(t.e2p_events, t.e2p_secs),
        rate(r.e2p_events, r.e2p_secs),
    );
    let (tp, rp) = (rate(t.p2e_rows, t.p2e_secs), rate(r.p2e_rows, r.p2e_secs));
    println!("   etcd→PG sustained:");
    println!(
        "     reference design  {:>9.0} events/s ({} events, caught up {:.2}s after the load)",
        re, r.e2p_events, r.e2p_lag_secs
    );
    println!(
        "     pgtandem          {:>9.0} events/s ({} events, caught up {:.2}s after the load)  {:.1}x",
        te,
        t.e2p_events,
        t.e2p_lag_secs,
        te / re.max(1e-9)
    );
    println!("   PG→etcd sustained:");
    println!(
        "     reference design  {rp:>9.0} rows/s ({} rows)",
        r.p2e_rows
    );
    println!(
        "     pgtandem          {tp:>9.0} rows/s ({} rows)  {:.1}x",
        t.p2e_rows,
        tp / rp.max(1e-9)
    );
    println!("   etcd→PG latency over 1,000 ops/s background:");
    println!("     reference design  {}", r.e2p_latency.summary());
    println!("     pgtandem          {}", t.e2p_latency.summary());
    println!("   PG→etcd latency over 1,000 ops/s background:");
    println!("     reference design  {}", r.p2e_latency.summary());
    println!("     pgtandem          {}", t.p2e_latency.summary());
    if let Some(secs) = t.resync_secs {
        println!("   pgtandem startup resync of {RESYNC_KEYS} keys: {secs:.2}s");
    }
}

// ---------------------------------------------------------------- pgtandem side

async fn bench_pgtandem(etcd: &Etcd, cluster: &PgCluster, events: u64) -> Result<Report> {
    let mut report = Report::default();
    let pg = pg_connect(cluster, "tandem").await?;
    let etcd_client = etcd_connect(etcd).await?;
    let service = Service::spawn(etcd, cluster, "tandem", "/tandem/")?;
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
    pg.batch_execute(PROBE_TRIGGER).await?;

    let (secs, lag) = etcd_to_pg_load(&etcd_client, &pg, "/tandem/load/", events)
        .await
        .map_err(|e| service.explain(e))?;
    report.e2p_events = events;
    report.e2p_secs = secs;
    report.e2p_lag_secs = lag;
    report.e2p_latency = etcd_to_pg_latency(&etcd_client, cluster, "tandem", "/tandem/")
        .await
        .map_err(|e| service.explain(e))?;

    let insert = |key: &str| format!("SELECT etcd_set({key}, repeat('v', {VALUE_LEN}))");
    report.p2e_rows = events;
    report.p2e_secs = pg_to_etcd_load(
        cluster,
        "tandem",
        &etcd_client,
        "/tandem/w/",
        events,
        &insert,
    )
    .await
    .map_err(|e| service.explain(e))?;
    report.p2e_latency = pg_to_etcd_latency(cluster, "tandem", &etcd_client, "/tandem/", &insert)
        .await
        .map_err(|e| service.explain(e))?;
    drop(service);

    report.resync_secs = Some(startup_resync(etcd, cluster, &etcd_client).await?);
    Ok(report)
}

/// Time from start until a fresh instance has copied `RESYNC_KEYS` keys into an empty database.
async fn startup_resync(etcd: &Etcd, cluster: &PgCluster, etcd_client: &EtcdClient) -> Result<f64> {
    put_many(etcd_client, "/resync/", RESYNC_KEYS).await?;
    let pg = pg_connect(cluster, "resync").await?;
    let started = Instant::now();
    let service = Service::spawn(etcd, cluster, "resync", "/resync/")?;
    wait_for("the startup resync", || async {
        let n: Option<i64> = match pg.query_opt("SELECT count(*) FROM etcd", &[]).await {
            Ok(row) => row.map(|r| r.get(0)),
            Err(_) => None,
        };
        Ok(n.is_some_and(|n| n as u64 >= RESYNC_KEYS))
    })
    .await
    .map_err(|e| service.explain(e))?;
    Ok(started.elapsed().as_secs_f64())
}

/// The real binary as a child process, SIGTERMed (then killed) on drop.
pub(crate) struct Service {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    pub(crate) fn spawn(
        etcd: &Etcd,
        cluster: &PgCluster,
        db: &str,
        prefix: &str,
    ) -> Result<Service> {
        let dir = tempfile::Builder::new()
            .prefix("pgtandem-bench-")
            .tempdir()?;
        let log = dir.path().join("service.log");
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(crate::pgtandem_binary()?)
            .arg("etcd-sync")
            .arg("--postgres-dsn")
            .arg(cluster.conninfo(db))
            .arg("--etcd-dsn")
            .arg(format!("etcd://127.0.0.1:{}{prefix}", etcd.client_port()))
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting pgtandem etcd-sync")?;
        Ok(Service {
            child,
            log,
            _dir: dir,
        })
    }

    /// Adds the tail of the service log to an error.
    pub(crate) fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        e.context(format!("service log tail:\n{}", tail.join("\n")))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- reference side

async fn bench_reference(etcd: &Etcd, cluster: &PgCluster, events: u64) -> Result<Report> {
    let mut report = Report::default();
    let pg = pg_connect(cluster, "reference").await?;
    pg.batch_execute(REFERENCE_SCHEMA).await?;
    pg.batch_execute(PROBE_TRIGGER).await?;
    let etcd_client = etcd_connect(etcd).await?;
    let emulator = ReferenceDesign::start(etcd, cluster, "/ref/").await?;

    let (secs, lag) = etcd_to_pg_load(&etcd_client, &pg, "/ref/load/", events).await?;
    report.e2p_events = events;
    report.e2p_secs = secs;
    report.e2p_lag_secs = lag;
    report.e2p_latency = etcd_to_pg_latency(&etcd_client, cluster, "reference", "/ref/").await?;

    let insert = |key: &str| {
        format!(
            "INSERT INTO etcd (key, value, revision) SELECT {key}, repeat('v', {VALUE_LEN}), -1"
        )
    };
    report.p2e_rows = events;
    report.p2e_secs = pg_to_etcd_load(
        cluster,
        "reference",
        &etcd_client,
        "/ref/w/",
        events,
        &insert,
    )
    .await?;
    report.p2e_latency =
        pg_to_etcd_latency(cluster, "reference", &etcd_client, "/ref/", &insert).await?;
    emulator.stop();
    Ok(report)
}

/// The reference pg_etcd algorithm on the same crates: watch → one INSERT transaction per event,
/// and a 1 s poll → one Put plus one UPDATE per pending row.
struct ReferenceDesign {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReferenceDesign {
    async fn start(etcd: &Etcd, cluster: &PgCluster, prefix: &str) -> Result<ReferenceDesign> {
        let mut etcd_client = etcd_connect(etcd).await?;
        let ingest = pg_connect(cluster, "reference").await?;
        let poller = pg_connect(cluster, "reference").await?;
        let start = etcd_client
            .get(prefix, None)
            .await?
            .header()
            .map_or(0, |h| h.revision())
            + 1;
        let mut stream = etcd_client
            .watch(
                prefix,
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await?;
        let watch_task = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let tombstone = event.event_type() == EventType::Delete;
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    // One transaction per event, as the reference does.
                    let _ = ingest
                        .execute(
                            "INSERT INTO etcd (key, value, revision, tombstone) VALUES ($1, $2, $3, $4)
                             ON CONFLICT (key, revision) DO NOTHING",
                            &[&key, &value, &kv.mod_revision(), &tombstone],
                        )
                        .await;
                }
            }
        });
        let mut put_client = etcd_client.clone();
        let prefix_owned = prefix.to_owned();
        let poll_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Ok(rows) = poller
                    .query(
                        "SELECT key, value FROM etcd WHERE revision = -1 AND starts_with(key, $1) ORDER BY ts",
                        &[&prefix_owned],
                    )
                    .await
                else {
                    continue;
                };
                for row in rows {
                    let key: String = row.get(0);
                    let value: Option<String> = row.get(1);
                    let Ok(resp) = put_client
                        .put(key.as_str(), value.unwrap_or_default(), None)
                        .await
                    else {
                        continue;
                    };
                    let rev = resp.header().map_or(0, |h| h.revision());
                    let updated = poller
                        .execute(
                            "UPDATE etcd SET revision = $2 WHERE key = $1 AND revision = -1",
                            &[&key, &rev],
                        )
                        .await;
                    if updated.is_err() {
                        // The watch echo inserted (key, rev) first: the reference's PK race.
                        let _ = poller
                            .execute("DELETE FROM etcd WHERE key = $1 AND revision = -1", &[&key])
                            .await;
                    }
                }
            }
        });
        Ok(ReferenceDesign {
            tasks: vec![watch_task, poll_task],
        })
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------- shared load shapes

/// `events` puts from 32 writers; returns (seconds until PostgreSQL has them all, lag after the
/// last put).
async fn etcd_to_pg_load(
    etcd: &EtcdClient,
    pg: &PgClient,
    prefix: &str,
    events: u64,
) -> Result<(f64, f64)> {
    let started = Instant::now();
    put_many(etcd, prefix, events).await?;
    let load_done = started.elapsed();
    let want = i64::try_from(events)?;
    wait_for("PostgreSQL to ingest the etcd load", || async {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM etcd WHERE starts_with(key, $1)",
                &[&prefix],
            )
            .await?
            .get(0);
        Ok(n >= want)
    })
    .await?;
    let total = started.elapsed();
    Ok((total.as_secs_f64(), (total - load_done).as_secs_f64()))
}

/// `n` puts of 256-byte values under `prefix`, from `ETCD_WRITERS` concurrent writers.
async fn put_many(etcd: &EtcdClient, prefix: &str, n: u64) -> Result<()> {
    let value = "v".repeat(VALUE_LEN);
    let mut tasks = Vec::new();
    for w in 0..ETCD_WRITERS as u64 {
        let mut client = etcd.clone();
        let prefix = prefix.to_owned();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                client
                    .put(format!("{prefix}{i:08}"), value.as_str(), None)
                    .await?;
                i += ETCD_WRITERS as u64;
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Probe latency etcd put → row visible in PostgreSQL (NOTIFY from a trigger on `etcd`).
async fn etcd_to_pg_latency(
    etcd: &EtcdClient,
    cluster: &PgCluster,
    db: &str,
    prefix: &str,
) -> Result<Latencies> {
    let mut listener = pg_listen(cluster, db, "bench_probe").await?;
    let background = background_puts(etcd.clone(), format!("{prefix}bg/"));
    let mut client = etcd.clone();
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    for n in 0..PROBES {
        tick.tick().await;
        let key = format!("{prefix}probe/{n:04}");
        sent.insert(key.clone(), Instant::now());
        client.put(key, "p", None).await?;
    }
    let latencies = collect_latencies(&mut listener.rx, &sent).await;
    background.abort();
    latencies
}

/// `rows` rows written in PostgreSQL by `PG_WRITERS` sessions in 1,000-row transactions; returns
/// seconds until etcd has seen a PUT for each.
async fn pg_to_etcd_load(
    cluster: &PgCluster,
    db: &str,
    etcd: &EtcdClient,
    prefix: &str,
    rows: u64,
    insert: &dyn Fn(&str) -> String,
) -> Result<f64> {
    let mut seen = watch_puts(etcd, prefix).await?;
    let started = Instant::now();
    let per_writer = rows / PG_WRITERS as u64;
    let mut tasks = Vec::new();
    for w in 0..PG_WRITERS as u64 {
        let pg = pg_connect(cluster, db).await?;
        let key = format!("'{prefix}{w}/' || lpad(g::text, 8, '0')");
        let statement = format!(
            "{} FROM generate_series($1::bigint, $2::bigint) g",
            insert(&key)
        );
        tasks.push(tokio::spawn(async move {
            let mut first = 0i64;
            let last = per_writer as i64;
            while first < last {
                let upto = (first + PG_ROWS_PER_TX as i64).min(last) - 1;
                pg.execute(statement.as_str(), &[&first, &upto]).await?;
                first = upto + 1;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let want = per_writer * PG_WRITERS as u64;
    let mut count = 0u64;
    let deadline = Instant::now() + WAIT_LIMIT;
    while count < want {
        match tokio::time::timeout_at(deadline.into(), seen.recv()).await {
            Ok(Some((_, _))) => count += 1,
            Ok(None) => bail!("etcd watch ended after {count} of {want} PUTs"),
            Err(_) => bail!("only {count} of {want} rows reached etcd in {WAIT_LIMIT:?}"),
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Probe latency PostgreSQL commit → PUT seen by an etcd watch.
async fn pg_to_etcd_latency(
    cluster: &PgCluster,
    db: &str,
    etcd: &EtcdClient,
    prefix: &str,
    insert: &dyn Fn(&str) -> String,
) -> Result<Latencies> {
    let mut seen = watch_puts(etcd, &format!("{prefix}pprobe/")).await?;
    let bg_pg = pg_connect(cluster, db).await?;
    let bg_statement = format!(
        "{} FROM generate_series(1, {BACKGROUND_PER_10MS}) g",
        insert(&format!("'{prefix}pbg/' || $1::bigint || '/' || g"))
    );
    let background = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut i = 0i64;
        loop {
            tick.tick().await;
            let _ = bg_pg.execute(bg_statement.as_str(), &[&i]).await;
            i += 1;
        }
    });
    let pg = pg_connect(cluster, db).await?;
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    for n in 0..PROBES {
        tick.tick().await;
        let key = format!("{prefix}pprobe/{n:04}");
        sent.insert(key.clone(), Instant::now());
        pg.execute(insert(&format!("'{key}'")).as_str(), &[])
            .await?;
    }
    let latencies = collect_latencies(&mut seen, &sent).await;
    background.abort();
    latencies
}

/// Puts at about 1,000/s under `prefix` until aborted.
fn background_puts(mut etcd: EtcdClient, prefix: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut i = 0u64;
        loop {
            tick.tick().await;
            for _ in 0..BACKGROUND_PER_10MS {
                let _ = etcd.put(format!("{prefix}{i:08}"), "b", None).await;
                i += 1;
            }
        }
    })
}

async fn collect_latencies(
    arrivals: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    sent: &HashMap<String, Instant>,
) -> Result<Latencies> {
    let mut latencies = Latencies::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.len() < sent.len() {
        match tokio::time::timeout_at(deadline.into(), arrivals.recv()).await {
            Ok(Some((key, at))) => {
                if let Some(start) = sent.get(&key) {
                    latencies.push(at.saturating_duration_since(*start));
                }
            }
            Ok(None) => bail!("probe listener ended"),
            Err(_) => bail!(
                "only {} of {} probes arrived within 60 s",
                latencies.len(),
                sent.len()
            ),
        }
    }
    Ok(latencies)
}

// ---------------------------------------------------------------- plumbing

pub(crate) async fn pg_connect(cluster: &PgCluster, db: &str) -> Result<PgClient> {
    let (client, connection) = tokio_postgres::connect(&cluster.conninfo(db), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A LISTENing session: each notification's payload arrives with its arrival time.
struct Listener {
    _client: PgClient,
    rx: mpsc::UnboundedReceiver<(String, Instant)>,
}

async fn pg_listen(cluster: &PgCluster, db: &str, channel: &str) -> Result<Listener> {
    let (client, mut connection) = tokio_postgres::connect(&cluster.conninfo(db), NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message
                && tx.send((n.payload().to_owned(), Instant::now())).is_err()
            {
                break;
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    Ok(Listener {
        _client: client,
        rx,
    })
}

/// Every PUT under `prefix` from now on, with its arrival time.
async fn watch_puts(
    etcd: &EtcdClient,
    prefix: &str,
) -> Result<mpsc::UnboundedReceiver<(String, Instant)>> {
    let mut client = etcd.clone();
    let start = client
        .get(prefix, None)
        .await?
        .header()
        .map_or(0, |h| h.revision())
        + 1;
    let mut stream = client
        .watch(
            prefix,
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            for event in resp.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                if let Some(kv) = event.kv()
                    && tx
                        .send((String::from_utf8_lossy(kv.key()).into_owned(), now))
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

pub(crate) async fn etcd_connect(etcd: &Etcd) -> Result<EtcdClient> {
    Ok(EtcdClient::connect([etcd.endpoint()], None).await?)
}

/// Polls `condition` every 50 ms until it holds or `WAIT_LIMIT` passes.
pub(crate) async fn wait_for<F, Fut>(what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + WAIT_LIMIT;
    while Instant::now() < deadline {
        if condition().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out waiting for {what}")
}
