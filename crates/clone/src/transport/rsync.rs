//! The `rsync` transport (pgclone's way, clone.md §3.3): system `ssh` to the
//! primary host, a throw-away `rsync --daemon` started there by one SSH
//! session whose stdin stays open (EOF kills it), `find -P` listings, and
//! rsync clients pulling batches. The daemon's secret travels over stdin,
//! never in an argv.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgtandem_core::error::ErrorKind;
use pgtandem_core::progress::ProgressCounter;

use super::{CopyRequest, CopyStats, Probe, Transport};
use crate::error::{CloneError, Result};
use crate::fileset::{Entry, EntryKind, Module};
use crate::limiter::Limiter;
use crate::transport::local::remove_any;

/// First and last port tried for the daemon.
const PORT_RANGE: (u16, u16) = (45000, 45100);

/// How to reach the primary over SSH.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub user: String,
    pub port: Option<u16>,
    pub key: Option<PathBuf>,
    pub insecure: bool,
    pub extra_options: Vec<String>,
    pub connect_timeout: u64,
}

impl SshTarget {
    /// `ssh <options> -l user host`; append the remote command.
    pub fn command(&self) -> Command {
        let mut cmd = crate::child::guarded("ssh");
        cmd.args(["-o", "BatchMode=yes"]);
        if self.insecure {
            cmd.args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ]);
        } else {
            cmd.args(["-o", "StrictHostKeyChecking=yes"]);
        }
        cmd.arg("-o")
            .arg(format!("ConnectTimeout={}", self.connect_timeout));
        cmd.args([
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]);
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        if let Some(key) = &self.key {
            cmd.arg("-i").arg(key);
        }
        for opt in &self.extra_options {
            cmd.arg("-o").arg(opt);
        }
        cmd.arg("-l").arg(&self.user).arg(&self.host);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a remote shell command; returns (success, stdout, stderr).
    fn run(&self, remote: &str) -> Result<(bool, Vec<u8>, String)> {
        let out = self
            .command()
            .arg(remote)
            .output()
            .map_err(|e| tool_error("ssh", e))?;
        Ok((
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn tool_error(tool: &str, e: std::io::Error) -> CloneError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CloneError::refused(ErrorKind::Config, format!("{tool} not found"))
    } else {
        CloneError::io(format!("running {tool}"), e)
    }
}

/// POSIX shell single-quoting.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The running daemon session.
struct Daemon {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

/// rsync over SSH.
pub struct RsyncTransport {
    ssh: SshTarget,
    /// The host rsync clients connect to (bracketed if IPv6).
    rsync_host: String,
    run_dir: PathBuf,
    secret_file: PathBuf,
    secret: String,
    bwlimit_kib: Option<u64>,
    daemon: Option<Daemon>,
    batch_seq: AtomicU64,
    verbose_log: Mutex<Vec<String>>,
}

impl std::fmt::Debug for RsyncTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsyncTransport")
            .field("ssh", &self.ssh)
            .field("run_dir", &self.run_dir)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl RsyncTransport {
    /// Prepares the transport; writes the client secret file (0600) in `run_dir`.
    pub fn new(
        ssh: SshTarget,
        run_dir: &Path,
        limit_net_bw: Option<u64>,
        parallel: usize,
    ) -> Result<Self> {
        let mut raw = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(|e| CloneError::io("reading /dev/urandom", e))?;
        let secret = hex::encode(raw);
        let secret_file = run_dir.join("rsync.secret");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_file)
            .and_then(|mut f| f.write_all(secret.as_bytes()))
            .map_err(|e| CloneError::io(format!("writing {}", secret_file.display()), e))?;
        let rsync_host = if ssh.host.contains(':') {
            format!("[{}]", ssh.host)
        } else {
            ssh.host.clone()
        };
        // Per worker: ceil(ceil(total/P)/1024) KiB/s, as pgclone.
        let bwlimit_kib =
            limit_net_bw.map(|total| total.div_ceil(parallel.max(1) as u64).div_ceil(1024));
        Ok(Self {
            ssh,
            rsync_host,
            run_dir: run_dir.to_owned(),
            secret_file,
            secret,
            bwlimit_kib,
            daemon: None,
            batch_seq: AtomicU64::new(0),
            verbose_log: Mutex::new(Vec::new()),
        })
    }

    /// The per-rsync bandwidth limit in KiB/s, if any.
    pub fn bwlimit_kib(&self) -> Option<u64> {
        self.bwlimit_kib
    }

    fn daemon_script(&self, modules: &[Module], parallel_hint: usize) -> String {
        let mut conf = String::from("use chroot = no\nnumeric ids = yes\n");
        conf.push_str(&format!(
            "max connections = {}\n",
            parallel_hint.max(1) * (modules.len() + 1)
        ));
        for m in modules {
            conf.push_str(&format!(
                "[{}]\n path = {}\n read only = yes\n auth users = replica\n secrets file = @DIR@/rsyncd.secrets\n",
                m.name,
                m.source.display()
            ));
        }
        format!(
            r#"set -u
umask 077
dir=$(mktemp -d /tmp/pgclone_XXXXXXXX) || exit 1
IFS= read -r secret
printf 'replica:%s\n' "$secret" > "$dir/rsyncd.secrets"
cat > "$dir/rsyncd.conf" <<'PGCLONE_EOF'
pid file = @DIR@/rsyncd.pid
lock file = @DIR@/rsyncd.lock
log file = @DIR@/rsyncd.log
{conf}PGCLONE_EOF
sed -i "s#@DIR@#$dir#g" "$dir/rsyncd.conf"
pid=""
cleanup() {{ [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$pid" ] && wait "$pid" 2>/dev/null; rm -rf "$dir"; }}
trap 'cleanup; exit 0' EXIT HUP TERM INT
port=""
for p in $(seq {lo} {hi}); do
  rsync --daemon --no-detach --config="$dir/rsyncd.conf" --port="$p" >/dev/null 2>&1 &
  pid=$!
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      sleep 0.1
      if kill -0 "$pid" 2>/dev/null; then port=$p; fi
      break
    fi
    sleep 0.1
  done
  [ -n "$port" ] && break
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""
done
if [ -z "$port" ]; then echo "NOPORT"; exit 1; fi
echo "$port" > "$dir/rsyncd.port"
echo "PORT $port $dir"
cat > /dev/null
"#,
            lo = PORT_RANGE.0,
            hi = PORT_RANGE.1,
        )
    }

    fn rsync_command(&self, request: &CopyRequest<'_>, list_file: &Path) -> Result<Command> {
        let port = self
            .daemon
            .as_ref()
            .map(|d| d.port)
            .ok_or_else(|| CloneError::transport("rsync daemon is not running"))?;
        let mut cmd = crate::child::guarded("rsync");
        cmd.env("LC_ALL", "C")
            .args(["-a", "--inplace", "--relative", "--from0"])
            .arg(format!("--files-from={}", list_file.display()))
            .arg(format!("--password-file={}", self.secret_file.display()))
            .args([
                "--modify-window=-1",
                "--info=progress2",
                "--stats",
                "--no-human-readable",
            ]);
        if request.whole_file {
            cmd.arg("--whole-file");
        }
        if request.paranoid {
            cmd.arg("--checksum");
        }
        if let Some(k) = self.bwlimit_kib {
            cmd.arg(format!("--bwlimit={k}"));
        }
        cmd.arg(format!(
            "rsync://replica@{}:{port}/{}/",
            self.rsync_host, request.module.name
        ))
        .arg(format!("{}/", request.module.target.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        Ok(cmd)
    }
}

/// Parses one `find -printf '%y\0%m\0%s\0%T@\0%l\0%P\0'` listing.
pub fn parse_find(output: &[u8]) -> Vec<Entry> {
    let fields: Vec<&[u8]> = output.split(|b| *b == 0).collect();
    let mut out = Vec::new();
    for rec in fields.chunks(6) {
        let [kind, mode, size, mtime, link, path] = rec else {
            continue;
        };
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let path = PathBuf::from(std::ffi::OsStr::new(&*s(path)));
        if path.as_os_str().is_empty() {
            continue;
        }
        let kind = match *kind {
            b"f" => EntryKind::File,
            b"d" => EntryKind::Dir,
            b"l" => EntryKind::Symlink(PathBuf::from(s(link))),
            _ => continue,
        };
        out.push(Entry {
            path,
            size: if kind == EntryKind::File {
                s(size).parse().unwrap_or(0)
            } else {
                0
            },
            kind,
            mtime_ns: parse_find_time(&s(mtime)),
            mode: u32::from_str_radix(&s(mode), 8).unwrap_or(0o600),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `%T@` = `seconds.fraction` (GNU find prints ten fraction digits).
fn parse_find_time(t: &str) -> i128 {
    let (secs, frac) = t.split_once('.').unwrap_or((t, "0"));
    let secs: i128 = secs.parse().unwrap_or(0);
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    secs * 1_000_000_000 + digits.parse::<i128>().unwrap_or(0)
}

/// Integer after `label` in rsync's `--stats` output.
fn stat(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| {
            let digits: String = rest
                .trim_start_matches([':', ' '])
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == ',')
                .filter(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// Paths of `file has vanished: "<path>"` lines (relative to the module).
fn vanished_paths(stderr: &str, module: &str) -> Vec<PathBuf> {
    stderr
        .lines()
        .filter_map(|l| {
            let start = l.find("file has vanished: \"")? + "file has vanished: \"".len();
            let rest = &l[start..];
            let path = &rest[..rest.rfind('"')?];
            let path = path
                .strip_prefix(&format!("{module}/"))
                .unwrap_or(path)
                .trim_start_matches('/')
                .to_owned();
            Some(PathBuf::from(path))
        })
        .collect()
}

impl Transport for RsyncTransport {
    fn probe(&mut self) -> Result<Probe> {
        let (ok, out, _) = self
            .ssh
            .run("echo OK; cat /proc/sys/kernel/random/boot_id 2>/dev/null || true")?;
        let text = String::from_utf8_lossy(&out);
        let mut lines = text.lines();
        if !ok || lines.next() != Some("OK") {
            return Err(CloneError::refused(
                ErrorKind::Connection,
                "SSH test failed",
            ));
        }
        Ok(Probe {
            boot_id: lines
                .next()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        })
    }

    fn disk_usage(&self, roots: &[PathBuf]) -> Result<u64> {
        let mut total = 0;
        for root in roots {
            let (_, out, _) = self.ssh.run(&format!(
                "du -sk -- {}",
                shell_quote(&root.to_string_lossy())
            ))?;
            let text = String::from_utf8_lossy(&out);
            let kib: u64 = text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| CloneError::transport("du failed on primary"))?;
            total += kib * 1024;
        }
        Ok(total)
    }

    fn list(&self, module: &Module) -> Result<Vec<Entry>> {
        let root = module.source.to_string_lossy().into_owned();
        let mut prune = String::new();
        for (i, p) in module.prune.iter().enumerate() {
            if i > 0 {
                prune.push_str(" -o");
            }
            prune.push_str(&format!(
                " -path {}",
                shell_quote(&format!("{root}/{}", p.display()))
            ));
        }
        let prune = if prune.is_empty() {
            String::new()
        } else {
            format!("\\({prune} \\) -prune -o")
        };
        let cmd = format!(
            "LC_ALL=C find -P {} -mindepth 1 {prune} -printf '%y\\0%m\\0%s\\0%T@\\0%l\\0%P\\0'",
            shell_quote(&root)
        );
        let (ok, out, err) = self.ssh.run(&cmd)?;
        // Files vanishing under find are normal; anything else is not.
        let real_errors = err
            .lines()
            .any(|l| !l.trim().is_empty() && !l.contains("No such file or directory"));
        if !ok && real_errors {
            return Err(CloneError::transport(format!(
                "listing {} on the primary failed: {}",
                module.source.display(),
                err.trim()
            )));
        }
        Ok(parse_find(&out))
    }

    fn start(&mut self, modules: &[Module]) -> Result<()> {
        let script = self.daemon_script(modules, 8);
        let mut child = self
            .ssh
            .command()
            .arg(format!("bash -c {}", shell_quote(&script)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_error("ssh", e))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| CloneError::transport("ssh stdin missing"))?;
        stdin
            .write_all(format!("{}\n", self.secret).as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| CloneError::io("sending the rsyncd secret", e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| CloneError::transport("ssh stdout missing"))?;
        let limit = Duration::from_secs(
            std::env::var("RSYNCD_GET_PORT_TIMEOUT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(30),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(limit).unwrap_or_default();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port else {
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
            return Err(CloneError::Timeout(format!(
                "Failed to retrieve rsyncd port within {}s",
                limit.as_secs()
            )));
        };
        if let Ok(mut log) = self.verbose_log.lock() {
            log.push(format!("rsyncd listening on port {port}"));
        }
        self.daemon = Some(Daemon {
            child,
            stdin: Some(stdin),
            port,
        });
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            // EOF on the script's stdin kills the daemon and removes its dir.
            drop(d.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match d.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        let _ = d.child.kill();
                        let _ = d.child.wait();
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn copy_batch(
        &self,
        request: &CopyRequest<'_>,
        _limiter: &Limiter,
        progress: &ProgressCounter,
    ) -> Result<CopyStats> {
        let seq = self.batch_seq.fetch_add(1, Ordering::Relaxed);
        let list_file = self.run_dir.join(format!("batch.{seq}"));
        let mut list = Vec::new();
        for e in request.files {
            list.extend_from_slice(e.path.as_os_str().as_encoded_bytes());
            list.push(0);
        }
        std::fs::write(&list_file, &list)
            .map_err(|e| CloneError::io(format!("writing {}", list_file.display()), e))?;
        let mut child = self
            .rsync_command(request, &list_file)?
            .spawn()
            .map_err(|e| tool_error("rsync", e))?;
        let stderr = child.stderr.take();
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        // progress2 lines are `\r`-separated; the first number is bytes so far.
        let mut reported = 0u64;
        let mut text = String::new();
        if let Some(mut out) = child.stdout.take() {
            let mut buf = [0u8; 8192];
            let mut pending = Vec::new();
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
                    let chunk: Vec<u8> = pending.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&chunk).into_owned();
                    if let Some(first) = line.split_whitespace().next()
                        && line.contains('%')
                        && let Ok(done) = first.replace(',', "").parse::<u64>()
                        && done > reported
                    {
                        progress.add(done - reported);
                        reported = done;
                    }
                    text.push_str(&line);
                }
            }
            text.push_str(&String::from_utf8_lossy(&pending));
        }
        let status = child
            .wait()
            .map_err(|e| CloneError::io("waiting for rsync", e))?;
        let stderr = err_thread.join().unwrap_or_default();
        let _ = std::fs::remove_file(&list_file);
        let code = status.code();
        if code != Some(0) && code != Some(24) {
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            tracing::error!("rsync stderr (last lines):\n{}", tail.join("\n"));
            eprintln!("{}", tail.join("\n"));
            return Err(CloneError::transport("rsync worker failed"));
        }
        let batch_bytes: u64 = request.files.iter().map(|e| e.size).sum();
        if batch_bytes > reported {
            progress.add(batch_bytes - reported);
        }
        let vanished = vanished_paths(&stderr, &request.module.name);
        for v in &vanished {
            remove_any(&request.module.target.join(v))?;
        }
        Ok(CopyStats {
            files: request.files.len() as u64 - vanished.len() as u64,
            created: stat(&text, "Number of created files"),
            transferred: stat(&text, "Number of regular files transferred"),
            total_size: stat(&text, "Total file size"),
            transferred_size: stat(&text, "Total transferred file size"),
            literal: stat(&text, "Literal data"),
            matched: stat(&text, "Matched data"),
            wire_sent: stat(&text, "Total bytes sent"),
            wire_received: stat(&text, "Total bytes received"),
            vanished,
        })
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let (ok, out, err) = self
            .ssh
            .run(&format!("cat -- {}", shell_quote(&path.to_string_lossy())))?;
        if !ok {
            return Err(CloneError::transport(format!(
                "reading {} on the primary failed: {}",
                path.display(),
                err.trim()
            )));
        }
        Ok(out)
    }

    fn cleanup(&mut self) {
        let _ = self.stop();
    }
}

impl Drop for RsyncTransport {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_listing_is_parsed_with_ns_times_and_spaces() {
        let raw = b"d\x00700\x004096\x001700000000.1234567890\x00\x00base\x00\
f\x00600\x008192\x001700000001.5000000000\x00\x00base/1/a b\x00\
l\x00777\x005\x001700000002.0000000000\x00/ts/x\x00pg_tblspc/16400\x00";
        let e = parse_find(raw);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].path, PathBuf::from("base"));
        assert_eq!(e[0].mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(e[1].path, PathBuf::from("base/1/a b"));
        assert_eq!((e[1].size, e[1].mode), (8192, 0o600));
        assert_eq!(e[2].kind, EntryKind::Symlink("/ts/x".into()));
    }

    #[test]
    fn stats_and_vanished_lines() {
        let out = "Number of files: 12 (reg: 10, dir: 2)\nNumber of created files: 3\n\
                   Literal data: 1,234 bytes\nTotal bytes received: 99\n";
        assert_eq!(stat(out, "Number of files"), 12);
        assert_eq!(stat(out, "Literal data"), 1234);
        assert_eq!(stat(out, "Total bytes received"), 99);
        assert_eq!(stat(out, "Matched data"), 0);
        let err = "file has vanished: \"base/5/16384\"\nrsync warning: some files vanished";
        assert_eq!(vanished_paths(err, "base"), vec![PathBuf::from("5/16384")]);
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
