//! The long-running service (spec §3.1, §3.5, §3.6): startup sequence,
//! supervision with full-jitter backoff, outage budget and shutdown.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::ExitCode;
use crate::applier::Applier;
use crate::checkpoint::{Checkpoint, resync_reason};
use crate::config::{SchemaMode, Settings};
use crate::error::{SyncError, SyncResult};
use crate::etcd_session::EtcdSession;
use crate::leader::ControlSession;
use crate::resync::resync;
use crate::schema;
use crate::watch::{self, WatchEnd};

pub const GRACEFUL_SHUTDOWN: &str = "Graceful shutdown completed";
pub const SYNC_FAILED: &str = "Synchronization failed";
pub const PG_CONNECT_FAILED: &str = "Failed to connect to PostgreSQL after retries";
pub const ETCD_CONNECT_FAILED: &str = "Failed to connect to etcd after retries";

/// Startup retries: 100 ms doubling to 5 s; runtime: to 30 s.
const STARTUP_BACKOFF_CAP: Duration = Duration::from_secs(5);
const RUNTIME_BACKOFF_CAP: Duration = Duration::from_secs(30);
const WARN_EVERY: Duration = Duration::from_secs(30);
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Full-jitter backoff: uniform in `[0, min(cap, 100ms * 2^attempt)]`.
pub fn full_jitter(attempt: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(cap);
    let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Retries `op` with backoff until it succeeds, fails permanently, or `budget` is spent.
pub async fn with_budget<T, F, Fut>(budget: Duration, mut op: F) -> SyncResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = SyncResult<T>>,
{
    let deadline = Instant::now() + budget;
    let mut attempt = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = match tokio::time::timeout(remaining, op()).await {
            Ok(r) => r,
            Err(_) => Err(SyncError::Etcd {
                message: "timed out".into(),
                retryable: true,
            }),
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                tracing::debug!(error = %e, attempt, "connection attempt failed");
                let delay = full_jitter(attempt, STARTUP_BACKOFF_CAP).min(deadline - now);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Runs the service until `shutdown` resolves (exit 0) or a fatal error.
pub async fn run(settings: &Settings, shutdown: impl Future<Output = ()>) -> ExitCode {
    let code = tokio::select! {
        code = run_until_failure(settings) => code,
        () = shutdown => {
            tracing::info!("{GRACEFUL_SHUTDOWN}");
            return ExitCode::Success;
        }
    };
    code
}

/// `migrate`: connect, apply migrations, exit.
pub async fn run_migrate(settings: &Settings) -> ExitCode {
    let mut pg = match connect_pg(settings).await {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    match schema::migrate(&mut pg, settings.schema_mode, settings.skip_migrations).await {
        Ok(mode) => {
            tracing::info!(mode = mode.as_str(), "migrations applied");
            ExitCode::Success
        }
        Err(e) => schema_failure(e),
    }
}

fn schema_failure(e: SyncError) -> ExitCode {
    tracing::error!(error = %e, "schema check failed");
    if e.is_retryable() {
        ExitCode::Connection
    } else {
        ExitCode::Config
    }
}

/// PostgreSQL within `--connect-timeout`, else exit 2.
pub async fn connect_pg(settings: &Settings) -> Result<Client, ExitCode> {
    let info = settings.postgres.clone();
    let result = with_budget(settings.connect_timeout, || {
        let info = info.clone();
        async move {
            pgtandem_pg::connect(&info).await.map_err(|e| {
                // Any server answer at startup (auth, missing database) is final.
                if e.sqlstate().is_some() {
                    SyncError::Etcd {
                        message: e.to_string(),
                        retryable: false,
                    }
                } else {
                    SyncError::Pg(e)
                }
            })
        }
    })
    .await;
    result.map_err(|e| {
        tracing::error!(error = %e, "{PG_CONNECT_FAILED}");
        ExitCode::Connection
    })
}

/// etcd within `--connect-timeout` (probe included), else exit 2.
pub async fn connect_etcd(
    settings: &Settings,
) -> Result<(EtcdSession, crate::etcd_session::ProbeResult), ExitCode> {
    for name in &settings.etcd.unknown_params {
        tracing::warn!(param = %name, "unknown etcd DSN parameter ignored");
    }
    if settings
        .etcd
        .tls
        .as_ref()
        .is_some_and(|t| !t.verifies_server())
    {
        tracing::warn!("etcd TLS enabled without cacert: server certificate is not verified");
    }
    let dsn = settings.etcd.clone();
    let result = with_budget(settings.connect_timeout, || {
        let dsn = dsn.clone();
        async move {
            let session = EtcdSession::connect(&dsn).await?;
            let probe = session.probe(&dsn.prefix).await?;
            Ok((session, probe))
        }
    })
    .await;
    match result {
        Ok(ok) => {
            tracing::info!(endpoints = %settings.etcd.endpoints_display(), "Connected to etcd successfully");
            Ok(ok)
        }
        Err(e) => {
            tracing::error!(error = %e, "{ETCD_CONNECT_FAILED}");
            Err(ExitCode::Connection)
        }
    }
}

/// When the current outage began; cleared by any successful step.
#[derive(Default)]
struct OutageClock(Mutex<Option<Instant>>);

impl OutageClock {
    fn ok(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = None;
        }
    }

    /// Starts the clock (if not running) and returns how long the outage lasts.
    fn failed(&self) -> Duration {
        match self.0.lock() {
            Ok(mut g) => g.get_or_insert_with(Instant::now).elapsed(),
            Err(_) => Duration::ZERO,
        }
    }
}

async fn run_until_failure(settings: &Settings) -> ExitCode {
    let mut pg = match connect_pg(settings).await {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    let mode = match schema::migrate(&mut pg, settings.schema_mode, settings.skip_migrations).await
    {
        Ok(mode) => mode,
        Err(e) => return schema_failure(e),
    };
    drop(pg);
    let (etcd, _probe) = match connect_etcd(settings).await {
        Ok(ok) => ok,
        Err(code) => return code,
    };
    let clock = OutageClock::default();
    let mut attempt = 0u32;
    let mut last_warn: Option<Instant> = None;
    loop {
        let err = match cycle(settings, &etcd, mode, &clock).await {
            Ok(()) => continue,
            Err(e) => e,
        };
        if !err.is_retryable() {
            tracing::error!(error = %err, "{SYNC_FAILED}");
            return ExitCode::Runtime;
        }
        let outage = clock.failed();
        if let Some(budget) = settings.max_outage
            && outage > budget
        {
            tracing::error!(error = %err, outage_s = outage.as_secs(), "{SYNC_FAILED}");
            return ExitCode::Runtime;
        }
        if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(error = %err, "sync interrupted; reconnecting");
            last_warn = Some(Instant::now());
        }
        let mut delay = full_jitter(attempt, RUNTIME_BACKOFF_CAP);
        if let Some(budget) = settings.max_outage {
            delay = delay.min(budget.saturating_sub(outage) + Duration::from_millis(50));
        }
        tokio::time::sleep(delay).await;
        attempt = if outage.is_zero() { 0 } else { attempt + 1 };
    }
}

/// One supervised run: control session, lock, LISTEN, resync or watch, and
/// the applier, until something fails. No state survives a failure.
async fn cycle(
    settings: &Settings,
    etcd: &EtcdSession,
    mode: SchemaMode,
    clock: &OutageClock,
) -> SyncResult<()> {
    let prefix = settings.etcd.prefix.as_str();
    let mut control = ControlSession::connect(&settings.postgres).await?;
    control.acquire(prefix, settings.polling_interval).await?;
    control.listen().await?;
    let mut ingest_pg = pgtandem_pg::connect(&settings.postgres).await?;
    let mut queue_pg = pgtandem_pg::connect(&settings.postgres).await?;
    // A lost tail of outcome commits only leaves rows pending; re-applying
    // them is idempotent (§3.4 step 6), so no fsync wait per batch.
    queue_pg
        .batch_execute("SET synchronous_commit = off")
        .await?;
    let mut probe = Some(etcd.probe(prefix).await?);
    clock.ok();
    let mut forced: Option<&str> = None;
    let mut etcd_retry = EtcdRetry::default();
    loop {
        let pass = async {
            // After the first pass etcd may have moved on (or been replaced).
            let probe = match probe.take() {
                Some(p) => p,
                None => etcd.probe(prefix).await?,
            };
            let cluster_id = probe.cluster_id.to_string();
            let checkpoint = Checkpoint::load(&ingest_pg, prefix).await?;
            let reason = forced
                .take()
                .or_else(|| resync_reason(checkpoint.as_ref(), &cluster_id, probe.revision));
            let start = match (reason, &checkpoint) {
                (Some(reason), _) => {
                    let mut kv = etcd.kv();
                    resync(&mut ingest_pg, &mut kv, prefix, mode, &cluster_id, reason)
                        .await?
                        .revision
                        + 1
                }
                (None, Some(c)) => c.revision + 1,
                (None, None) => probe.revision + 1,
            };
            let mut applier = Applier::new(etcd.kv(), prefix, mode, settings.apply_batch());
            let ingest = watch::ingest(
                &mut ingest_pg,
                etcd,
                prefix,
                mode,
                start,
                settings.batch_size,
                || clock.ok(),
            );
            let apply = applier.run(
                &mut queue_pg,
                &mut control.notifications,
                settings.polling_interval,
                || clock.ok(),
            );
            let retention =
                retention_loop(&control.client, prefix, mode, settings.history_retention);
            tokio::select! {
                r = ingest => r.map(|WatchEnd::Compacted(_)| PassEnd::Compacted),
                r = apply => r.map(|()| PassEnd::Stopped),
                r = retention => r.map(|()| PassEnd::Stopped),
            }
        };
        match pass.await {
            Ok(PassEnd::Compacted) => forced = Some("compacted"),
            Ok(PassEnd::Stopped) => return Ok(()),
            Err(e) if is_etcd_loss(&e) => etcd_retry.wait(e, clock, settings.max_outage).await?,
            Err(e) => return Err(e),
        }
    }
}

/// Why one watch-and-apply pass ended without an error.
enum PassEnd {
    /// The watch start was compacted: resync, then watch again.
    Compacted,
    /// A loop returned on its own; the supervisor starts a new cycle.
    Stopped,
}

/// A lost etcd connection (not PostgreSQL, not the lock): §3.5 keeps the
/// PG sessions and the lock and only re-watches from the checkpoint.
fn is_etcd_loss(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::Etcd {
            retryable: true,
            ..
        }
    )
}

/// Backoff between re-watches while etcd is away.
#[derive(Default)]
struct EtcdRetry {
    attempt: u32,
    last_warn: Option<Instant>,
}

impl EtcdRetry {
    /// Sleeps before the next re-watch; gives the error back once the
    /// outage budget is spent, so the supervisor exits 4.
    async fn wait(
        &mut self,
        err: SyncError,
        clock: &OutageClock,
        budget: Option<Duration>,
    ) -> SyncResult<()> {
        let outage = clock.failed();
        if budget.is_some_and(|b| outage > b) {
            return Err(err);
        }
        if outage < Duration::from_millis(1) {
            self.attempt = 0;
        }
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(error = %err, "etcd unavailable; re-watching from the checkpoint");
            self.last_warn = Some(Instant::now());
        }
        let mut delay = full_jitter(self.attempt, RUNTIME_BACKOFF_CAP);
        if let Some(budget) = budget {
            delay = delay.min(budget.saturating_sub(outage) + Duration::from_millis(50));
        }
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        Ok(())
    }
}

async fn retention_loop(
    client: &Client,
    prefix: &str,
    mode: SchemaMode,
    retention: Option<Duration>,
) -> SyncResult<()> {
    let Some(keep) = retention else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(RETENTION_EVERY).await;
        let deleted = crate::retention::expire(client, prefix, mode, keep).await?;
        if deleted > 0 {
            tracing::info!(prefix, deleted, "history retention removed rows");
        }
    }
}
