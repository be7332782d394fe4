//! A throw-away Redis without persistence on a free loopback port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::Result;
use crate::ports::{PORT_ATTEMPTS, with_port_retry};
use crate::process::{STOP_GRACE, ServerProcess, print_log_tail};
use crate::scratch::{remove_scratch_dir, scratch_dir};

const DEFAULT_BIN: &str = "/usr/bin/redis-server";

/// Settings for [`Redis`].
#[derive(Clone, Debug, Default)]
pub struct RedisBuilder {
    maxmemory: Option<u64>,
}

impl RedisBuilder {
    /// Caps memory (`maxmemory`, bytes); writes then fail with OOM errors, which
    /// is how tests provoke back-pressure.
    pub fn maxmemory(mut self, bytes: u64) -> Self {
        self.maxmemory = Some(bytes);
        self
    }

    pub fn start(self) -> Result<Redis> {
        let base = scratch_dir("rds")?;
        let mut redis = Redis {
            base_path: base.path().to_owned(),
            base: Some(base),
            port: 0,
            maxmemory: self.maxmemory,
            server: None,
        };
        with_port_retry(PORT_ATTEMPTS, |port| {
            redis.port = port;
            redis.launch()
        })?;
        Ok(redis)
    }
}

/// A running (or stopped) `redis-server` (`--save "" --appendonly no`).
#[derive(Debug)]
pub struct Redis {
    base: Option<tempfile::TempDir>,
    base_path: PathBuf,
    port: u16,
    maxmemory: Option<u64>,
    server: Option<ServerProcess>,
}

impl Redis {
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Starts Redis (`PGTANDEM_REDIS_BIN` or `/usr/bin/redis-server`) with defaults.
    pub fn start() -> Result<Redis> {
        Self::builder().start()
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding everything of this server; removed on drop.
    pub fn base_dir(&self) -> &std::path::Path {
        &self.base_path
    }

    pub fn log_path(&self) -> PathBuf {
        self.base_path.join("log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(ServerProcess::pid)
    }

    /// Graceful stop (SIGTERM). Without persistence, data is lost.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.stop(Signal::SIGTERM, STOP_GRACE)?;
        }
        Ok(())
    }

    /// Crash (SIGKILL).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill_tree()?;
        }
        Ok(())
    }

    /// Stops (if running) and starts an empty server on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    fn launch(&mut self) -> Result<()> {
        let bin = std::env::var_os("PGTANDEM_REDIS_BIN").unwrap_or_else(|| DEFAULT_BIN.into());
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir(&self.base_path)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.base_path)
            .args(["--daemonize", "no", "--logfile", ""]);
        if let Some(bytes) = self.maxmemory {
            cmd.args(["--maxmemory", &bytes.to_string()]);
        }
        let label = format!("redis on port {}", self.port);
        let mut server = ServerProcess::spawn(&label, cmd, &self.log_path())?;
        let port = self.port;
        server.wait_ready(port, || answers_ping(port))?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take()
            && let Err(e) = server.kill_tree()
        {
            eprintln!("testkit: killing redis: {e}");
        }
        if std::thread::panicking() {
            print_log_tail("redis", &self.log_path(), 100);
        }
        remove_scratch_dir(self.base.take());
    }
}

/// Whether Redis answers `PING` with `+PONG` (not `-LOADING`).
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_taken_port_is_reported_as_retryable() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let base = scratch_dir("rds").unwrap();
        let mut redis = Redis {
            base_path: base.path().to_owned(),
            base: Some(base),
            port: taken.local_addr().unwrap().port(),
            maxmemory: None,
            server: None,
        };
        let err = redis.launch().unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
    }
}
