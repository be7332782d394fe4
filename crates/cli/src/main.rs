//! The `pgtandem` binary: one command tree, and the drop-in names of the tools
//! it replaces, chosen by `argv[0]` (multicall).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    ExitCode::from(pgtandem::run(&args))
}
