//! `validate` (spec §3.8): compares PostgreSQL at checkpoint C with etcd read
//! at revision C, so in-flight changes never show as differences.

use std::collections::BTreeMap;

use etcd_client::GetOptions;
use serde::Serialize;
use tokio_postgres::{Client, IsolationLevel};

use crate::ExitCode;
use crate::checkpoint::Checkpoint;
use crate::config::Settings;
use crate::error::{SyncError, SyncResult};
use crate::etcd_session::{EtcdSession, is_compacted, prefix_range_end};
use crate::leader::ControlSession;
use crate::resync::resync;
use crate::schema;

const PAGE: i64 = 1000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidateReport {
    pub prefix: String,
    pub compared_at_revision: i64,
    /// `exact` or `approximate`.
    pub mode: String,
    pub matched: u64,
    pub counts: BTreeMap<String, u64>,
    pub differences: Vec<Difference>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    pub key: String,
    pub kind: String,
    pub etcd: Option<Side>,
    pub pg: Option<Side>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Side {
    pub value: Option<String>,
    pub revision: i64,
}

/// Compares both sides; `max_differences` bounds the listed entries only.
pub async fn compare(
    pg: &mut Client,
    etcd: &EtcdSession,
    prefix: &str,
    max_differences: usize,
) -> SyncResult<ValidateReport> {
    let tx = pg
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let checkpoint = Checkpoint::load(&tx, prefix).await?;
    let mut pg_rows: BTreeMap<String, (Option<String>, i64)> = BTreeMap::new();
    let c = checkpoint.as_ref().map(|c| c.revision);
    for row in tx
        .query(
            "SELECT l.\"key\", l.\"value\", l.\"revision\" FROM (\
             SELECT DISTINCT ON (e.\"key\") e.\"key\", e.\"value\", e.\"revision\", e.\"tombstone\" \
             FROM \"etcd\" e WHERE starts_with(e.\"key\", $1) AND e.\"revision\" > 0 \
             AND ($2::int8 IS NULL OR e.\"revision\" <= $2) \
             ORDER BY e.\"key\", e.\"revision\" DESC) l WHERE NOT l.\"tombstone\"",
            &[&prefix, &c],
        )
        .await?
    {
        pg_rows.insert(row.get(0), (row.get(1), row.get(2)));
    }
    tx.commit().await?;
    let (etcd_rows, revision, exact) = match c {
        Some(c) => match read_etcd(etcd, prefix, Some(c)).await {
            Ok((rows, _)) => (rows, c, true),
            Err(SyncError::Compacted(_)) => {
                let (rows, rev) = read_etcd(etcd, prefix, None).await?;
                (rows, rev, false)
            }
            Err(e) => return Err(e),
        },
        None => {
            let (rows, rev) = read_etcd(etcd, prefix, None).await?;
            (rows, rev, false)
        }
    };
    let mut report = ValidateReport {
        prefix: prefix.to_owned(),
        compared_at_revision: revision,
        mode: if exact { "exact" } else { "approximate" }.to_owned(),
        matched: 0,
        counts: BTreeMap::new(),
        differences: Vec::new(),
        ok: true,
    };
    let add =
        |report: &mut ValidateReport, key: String, kind: &str, e: Option<Side>, p: Option<Side>| {
            *report.counts.entry(kind.to_owned()).or_default() += 1;
            if kind != "in_flight" {
                report.ok = false;
            }
            if report.differences.len() < max_differences {
                report.differences.push(Difference {
                    key,
                    kind: kind.to_owned(),
                    etcd: e,
                    pg: p,
                });
            }
        };
    let c_rev = c.unwrap_or(i64::MAX);
    for (key_bytes, (value_bytes, mod_rev)) in &etcd_rows {
        let key_text = String::from_utf8(key_bytes.clone())
            .ok()
            .filter(|k| !k.contains('\0'));
        let value_text = String::from_utf8(value_bytes.clone())
            .ok()
            .filter(|v| !v.contains('\0'));
        let etcd_side = Side {
            value: value_text.clone(),
            revision: *mod_rev,
        };
        let (Some(key), Some(_)) = (&key_text, &value_text) else {
            let key = String::from_utf8_lossy(key_bytes).into_owned();
            add(&mut report, key, "unrepresentable", Some(etcd_side), None);
            continue;
        };
        if !exact && *mod_rev > c_rev {
            pg_rows.remove(key);
            add(&mut report, key.clone(), "in_flight", Some(etcd_side), None);
            continue;
        }
        match pg_rows.remove(key) {
            None => add(
                &mut report,
                key.clone(),
                "missing_in_pg",
                Some(etcd_side),
                None,
            ),
            Some((value, rev)) => {
                let pg_side = Side {
                    value: value.clone(),
                    revision: rev,
                };
                if value != value_text {
                    add(
                        &mut report,
                        key.clone(),
                        "value_mismatch",
                        Some(etcd_side),
                        Some(pg_side),
                    );
                } else if rev != *mod_rev {
                    add(
                        &mut report,
                        key.clone(),
                        "revision_mismatch",
                        Some(etcd_side),
                        Some(pg_side),
                    );
                } else {
                    report.matched += 1;
                }
            }
        }
    }
    for (key, (value, rev)) in pg_rows {
        if !exact && rev > c_rev {
            continue;
        }
        add(
            &mut report,
            key,
            "missing_in_etcd",
            None,
            Some(Side {
                value,
                revision: rev,
            }),
        );
    }
    Ok(report)
}

type EtcdRows = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

/// All KVs under the prefix at `revision` (None = current), paginated.
async fn read_etcd(
    etcd: &EtcdSession,
    prefix: &str,
    revision: Option<i64>,
) -> SyncResult<(EtcdRows, i64)> {
    let mut kv = etcd.kv();
    let end = prefix_range_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    let mut at = revision;
    let mut out = BTreeMap::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if let Some(r) = at {
            options = options.with_revision(r);
        }
        let resp = match kv.get(start.clone(), Some(options)).await {
            Ok(r) => r,
            Err(e) if is_compacted(&e) => return Err(SyncError::Compacted(at.unwrap_or_default())),
            Err(e) => return Err(e.into()),
        };
        let header = resp.header().map(|h| h.revision()).unwrap_or_default();
        let rev = *at.get_or_insert(header);
        for k in resp.kvs() {
            out.insert(k.key().to_vec(), (k.value().to_vec(), k.mod_revision()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                let mut next = last.key().to_vec();
                next.push(0);
                start = next;
            }
            _ => return Ok((out, rev)),
        }
    }
}

/// `validate [--fix]`: prints the report; exit 0 if consistent, 4 otherwise.
pub async fn run(settings: &Settings, text: bool, max_differences: usize, fix: bool) -> ExitCode {
    let mut pg = match tokio::time::timeout(
        settings.connect_timeout,
        pgtandem_pg::connect(&settings.postgres),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "Failed to connect to PostgreSQL");
            return ExitCode::Connection;
        }
        Err(_) => return ExitCode::Connection,
    };
    let etcd = match tokio::time::timeout(
        settings.etcd.dial_timeout.max(settings.connect_timeout),
        async {
            let s = EtcdSession::connect(&settings.etcd).await?;
            let probe = s.probe(&settings.etcd.prefix).await?;
            Ok::<_, SyncError>((s, probe))
        },
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "Failed to connect to etcd");
            return ExitCode::Connection;
        }
        Err(_) => return ExitCode::Connection,
    };
    let prefix = settings.etcd.prefix.clone();
    if fix && let Err(code) = fix_by_resync(settings, &mut pg, &etcd, &prefix).await {
        return code;
    }
    match compare(&mut pg, &etcd.0, &prefix, max_differences).await {
        Ok(report) => {
            print_report(&report, text);
            if report.ok {
                ExitCode::Success
            } else {
                ExitCode::Runtime
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "validate failed");
            if e.is_retryable() {
                ExitCode::Connection
            } else {
                ExitCode::Runtime
            }
        }
    }
}

async fn fix_by_resync(
    settings: &Settings,
    pg: &mut Client,
    etcd: &(EtcdSession, crate::etcd_session::ProbeResult),
    prefix: &str,
) -> Result<(), ExitCode> {
    let control = ControlSession::connect(&settings.postgres)
        .await
        .map_err(|_| ExitCode::Connection)?;
    match control.try_lock(prefix).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(
                prefix,
                "another instance holds the leader lock; cannot --fix"
            );
            return Err(ExitCode::Runtime);
        }
        Err(_) => return Err(ExitCode::Connection),
    }
    let (mode, _) = schema::current_mode(pg)
        .await
        .map_err(|_| ExitCode::Connection)?;
    let mut kv = etcd.0.kv();
    let cluster = etcd.1.cluster_id.to_string();
    let result = resync(pg, &mut kv, prefix, mode, &cluster, "validate_fix").await;
    let _ = control.unlock(prefix).await;
    result.map(drop).map_err(|e| {
        tracing::error!(error = %e, "resync for --fix failed");
        ExitCode::Runtime
    })
}

fn print_report(report: &ValidateReport, text: bool) {
    if text {
        println!(
            "prefix {} compared at revision {} ({}): {} matched, {} differences; ok={}",
            report.prefix,
            report.compared_at_revision,
            report.mode,
            report.matched,
            report
                .counts
                .iter()
                .filter(|(k, _)| *k != "in_flight")
                .map(|(_, v)| v)
                .sum::<u64>(),
            report.ok
        );
        for d in &report.differences {
            println!("{} {}", d.kind, d.key);
        }
    } else {
        match serde_json::to_string(report) {
            Ok(json) => println!("{json}"),
            Err(e) => tracing::error!(error = %e, "cannot render report"),
        }
    }
}
