//! The engine's error type: each variant says which exit code it maps to and
//! whether a retry (reconnect with backoff) can help.

use crate::ExitCode;

pub type SyncResult<T> = Result<T, SyncError>;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Bad configuration or an incompatible schema; never retried (exit 1).
    #[error("{0}")]
    Config(String),
    /// PostgreSQL failure; retryable when the connection was lost.
    #[error("PostgreSQL: {0}")]
    Pg(#[from] pgtandem_pg::Error),
    /// etcd failure.
    #[error("etcd: {message}")]
    Etcd { message: String, retryable: bool },
    /// The control session ended, taking the leader lock with it (§3.5):
    /// reconnect everything and wait for the lock again.
    #[error("control session closed; leader lock lost")]
    LockLost,
    /// The start revision was compacted: resync instead of retrying.
    #[error("etcd revision {0} has been compacted")]
    Compacted(i64),
    /// Unrecoverable runtime failure (exit 4).
    #[error("{0}")]
    Fatal(String),
}

impl SyncError {
    /// Whether reconnecting and trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Pg(e) => e.is_retryable() || is_connection_loss(e),
            SyncError::Etcd { retryable, .. } => *retryable,
            SyncError::Compacted(_) | SyncError::LockLost => true,
            SyncError::Config(_) | SyncError::Fatal(_) => false,
        }
    }

    /// The exit code when this error ends the process.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SyncError::Config(_) => ExitCode::Config,
            _ => ExitCode::Runtime,
        }
    }

    /// SQLSTATE of a PostgreSQL server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SyncError::Pg(e) => e.sqlstate(),
            _ => None,
        }
    }
}

/// A closed socket or an admin shutdown: the session is gone.
fn is_connection_loss(e: &pgtandem_pg::Error) -> bool {
    match e.sqlstate() {
        Some(code) => code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03"),
        None => matches!(
            e,
            pgtandem_pg::Error::Client(_) | pgtandem_pg::Error::Io { .. }
        ),
    }
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        SyncError::Pg(pgtandem_pg::Error::from(e))
    }
}

impl From<etcd_client::Error> for SyncError {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        let retryable = match &e {
            E::GRpcStatus(status) => status_is_transient(status),
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => true,
            _ => false,
        };
        let message = match &e {
            E::GRpcStatus(status) => status.message().to_owned(),
            other => other.to_string(),
        };
        SyncError::Etcd { message, retryable }
    }
}

/// gRPC codes that mean "try again later" rather than "this request is wrong".
pub fn status_is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::Cancelled
            | Code::ResourceExhausted
    )
}
