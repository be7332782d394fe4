//! Process-wide tracing set-up: human-readable lines on stderr, so stdout stays
//! free for the output formats scripts parse (summaries, JSON).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins; otherwise `debug` turns
/// on debug output for pgtandem's own crates and everything else stays at `warn`.
pub fn init(debug: bool) {
    let default = if debug {
        "warn,pgtandem=debug,pgtandem_core=debug,pgtandem_pg=debug"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (tests, embedding) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
