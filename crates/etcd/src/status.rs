//! `status` (spec §3.7): a one-shot health report as JSON (or text) with
//! exit 0 healthy, 4 unhealthy, 2 when a peer is unreachable.

use serde::Serialize;
use tokio_postgres::Client;

use crate::ExitCode;
use crate::checkpoint::Checkpoint;
use crate::config::{SchemaMode, Settings};
use crate::error::SyncResult;
use crate::etcd_session::{EtcdSession, prefix_options};
use crate::leader::lock_name;
use crate::schema;

/// Oldest pending queue row tolerated before status reports unhealthy.
const MAX_PENDING_AGE_S: f64 = 60.0;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    pub prefix: String,
    pub schema_mode: Option<String>,
    pub schema_version: Option<String>,
    pub leader: LeaderStatus,
    pub etcd: EtcdStatus,
    pub postgres: PostgresStatus,
    pub checkpoint: CheckpointStatus,
    pub last_resync: LastResync,
    pub queue: QueueStatus,
    pub rejects: i64,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LeaderStatus {
    pub held: bool,
    pub pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct EtcdStatus {
    pub reachable: bool,
    pub version: Option<String>,
    pub revision: Option<i64>,
    pub keys_in_prefix: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PostgresStatus {
    pub reachable: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CheckpointStatus {
    pub revision: Option<i64>,
    pub lag_revisions: Option<i64>,
    pub lag_keys: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LastResync {
    pub revision: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct QueueStatus {
    pub pending: i64,
    pub oldest_pending_age_s: Option<f64>,
    pub conflict: i64,
    pub failed: i64,
}

/// Gathers the report; the exit code follows §3.7.
pub async fn collect(settings: &Settings) -> (StatusReport, ExitCode) {
    let prefix = settings.etcd.prefix.clone();
    let mut report = StatusReport {
        prefix: prefix.clone(),
        schema_mode: None,
        schema_version: None,
        leader: LeaderStatus::default(),
        etcd: EtcdStatus::default(),
        postgres: PostgresStatus::default(),
        checkpoint: CheckpointStatus::default(),
        last_resync: LastResync::default(),
        queue: QueueStatus::default(),
        rejects: 0,
        healthy: false,
    };
    let pg = tokio::time::timeout(
        settings.connect_timeout,
        pgtandem_pg::connect(&settings.postgres),
    )
    .await;
    let pg = match pg {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "PostgreSQL unreachable");
            None
        }
        Err(_) => None,
    };
    let etcd = tokio::time::timeout(settings.etcd.dial_timeout, async {
        let session = EtcdSession::connect(&settings.etcd).await?;
        let probe = session.probe(&prefix).await?;
        let version = session.client().status().await?.version().to_owned();
        Ok::<_, crate::SyncError>((session, probe, version))
    })
    .await;
    let etcd = match etcd {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "etcd unreachable");
            None
        }
        Err(_) => None,
    };
    if let Some((_, probe, version)) = &etcd {
        report.etcd = EtcdStatus {
            reachable: true,
            version: Some(version.clone()),
            revision: Some(probe.revision),
            keys_in_prefix: Some(probe.keys_in_prefix),
        };
    }
    let mut pg_ok = false;
    if let Some(client) = &pg {
        match fill_from_pg(client, &mut report).await {
            Ok(()) => pg_ok = true,
            Err(e) => tracing::error!(error = %e, "status query failed"),
        }
    }
    report.postgres.reachable = pg.is_some();
    if let (Some(cp), Some((session, probe, _))) = (report.checkpoint.revision, &etcd) {
        report.checkpoint.lag_revisions = Some((probe.revision - cp).max(0));
        let options = prefix_options(&prefix)
            .with_count_only()
            .with_min_mod_revision(cp + 1);
        if let Ok(resp) = session.kv().get(prefix.as_str(), Some(options)).await {
            report.checkpoint.lag_keys = Some(resp.count());
        }
    }
    let reachable = pg_ok && etcd.is_some();
    report.healthy = reachable
        && report.leader.held
        && report.queue.failed == 0
        && report
            .queue
            .oldest_pending_age_s
            .is_none_or(|age| age <= MAX_PENDING_AGE_S);
    let code = if !reachable {
        ExitCode::Connection
    } else if report.healthy {
        ExitCode::Success
    } else {
        ExitCode::Runtime
    };
    (report, code)
}

async fn fill_from_pg(client: &Client, report: &mut StatusReport) -> SyncResult<()> {
    let (mode, version) = schema::current_mode(client).await?;
    report.schema_mode = version.as_ref().map(|_| mode.as_str().to_owned());
    report.schema_version = version;
    let leader = client
        .query_opt(
            "SELECT l.pid FROM pg_catalog.pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
             AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
             AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0) LIMIT 1",
            &[&lock_name(&report.prefix)],
        )
        .await?;
    report.leader = LeaderStatus {
        held: leader.is_some(),
        pid: leader.map(|r| r.get(0)),
    };
    if report.schema_version.is_none() {
        return Ok(());
    }
    if let Some(cp) = Checkpoint::load(client, &report.prefix).await? {
        report.checkpoint.revision = Some(cp.revision);
        report.last_resync = LastResync {
            revision: cp.last_resync_revision,
            reason: cp.last_resync_reason,
        };
    }
    let queue_sql = match mode {
        SchemaMode::TwoTable => {
            "SELECT count(*) FILTER (WHERE \"status\" = 'pending'), \
             extract(epoch FROM now() - min(\"ts\") FILTER (WHERE \"status\" = 'pending'))::float8, \
             count(*) FILTER (WHERE \"status\" = 'conflict'), count(*) FILTER (WHERE \"status\" = 'failed') \
             FROM \"etcd_wal\" WHERE starts_with(\"key\", $1)"
        }
        SchemaMode::SingleTable => {
            "SELECT count(*), extract(epoch FROM now() - min(\"ts\"))::float8, \
             (SELECT count(*) FROM \"pg_etcd_conflicts\" c WHERE starts_with(c.\"key\", $1) AND c.\"etcd_revision\" IS NOT NULL), \
             (SELECT count(*) FROM \"pg_etcd_conflicts\" c WHERE starts_with(c.\"key\", $1) AND c.\"etcd_revision\" IS NULL) \
             FROM \"etcd\" WHERE \"revision\" = -1 AND starts_with(\"key\", $1)"
        }
    };
    let row = client.query_one(queue_sql, &[&report.prefix]).await?;
    report.queue = QueueStatus {
        pending: row.get(0),
        oldest_pending_age_s: row
            .get::<_, Option<f64>>(1)
            .map(|a| (a * 1000.0).round() / 1000.0),
        conflict: row.get(2),
        failed: row.get(3),
    };
    let rejects = client
        .query_one(
            "SELECT count(*) FROM \"pg_etcd_rejects\" WHERE substring(\"key\" FROM 1 FOR octet_length(convert_to($1, 'UTF8'))) = convert_to($1, 'UTF8')",
            &[&report.prefix],
        )
        .await?;
    report.rejects = rejects.get(0);
    Ok(())
}

/// Prints the report and returns the exit code.
pub async fn run(settings: &Settings, text: bool) -> ExitCode {
    let (report, code) = Box::pin(collect(settings)).await;
    if text {
        println!("{}", render_text(&report));
    } else {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => tracing::error!(error = %e, "cannot render status"),
        }
    }
    code
}

fn render_text(r: &StatusReport) -> String {
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    format!(
        "prefix: {}\nschema: {} ({})\nleader: {}\netcd: reachable={} version={} revision={} keys={}\n\
         postgres: reachable={}\ncheckpoint: {} (lag {} revisions, {} keys)\n\
         queue: pending={} conflict={} failed={}\nrejects: {}\nhealthy: {}",
        r.prefix,
        r.schema_mode.as_deref().unwrap_or("-"),
        r.schema_version.as_deref().unwrap_or("-"),
        r.leader
            .pid
            .map_or("none".to_owned(), |p| format!("pid {p}")),
        r.etcd.reachable,
        r.etcd.version.as_deref().unwrap_or("-"),
        opt(r.etcd.revision),
        opt(r.etcd.keys_in_prefix),
        r.postgres.reachable,
        opt(r.checkpoint.revision),
        opt(r.checkpoint.lag_revisions),
        opt(r.checkpoint.lag_keys),
        r.queue.pending,
        r.queue.conflict,
        r.queue.failed,
        r.rejects,
        r.healthy
    )
}
