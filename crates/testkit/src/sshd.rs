//! A private OpenSSH server on a free loopback port, with its own host key, one
//! client key pair and a matching `known_hosts`, for tests of SSH transports.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::os_user::OsUser;
use crate::ports::{PORT_ATTEMPTS, with_port_retry};
use crate::process::{self, STOP_GRACE, ServerProcess, print_log_tail};
use crate::scratch::{remove_scratch_dir, scratch_dir};

const SSHD_BIN: &str = "/usr/sbin/sshd";
/// sshd's privilege-separation directory; it refuses to start without it.
const PRIVSEP_DIR: &str = "/run/sshd";

/// Settings for [`Sshd`].
#[derive(Clone, Debug)]
pub struct SshdBuilder {
    allowed_users: Vec<String>,
}

impl Default for SshdBuilder {
    fn default() -> Self {
        Self {
            allowed_users: vec!["postgres".into(), "root".into()],
        }
    }
}

impl SshdBuilder {
    /// The users allowed to log in (default `postgres` and `root`).
    pub fn allow_users<I, S>(mut self, users: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_users = users.into_iter().map(Into::into).collect();
        self
    }

    /// Generates keys, writes the config and starts `sshd -D`.
    pub fn start(self) -> Result<Sshd> {
        let base = scratch_dir("ssh")?;
        let mut sshd = Sshd {
            base_path: base.path().to_owned(),
            base: Some(base),
            port: 0,
            allowed_users: self.allowed_users,
            server: None,
        };
        sshd.prepare()?;
        with_port_retry(PORT_ATTEMPTS, |port| {
            sshd.port = port;
            sshd.launch()
        })?;
        Ok(sshd)
    }
}

/// A running `sshd` that accepts the kit's client key for the allowed users.
///
/// PAM stays on (`UsePAM yes`): Debian locks the `postgres` account, and without
/// PAM sshd refuses even key logins to locked accounts. `StrictModes` is off
/// because the key files live under `/tmp`, which is world-writable.
#[derive(Debug)]
pub struct Sshd {
    base: Option<tempfile::TempDir>,
    base_path: PathBuf,
    port: u16,
    allowed_users: Vec<String>,
    server: Option<ServerProcess>,
}

impl Sshd {
    pub fn builder() -> SshdBuilder {
        SshdBuilder::default()
    }

    /// Starts an sshd that admits `postgres` and `root`.
    pub fn start() -> Result<Sshd> {
        Self::builder().start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The client private key, owned by (and only readable for) the current user.
    pub fn client_key(&self) -> PathBuf {
        self.base_path.join("client_ed25519")
    }

    /// A `known_hosts` file naming this server, for `StrictHostKeyChecking=yes`.
    pub fn known_hosts(&self) -> PathBuf {
        self.base_path.join("known_hosts")
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

    /// A copy of the client key owned by `user` with mode 0600, since ssh refuses
    /// keys that others can read (and `user` cannot read the current user's copy).
    pub fn client_key_for(&self, user: &OsUser) -> Result<PathBuf> {
        if user.uid() == nix::unistd::Uid::effective() {
            return Ok(self.client_key());
        }
        let key = self
            .base_path
            .join(format!("client_ed25519.{}", user.name()));
        fs::copy(self.client_key(), &key)
            .map_err(|e| Error::io(format!("copying the client key to {}", key.display()), e))?;
        set_mode(&key, 0o600)?;
        user.take_ownership(&key)?;
        Ok(key)
    }

    /// The ssh options that reach this server with `key` and nothing from the
    /// caller's own ssh configuration (`-F /dev/null`), without the host.
    pub fn ssh_options(&self, key: &Path) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// `ssh <options> -l login 127.0.0.1`, run as the current user with
    /// [`Self::client_key`]; append the remote command with `.arg(...)`.
    pub fn ssh_command(&self, login: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_options(&self.client_key()))
            .args(["-l", login, self.host()]);
        cmd
    }

    /// Like [`Self::ssh_command`], but run as the OS user `os_user` with a key it owns.
    pub fn ssh_command_as(&self, os_user: &OsUser, login: &str) -> Result<Command> {
        let key = self.client_key_for(os_user)?;
        let mut cmd = os_user.command("ssh");
        cmd.args(self.ssh_options(&key))
            .args(["-l", login, self.host()]);
        Ok(cmd)
    }

    /// Graceful stop (SIGTERM); open sessions keep running until they end.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.stop(Signal::SIGTERM, STOP_GRACE)?;
        }
        Ok(())
    }

    /// Kills sshd and every session it started.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill_tree()?;
        }
        Ok(())
    }

    /// Stops (if running) and starts again on the same port with the same keys.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    fn host_key(&self) -> PathBuf {
        self.base_path.join("host_ed25519")
    }

    fn config_path(&self) -> PathBuf {
        self.base_path.join("sshd_config")
    }

    /// Keys and files that do not depend on the port.
    fn prepare(&self) -> Result<()> {
        // Other users (the `postgres` login) must reach their key and known_hosts.
        set_mode(&self.base_path, 0o755)?;
        fs::create_dir_all(PRIVSEP_DIR)
            .map_err(|e| Error::io(format!("creating {PRIVSEP_DIR}"), e))?;
        generate_key(&self.host_key(), "pgtandem-testkit-host")?;
        generate_key(&self.client_key(), "pgtandem-testkit-client")?;
        let authorized = self.base_path.join("authorized_keys");
        fs::copy(self.client_key().with_extension("pub"), &authorized)
            .map_err(|e| Error::io(format!("writing {}", authorized.display()), e))?;
        set_mode(&authorized, 0o644)
    }

    fn write_port_files(&self) -> Result<()> {
        let mut config = String::new();
        let base = self.base_path.display();
        let users = self.allowed_users.join(" ");
        let root_login = if self.allowed_users.iter().any(|u| u == "root") {
            "prohibit-password"
        } else {
            "no"
        };
        // Writing to a String cannot fail.
        let _ = write!(
            config,
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             PidFile {base}/sshd.pid\n\
             AuthorizedKeysFile {base}/authorized_keys\n\
             StrictModes no\n\
             UsePAM yes\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin {root_login}\n\
             AllowUsers {users}\n\
             UseDNS no\n\
             PrintMotd no\n\
             MaxStartups 200\n\
             MaxSessions 100\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            port = self.port,
            host_key = self.host_key().display(),
        );
        fs::write(self.config_path(), config)
            .map_err(|e| Error::io(format!("writing {}", self.config_path().display()), e))?;

        let public = fs::read_to_string(self.host_key().with_extension("pub"))
            .map_err(|e| Error::io("reading the sshd host public key", e))?;
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        let line = format!("[127.0.0.1]:{} {}\n", self.port, key.join(" "));
        fs::write(self.known_hosts(), line)
            .map_err(|e| Error::io(format!("writing {}", self.known_hosts().display()), e))?;
        set_mode(&self.known_hosts(), 0o644)
    }

    fn launch(&mut self) -> Result<()> {
        self.write_port_files()?;
        let mut cmd = Command::new(SSHD_BIN);
        cmd.arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.config_path())
            .current_dir(&self.base_path);
        let label = format!("sshd on port {}", self.port);
        let mut server = ServerProcess::spawn(&label, cmd, &self.log_path())?;
        let port = self.port;
        server.wait_ready(port, || sends_banner(port))?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take()
            && let Err(e) = server.kill_tree()
        {
            eprintln!("testkit: killing sshd: {e}");
        }
        if std::thread::panicking() {
            print_log_tail("sshd", &self.log_path(), 100);
        }
        remove_scratch_dir(self.base.take());
    }
}

fn generate_key(path: &Path, comment: &str) -> Result<()> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    process::run(cmd).map(drop)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {mode:o} {}", path.display()), e))
}

/// Whether the server greets with an SSH identification string.
fn sends_banner(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported_as_retryable() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let base = scratch_dir("ssh").unwrap();
        let mut sshd = Sshd {
            base_path: base.path().to_owned(),
            base: Some(base),
            port: taken.local_addr().unwrap().port(),
            allowed_users: vec!["root".into()],
            server: None,
        };
        sshd.prepare().unwrap();
        let err = sshd.launch().unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
    }
}
