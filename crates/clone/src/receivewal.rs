//! `--wal-method pg_receivewal` (clone.md §3.4): pgclone's flow with the
//! external `pg_receivewal` spooling into a temp waldir, supervised (it must
//! appear in `pg_stat_replication`, and dying is fatal), then its WAL-named
//! files moved into the replica waldir with fsync.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgtandem_core::error::ErrorKind;
use pgtandem_core::lsn::Lsn;

use crate::durability::fsync_dir;
use crate::error::{CloneError, Result};
use crate::options::CloneOptions;
use crate::transport::local::remove_any;

/// A running `pg_receivewal`.
#[derive(Debug)]
pub struct ReceivewalCapture {
    child: Option<Child>,
    program: PathBuf,
    temp_dir: PathBuf,
    created_temp: bool,
    log: PathBuf,
    /// `--slot`: created with `--create-slot --if-not-exists`, dropped at cleanup.
    pub slot: Option<String>,
}

/// What was moved into the replica waldir.
#[derive(Debug, Clone, Default)]
pub struct MovedWal {
    pub segments: u64,
    pub bytes: u64,
    pub renamed_partial: Option<(PathBuf, PathBuf)>,
}

fn is_wal_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    hex(name, 24)
        || name.strip_suffix(".partial").is_some_and(|s| hex(s, 24))
        || name.strip_suffix(".history").is_some_and(|s| hex(s, 8))
}

fn wal_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| is_wal_name(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The major version a `pg_receivewal --version` line names
/// (`pg_receivewal (PostgreSQL) 15.18 (Debian …)`, `… 19devel`).
pub fn version_major(line: &str) -> Option<u32> {
    let rest = &line[line.find("(PostgreSQL) ")? + "(PostgreSQL) ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl ReceivewalCapture {
    /// Checks the binary, creates/cleans the temp waldir, creates the slot
    /// for `--slot` and starts streaming as `pgclone-<pid>`.
    pub fn start(
        options: &CloneOptions,
        primary_major: u32,
        pid: u32,
        run_dir: &Path,
    ) -> Result<Self> {
        let program = match &options.pg_bindir {
            Some(dir) => dir.join("pg_receivewal"),
            None => PathBuf::from("pg_receivewal"),
        };
        let version = Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|_| CloneError::refused(ErrorKind::Config, "pg_receivewal not found"))?;
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        match version_major(version.trim()) {
            Some(m) if m >= primary_major => {}
            _ => {
                return Err(CloneError::refused(
                    ErrorKind::Config,
                    format!(
                        "pg_receivewal ({}) must be at least the primary's major version {primary_major}",
                        version.trim()
                    ),
                ));
            }
        }
        let (temp_dir, created_temp) = match &options.temp_waldir {
            Some(dir) => (dir.clone(), !dir.exists()),
            None => (run_dir.join("wal"), true),
        };
        std::fs::create_dir_all(&temp_dir)
            .map_err(|e| CloneError::io(format!("creating {}", temp_dir.display()), e))?;
        // Only this run's WAL may reach the replica.
        for old in wal_entries(&temp_dir) {
            remove_any(&old)?;
        }
        let log = run_dir.join("pg_receivewal.log");
        let slot = options.slot.then(|| format!("pgclone_{pid}"));
        let base = |cmd: &mut Command| {
            cmd.arg("-h")
                .arg(&options.pghost)
                .arg("-p")
                .arg(options.pgport.to_string())
                .arg("-U")
                .arg(&options.pguser)
                .arg("--no-password")
                .env("PGAPPNAME", format!("pgclone-{pid}"))
                .stdin(Stdio::null());
        };
        if let Some(slot) = &slot {
            let mut create = Command::new(&program);
            create
                .args(["--create-slot", "--if-not-exists", "-S"])
                .arg(slot);
            base(&mut create);
            let out = create
                .output()
                .map_err(|e| CloneError::io("running pg_receivewal --create-slot", e))?;
            if !out.status.success() {
                return Err(CloneError::transport(format!(
                    "pg_receivewal failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let log_file = std::fs::File::create(&log)
            .map_err(|e| CloneError::io(format!("creating {}", log.display()), e))?;
        let mut cmd = crate::child::guarded(&program);
        cmd.arg("-D")
            .arg(&temp_dir)
            .arg("--no-loop")
            .arg("--verbose");
        if let Some(slot) = &slot {
            cmd.arg("-S").arg(slot);
        }
        base(&mut cmd);
        cmd.stdout(Stdio::null()).stderr(log_file);
        let child = cmd
            .spawn()
            .map_err(|e| CloneError::io("starting pg_receivewal", e))?;
        Ok(Self {
            child: Some(child),
            program,
            temp_dir,
            created_temp,
            log,
            slot,
        })
    }

    /// The child's pid (for `pg_stat_replication` ancestry checks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child has exited.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)))
    }

    /// The last lines of the child's log, printed before a child-caused FATAL.
    pub fn log_tail(&self) -> String {
        let Ok(f) = std::fs::File::open(&self.log) else {
            return String::new();
        };
        let lines: Vec<String> = BufReader::new(f).lines().map_while(|l| l.ok()).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits for the complete segment holding `stop_lsn`, stops the child
    /// and moves the WAL into `waldir` (fsynced, `.done` marks).
    pub fn finish(
        &mut self,
        stop_lsn: Lsn,
        timeline: u32,
        seg_size: u64,
        waldir: &Path,
        limit: Duration,
    ) -> Result<MovedWal> {
        let name = stop_lsn.wal_file_name(timeline, seg_size);
        let wanted = self.temp_dir.join(&name);
        let deadline = Instant::now() + limit;
        while !wanted.exists() {
            if self.exited() {
                eprintln!("{}", self.log_tail());
                return Err(CloneError::transport("pg_receivewal exited"));
            }
            if Instant::now() >= deadline {
                return Err(CloneError::Timeout(format!(
                    "WAL {name} not received in {} s",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.terminate();
        self.move_into(waldir)
    }

    fn move_into(&self, waldir: &Path) -> Result<MovedWal> {
        let status = waldir.join("archive_status");
        std::fs::create_dir_all(&status)
            .map_err(|e| CloneError::io(format!("creating {}", status.display()), e))?;
        let mut moved = MovedWal::default();
        for src in wal_entries(&self.temp_dir) {
            let file_name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (final_name, partial) = match file_name.strip_suffix(".partial") {
                Some(base) => (base.to_owned(), true),
                None => (file_name.clone(), false),
            };
            let dst = waldir.join(&final_name);
            move_file(&src, &dst)?;
            if partial {
                moved.renamed_partial = Some((src.clone(), dst.clone()));
            }
            if final_name.len() == 24 {
                moved.segments += 1;
                moved.bytes += std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
                if !partial {
                    std::fs::write(status.join(format!("{final_name}.done")), b"")
                        .map_err(|e| CloneError::io("writing archive_status", e))?;
                }
            }
        }
        fsync_dir(&status)?;
        fsync_dir(waldir)?;
        Ok(moved)
    }

    /// SIGTERM, then SIGKILL after `PROCESS_TERM_TIMEOUT`.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let grace = std::env::var("PROCESS_TERM_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let deadline = Instant::now() + Duration::from_secs(grace);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the child and tidies the temp waldir (idempotent).
    pub fn cleanup(&mut self) {
        self.terminate();
        if self.created_temp {
            let _ = std::fs::remove_dir_all(&self.temp_dir);
        } else {
            for f in wal_entries(&self.temp_dir) {
                let _ = remove_any(&f);
            }
        }
    }

    /// The program used (for messages).
    pub fn program(&self) -> &Path {
        &self.program
    }
}

impl Drop for ReceivewalCapture {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Rename, or copy + fsync + remove across file systems.
fn move_file(src: &Path, dst: &Path) -> Result<()> {
    let io = |e| CloneError::io(format!("moving {} to {}", src.display(), dst.display()), e);
    if std::fs::rename(src, dst).is_ok() {
        return std::fs::File::open(dst)
            .and_then(|f| f.sync_all())
            .map_err(io);
    }
    std::fs::copy(src, dst).map_err(io)?;
    std::fs::File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::remove_file(src).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines() {
        assert_eq!(
            version_major("pg_receivewal (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(version_major("pg_receivewal (PostgreSQL) 18.6"), Some(18));
        assert_eq!(
            version_major("pg_receivewal (PostgreSQL) 19devel"),
            Some(19)
        );
        assert_eq!(version_major("garbage"), None);
    }
}
