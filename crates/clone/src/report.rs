//! Everything the clone prints (clone.md §2.5–2.6): verbose log lines,
//! the whole-clone progress (bar or plain on stderr), the rsync-style
//! summary on stdout, and `--json` JSON Lines with exactly one `summary`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgtandem_core::progress::ProgressCounter;
use serde_json::{Value, json};

use crate::options::{CloneOptions, ProgressStyle};
use crate::queue::WorkerReport;
use crate::transport::CopyStats;

/// Bar width in characters.
const BAR_WIDTH: u64 = 40;

/// `numfmt --to=si --suffix=B --format=%.1f`: base 1000, one decimal,
/// rounded away from zero like numfmt.
pub fn si(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut unit = 0usize;
    while unit + 1 < UNITS.len() && bytes >= 1000u64.pow(unit as u32 + 1) {
        unit += 1;
    }
    let tenths = |u: usize| (u128::from(bytes) * 10).div_ceil(1000u128.pow(u as u32));
    let mut t = tenths(unit);
    if t >= 10_000 && unit + 1 < UNITS.len() {
        unit += 1;
        t = tenths(unit);
    }
    format!("{}.{}{}B", t / 10, t % 10, UNITS[unit])
}

/// pgclone's `[YYYY-MM-DD HH:MM:SS]` in local time (UTC if unknowable).
pub fn timestamp() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let now = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&format)
        .unwrap_or_else(|_| "0000-00-00 00:00:00".to_owned())
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The bar line (without the leading `\r\033[K`).
pub fn bar_line(done: u64, total: u64) -> String {
    let pct = percent(done, total);
    let filled = (BAR_WIDTH * pct / 100).min(BAR_WIDTH);
    format!(
        "[{}{}] {:3} % ({} / {})",
        "#".repeat(filled as usize),
        "-".repeat((BAR_WIDTH - filled) as usize),
        pct,
        si(done),
        si(total)
    )
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
    }
}

/// The module's share of the summary.
#[derive(Debug, Clone, Default)]
pub struct ModuleSummary {
    pub name: String,
    pub stats: CopyStats,
    pub deleted: u64,
    pub list_time: Duration,
}

/// Final numbers of a run (also of a failed one).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub ok: bool,
    pub exit_code: i32,
    pub error: Option<String>,
    pub duration: Duration,
    pub copy_time: Duration,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub modules: Vec<ModuleSummary>,
    pub wal_bytes: u64,
    pub wal_segments: u64,
    pub resume_skipped_files: u64,
    pub resume_skipped_bytes: u64,
    pub bytes_total: u64,
}

impl Summary {
    fn total(&self) -> ModuleSummary {
        let mut t = ModuleSummary::default();
        for m in &self.modules {
            t.stats.merge(&m.stats);
            t.deleted += m.deleted;
            t.list_time += m.list_time;
        }
        t
    }

    /// pgclone's stdout summary: one block per parallel module (`base`,
    /// then `spc_<oid>`), then the total over all modules.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let secs = self.copy_time.as_millis().max(1) as f64 / 1000.0;
        let block = |out: &mut String, m: &ModuleSummary, extra: &[String]| {
            let s = &m.stats;
            let lines = [
                String::new(),
                format!("Number of files: {}", s.files + s.vanished.len() as u64),
                format!("Number of created files: {}", s.created),
                format!("Number of deleted files: {}", m.deleted),
                format!("Number of regular files transferred: {}", s.transferred),
                format!("Total file size: {}", si(s.total_size)),
                format!("Total transferred file size: {}", si(s.transferred_size)),
                format!("Literal data: {}", si(s.literal)),
                format!("Matched data: {}", si(s.matched)),
                format!("File list size: {}", si(0)),
                format!(
                    "File list generation time: {:.3} seconds",
                    m.list_time.as_secs_f64()
                ),
                format!("Total bytes sent: {}", si(s.wire_sent)),
                format!("Total bytes received: {}", si(s.wire_received)),
            ];
            for l in lines.iter().chain(extra) {
                out.push_str(l);
                out.push('\n');
            }
            out.push('\n');
            out.push_str(&format!(
                "sent {} ({}/sec) received {} ({}/sec)\n",
                si(s.wire_sent),
                si((s.wire_sent as f64 / secs) as u64),
                si(s.wire_received),
                si((s.wire_received as f64 / secs) as u64)
            ));
        };
        for m in self.modules.iter().filter(|m| m.name != "pgdata") {
            out.push_str(&format!("\nModule {}:", m.name));
            block(&mut out, m, &[]);
        }
        out.push_str("\nTotal (all modules):");
        let total = self.total();
        block(
            &mut out,
            &total,
            &[
                format!(
                    "WAL received: {} in {} segments",
                    si(self.wal_bytes),
                    self.wal_segments
                ),
                format!("Vanished during copy: {}", total.stats.vanished.len()),
                format!(
                    "Skipped by resume: {} ({})",
                    self.resume_skipped_files,
                    si(self.resume_skipped_bytes)
                ),
            ],
        );
        out
    }

    fn json(&self) -> Value {
        let total = self.total();
        json!({
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": self.error,
            "duration_s": self.duration.as_secs_f64(),
            "start_lsn": self.start_lsn,
            "stop_lsn": self.stop_lsn,
            "files_total": total.stats.files + total.stats.vanished.len() as u64,
            "files_deleted": total.deleted,
            "files_vanished": total.stats.vanished.len(),
            "resume_skipped_bytes": self.resume_skipped_bytes,
            "bytes_total": self.bytes_total,
            "bytes_transferred": total.stats.literal,
            "wal_bytes": self.wal_bytes,
        })
    }
}

/// Where output goes, decided once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    Json,
    Bar,
    Plain,
    Quiet,
}

/// The run's printer; shared by the orchestrator and the progress ticker.
pub struct Reporter {
    render: Render,
    verbose: bool,
    interval: Duration,
    pub progress: ProgressCounter,
    pub files_total: AtomicU64,
    pub wal_flush: Mutex<Option<String>>,
    summary_done: AtomicBool,
    out: Mutex<()>,
}

impl Reporter {
    pub fn new(options: &CloneOptions) -> Self {
        let render = if options.json {
            Render::Json
        } else {
            match options.progress {
                ProgressStyle::Auto if std::io::stdout().is_terminal() => Render::Bar,
                ProgressStyle::Auto | ProgressStyle::None => Render::Quiet,
                ProgressStyle::Bar => Render::Bar,
                ProgressStyle::Plain => Render::Plain,
            }
        };
        Self {
            render,
            verbose: options.verbose,
            interval: options.progress_interval.max(Duration::from_secs(1)),
            progress: ProgressCounter::new(None),
            files_total: AtomicU64::new(0),
            wal_flush: Mutex::new(None),
            summary_done: AtomicBool::new(false),
            out: Mutex::new(()),
        }
    }

    fn emit(&self, mut event: Value) {
        if self.render != Render::Json {
            return;
        }
        if let Value::Object(map) = &mut event {
            map.insert("ts".into(), Value::String(rfc3339_now()));
        }
        let _guard = self.out.lock();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{event}");
        let _ = stdout.flush();
    }

    /// `[ts] [pgclone] <msg>` on stderr with `--verbose`.
    pub fn log(&self, msg: &str) {
        if self.verbose {
            let _guard = self.out.lock();
            eprintln!("[{}] [pgclone] {msg}", timestamp());
        }
    }

    /// A warning, always shown.
    pub fn warn(&self, msg: &str) {
        let _guard = self.out.lock();
        eprintln!("[{}] {msg}", timestamp());
    }

    pub fn start_event(&self, options: &CloneOptions) {
        self.emit(json!({
            "event": "start",
            "pid": std::process::id(),
            "replica_pgdata": options.replica_pgdata,
            "primary_pgdata": options.primary_pgdata,
            "transport": options.transport.as_str(),
            "parallel": options.parallel,
        }));
    }

    pub fn phase(&self, name: &str) {
        self.log(&format!("Phase: {name}"));
        self.emit(json!({"event": "phase", "phase": name}));
    }

    pub fn worker(&self, w: &WorkerReport) {
        self.emit(json!({
            "event": "worker",
            "id": w.id,
            "batches": w.batches,
            "bytes": w.bytes,
            "busy_s": w.busy.as_secs_f64(),
        }));
    }

    pub fn error(&self, message: &str) {
        self.emit(json!({"event": "error", "message": message}));
    }

    /// Prints the summary once (stdout block, or the JSON `summary`).
    pub fn summary(&self, summary: &Summary) {
        if self.summary_done.swap(true, Ordering::SeqCst) {
            return;
        }
        match self.render {
            Render::Json => {
                let mut v = summary.json();
                if let Value::Object(map) = &mut v {
                    map.insert("event".into(), Value::String("summary".into()));
                }
                self.emit(v);
            }
            _ if summary.ok => {
                let _guard = self.out.lock();
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(summary.human().as_bytes());
                let _ = stdout.flush();
            }
            _ => {}
        }
    }

    fn progress_event(&self, started: Instant, files_done: u64) {
        let done = self.progress.done();
        let total = self.progress.total().unwrap_or(0);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = (rate > 0.0).then(|| (total.saturating_sub(done)) as f64 / rate);
        let wal = self.wal_flush.lock().ok().and_then(|w| w.clone());
        self.emit(json!({
            "event": "progress",
            "bytes_done": done,
            "bytes_total": total,
            "files_done": files_done,
            "files_total": self.files_total.load(Ordering::Relaxed),
            "rate_bps": rate as u64,
            "eta_s": eta.map(|e| e as u64),
            "wal_flush_lsn": wal,
        }));
    }

    fn draw(&self, started: Instant, last: bool) {
        let done = self.progress.done();
        let total = self.progress.total().unwrap_or(0);
        let _guard = self.out.lock();
        let mut err = std::io::stderr().lock();
        match self.render {
            Render::Bar if last => {
                let _ = writeln!(err, "\r\x1b[K{}", bar_line(total, total));
            }
            Render::Bar => {
                let _ = write!(err, "\r\x1b[K{}\x1b[K", bar_line(done, total));
            }
            Render::Plain => {
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs;
                let line = if last {
                    format!(
                        "[{}] 100 %  ({} / {}, {}/s)",
                        timestamp(),
                        si(total),
                        si(total),
                        si(rate as u64)
                    )
                } else {
                    let eta = if rate > 0.0 {
                        Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate)
                    } else {
                        Duration::ZERO
                    };
                    format!(
                        "[{}] {:3} %  ({} / {}, {}/s, ETA {})",
                        timestamp(),
                        percent(done, total),
                        si(done),
                        si(total),
                        si(rate as u64),
                        hms(eta)
                    )
                };
                let _ = writeln!(err, "{line}");
            }
            _ => {}
        }
        let _ = err.flush();
    }

    /// Starts periodic progress output; the guard prints the final line
    /// when `finish` is called (not on failure).
    pub fn ticker(self: &Arc<Self>, files_done: Arc<AtomicU64>) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handle = (self.render != Render::Quiet).then(|| {
            let (me, stop) = (Arc::clone(self), Arc::clone(&stop));
            std::thread::spawn(move || {
                let period = if me.render == Render::Bar {
                    Duration::from_secs(1)
                } else {
                    me.interval
                };
                let mut next = Instant::now() + period;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if Instant::now() >= next {
                        next += period;
                        match me.render {
                            Render::Json => {
                                me.progress_event(started, files_done.load(Ordering::Relaxed));
                            }
                            _ => me.draw(started, false),
                        }
                    }
                }
            })
        });
        Ticker {
            reporter: Arc::clone(self),
            stop,
            handle,
            started,
        }
    }
}

/// Running progress output.
pub struct Ticker {
    reporter: Arc<Reporter>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Ticker {
    /// Stops the ticker; with `complete`, prints the final 100 % line.
    pub fn finish(mut self, complete: bool, files_done: u64) {
        self.halt();
        if complete {
            match self.reporter.render {
                Render::Json => self.reporter.progress_event(self.started, files_done),
                _ => self.reporter.draw(self.started, true),
            }
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_matches_numfmt() {
        for (v, s) in [
            (0, "0.0B"),
            (512, "512.0B"),
            (999, "999.0B"),
            (1000, "1.0KB"),
            (1001, "1.1KB"),
            (1250, "1.3KB"),
            (999_999, "1.0MB"),
            (1_300_000, "1.3MB"),
            (123_456_789, "123.5MB"),
            (80_000_000_000, "80.0GB"),
        ] {
            assert_eq!(si(v), s, "{v}");
        }
    }

    #[test]
    fn bar_layout() {
        assert_eq!(
            bar_line(50, 100),
            format!(
                "[{}{}]  50 % (50.0B / 100.0B)",
                "#".repeat(20),
                "-".repeat(20)
            )
        );
        assert_eq!(
            bar_line(100, 100),
            format!("[{}] 100 % (100.0B / 100.0B)", "#".repeat(40))
        );
    }

    #[test]
    fn summary_layout_ends_with_sent_line_and_counts_once() {
        let stats = CopyStats {
            files: 3,
            created: 2,
            transferred: 2,
            total_size: 3000,
            transferred_size: 2000,
            literal: 2000,
            matched: 1000,
            wire_received: 2000,
            ..CopyStats::default()
        };
        let s = Summary {
            ok: true,
            copy_time: Duration::from_secs(2),
            modules: vec![
                ModuleSummary {
                    name: "pgdata".into(),
                    stats: stats.clone(),
                    deleted: 1,
                    list_time: Duration::from_millis(5),
                },
                ModuleSummary {
                    name: "base".into(),
                    stats,
                    deleted: 0,
                    list_time: Duration::from_millis(7),
                },
            ],
            wal_bytes: 16 << 20,
            wal_segments: 1,
            ..Summary::default()
        };
        let text = s.human();
        assert!(
            text.starts_with("\nModule base:\nNumber of files: 3\n"),
            "{text}"
        );
        assert!(text.contains("\nTotal (all modules):\nNumber of files: 6\n"));
        assert!(text.contains("Number of deleted files: 1\n"));
        assert!(text.contains("Literal data: 4.0KB\n"));
        assert!(text.contains("WAL received: 16.8MB in 1 segments\nVanished during copy: 0\nSkipped by resume: 0 (0.0B)\n\nsent"));
        assert!(
            text.ends_with("sent 0.0B (0.0B/sec) received 4.0KB (2.0KB/sec)\n"),
            "{text}"
        );
    }
}
