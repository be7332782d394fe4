//! One error type for all PostgreSQL I/O, classified into an [`ErrorKind`] so
//! callers can decide whether a retry can help without parsing messages.

use std::fmt;
use std::io;

use pgtandem_core::error::ErrorKind;

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error reported by the PostgreSQL server (an `ErrorResponse`).
///
/// Kept separate from client-side failures because its SQLSTATE drives the
/// retry policy and its message must reach the operator unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerError {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl ServerError {
    /// Builds a server error from its protocol fields.
    pub fn new(
        severity: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: severity.into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds the optional `DETAIL` and `HINT` fields.
    pub fn with_detail_hint(mut self, detail: Option<String>, hint: Option<String>) -> Self {
        self.detail = detail;
        self.hint = hint;
        self
    }

    /// Severity as sent by the server (`ERROR`, `FATAL`, `PANIC`).
    pub fn severity(&self) -> &str {
        &self.severity
    }

    /// The five-character SQLSTATE.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The primary message, verbatim.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The optional `DETAIL` field.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The optional `HINT` field.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Classification of the SQLSTATE.
    pub fn kind(&self) -> ErrorKind {
        kind_for_sqlstate(&self.code)
    }
}

impl From<&tokio_postgres::error::DbError> for ServerError {
    fn from(db: &tokio_postgres::error::DbError) -> Self {
        ServerError::new(db.severity(), db.code().code(), db.message())
            .with_detail_hint(db.detail().map(str::to_owned), db.hint().map(str::to_owned))
    }
}

/// Same layout as libpq/tokio-postgres so operators recognise the text.
impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerError")
            .field("severity", &self.severity)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("detail", &self.detail)
            .field("hint", &self.hint)
            .finish()
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an `ErrorResponse`.
    #[error("{0}")]
    Server(Box<ServerError>),

    /// A client-side failure inside tokio-postgres (closed connection, I/O,
    /// timeout); the server sent no SQLSTATE.
    #[error("{}", display_client_error(.0))]
    Client(#[source] tokio_postgres::Error),

    /// Socket-level failure of our own protocol layer (replication connection).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, e.g. `could not connect to server "/tmp" port 5432`.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// The server sent something the protocol does not allow at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// Authentication could not proceed on the client side (no password,
    /// unsupported method, SCRAM verification failure).
    #[error("authentication failed: {0}")]
    Auth(String),

    /// Connection parameters are invalid.
    #[error("invalid connection parameters: {0}")]
    Config(String),

    /// The request needs something this build or server cannot do.
    #[error("{0}")]
    Unsupported(String),

    /// A deadline passed (connect, pool checkout, retry budget).
    #[error("timeout: {0}")]
    Timeout(String),

    /// The pool is closed or misconfigured.
    #[error("connection pool: {0}")]
    Pool(String),
}

impl Error {
    /// Classification used by retry policies and exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Server(e) => e.kind(),
            Error::Client(e) => kind_for_client_error(e),
            Error::Io { .. } => ErrorKind::Connection,
            Error::Protocol(_) => ErrorKind::Internal,
            Error::Auth(_) => ErrorKind::Auth,
            Error::Config(_) => ErrorKind::Config,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Pool(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same operation may succeed when tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server(e) => sqlstate_is_retryable(e.code()),
            _ => kind_is_retryable(self.kind()),
        }
    }

    /// The SQLSTATE if the server reported this error.
    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(ServerError::code)
    }

    /// The server's error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Error::Server(Box::new(ServerError::from(db))),
            None => Error::Client(e),
        }
    }
}

impl From<ServerError> for Error {
    fn from(e: ServerError) -> Self {
        Error::Server(Box::new(e))
    }
}

impl From<Error> for pgtandem_core::error::Error {
    fn from(e: Error) -> Self {
        pgtandem_core::error::Error::new(e.kind(), e.to_string())
    }
}

/// tokio-postgres keeps the cause out of its `Display`; operators need both.
fn display_client_error(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// tokio-postgres does not expose its error kind; its fixed `Display` texts
/// and the presence of an I/O cause are the only stable signals.
fn kind_for_client_error(e: &tokio_postgres::Error) -> ErrorKind {
    if e.is_closed() {
        return ErrorKind::Connection;
    }
    let text = e.to_string();
    if text.starts_with("timeout") {
        return ErrorKind::Timeout;
    }
    if text.starts_with("authentication error") {
        return ErrorKind::Auth;
    }
    if text.starts_with("invalid configuration") || text.starts_with("invalid connection string") {
        return ErrorKind::Config;
    }
    if text.starts_with("error connecting")
        || text.starts_with("error communicating")
        || std::error::Error::source(e).is_some_and(|c| c.is::<io::Error>())
    {
        return ErrorKind::Connection;
    }
    ErrorKind::Internal
}

/// Maps a SQLSTATE to our error kind.
///
/// Classes follow the PostgreSQL error code appendix: connection exceptions
/// (08), auth (28), insufficient resources (53), operator intervention (57),
/// object in use / lock not available (55), serialization failures (40).
pub fn kind_for_sqlstate(code: &str) -> ErrorKind {
    match code {
        "42501" => ErrorKind::Permission,
        "57P01" | "57P02" | "57P03" => ErrorKind::Connection,
        "57014" => ErrorKind::Cancelled,
        "55P03" | "55006" | "40001" | "40P01" => ErrorKind::Busy,
        "3D000" | "42P01" | "42704" | "42883" | "3F000" => ErrorKind::NotFound,
        "0A000" => ErrorKind::Unsupported,
        "XX001" | "XX002" => ErrorKind::Corrupt,
        _ => match code.get(..2) {
            Some("08") => ErrorKind::Connection,
            Some("28") => ErrorKind::Auth,
            Some("53") => ErrorKind::Busy,
            Some("F0") => ErrorKind::Config,
            _ => ErrorKind::Internal,
        },
    }
}

/// Whether an error with this SQLSTATE may go away on its own.
pub fn sqlstate_is_retryable(code: &str) -> bool {
    matches!(
        code,
        "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "55006"
    ) || matches!(code.get(..2), Some("08") | Some("53"))
}

fn kind_is_retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Connection | ErrorKind::Busy | ErrorKind::Timeout
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> Error {
        ServerError::new("ERROR", code, "boom").into()
    }

    #[test]
    fn sqlstate_classes_map_to_kinds() {
        assert_eq!(server("08006").kind(), ErrorKind::Connection);
        assert_eq!(server("28P01").kind(), ErrorKind::Auth);
        assert_eq!(server("28000").kind(), ErrorKind::Auth);
        assert_eq!(server("42501").kind(), ErrorKind::Permission);
        assert_eq!(server("57P01").kind(), ErrorKind::Connection);
        assert_eq!(server("57P03").kind(), ErrorKind::Connection);
        assert_eq!(server("55P03").kind(), ErrorKind::Busy);
        assert_eq!(server("53300").kind(), ErrorKind::Busy);
        assert_eq!(server("40001").kind(), ErrorKind::Busy);
        assert_eq!(server("3D000").kind(), ErrorKind::NotFound);
        assert_eq!(server("42601").kind(), ErrorKind::Internal);
        assert_eq!(server("57014").kind(), ErrorKind::Cancelled);
    }

    #[test]
    fn retryable_sqlstates() {
        for code in [
            "08006", "57P01", "57P02", "57P03", "40001", "40P01", "53300", "55P03",
        ] {
            assert!(server(code).is_retryable(), "{code} should be retryable");
        }
        for code in ["28P01", "42501", "42601", "23505", "0A000"] {
            assert!(
                !server(code).is_retryable(),
                "{code} should not be retryable"
            );
        }
    }

    #[test]
    fn display_keeps_server_message_verbatim() {
        let e: Error = ServerError::new(
            "FATAL",
            "28P01",
            "password authentication failed for user \"x\"",
        )
        .with_detail_hint(None, Some("check it".into()))
        .into();
        assert_eq!(
            e.to_string(),
            "FATAL: password authentication failed for user \"x\"\nHINT: check it"
        );
        assert_eq!(e.sqlstate(), Some("28P01"));
    }

    #[test]
    fn client_side_kinds() {
        assert!(!Error::Auth("x".into()).is_retryable());
        assert_eq!(
            Error::Unsupported("x".into()).kind(),
            ErrorKind::Unsupported
        );
        let io = Error::io("connect", io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(io.kind(), ErrorKind::Connection);
        assert!(io.is_retryable());
        assert!(Error::Timeout("x".into()).is_retryable());
    }
}
