//! Server processes that cannot outlive the test that started them.
//!
//! Three layers of protection:
//! 1. [`ServerProcess`] kills its process tree in `Drop`, which also runs while a
//!    test panics.
//! 2. Every server is spawned with `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills
//!    it if the test process dies without unwinding (SIGKILL, abort, timeout).
//!    Servers are started directly (never through `pg_ctl`, which daemonizes and
//!    would escape this).
//! 3. The death signal fires when the *thread* that forked the child exits, not the
//!    process. Test harnesses run each test on its own thread, and a server kept in a
//!    `static` would be killed when its creating test ends. So all servers are forked
//!    from one spawner thread that lives as long as the process.
//!
//! Children of a server (PostgreSQL backends) are not covered by the death signal;
//! they notice their postmaster's death and exit on their own, and the kill paths
//! here wait for them.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Upper bound for a server to become ready; only reached when something is wrong.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a graceful stop may take before the tree is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(30);
/// Poll interval while waiting for readiness or exit.
const POLL: Duration = Duration::from_millis(20);

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The long-lived thread that forks every server (see the module doc, point 3).
fn spawner() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            let started = thread::Builder::new()
                .name("testkit-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        // The requester may have gone away; then the child is
                        // dropped, which does not kill it, but its death signal will.
                        let _ = reply.send(cmd.spawn());
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no spawner thread; servers die with their test thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Spawns `cmd` from the spawner thread with a parent-death signal.
fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec in the child, where only
    // async-signal-safe calls are allowed; prctl(2) and getppid(2) are, and nothing
    // here allocates (errors are built from raw errno values).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died before the death signal was armed.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::from(Errno::ESRCH));
            }
            Ok(())
        });
    }
    match spawner() {
        Some(tx) => {
            let (reply_tx, reply_rx) = mpsc::channel();
            tx.send((cmd, reply_tx))
                .map_err(|_| io::Error::other("the spawner thread is gone"))?;
            reply_rx
                .recv()
                .map_err(|_| io::Error::other("the spawner thread did not answer"))?
        }
        None => cmd.spawn(),
    }
}

/// Renders a command for error messages (program and arguments, no environment,
/// so secrets passed through the environment never appear).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs a short-lived command to completion; errors carry its stderr.
pub(crate) fn run(mut cmd: Command) -> Result<String> {
    let command = describe(&cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    check_output(command, output)
}

/// Turns a finished command's output into its stdout, or an error with its stderr.
pub(crate) fn check_output(command: String, output: std::process::Output) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        Err(Error::CommandFailed {
            command,
            status: output.status.to_string(),
            stderr,
        })
    }
}

/// A running server: its child process, its log, and the promise to kill it.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    name: String,
    child: Child,
    log: PathBuf,
    /// Where this run's output starts in the (appended) log.
    log_offset: u64,
    exited: Option<ExitStatus>,
}

impl ServerProcess {
    /// Starts `cmd` with stdout and stderr appended to `log`, in its own process group
    /// (so a terminal's Ctrl-C reaches the test, which then cleans up in order).
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let command = describe(&cmd);
        let (out, log_offset) = open_log(log)?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating handle of {}", log.display()), e))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = spawn_guarded(cmd).map_err(|source| Error::Spawn { command, source })?;
        tracing::debug!(server = name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            log_offset,
            exited: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Reaps the child if it has exited.
    pub(crate) fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        }
        Ok(self.exited)
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.try_exit_status(), Ok(None))
    }

    pub(crate) fn signal(&mut self, signal: Signal) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        match kill(self.nix_pid(), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(format!("sending {signal} to {}", self.name), e)),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` and waits for the exit; after `grace`, kills the whole tree.
    pub(crate) fn stop(&mut self, signal: Signal, grace: Duration) -> Result<()> {
        let descendants = descendants(self.pid());
        self.signal(signal)?;
        if self.wait_exit(grace)?.is_none() {
            tracing::warn!(server = %self.name, ?signal, "did not stop in time; killing");
            self.kill_tree()?;
        }
        wait_gone(&descendants, grace);
        Ok(())
    }

    /// SIGKILLs the process and all its descendants (a crash of the whole server),
    /// reaps it, and waits until the descendants are gone. Afterwards nothing of the
    /// server holds its port, socket or shared memory.
    pub(crate) fn kill_tree(&mut self) -> Result<()> {
        let descendants = descendants(self.pid());
        self.signal(Signal::SIGKILL)?;
        for pid in &descendants {
            // Already gone is fine; nothing else can be done about other errors.
            let _ = kill(*pid, Signal::SIGKILL);
        }
        self.child
            .wait()
            .map(|status| self.exited = Some(status))
            .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        wait_gone(&descendants, STOP_GRACE);
        Ok(())
    }

    /// Polls `ready` until it says yes, failing early if the process exits.
    ///
    /// An exit whose log mentions "address already in use" becomes
    /// [`Error::PortInUse`], which [`crate::with_port_retry`] retries.
    pub(crate) fn wait_ready(&mut self, port: u16, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit_status()? {
                let output = read_log_from(&self.log, self.log_offset);
                if output
                    .to_ascii_lowercase()
                    .contains("address already in use")
                {
                    return Err(Error::PortInUse {
                        server: self.name.clone(),
                        port,
                    });
                }
                return Err(Error::ExitedEarly {
                    server: self.name.clone(),
                    status: status.to_string(),
                    log_tail: last_lines(&output, 40),
                });
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    server: self.name.clone(),
                    secs: STARTUP_TIMEOUT.as_secs(),
                    log_tail: last_lines(&read_log_from(&self.log, self.log_offset), 40),
                });
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.is_running()
            && let Err(e) = self.kill_tree()
        {
            eprintln!("testkit: could not kill {}: {e}", self.name);
        }
    }
}

fn open_log(log: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
    let offset = file
        .metadata()
        .map_err(|e| Error::io(format!("reading size of {}", log.display()), e))?
        .len();
    Ok((file, offset))
}

/// The log from `offset` on; best effort, since it only decorates errors.
fn read_log_from(log: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(log)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `n` lines of a log file (empty if it cannot be read).
pub(crate) fn log_tail(log: &Path, n: usize) -> String {
    last_lines(&read_log_from(log, 0), n)
}

/// Prints a server's log tail to stderr; used by `Drop` while a test panics.
pub(crate) fn print_log_tail(server: &str, log: &Path, n: usize) {
    eprintln!(
        "testkit: last {n} lines of the {server} log {}:\n{}",
        log.display(),
        log_tail(log, n)
    );
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a process exists and is not a zombie. Orphaned zombies count as gone:
/// in a container, PID 1 may never reap them.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_fields(&stat).map(|f| f.0), Some('Z' | 'X') | None),
        Err(_) => false,
    }
}

/// State and parent pid from a `/proc/<pid>/stat` line (the command name may
/// contain spaces and parentheses, so parse from the last `)`).
fn stat_fields(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// All living descendants of `pid`, found by walking `/proc`.
fn descendants(pid: u32) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of = Vec::new();
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat"))
            && let Some((_, ppid)) = stat_fields(&stat)
        {
            parent_of.push((child, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid as i32];
    while let Some(parent) = frontier.pop() {
        for &(child, ppid) in &parent_of {
            if ppid == parent && !found.contains(&Pid::from_raw(child)) {
                found.push(Pid::from_raw(child));
                frontier.push(child);
            }
        }
    }
    found
}

/// Waits up to `timeout` for all `pids` to be gone; true when they are.
fn wait_gone(pids: &[Pid], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| !process_alive(p.as_raw() as u32)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "1234 (a) b (c)) S 77 1234 1234 0 -1";
        assert_eq!(stat_fields(stat), Some(('S', 77)));
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }

    #[test]
    fn dropping_a_server_process_kills_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 300 & echo started; wait"]);
        let mut server = ServerProcess::spawn("sh", cmd, &log).unwrap();
        server
            .wait_ready(0, || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("started")
            })
            .unwrap();
        let pid = server.pid();
        let kids = descendants(pid);
        assert_eq!(kids.len(), 1, "the shell's sleep child is found");
        drop(server);
        assert!(!process_alive(pid));
        assert!(!process_alive(kids[0].as_raw() as u32));
    }

    #[test]
    fn early_exit_with_address_in_use_is_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo 'bind: Address already in use' >&2; exit 1"]);
        let mut server = ServerProcess::spawn("sh", cmd, &log).unwrap();
        let err = server.wait_ready(4242, || false).unwrap_err();
        assert!(matches!(err, Error::PortInUse { port: 4242, .. }), "{err}");

        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo 'bad config' >&2; exit 3"]);
        let mut server = ServerProcess::spawn("sh", cmd, &log).unwrap();
        let err = server.wait_ready(4242, || false).unwrap_err();
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("bad config") && !text.contains("already in use"),
            "{text}"
        );
    }
}
