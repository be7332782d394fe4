//! A single-member etcd 3.4 on two free loopback ports (client and peer).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::Result;
use crate::ports::{PORT_ATTEMPTS, with_ports_retry};
use crate::process::{STOP_GRACE, ServerProcess, print_log_tail};
use crate::scratch::{remove_scratch_dir, scratch_dir};

const DEFAULT_BIN: &str = "/usr/bin/etcd";

/// A running (or stopped) etcd member with its own data dir.
#[derive(Debug)]
pub struct Etcd {
    base: Option<tempfile::TempDir>,
    base_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    server: Option<ServerProcess>,
}

impl Etcd {
    /// Starts etcd (`PGTANDEM_ETCD_BIN` or `/usr/bin/etcd`) and waits for `/health`.
    pub fn start() -> Result<Etcd> {
        let base = scratch_dir("etcd")?;
        let mut etcd = Etcd {
            base_path: base.path().to_owned(),
            base: Some(base),
            client_port: 0,
            peer_port: 0,
            server: None,
        };
        with_ports_retry(2, PORT_ATTEMPTS, |ports| {
            etcd.client_port = ports[0];
            etcd.peer_port = ports[1];
            etcd.launch()
        })?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:PORT`, for etcd clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base_path.join("data")
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

    /// Graceful stop (SIGTERM).
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

    /// Stops (if running) and starts again with the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    fn member_name(&self) -> String {
        format!("pgt-{}-{}", std::process::id(), self.client_port)
    }

    fn launch(&mut self) -> Result<()> {
        let bin = std::env::var_os("PGTANDEM_ETCD_BIN").unwrap_or_else(|| DEFAULT_BIN.into());
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let name = self.member_name();
        let mut cmd = Command::new(bin);
        // A clean environment: etcd reads any ETCD_* variable as a flag.
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir(&self.base_path)
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .arg(format!("--initial-cluster-token={name}"))
            .args([
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
            ]);
        // etcd 3.4 runs only on amd64 (and ppc64le) unless told otherwise.
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let label = format!("etcd on port {}", self.client_port);
        let mut server = ServerProcess::spawn(&label, cmd, &self.log_path())?;
        let port = self.client_port;
        server.wait_ready(port, || healthy(port))?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take()
            && let Err(e) = server.kill_tree()
        {
            eprintln!("testkit: killing etcd: {e}");
        }
        if std::thread::panicking() {
            print_log_tail("etcd", &self.log_path(), 100);
        }
        remove_scratch_dir(self.base.take());
    }
}

fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "powerpc64" => None,
        "aarch64" => Some("arm64"),
        other => Some(other),
    }
}

/// Whether etcd's `/health` endpoint says the member is healthy.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains(r#""health":"true""#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_taken_client_port_is_reported_as_retryable() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let base = scratch_dir("etcd").unwrap();
        let mut etcd = Etcd {
            base_path: base.path().to_owned(),
            base: Some(base),
            client_port: taken.local_addr().unwrap().port(),
            peer_port: crate::ports::free_port().unwrap(),
            server: None,
        };
        let err = etcd.launch().unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
    }
}
