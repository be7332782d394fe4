//! Developer tasks: `cargo xtask demo` (what `make demo` runs) and `cargo xtask bench <name>`.
//!
//! Both use the test kit's code path, so what the demo shows and what the benchmarks measure are the
//! same real servers the tests start.

mod bench;
mod demo;

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("bench") => bench::run(&args[1..]),
        Some(other) => bail!(
            "unknown task {other:?}; tasks: demo, bench [{}]",
            bench::NAMES.join("|")
        ),
        None => bail!("usage: cargo xtask <demo|bench [name]>"),
    }
}

/// The `pgtandem` binary built beside this one (`make demo`/`make bench` build both).
pub(crate) fn pgtandem_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("xtask has no parent directory")?;
    let bin = dir.join("pgtandem");
    ensure!(
        bin.exists(),
        "{} is missing; `make demo` builds it (cargo build -p pgtandem)",
        bin.display()
    );
    Ok(bin)
}
