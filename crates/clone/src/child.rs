//! Children that must not outlive a `kill -9`ed clone (clone.md §3.4):
//! spawned through util-linux `setpriv --pdeathsig TERM`, which sets
//! `PR_SET_PDEATHSIG` and then execs the real program (the workspace forbids
//! the `unsafe` a `pre_exec` hook would need). Falls back to a plain spawn
//! where `setpriv` is missing.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const SETPRIV: &str = "/usr/bin/setpriv";

fn setpriv_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| Path::new(SETPRIV).is_file())
}

/// `program` wrapped so the kernel sends it SIGTERM when our spawning
/// thread dies; add arguments as usual.
pub fn guarded(program: impl AsRef<OsStr>) -> Command {
    if setpriv_available() {
        let mut cmd = Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "TERM", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_command_runs_the_program() {
        let out = guarded("echo").arg("hi").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }
}
