//! The one error type of the test kit.

use std::path::PathBuf;

/// Result alias used across the test kit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while starting, driving or stopping a test server.
///
/// Messages name the command and carry its stderr (or the server log tail), so a
/// failing test explains itself without re-running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary or directory the kit needs is not installed.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        what: String,
        path: PathBuf,
        hint: String,
    },

    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    /// A command could not even be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// The server could not bind its port because another process took it first.
    #[error("{server}: port {port} is already in use")]
    PortInUse { server: String, port: u16 },

    /// The server process exited while we waited for it to accept connections.
    #[error("{server} exited during startup ({status}); last log lines:\n{log_tail}")]
    ExitedEarly {
        server: String,
        status: String,
        log_tail: String,
    },

    /// The server stayed up but never became ready.
    #[error("{server} did not become ready within {secs}s; last log lines:\n{log_tail}")]
    NotReady {
        server: String,
        secs: u64,
        log_tail: String,
    },

    /// A file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A system call through `nix` failed (signals, ownership, users).
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },

    /// The named OS user does not exist on this machine.
    #[error("OS user `{0}` does not exist")]
    NoSuchUser(String),
}

impl Error {
    /// Whether trying the same operation again (usually on a new port) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::PortInUse { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }
}
