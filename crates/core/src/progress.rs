//! The progress model every engine emits and every front end renders (bars,
//! plain lines, `--json`, daemon streams): events, a throughput/ETA estimator,
//! lock-free shared counters and the sink engines write to.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What `done` and `total` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Bytes (files, COPY streams, WAL).
    Bytes,
    /// Table rows.
    Rows,
    /// Files.
    Files,
    /// Change records (bootstrap, merge).
    Changes,
    /// Generic operations (statements, keys).
    Ops,
}

/// Name of a step of a job (`copy`, `wal_wait`, `fsync`, ...), shared by all renderers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phase(Cow<'static, str>);

impl Phase {
    /// A phase named by a constant, without allocating.
    pub const fn new_static(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// A phase with a computed name (e.g. `copy public.t`).
    pub fn new(name: impl Into<String>) -> Self {
        Self(Cow::Owned(name.into()))
    }

    /// The phase name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&'static str> for Phase {
    fn from(s: &'static str) -> Self {
        Self::new_static(s)
    }
}

/// A point-in-time progress report for one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Which step this is.
    pub phase: Phase,
    /// What `done`/`total` count.
    pub unit: Unit,
    /// Units finished so far; never decreases within a phase.
    pub done: u64,
    /// Expected units, from catalog estimates or file sizes; `None` when unknown.
    pub total: Option<u64>,
    /// Measured throughput in units per second.
    pub rate_per_s: Option<f64>,
    /// Time left at the measured rate (JSON: seconds as `eta_s`).
    #[serde(rename = "eta_s", with = "opt_secs")]
    pub eta: Option<Duration>,
    /// The table/file being worked on, for display.
    pub current_item: Option<String>,
}

impl Progress {
    /// Completion in percent, when the total is known (capped at 100).
    pub fn percent(&self) -> Option<f64> {
        let total = self.total?;
        if total == 0 {
            return Some(100.0);
        }
        Some((self.done as f64 / total as f64 * 100.0).min(100.0))
    }
}

/// Severity of a [`ProgressEvent::Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Routine information.
    Info,
    /// Something the operator should look at; the job goes on.
    Warning,
}

/// Everything an engine reports while it runs. JSON form is internally tagged
/// with `"event"` and snake_case names; those names are a compatibility contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// A phase began.
    PhaseStarted {
        /// The phase.
        phase: Phase,
        /// Unit of its counters.
        unit: Unit,
        /// Expected units, if known.
        total: Option<u64>,
    },
    /// Periodic progress within a phase.
    Progress(Progress),
    /// A phase ended.
    PhaseFinished {
        /// The phase.
        phase: Phase,
        /// Unit of `done`.
        unit: Unit,
        /// Final count.
        done: u64,
        /// Wall time of the phase (JSON: seconds as `elapsed_s`).
        #[serde(rename = "elapsed_s", with = "secs")]
        elapsed: Duration,
    },
    /// A human-readable note.
    Message {
        /// Severity.
        level: Level,
        /// The text.
        text: String,
    },
}

/// Durations as fractional seconds in JSON.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Throughput over a sliding time window, fed `(instant, done)` samples.
///
/// Windowed rather than since-start so the ETA follows the current speed (a
/// throttled or stalled transfer shows up within one window); instants are
/// injected, so it is deterministic in tests.
#[derive(Debug, Clone)]
pub struct ThroughputEstimator {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
    first: Option<(Instant, u64)>,
}

impl ThroughputEstimator {
    /// An estimator averaging over `window` (10 s is a good default for bars).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
            first: None,
        }
    }

    /// Records that `done` units were finished at `at`. A smaller `done` than
    /// before means the counter restarted, so the history is dropped; samples
    /// older than the previous one are ignored.
    pub fn record(&mut self, at: Instant, done: u64) {
        if let Some(&(last_at, last_done)) = self.samples.back() {
            if at < last_at {
                return;
            }
            if done < last_done {
                self.samples.clear();
                self.first = None;
            }
        }
        self.first.get_or_insert((at, done));
        self.samples.push_back((at, done));
        // Keep one sample at or before the window start so the window stays covered.
        if let Some(cutoff) = at.checked_sub(self.window) {
            while self.samples.len() > 2 && self.samples[1].0 <= cutoff {
                self.samples.pop_front();
            }
        }
    }

    /// Units per second over the window; `None` until two samples span some time.
    pub fn rate_per_s(&self) -> Option<f64> {
        let (&(t0, d0), &(t1, d1)) = (self.samples.front()?, self.samples.back()?);
        rate(t0, d0, t1, d1)
    }

    /// Units per second since the first sample (for final summaries).
    pub fn average_rate_per_s(&self) -> Option<f64> {
        let (t0, d0) = self.first?;
        let &(t1, d1) = self.samples.back()?;
        rate(t0, d0, t1, d1)
    }

    /// Latest `done` value recorded.
    pub fn done(&self) -> u64 {
        self.samples.back().map_or(0, |&(_, d)| d)
    }

    /// Time to reach `total` at the windowed rate: zero when already there, `None`
    /// when the total or a positive rate is unknown.
    pub fn eta(&self, total: Option<u64>) -> Option<Duration> {
        let remaining = total?.saturating_sub(self.done());
        if remaining == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rate_per_s().filter(|r| *r > 0.0)?;
        Duration::try_from_secs_f64(remaining as f64 / rate).ok()
    }

    /// A [`Progress`] report from the latest sample.
    pub fn progress(&self, phase: Phase, unit: Unit, total: Option<u64>) -> Progress {
        Progress {
            phase,
            unit,
            done: self.done(),
            total,
            rate_per_s: self.rate_per_s(),
            eta: self.eta(total),
            current_item: None,
        }
    }
}

fn rate(t0: Instant, d0: u64, t1: Instant, d1: u64) -> Option<f64> {
    let dt = t1.checked_duration_since(t0)?.as_secs_f64();
    (dt > 0.0).then(|| d1.saturating_sub(d0) as f64 / dt)
}

/// Marks "total not known" inside the atomic.
const UNKNOWN_TOTAL: u64 = u64::MAX;

/// Shared done/total counters: workers add, renderers read, nobody locks.
#[derive(Clone)]
pub struct ProgressCounter {
    inner: Arc<Counters>,
}

struct Counters {
    done: AtomicU64,
    total: AtomicU64,
}

impl Default for ProgressCounter {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ProgressCounter {
    /// A counter at zero with an optional known total.
    pub fn new(total: Option<u64>) -> Self {
        Self {
            inner: Arc::new(Counters {
                done: AtomicU64::new(0),
                total: AtomicU64::new(total.unwrap_or(UNKNOWN_TOTAL)),
            }),
        }
    }

    /// Adds finished units; returns the new `done`.
    pub fn add(&self, n: u64) -> u64 {
        self.inner
            .done
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n)
    }

    /// Sets `done` (e.g. from an external tool's own counter).
    pub fn set_done(&self, done: u64) {
        self.inner.done.store(done, Ordering::Relaxed);
    }

    /// Units finished so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Sets or clears the expected total.
    pub fn set_total(&self, total: Option<u64>) {
        let raw = total.map_or(UNKNOWN_TOTAL, |t| t.min(UNKNOWN_TOTAL - 1));
        self.inner.total.store(raw, Ordering::Relaxed);
    }

    /// Grows the total as work is discovered (an unknown total becomes `n`).
    pub fn add_total(&self, n: u64) {
        let _ = self
            .inner
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(if t == UNKNOWN_TOTAL {
                    n.min(UNKNOWN_TOTAL - 1)
                } else {
                    t.saturating_add(n).min(UNKNOWN_TOTAL - 1)
                })
            });
    }

    /// Expected total, if known.
    pub fn total(&self) -> Option<u64> {
        let t = self.inner.total.load(Ordering::Relaxed);
        (t != UNKNOWN_TOTAL).then_some(t)
    }
}

impl fmt::Debug for ProgressCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressCounter")
            .field("done", &self.done())
            .field("total", &self.total())
            .finish()
    }
}

/// Where engines send events; renderers live on the other side.
pub trait ProgressSink: Send + Sync {
    /// Delivers one event. Must not block for long and never fails: progress is
    /// best-effort and must not abort the work it describes.
    fn emit(&self, ev: ProgressEvent);
}

/// Discards everything (tests, `--progress none`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl ProgressSink for NullSink {
    fn emit(&self, _ev: ProgressEvent) {}
}

/// Sends events over a `std::sync::mpsc` channel so a renderer thread (or a
/// task bridging to async) can consume them without a runtime dependency here.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    tx: mpsc::Sender<ProgressEvent>,
}

impl ChannelSink {
    /// A sink and the receiver a renderer reads from.
    pub fn new() -> (Self, mpsc::Receiver<ProgressEvent>) {
        let (tx, rx) = mpsc::channel();
        (Self { tx }, rx)
    }
}

impl ProgressSink for ChannelSink {
    fn emit(&self, ev: ProgressEvent) {
        // A gone renderer must not stop the job.
        let _ = self.tx.send(ev);
    }
}

impl<T: ProgressSink + ?Sized> ProgressSink for Arc<T> {
    fn emit(&self, ev: ProgressEvent) {
        (**self).emit(ev);
    }
}

impl<T: ProgressSink + ?Sized> ProgressSink for &T {
    fn emit(&self, ev: ProgressEvent) {
        (**self).emit(ev);
    }
}

impl<T: ProgressSink + ?Sized> ProgressSink for Box<T> {
    fn emit(&self, ev: ProgressEvent) {
        (**self).emit(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn json_field_names_are_stable() {
        let ev = ProgressEvent::Progress(Progress {
            phase: Phase::new_static("copy"),
            unit: Unit::Bytes,
            done: 512,
            total: Some(2048),
            rate_per_s: Some(256.0),
            eta: Some(Duration::from_millis(6000)),
            current_item: Some("base/1/1259".into()),
        });
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":"progress","phase":"copy","unit":"bytes","done":512,"total":2048,"rate_per_s":256.0,"eta_s":6.0,"current_item":"base/1/1259"}"#
        );
        let started = ProgressEvent::PhaseStarted {
            phase: "fsync".into(),
            unit: Unit::Files,
            total: None,
        };
        assert_eq!(
            serde_json::to_string(&started).unwrap(),
            r#"{"event":"phase_started","phase":"fsync","unit":"files","total":null}"#
        );
        let finished = ProgressEvent::PhaseFinished {
            phase: "copy".into(),
            unit: Unit::Rows,
            done: 3,
            elapsed: Duration::from_millis(1500),
        };
        assert_eq!(
            serde_json::to_string(&finished).unwrap(),
            r#"{"event":"phase_finished","phase":"copy","unit":"rows","done":3,"elapsed_s":1.5}"#
        );
        let msg = ProgressEvent::Message {
            level: Level::Warning,
            text: "slow".into(),
        };
        assert_eq!(
            serde_json::to_string(&msg).unwrap(),
            r#"{"event":"message","level":"warning","text":"slow"}"#
        );
        for e in [ev, started, finished, msg] {
            let back: ProgressEvent =
                serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn estimator_uses_the_window_and_computes_eta() {
        let t0 = Instant::now();
        let mut est = ThroughputEstimator::new(secs(10));
        assert_eq!(est.rate_per_s(), None);
        est.record(t0, 0);
        assert_eq!(est.rate_per_s(), None, "one sample has no rate");
        // 100 units/s for 20 s ...
        for s in 1..=20 {
            est.record(t0 + secs(s), s * 100);
        }
        assert_eq!(est.rate_per_s(), Some(100.0));
        assert_eq!(est.eta(Some(3000)), Some(secs(10)));
        // ... then 10 units/s for 10 s: the windowed rate follows, the average does not.
        for s in 21..=30 {
            est.record(t0 + secs(s), 2000 + (s - 20) * 10);
        }
        assert_eq!(est.rate_per_s(), Some(10.0));
        assert_eq!(est.eta(Some(2200)), Some(secs(10)));
        assert_eq!(est.average_rate_per_s(), Some(2100.0 / 30.0));
        assert_eq!(est.eta(Some(100)), Some(Duration::ZERO));
        assert_eq!(est.eta(None), None);
    }

    #[test]
    fn estimator_resets_when_counter_restarts_and_ignores_stale_samples() {
        let t0 = Instant::now();
        let mut est = ThroughputEstimator::new(secs(10));
        est.record(t0, 0);
        est.record(t0 + secs(1), 500);
        est.record(t0, 9999);
        assert_eq!(est.done(), 500, "older sample ignored");
        est.record(t0 + secs(2), 10);
        assert_eq!(est.rate_per_s(), None, "restart drops history");
        est.record(t0 + secs(4), 30);
        assert_eq!(est.rate_per_s(), Some(10.0));
        let stalled = {
            let mut e = ThroughputEstimator::new(secs(10));
            e.record(t0, 5);
            e.record(t0 + secs(3), 5);
            e
        };
        assert_eq!(stalled.rate_per_s(), Some(0.0));
        assert_eq!(stalled.eta(Some(10)), None, "no ETA at zero rate");
        let p = est.progress("copy".into(), Unit::Rows, Some(50));
        assert_eq!(
            (p.done, p.eta, p.percent()),
            (30, Some(secs(2)), Some(60.0))
        );
    }

    #[test]
    fn counters_are_shared_across_threads() {
        let c = ProgressCounter::new(None);
        assert_eq!(c.total(), None);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1);
                        c.add_total(2);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(c.done(), 4000);
        assert_eq!(c.total(), Some(8000));
        c.set_total(None);
        assert_eq!(c.total(), None);
        c.set_done(7);
        assert_eq!(c.done(), 7);
    }

    #[test]
    fn channel_sink_delivers_and_survives_a_dropped_receiver() {
        let (sink, rx) = ChannelSink::new();
        let shared: Arc<dyn ProgressSink> = Arc::new(sink.clone());
        shared.emit(ProgressEvent::Message {
            level: Level::Info,
            text: "a".into(),
        });
        sink.emit(ProgressEvent::Message {
            level: Level::Info,
            text: "b".into(),
        });
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        drop(rx);
        sink.emit(ProgressEvent::Message {
            level: Level::Info,
            text: "c".into(),
        });
        NullSink.emit(ProgressEvent::Message {
            level: Level::Info,
            text: "d".into(),
        });
    }
}
