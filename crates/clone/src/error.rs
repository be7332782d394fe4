//! The clone's one error type: its `Display` is the exact FATAL text of
//! clone.md §2.5, and its kind tells automation whether a rerun can help.

use pgtandem_core::error::ErrorKind;

/// Why a clone stopped.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// A precondition failed before anything was changed (root, lock,
    /// running postmaster, version, same-host target, disk space, options).
    #[error("{message}")]
    Refused {
        /// The FATAL text.
        message: String,
        /// Config, Busy, Unsupported, Permission...
        kind: ErrorKind,
    },
    /// A PostgreSQL call failed; `context` is pgclone's wording.
    #[error("{context}{}", server_suffix(.source))]
    Pg {
        context: String,
        #[source]
        source: pgtandem_pg::Error,
    },
    /// WAL capture failed (`WAL streaming failed: <detail>`).
    #[error("WAL streaming failed: {0}")]
    Wal(#[source] pgtandem_pg::WalReceiveError),
    /// File or directory I/O on this host.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The transport (copy, listing, remote helper) failed.
    #[error("{message}")]
    Transport { message: String, kind: ErrorKind },
    /// A deadline passed (`pg_backup_stop did not finish within <n>s ...`).
    #[error("{0}")]
    Timeout(String),
    /// SIGINT/SIGTERM/SIGHUP or another cancellation.
    #[error("{0}")]
    Cancelled(String),
}

fn server_suffix(e: &pgtandem_pg::Error) -> String {
    match e.server_error() {
        Some(s) => format!(": {}", s.message()),
        None => format!(": {e}"),
    }
}

impl CloneError {
    /// A refusal with the given FATAL text.
    pub fn refused(kind: ErrorKind, message: impl Into<String>) -> Self {
        CloneError::Refused {
            message: message.into(),
            kind,
        }
    }

    /// A PostgreSQL failure with pgclone's context wording.
    pub fn pg(context: impl Into<String>, source: pgtandem_pg::Error) -> Self {
        CloneError::Pg {
            context: context.into(),
            source,
        }
    }

    /// An I/O failure with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CloneError::Io {
            context: context.into(),
            source,
        }
    }

    /// A transport failure.
    pub fn transport(message: impl Into<String>) -> Self {
        CloneError::Transport {
            message: message.into(),
            kind: ErrorKind::Internal,
        }
    }

    /// Classification for retry policies and JSON.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CloneError::Refused { kind, .. } | CloneError::Transport { kind, .. } => *kind,
            CloneError::Pg { source, .. } => source.kind(),
            CloneError::Wal(e) => e.kind(),
            CloneError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => ErrorKind::Permission,
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            CloneError::Timeout(_) => ErrorKind::Timeout,
            CloneError::Cancelled(_) => ErrorKind::Cancelled,
        }
    }

    /// Whether rerunning the same clone may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// Result alias of this crate.
pub type Result<T, E = CloneError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_display_their_exact_text_and_kind() {
        let e = CloneError::refused(
            ErrorKind::Busy,
            "Another pgclone is running for /x (lock: /tmp/l)",
        );
        assert_eq!(
            e.to_string(),
            "Another pgclone is running for /x (lock: /tmp/l)"
        );
        assert!(e.is_retryable());
        let e = CloneError::refused(ErrorKind::Unsupported, "PostgreSQL >= 15 required");
        assert!(!e.is_retryable());
    }
}
