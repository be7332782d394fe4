//! `make bench`: benchmarks that run pgtandem side by side with its anchor in one run and print the
//! ratio. Slow by design, so never part of `make test`; results go to docs/benchmarks.md.

mod copy;
pub(crate) mod etcd_sync;
mod stats;

use anyhow::{Result, bail};

/// Every benchmark by name; `make bench` with no name runs them all.
pub const NAMES: &[&str] = &["copy", "etcd-sync"];

pub fn run(args: &[String]) -> Result<()> {
    let selected: Vec<&str> = if args.is_empty() {
        NAMES.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for name in selected {
        match name {
            "copy" => copy::run()?,
            "etcd-sync" => etcd_sync::run()?,
            other => bail!("unknown benchmark {other:?}; known: {}", NAMES.join(", ")),
        }
    }
    Ok(())
}
