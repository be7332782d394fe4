//! The transport-independent orchestrator: the phases of clone.md §3.1 in
//! order, every check before the first destructive step, and a cleanup that
//! runs on every exit path.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgtandem_core::error::ErrorKind;
use pgtandem_pg::ConnParams;
use tokio_util::sync::CancellationToken;

use crate::durability::{fsync_dir, fsync_trees, write_atomic};
use crate::error::{CloneError, Result};
use crate::fileset::{
    self, Entry, EntryKind, Module, ModuleKind, PG_CONTROL, PG_CONTROL_TMP, apply_exclusions,
};
use crate::journal::{self, Completed, FileRecord, Journal, JournalHeader};
use crate::limiter::Limiter;
use crate::options::{CloneOptions, TransportKind, WalMethod};
use crate::preflight::{self, DiskNeed, TargetLock};
use crate::primary::{PrimaryFacts, Session, conn_params};
use crate::queue;
use crate::receivewal::ReceivewalCapture;
use crate::report::{ModuleSummary, Reporter, Summary};
use crate::standby;
use crate::transport::local::{remove_any, walk};
use crate::transport::{LocalTransport, RsyncTransport, SshTarget, Transport};
use crate::tunnel::Tunnel;
use crate::wal::{ReplicationHandle, SlotMode, WalCapture};

/// How a run ended: the summary (always) and the error, if any.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    pub error: Option<CloneError>,
}

impl Outcome {
    /// Process exit status (clone.md §2.5).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.error.is_some())
    }
}

/// Runs a clone on its own tokio runtime, handling SIGINT/SIGTERM/SIGHUP,
/// and prints progress, the summary (or JSON) as the options ask.
pub fn run(options: CloneOptions) -> Outcome {
    let reporter = Arc::new(Reporter::new(&options));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let error = CloneError::io("starting the async runtime", e);
            return finish(&reporter, Summary::default(), Some(error), Instant::now());
        }
    };
    let started = Instant::now();
    reporter.start_event(&options);
    let mut run = Run::new(options, Arc::clone(&reporter));
    let result = runtime.block_on(async {
        let outcome = tokio::select! {
            r = run.execute() => r,
            signal = termination_signal() => {
                run.cancel.store(true, Ordering::SeqCst);
                run.cancel_token.cancel();
                Err(CloneError::Cancelled(format!("Interrupted by {signal}")))
            }
        };
        let rc = i32::from(outcome.is_err());
        run.reporter.log(&format!("Running cleanup (rc={rc})..."));
        run.cleanup().await;
        run.reporter.log(&format!("Cleanup complete (rc={rc})"));
        outcome
    });
    // Workers stop at their next batch once cancelled; do not wait forever.
    runtime.shutdown_timeout(Duration::from_secs(10));
    let summary = std::mem::take(&mut run.summary);
    drop(run);
    finish(&reporter, summary, result.err(), started)
}

fn finish(
    reporter: &Reporter,
    mut summary: Summary,
    error: Option<CloneError>,
    started: Instant,
) -> Outcome {
    summary.ok = error.is_none();
    summary.exit_code = i32::from(error.is_some());
    summary.error = error.as_ref().map(ToString::to_string);
    summary.duration = started.elapsed();
    if let Some(e) = &error {
        reporter.error(&e.to_string());
    }
    reporter.summary(&summary);
    Outcome { summary, error }
}

async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// `PGTANDEM_TEST_STOP=<label>`: announce and stop until SIGCONT (§2.4).
pub fn stop_point(label: &str) {
    if std::env::var("PGTANDEM_TEST_STOP").ok().as_deref() == Some(label) {
        eprintln!("TEST_stop_point_{label}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The state of one run, kept outside the phase code so cleanup can see it.
struct Run {
    options: CloneOptions,
    reporter: Arc<Reporter>,
    pid: u32,
    cancel: Arc<AtomicBool>,
    cancel_token: CancellationToken,
    lock: Option<TargetLock>,
    run_dir: Option<tempfile::TempDir>,
    transport: Option<Arc<dyn Transport>>,
    session: Option<Session>,
    capture: Option<WalCapture>,
    receivewal: Option<ReceivewalCapture>,
    tunnel: Option<Tunnel>,
    repl_params: Option<ConnParams>,
    persistent_slot: Option<String>,
    journal: Option<Arc<Journal>>,
    /// `--resume`: files an interrupted run copied and fsynced.
    resumable: Completed,
    summary: Summary,
}

/// One copy module plus its target-side bookkeeping.
struct Planned {
    module: Module,
    entries: Vec<Entry>,
    list_time: Duration,
    deleted: u64,
}

impl Run {
    fn new(options: CloneOptions, reporter: Arc<Reporter>) -> Self {
        Self {
            options,
            reporter,
            pid: std::process::id(),
            cancel: Arc::new(AtomicBool::new(false)),
            cancel_token: CancellationToken::new(),
            lock: None,
            run_dir: None,
            transport: None,
            session: None,
            capture: None,
            receivewal: None,
            tunnel: None,
            repl_params: None,
            persistent_slot: None,
            journal: None,
            resumable: Completed::new(),
            summary: Summary::default(),
        }
    }

    fn waldir(&self) -> PathBuf {
        self.options
            .separate_waldir()
            .unwrap_or_else(|| self.options.replica_pgdata.join("pg_wal"))
    }

    async fn execute(&mut self) -> Result<()> {
        let reporter = Arc::clone(&self.reporter);
        reporter.phase("preflight");
        // 1. Options, root, tools, authentication, run dir.
        preflight::refuse_root()?;
        self.check_supported()?;
        self.auth_precheck()?;
        self.create_run_dir()?;
        // 2. Lock.
        let canonical = preflight::canonical_target(&self.options.replica_pgdata)?;
        self.lock = Some(TargetLock::acquire(&canonical)?);
        // 3. No live postmaster in the target.
        preflight::refuse_live_postmaster(&self.options.replica_pgdata)?;
        // 4. Reach the primary host.
        let mut transport = self.make_transport()?;
        let probe = transport.probe()?;
        // 5. SQL session and replication connection.
        // With the tunnel, PostgreSQL is reached at 127.0.0.1:<forward>.
        let mut pg_options = self.options.clone();
        if self.options.bypass_rep_traffic {
            let tunnel = Tunnel::open(&self.ssh_target()?, self.options.pgport)?;
            reporter.log(&format!("SSH tunnel on 127.0.0.1:{}", tunnel.local_port));
            pg_options.pghost = "127.0.0.1".into();
            pg_options.pgport = tunnel.local_port;
            self.tunnel = Some(tunnel);
        }
        let session_params = conn_params(&pg_options, &format!("pgclone-{}-session", self.pid))?;
        let repl_params = conn_params(&pg_options, &format!("pgclone-{}", self.pid))?;
        self.repl_params = Some(repl_params.clone());
        let session = Session::open(&session_params).await?;
        let facts = session.facts().await?;
        self.session = Some(session);
        let repl = ReplicationHandle::connect(&repl_params).await?;
        reporter.log(&format!(
            "Primary: PostgreSQL {} system {} timeline {} wal_segment_size {}",
            facts.version_num,
            repl.identity.system_id,
            repl.identity.timeline,
            facts.wal_segment_size
        ));
        let tablespaces = self.tablespace_targets(&facts)?;
        // 6. Same-host guard.
        let waldir = self.waldir();
        if probe.boot_id.is_some() && probe.boot_id == preflight::local_boot_id() {
            let mut targets = vec![self.options.replica_pgdata.clone()];
            if let Some(w) = self.options.separate_waldir() {
                targets.push(w);
            }
            targets.extend(tablespaces.iter().map(|(_, _, t)| t.clone()));
            let mut sources = vec![self.options.primary_pgdata.clone()];
            sources.extend(tablespaces.iter().map(|(_, s, _)| s.clone()));
            preflight::refuse_overlap(&targets, &sources)?;
        }
        // 7. Disk space.
        self.check_disk(&*transport, &facts, &tablespaces)?;
        let header = JournalHeader {
            system_id: repl.identity.system_id.clone(),
            timeline: repl.identity.timeline,
            major: facts.major(),
            transport: self.options.transport.as_str().to_owned(),
        };
        if self.options.resume {
            self.resumable = journal::load_for_resume(&self.options.replica_pgdata, &header)?;
            reporter.log(&format!(
                "Resuming: {} files recorded by the interrupted clone",
                self.resumable.len()
            ));
        }
        // 8. Only now: --drop-existing.
        if self.options.drop_existing {
            reporter.log("Removing existing replica directories (--drop-existing)");
            let mut dirs = vec![self.options.replica_pgdata.clone()];
            dirs.extend(self.options.separate_waldir());
            for d in dirs {
                remove_any(&d).map_err(|_| {
                    CloneError::refused(
                        ErrorKind::Permission,
                        "Failed to remove old replica directories",
                    )
                })?;
            }
        }
        // 9. Target layout, journal, WAL dir.
        self.prepare_target(&header, &facts, &waldir)?;
        // 10. WAL capture, then the file service.
        let slot_name = format!("pgclone_{}", self.pid);
        let mode = if self.options.no_slot {
            SlotMode::None
        } else if self.options.slot {
            SlotMode::Persistent
        } else {
            SlotMode::Temporary
        };
        let system_id = repl.identity.system_id.clone();
        let timeline = repl.identity.timeline;
        if self.options.wal_method == WalMethod::PgReceivewal {
            drop(repl);
            let run_dir = self
                .run_dir
                .as_ref()
                .map(|d| d.path().to_owned())
                .ok_or_else(no_transport)?;
            let receivewal =
                ReceivewalCapture::start(&pg_options, facts.major(), self.pid, &run_dir)?;
            self.persistent_slot = receivewal.slot.clone();
            self.receivewal = Some(receivewal);
            self.wait_receivewal().await?;
        } else {
            let warn_reporter = Arc::clone(&reporter);
            let capture =
                WalCapture::start(repl, &slot_name, mode, &waldir, &self.cancel_token, |m| {
                    warn_reporter.warn(m)
                })
                .await?;
            self.persistent_slot = capture.persistent_slot();
            let mut flushed = capture.flushed_watch();
            let progress_reporter = Arc::clone(&reporter);
            tokio::spawn(async move {
                loop {
                    let lsn = *flushed.borrow_and_update();
                    if let Ok(mut w) = progress_reporter.wal_flush.lock() {
                        *w = Some(lsn.to_string());
                    }
                    if flushed.changed().await.is_err() {
                        break;
                    }
                }
            });
            let walsender_pid = capture.backend_pid();
            self.capture = Some(capture);
            self.wait_walsender(walsender_pid).await?;
        }
        stop_point("after_wal_start");
        if let Some(slot) = self.options.standby_slot.clone() {
            self.session()?.create_slot_if_absent(&slot).await?;
        }
        let modules = self.modules(&tablespaces);
        transport.start(&modules)?;
        let transport: Arc<dyn Transport> = Arc::from(transport);
        self.transport = Some(Arc::clone(&transport));
        stop_point("after_rsyncd");
        // 11. Backup start.
        reporter.phase("backup_start");
        let start_lsn = self.session()?.backup_start().await?;
        self.summary.start_lsn = Some(start_lsn.to_string());
        reporter.log(&format!("Backup started at {start_lsn}"));
        // 12. List, delete, create dirs, copy.
        reporter.phase("copy");
        let copy_started = Instant::now();
        let planned = tokio::task::block_in_place(|| self.list_and_prune(&*transport, modules))?;
        self.copy(&transport, planned, copy_started).await?;
        stop_point("before_backup_stop");
        // 13. Backup stop, labels, pg_control.
        reporter.phase("backup_stop");
        let timeout = env_secs("PGTANDEM_BACKUP_STOP_TIMEOUT", 600);
        let stop = self
            .session()?
            .backup_stop((timeout > 0).then(|| Duration::from_secs(timeout)))
            .await?;
        self.summary.stop_lsn = Some(stop.lsn.to_string());
        reporter.log(&format!("Backup stopped at {}", stop.lsn));
        let pgdata = self.options.replica_pgdata.clone();
        write_atomic(
            &pgdata.join("backup_label"),
            stop.labelfile.as_bytes(),
            0o600,
        )?;
        if !tablespaces.is_empty() {
            let map = remap_tablespace_map(&stop.spcmapfile, &tablespaces);
            write_atomic(&pgdata.join("tablespace_map"), map.as_bytes(), 0o600)?;
        }
        let control = transport.read_file(&self.options.primary_pgdata.join(PG_CONTROL))?;
        let tmp = pgdata.join(PG_CONTROL_TMP);
        std::fs::write(&tmp, &control)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| CloneError::io(format!("writing {}", tmp.display()), e))?;
        if let Some(s) = self.session.take() {
            s.close();
        }
        // 14. WAL through the stop LSN.
        reporter.phase("wal_wait");
        let wal_limit = Duration::from_secs(env_secs("WAL_WAIT_TIMEOUT", 60));
        if let Some(mut rw) = self.receivewal.take() {
            let seg = facts.wal_segment_size;
            let moved = tokio::task::block_in_place(|| {
                rw.finish(stop.lsn, timeline, seg, &waldir, wal_limit)
            });
            let moved = match moved {
                Ok(m) => m,
                Err(e) => {
                    self.receivewal = Some(rw);
                    return Err(e);
                }
            };
            if let Some((from, to)) = &moved.renamed_partial {
                reporter.log(&format!(
                    "Partial WAL segment renamed: {} -> {}",
                    from.display(),
                    to.display()
                ));
            }
            self.summary.wal_segments = moved.segments;
            self.summary.wal_bytes = moved.bytes;
            drop(rw);
        } else {
            let capture = self.capture.take().ok_or_else(no_transport)?;
            let captured = capture
                .finish(
                    stop.lsn,
                    Duration::from_secs(env_secs("WAL_WAIT_TIMEOUT", 60)),
                )
                .await?;
            if let Some((from, to)) = &captured.renamed_partial {
                reporter.log(&format!(
                    "Partial WAL segment renamed: {} -> {}",
                    from.display(),
                    to.display()
                ));
            }
            let received = &captured.received;
            self.summary.wal_segments =
                received.completed_segments + u64::from(received.partial.is_some());
            self.summary.wal_bytes = received.flushed.saturating_sub(received.start);
        }
        if let Some(slot) = self.persistent_slot.take() {
            self.drop_persistent_slot(&slot).await;
        }
        // 15. Sanity of the result.
        self.verify_result(&facts, &waldir, &system_id)?;
        // 16. Standby config, fsync.
        if self.options.write_standby_config {
            standby::write_config(&pgdata, &self.options)?;
        }
        if !self.options.no_sync {
            reporter.phase("fsync");
            let mut roots = vec![pgdata.clone()];
            roots.extend(self.options.separate_waldir());
            roots.extend(tablespaces.iter().map(|(_, _, t)| t.clone()));
            let parallel = self.options.parallel;
            tokio::task::spawn_blocking(move || fsync_trees(&roots, parallel))
                .await
                .map_err(|e| CloneError::transport(format!("fsync task failed: {e}")))??;
        }
        // 17. pg_control last.
        std::fs::rename(&tmp, pgdata.join(PG_CONTROL))
            .map_err(|e| CloneError::io("installing global/pg_control", e))?;
        fsync_dir(&pgdata.join("global"))?;
        self.journal = None;
        journal::finish(&pgdata)?;
        std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CloneError::io(format!("chmod {}", pgdata.display()), e))?;
        fsync_dir(&pgdata)?;
        reporter.phase("done");
        if !self.options.write_standby_config {
            reporter.log(
                "Replica prepared. Don't forget: create standby.signal and set primary_conninfo \
                 (or rerun with -R) before starting it",
            );
        }
        self.summary.ok = true;
        if self.options.start {
            reporter.phase("standby_start");
            let limit = Duration::from_secs(env_secs("PGTANDEM_STANDBY_START_TIMEOUT", 60));
            standby::start(&pgdata, &self.options, limit).await?;
            reporter.log("Standby is streaming");
        }
        stop_point("before_exit");
        Ok(())
    }

    fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| CloneError::transport("the SQL session is closed"))
    }

    fn check_supported(&self) -> Result<()> {
        if self.options.transport == TransportKind::Rsync {
            for tool in ["ssh", "rsync"] {
                if !on_path(tool) {
                    return Err(CloneError::refused(
                        ErrorKind::Config,
                        format!("{tool} not found"),
                    ));
                }
            }
        }
        if self.options.temp_waldir.is_some() && self.options.wal_method == WalMethod::Native {
            self.reporter
                .log("--temp-waldir is not needed: WAL goes straight into the replica waldir");
        }
        Ok(())
    }

    /// How to reach the primary host over SSH.
    fn ssh_target(&self) -> Result<SshTarget> {
        let user = self.options.ssh_user.clone().ok_or_else(|| {
            CloneError::refused(ErrorKind::Config, "SSH_USER: --ssh-user required")
        })?;
        let key = match &self.options.ssh_key {
            Some(k) => {
                if std::fs::File::open(k).is_err() {
                    return Err(CloneError::refused(
                        ErrorKind::Config,
                        format!("SSH key missing or unreadable: {}", k.display()),
                    ));
                }
                Some(k.clone())
            }
            None => std::env::var_os("HOME").and_then(|home| {
                [
                    "id_rsa",
                    "id_ecdsa",
                    "id_ecdsa_sk",
                    "id_ed25519",
                    "id_ed25519_sk",
                ]
                .iter()
                .map(|n| Path::new(&home).join(".ssh").join(n))
                .find(|p| std::fs::File::open(p).is_ok())
            }),
        };
        let mut extra = self.options.ssh_options.clone();
        if let Ok(env) = std::env::var("PGTANDEM_SSH_OPTIONS") {
            extra.extend(env.split_whitespace().map(str::to_owned));
        }
        Ok(SshTarget {
            host: self.options.pghost.clone(),
            user,
            port: self.options.ssh_port,
            key,
            insecure: self.options.insecure_ssh,
            extra_options: extra,
            connect_timeout: env_secs("PGTANDEM_SSH_CONNECT_TIMEOUT", 30),
        })
    }

    /// The transport the options ask for (rsync needs the run dir).
    fn make_transport(&self) -> Result<Box<dyn Transport>> {
        if self.options.transport == TransportKind::Local {
            return Ok(Box::new(LocalTransport::new()));
        }
        let ssh = self.ssh_target()?;
        let run_dir = self
            .run_dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .ok_or_else(no_transport)?;
        let t = RsyncTransport::new(
            ssh,
            &run_dir,
            self.options.limit_net_bw,
            self.options.parallel,
        )?;
        if let (Some(total), Some(k)) = (self.options.limit_net_bw, t.bwlimit_kib()) {
            self.reporter.log(&format!(
                "Total bandwidth limit={} KB/s → per rsync={k} KB/s",
                total.div_ceil(1024)
            ));
        }
        Ok(Box::new(t))
    }

    /// pgclone refuses to start without a password source (§2.4).
    fn auth_precheck(&self) -> Result<()> {
        let env = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        let readable = |p: PathBuf| std::fs::File::open(p).is_ok();
        let ok = env("PGPASSWORD").is_some()
            || env("PGPASSFILE").is_some_and(|f| readable(PathBuf::from(f)))
            || env("HOME").is_some_and(|h| readable(Path::new(&h).join(".pgpass")))
            || self.options.pghost.starts_with('/')
            || self.options.bypass_rep_traffic;
        if ok {
            Ok(())
        } else {
            Err(CloneError::refused(
                ErrorKind::Auth,
                "Authentication required: set PGPASSWORD or create readable ~/.pgpass",
            ))
        }
    }

    /// `$TMPDIR/pgclone_.XXXXXX` with our pid; stale dirs of dead pids go.
    fn create_run_dir(&mut self) -> Result<()> {
        let base = std::env::temp_dir();
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("pgclone_.") {
                    continue;
                }
                let pid = std::fs::read_to_string(e.path().join("pgclone.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok());
                if let Some(pid) = pid
                    && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                        == Err(nix::errno::Errno::ESRCH)
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("pgclone_.")
            .rand_bytes(6)
            .tempdir_in(&base)
            .map_err(|e| CloneError::io(format!("creating a run dir in {}", base.display()), e))?;
        std::fs::write(dir.path().join("pgclone.pid"), format!("{}\n", self.pid))
            .map_err(|e| CloneError::io("writing pgclone.pid", e))?;
        self.run_dir = Some(dir);
        Ok(())
    }

    /// `(oid, primary location, replica target)` per tablespace.
    fn tablespace_targets(&self, facts: &PrimaryFacts) -> Result<Vec<(u32, PathBuf, PathBuf)>> {
        for m in &self.options.tablespace_mappings {
            if !facts.tablespaces.iter().any(|(_, loc)| *loc == m.old) {
                return Err(CloneError::refused(
                    ErrorKind::Config,
                    format!(
                        "--tablespace-mapping: no tablespace at {} on the primary",
                        m.old.display()
                    ),
                ));
            }
        }
        Ok(facts
            .tablespaces
            .iter()
            .map(|(oid, loc)| {
                let target = self
                    .options
                    .tablespace_mappings
                    .iter()
                    .find(|m| m.old == *loc)
                    .map_or_else(|| loc.clone(), |m| m.new.clone());
                (*oid, loc.clone(), target)
            })
            .collect())
    }

    fn check_disk(
        &self,
        transport: &dyn Transport,
        facts: &PrimaryFacts,
        tablespaces: &[(u32, PathBuf, PathBuf)],
    ) -> Result<()> {
        let pgdata_bytes = transport
            .disk_usage(std::slice::from_ref(&self.options.primary_pgdata))
            .map_err(|_| CloneError::transport("du failed on primary"))?;
        let mut needs = vec![DiskNeed {
            target: self.options.replica_pgdata.clone(),
            incoming: pgdata_bytes,
            reusable: preflight::existing_bytes(&self.options.replica_pgdata),
        }];
        needs.push(DiskNeed {
            target: self.waldir(),
            incoming: 3 * facts.wal_segment_size,
            reusable: 0,
        });
        for (_, source, target) in tablespaces {
            let incoming = transport
                .disk_usage(std::slice::from_ref(source))
                .map_err(|_| CloneError::transport("du failed on primary"))?;
            needs.push(DiskNeed {
                target: target.clone(),
                incoming,
                reusable: preflight::existing_bytes(target),
            });
        }
        preflight::check_disk(&needs)
    }

    fn prepare_target(
        &mut self,
        header: &JournalHeader,
        facts: &PrimaryFacts,
        waldir: &Path,
    ) -> Result<()> {
        let pgdata = &self.options.replica_pgdata.clone();
        create_private_dir(pgdata)?;
        if journal::interrupted(pgdata) && !self.options.resume {
            self.reporter
                .log("Found interrupted clone state; use --resume to skip files completed earlier");
        }
        remove_any(&pgdata.join(PG_CONTROL))?;
        remove_any(&pgdata.join(PG_CONTROL_TMP))?;
        fsync_dir(pgdata)?;
        self.journal = Some(Arc::new(Journal::create(pgdata, header, &self.resumable)?));
        let link = pgdata.join("pg_wal");
        if let Some(dir) = self.options.separate_waldir() {
            create_private_dir(&dir)?;
            let is_right_link = std::fs::read_link(&link).is_ok_and(|t| t == dir);
            if !is_right_link {
                remove_any(&link)?;
                std::os::unix::fs::symlink(&dir, &link)
                    .map_err(|e| CloneError::io(format!("symlink {}", link.display()), e))?;
            }
        } else if link.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            remove_any(&link)?;
        }
        create_private_dir(waldir)?;
        purge_wal(waldir)?;
        if facts.major() >= 17 {
            create_private_dir(&waldir.join("summaries"))?;
        }
        Ok(())
    }

    /// pgclone's `sleep 3`, replaced by a `pg_stat_replication` wait that
    /// also watches the child.
    async fn wait_receivewal(&mut self) -> Result<()> {
        let limit = env_secs("REPLICATION_START_TIMEOUT", 60);
        let deadline = Instant::now() + Duration::from_secs(limit);
        let name = format!("pgclone-{}", self.pid);
        loop {
            if let Some(rw) = self.receivewal.as_mut()
                && rw.exited()
            {
                eprintln!("{}", rw.log_tail());
                return Err(CloneError::transport("pg_receivewal failed"));
            }
            if self.session()?.walsender_running(None, &name).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CloneError::Timeout(format!(
                    "Timeout {limit}s: WAL streaming did not start"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_walsender(&self, pid: Option<i32>) -> Result<()> {
        let limit = env_secs("REPLICATION_START_TIMEOUT", 60);
        let deadline = Instant::now() + Duration::from_secs(limit);
        let name = format!("pgclone-{}", self.pid);
        loop {
            if self.session()?.walsender_running(pid, &name).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CloneError::Timeout(format!(
                    "Timeout {limit}s: WAL streaming did not start"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn modules(&self, tablespaces: &[(u32, PathBuf, PathBuf)]) -> Vec<Module> {
        let (p, r) = (&self.options.primary_pgdata, &self.options.replica_pgdata);
        let mut modules = vec![
            Module {
                name: "pgdata".into(),
                kind: ModuleKind::Pgdata,
                source: p.clone(),
                target: r.clone(),
                prune: vec![PathBuf::from("base"), PathBuf::from("pg_wal")],
            },
            Module {
                name: "base".into(),
                kind: ModuleKind::Base,
                source: p.join("base"),
                target: r.join("base"),
                prune: vec![],
            },
        ];
        for (oid, source, target) in tablespaces {
            modules.push(Module {
                name: format!("spc_{oid}"),
                kind: ModuleKind::Tablespace { oid: *oid },
                source: source.clone(),
                target: target.clone(),
                prune: vec![],
            });
        }
        modules
    }

    /// Lists every module, deletes what the primary lacks, creates dirs and
    /// links (blocking work, run off the async threads).
    fn list_and_prune(
        &self,
        transport: &dyn Transport,
        modules: Vec<Module>,
    ) -> Result<Vec<Planned>> {
        let mut planned = Vec::new();
        for module in modules {
            let started = Instant::now();
            let listed = apply_exclusions(module.kind, transport.list(&module)?);
            let list_time = started.elapsed();
            let deleted = sync_target_tree(&module, &listed)?;
            planned.push(Planned {
                module,
                entries: listed,
                list_time,
                deleted,
            });
        }
        // Tablespace links point at the mapped targets.
        let tblspc = self.options.replica_pgdata.join("pg_tblspc");
        create_private_dir(&tblspc)?;
        for p in &planned {
            if let ModuleKind::Tablespace { oid } = p.module.kind {
                let link = tblspc.join(oid.to_string());
                let right = std::fs::read_link(&link).is_ok_and(|t| t == p.module.target);
                if !right {
                    remove_any(&link)?;
                    std::os::unix::fs::symlink(&p.module.target, &link)
                        .map_err(|e| CloneError::io(format!("symlink {}", link.display()), e))?;
                }
            }
        }
        // Links of tablespaces that no longer exist on the primary.
        if let Ok(entries) = std::fs::read_dir(&tblspc) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let known = planned
                    .iter()
                    .any(|p| matches!(p.module.kind, ModuleKind::Tablespace { oid } if oid.to_string() == name));
                let in_place = planned[0]
                    .entries
                    .iter()
                    .any(|en| en.path == Path::new("pg_tblspc").join(&name));
                if !known && !in_place {
                    remove_any(&e.path())?;
                }
            }
        }
        Ok(planned)
    }

    async fn copy(
        &mut self,
        transport: &Arc<dyn Transport>,
        planned: Vec<Planned>,
        started: Instant,
    ) -> Result<()> {
        let files: Vec<Vec<Entry>> = planned
            .iter()
            .map(|p| {
                p.entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::File)
                    .cloned()
                    .collect()
            })
            .collect();
        let files = self.skip_resumable(&planned, files);
        let total_bytes: u64 = files.iter().flatten().map(|e| e.size).sum();
        let total_files = files.iter().map(Vec::len).sum::<usize>() as u64;
        let modules: Vec<Module> = planned.iter().map(|p| p.module.clone()).collect();
        let items = queue::plan(&files, |m, e| {
            modules[m]
                .target
                .join(&e.path)
                .symlink_metadata()
                .is_ok_and(|md| md.is_file())
        });
        self.summary.bytes_total = total_bytes;
        self.reporter.progress.set_total(Some(total_bytes));
        self.reporter
            .files_total
            .store(total_files, Ordering::Relaxed);
        self.reporter.log(&format!(
            "Copying {total_files} files ({} bytes) in {} batches with {} workers",
            total_bytes,
            items.len(),
            self.options.parallel
        ));
        let files_done = Arc::new(AtomicU64::new(0));
        let ticker = self.reporter.ticker(Arc::clone(&files_done));
        let (transport, cancel, reporter) = (
            Arc::clone(transport),
            Arc::clone(&self.cancel),
            Arc::clone(&self.reporter),
        );
        let (parallel, paranoid, limit) = (
            self.options.parallel,
            self.options.paranoid,
            self.options.limit_net_bw,
        );
        let modules_for_queue = modules.clone();
        let local = self.options.transport == TransportKind::Local;
        let journal = self.journal.clone();
        let sync_files = !self.options.no_sync;
        let outcome = tokio::task::spawn_blocking(move || {
            let limiter = Limiter::new(limit.filter(|_| local));
            queue::run(
                &*transport,
                &modules_for_queue,
                items,
                parallel,
                paranoid,
                &limiter,
                &reporter.progress,
                &cancel,
                &|module, item, stats| {
                    record_batch(journal.as_deref(), sync_files, module, item, stats)
                },
                &|| stop_point("during_copy"),
            )
        })
        .await
        .map_err(|e| CloneError::transport(format!("rsync worker failed: {e}")))?;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                ticker.finish(false, 0);
                return Err(e);
            }
        };
        let vanished: u64 = outcome
            .per_module
            .iter()
            .map(|s| s.vanished.len() as u64)
            .sum();
        files_done.store(total_files - vanished, Ordering::Relaxed);
        ticker.finish(true, total_files - vanished);
        for w in &outcome.workers {
            self.reporter.worker(w);
        }
        self.summary.copy_time = started.elapsed();
        self.summary.modules = planned
            .into_iter()
            .zip(outcome.per_module)
            .map(|(p, stats)| ModuleSummary {
                name: p.module.name,
                deleted: p.deleted + stats.vanished.len() as u64,
                stats,
                list_time: p.list_time,
            })
            .collect();
        Ok(())
    }

    /// `--resume`: drops journalled files whose source and replica copy are
    /// unchanged since they were fsynced (no transport round trip).
    fn skip_resumable(&mut self, planned: &[Planned], files: Vec<Vec<Entry>>) -> Vec<Vec<Entry>> {
        if self.resumable.is_empty() {
            return files;
        }
        let mut out = Vec::with_capacity(files.len());
        for (p, list) in planned.iter().zip(files) {
            let mut keep = Vec::with_capacity(list.len());
            for e in list {
                let key = (p.module.name.clone(), e.path.to_string_lossy().into_owned());
                let source = (e.size, i64::try_from(e.mtime_ns).unwrap_or(i64::MIN));
                let unchanged = self.resumable.get(&key) == Some(&source)
                    && p.module
                        .target
                        .join(&e.path)
                        .symlink_metadata()
                        .is_ok_and(|m| m.is_file() && (m.len(), mtime_i64(&m)) == source);
                if unchanged {
                    self.summary.resume_skipped_files += 1;
                    self.summary.resume_skipped_bytes += e.size;
                } else {
                    keep.push(e);
                }
            }
            out.push(keep);
        }
        out
    }

    fn verify_result(&self, facts: &PrimaryFacts, waldir: &Path, _system_id: &str) -> Result<()> {
        let pgdata = &self.options.replica_pgdata;
        let missing = |f: &Path| {
            CloneError::refused(ErrorKind::Corrupt, format!("Missing file: {}", f.display()))
        };
        let version = pgdata.join("PG_VERSION");
        if !version.exists() {
            return Err(missing(&version));
        }
        let inside = |p: &Path| p.starts_with(&facts.data_directory);
        for (setting, name) in [
            (&facts.config_file, "postgresql.conf"),
            (&facts.hba_file, "pg_hba.conf"),
        ] {
            if (setting.as_os_str().is_empty() || inside(setting)) && !pgdata.join(name).exists() {
                return Err(missing(&pgdata.join(name)));
            }
        }
        let has_wal = std::fs::read_dir(waldir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| is_wal_name(&e.file_name().to_string_lossy()))
            })
            .unwrap_or(false);
        if !has_wal {
            return Err(CloneError::refused(
                ErrorKind::Corrupt,
                format!(
                    "No WAL files in {}, see pg_walreceiver log {}/pg_receivewal.log",
                    waldir.display(),
                    waldir.display()
                ),
            ));
        }
        Ok(())
    }

    async fn drop_persistent_slot(&self, slot: &str) {
        let Some(params) = &self.repl_params else {
            return;
        };
        if let Err(e) = crate::wal::drop_slot(params, slot).await {
            self.reporter
                .warn(&format!("WARNING: {e}; trying pg_drop_replication_slot"));
            if let Ok(session) = Session::open(params).await
                && let Err(e) = session.drop_slot(slot).await
            {
                self.reporter
                    .warn(&format!("WARNING: could not drop slot {slot}: {e}"));
            }
        } else {
            self.reporter
                .log(&format!("Replication slot {slot} dropped"));
        }
    }

    /// Idempotent: stops capture and workers, drops a `--slot` slot, closes
    /// the session (aborting a running backup), removes the run dir and lock.
    async fn cleanup(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(capture) = self.capture.take() {
            capture.abort().await;
        }
        if let Some(mut rw) = self.receivewal.take() {
            tokio::task::block_in_place(|| rw.cleanup());
        }
        if let Some(mut t) = self.transport.take()
            && let Some(t) = Arc::get_mut(&mut t)
        {
            let _ = t.stop();
            t.cleanup();
        }
        if let Some(slot) = self.persistent_slot.take() {
            self.drop_persistent_slot(&slot).await;
        }
        if let Some(s) = self.session.take() {
            s.close();
        }
        if let Some(mut t) = self.tunnel.take() {
            // Let the closed session's packets leave before the forward goes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            t.close();
        }
        if let Some(dir) = self.run_dir.take() {
            if self.options.keep_run_tmp {
                let kept = dir.keep();
                self.reporter
                    .log(&format!("Run dir kept: {}", kept.display()));
            } else {
                let _ = dir.close();
            }
        }
        self.lock = None;
    }
}

fn mtime_i64(meta: &std::fs::Metadata) -> i64 {
    i64::try_from(crate::transport::local::mtime_ns(meta)).unwrap_or(i64::MIN)
}

/// After each batch: fsync its files (unless `--no-sync`), then journal
/// them, so a journalled file is always durable.
fn record_batch(
    journal: Option<&Journal>,
    sync_files: bool,
    module: &Module,
    item: &queue::WorkItem,
    stats: &crate::transport::CopyStats,
) -> Result<()> {
    let Some(journal) = journal else {
        return Ok(());
    };
    let mut records = Vec::with_capacity(item.files.len());
    for e in &item.files {
        if stats.vanished.contains(&e.path) {
            continue;
        }
        let path = module.target.join(&e.path);
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if sync_files {
            file.sync_all()
                .map_err(|err| CloneError::io(format!("fsync {}", path.display()), err))?;
        }
        let meta = file
            .metadata()
            .map_err(|err| CloneError::io(format!("stat {}", path.display()), err))?;
        records.push(FileRecord {
            m: module.name.clone(),
            p: e.path.to_string_lossy().into_owned(),
            s: meta.len(),
            t: mtime_i64(&meta),
        });
    }
    journal.append(&records)
}

/// Whether `tool` is an executable file on `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn no_transport() -> CloneError {
    CloneError::transport("internal: run state missing")
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CloneError::io(format!("creating {}", dir.display()), e))
}

/// WAL segment, `.partial` and `.history` names.
fn is_wal_name(name: &str) -> bool {
    let hex24 = |s: &str| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit());
    hex24(name)
        || name.strip_suffix(".partial").is_some_and(hex24)
        || name
            .strip_suffix(".history")
            .is_some_and(|s| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes old WAL so only this run's stream lands in the waldir.
fn purge_wal(waldir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(waldir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_wal_name(&name) {
            remove_any(&e.path())?;
        } else if (name == "archive_status" || name == "summaries")
            && let Ok(inner) = std::fs::read_dir(e.path())
        {
            for i in inner.flatten() {
                remove_any(&i.path())?;
            }
        }
    }
    Ok(())
}

/// Rewrites `tablespace_map` lines (`<oid> <path>`) to the mapped targets.
fn remap_tablespace_map(spcmap: &str, tablespaces: &[(u32, PathBuf, PathBuf)]) -> String {
    let mut out = String::new();
    for line in spcmap.lines() {
        let mapped = line.split_once(' ').and_then(|(oid, _)| {
            let oid: u32 = oid.parse().ok()?;
            let (_, _, target) = tablespaces.iter().find(|(o, _, _)| *o == oid)?;
            Some(format!(
                "{oid} {}",
                escape_map_path(&target.to_string_lossy())
            ))
        });
        out.push_str(&mapped.unwrap_or_else(|| line.to_owned()));
        out.push('\n');
    }
    out
}

/// PostgreSQL escapes `\n`, `\r` and `\` in tablespace_map paths.
fn escape_map_path(p: &str) -> String {
    let mut out = String::new();
    for c in p.chars() {
        if matches!(c, '\\' | '\n' | '\r') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Makes the target tree match the listing before the copy: deletes what
/// the primary lacks (or has as another kind), creates every listed dir and
/// symlink. Returns how many files were deleted.
fn sync_target_tree(module: &Module, listed: &[Entry]) -> Result<u64> {
    let wanted: HashMap<&Path, &Entry> = listed.iter().map(|e| (e.path.as_path(), e)).collect();
    let mut deleted = 0;
    if module.target.is_dir() {
        let existing = walk(&module.target, &module.prune)?;
        let mut removed: Vec<PathBuf> = Vec::new();
        for e in &existing {
            if removed.iter().any(|r| e.path.starts_with(r))
                || fileset::protected_on_target(module.kind, &e.path)
            {
                continue;
            }
            let keep = wanted
                .get(e.path.as_path())
                .is_some_and(|w| match (&w.kind, &e.kind) {
                    (EntryKind::File, EntryKind::File) | (EntryKind::Dir, EntryKind::Dir) => true,
                    (EntryKind::Symlink(a), EntryKind::Symlink(b)) => a == b,
                    _ => false,
                });
            if keep {
                continue;
            }
            let path = module.target.join(&e.path);
            deleted += match e.kind {
                EntryKind::Dir => walk(&path, &[])?
                    .iter()
                    .filter(|x| x.kind != EntryKind::Dir)
                    .count() as u64,
                _ => 1,
            };
            remove_any(&path)?;
            removed.push(e.path.clone());
        }
    }
    create_private_dir(&module.target)?;
    for e in listed {
        let path = module.target.join(&e.path);
        match &e.kind {
            EntryKind::Dir => {
                if !path.is_dir() {
                    std::fs::create_dir(&path).map_err(|err| {
                        CloneError::io(format!("creating {}", path.display()), err)
                    })?;
                }
                let current = path.metadata().map(|m| m.mode() & 0o7777).unwrap_or(0);
                if current != e.mode {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                        .map_err(|err| CloneError::io(format!("chmod {}", path.display()), err))?;
                }
            }
            EntryKind::Symlink(target) => {
                if std::fs::read_link(&path).ok().as_ref() != Some(target) {
                    std::os::unix::fs::symlink(target, &path).map_err(|err| {
                        CloneError::io(format!("symlink {}", path.display()), err)
                    })?;
                }
            }
            EntryKind::File => {}
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_names() {
        assert!(is_wal_name("000000010000000000000003"));
        assert!(is_wal_name("000000010000000000000003.partial"));
        assert!(is_wal_name("00000002.history"));
        assert!(!is_wal_name("archive_status"));
        assert!(!is_wal_name("00000001000000000000000G"));
    }

    #[test]
    fn tablespace_map_is_remapped_and_escaped() {
        let ts = vec![(16400, PathBuf::from("/old"), PathBuf::from("/new\\x"))];
        assert_eq!(
            remap_tablespace_map("16400 /old\n16500 /other\n", &ts),
            "16400 /new\\\\x\n16500 /other\n"
        );
    }

    #[test]
    fn target_tree_sync_deletes_orphans_keeps_protected_creates_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for d in ["global", "pg_wal", "base/1", "stale_dir"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        for f in [
            "global/1262",
            "global/999",
            "pg_wal/000000010000000000000001",
            "stale_dir/x",
            "pgtandem_clone.state",
        ] {
            std::fs::write(t.join(f), b"x").unwrap();
        }
        let module = Module {
            name: "pgdata".into(),
            kind: ModuleKind::Pgdata,
            source: "/nowhere".into(),
            target: t.to_owned(),
            prune: vec!["base".into(), "pg_wal".into()],
        };
        let entry = |p: &str, kind| Entry {
            path: p.into(),
            kind,
            size: 1,
            mtime_ns: 0,
            mode: 0o700,
        };
        let listed = vec![
            entry("global", EntryKind::Dir),
            entry("global/1262", EntryKind::File),
            entry("pg_notify", EntryKind::Dir),
        ];
        let deleted = sync_target_tree(&module, &listed).unwrap();
        assert_eq!(deleted, 2);
        assert!(!t.join("global/999").exists() && !t.join("stale_dir").exists());
        assert!(t.join("global/1262").exists() && t.join("pg_notify").is_dir());
        assert!(t.join("pg_wal/000000010000000000000001").exists());
        assert!(t.join("pgtandem_clone.state").exists() && t.join("base/1").exists());
    }
}
