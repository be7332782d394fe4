//! `--bypass-rep-traffic`: PostgreSQL (session and WAL) through
//! `ssh -L P:127.0.0.1:<pgport>`, P the first free port of 55000–55100, so
//! replication traffic uses the SSH channel and the primary's local (trust)
//! rules. rsync is not tunnelled.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pgtandem_core::error::ErrorKind;

use crate::error::{CloneError, Result};
use crate::transport::SshTarget;

/// Local ports tried for the forward.
const PORTS: std::ops::RangeInclusive<u16> = 55000..=55100;
/// How long the forward may take to accept connections.
const ESTABLISH: Duration = Duration::from_secs(6);

/// A running forward; killed on drop.
#[derive(Debug)]
pub struct Tunnel {
    child: Option<Child>,
    pub local_port: u16,
}

impl Tunnel {
    /// Opens the forward to `127.0.0.1:<pgport>` on the primary host.
    pub fn open(ssh: &SshTarget, pgport: u16) -> Result<Self> {
        let local_port = PORTS
            .clone()
            .find(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok())
            .ok_or_else(|| {
                CloneError::refused(ErrorKind::Busy, "No free local port for SSH tunnel")
            })?;
        let mut cmd = ssh.command();
        cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("{local_port}:127.0.0.1:{pgport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| CloneError::io("starting the ssh tunnel", e))?;
        let mut tunnel = Self {
            child: Some(child),
            local_port,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, local_port));
        let deadline = Instant::now() + ESTABLISH;
        loop {
            let exited = tunnel
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if !exited && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(tunnel);
            }
            if exited || Instant::now() >= deadline {
                tunnel.close();
                return Err(CloneError::refused(
                    ErrorKind::Connection,
                    "SSH tunnel failed to establish",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the forward (idempotent).
    pub fn close(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.close();
    }
}
