//! The reference service's log layout on stderr:
//! `2006-01-02 15:04:05.000 [INFO] [field:value] … message`. Tests and
//! operators grep these lines, so the layout is part of the contract.

use std::fmt;

use time::{OffsetDateTime, UtcOffset};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events in the reference layout.
pub struct ReferenceLayout {
    offset: UtcOffset,
}

impl ReferenceLayout {
    /// Must run before other threads start: reading the local offset is only
    /// sound while the process is single-threaded, otherwise UTC is used.
    pub fn new() -> Self {
        ReferenceLayout {
            offset: UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC),
        }
    }
}

impl Default for ReferenceLayout {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.pairs.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.pairs.push((field.name(), format!("{value:?}")));
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

impl<S, N> FormatEvent<S, N> for ReferenceLayout
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = OffsetDateTime::now_utc().to_offset(self.offset);
        write!(
            writer,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} [{}]",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond(),
            level_name(event.metadata().level())
        )?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        for (name, value) in &fields.pairs {
            write!(writer, " [{name}:{value}]")?;
        }
        writeln!(writer, " {}", fields.message)
    }
}

/// Maps a pg_etcd `--log-level` word to a tracing level (`fatal`/`panic` = error).
pub fn level_from_name(name: &str) -> Option<LevelFilter> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warn" | "warning" => LevelFilter::WARN,
        "error" | "fatal" | "panic" => LevelFilter::ERROR,
        _ => return None,
    })
}

/// Installs the global subscriber for the service. Our own crates log at
/// `level`; dependencies (tonic, h2, tokio-postgres) only at warn or above.
/// Returns false when a subscriber was already installed.
pub fn init(level: LevelFilter) -> bool {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let targets = Targets::new()
        .with_default(level.min(LevelFilter::WARN))
        .with_target("pgtandem_etcd", level)
        .with_target("pgtandem", level)
        .with_target("pgtandem_pg", level);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(ReferenceLayout::new())
        .with_writer(std::io::stderr)
        .with_ansi(false);
    tracing_subscriber::registry()
        .with(layer)
        .with(targets)
        .try_init()
        .is_ok()
}
