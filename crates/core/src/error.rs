//! The project's one error type: a message plus a [`ErrorKind`] that tells
//! callers (and retry loops) whether trying again can help.

use std::fmt;

/// Boxed cause kept for `source()` chains; `Send + Sync` so errors cross tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with the project error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, at the granularity retry policies and exit codes branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input or configuration; retrying the same thing cannot help.
    Config,
    /// Network failure or unreachable server; retry with backoff helps.
    Connection,
    /// Authentication failed or no credentials.
    Auth,
    /// Authenticated but not allowed (privileges, file modes).
    Permission,
    /// A referenced object (file, table, slot, node) does not exist.
    NotFound,
    /// Someone else holds the lock or the object is in use; retry later.
    Busy,
    /// An operation exceeded its deadline; retrying may succeed.
    Timeout,
    /// Data failed validation: checksum mismatch, truncated or corrupt file.
    Corrupt,
    /// The server or input uses something we do not support.
    Unsupported,
    /// The operation was cancelled by the user or a shutdown.
    Cancelled,
    /// A bug or an invariant violation.
    Internal,
}

impl ErrorKind {
    /// Whether repeating the failed operation (usually with backoff) can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Connection | Self::Busy | Self::Timeout)
    }

    /// Stable lower-case name, used in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Connection => "connection",
            Self::Auth => "auth",
            Self::Permission => "permission",
            Self::NotFound => "not_found",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::Corrupt => "corrupt",
            Self::Unsupported => "unsupported",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a kind, a human message and an optional underlying cause.
///
/// `Display` prints only the message (contexts are prefixed into it), so a CLI
/// can print `Error: {err}` and get one readable line.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $kind:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(ErrorKind::$kind, message)
            }
        )*
    };
}

impl Error {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    constructors! {
        /// Bad input or configuration.
        config => Config,
        /// Network or server unreachable.
        connection => Connection,
        /// Authentication failure.
        auth => Auth,
        /// Missing privilege or unsafe file permissions.
        permission => Permission,
        /// Something referenced does not exist.
        not_found => NotFound,
        /// Lock held or object in use.
        busy => Busy,
        /// Deadline exceeded.
        timeout => Timeout,
        /// Checksum mismatch or corrupt data.
        corrupt => Corrupt,
        /// Unsupported server, format or option.
        unsupported => Unsupported,
        /// Cancelled by user or shutdown.
        cancelled => Cancelled,
        /// Invariant violation.
        internal => Internal,
    }

    /// Attaches the underlying cause (kept for `source()` chains and logs).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Prefixes the message with what we were doing: `"{context}: {message}"`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Changes the kind, e.g. when a caller knows a `NotFound` is really a `Config` mistake.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The kind that drives retry policy and exit codes.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the cause chain.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether repeating the failed operation can succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// Adds [`Error::context`] to any `Result<T, Error>`.
pub trait ResultExt<T> {
    /// Prefixes the error message with `context` (evaluated lazily).
    fn context_with<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context_with<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.context(context()))
    }
}

impl From<std::io::Error> for Error {
    /// Classifies the I/O error kinds that carry meaning; anything else is `Internal`.
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::Permission,
            Io::TimedOut | Io::WouldBlock => ErrorKind::Timeout,
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe
            | Io::AddrNotAvailable
            | Io::HostUnreachable
            | Io::NetworkUnreachable
            | Io::NetworkDown
            | Io::UnexpectedEof => ErrorKind::Connection,
            Io::InvalidInput | Io::InvalidData => ErrorKind::Config,
            Io::ResourceBusy | Io::AlreadyExists => ErrorKind::Busy,
            Io::Unsupported => ErrorKind::Unsupported,
            Io::Interrupted => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, err.to_string()).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn only_transient_kinds_are_retryable() {
        let retryable = [ErrorKind::Connection, ErrorKind::Busy, ErrorKind::Timeout];
        let all = [
            ErrorKind::Config,
            ErrorKind::Connection,
            ErrorKind::Auth,
            ErrorKind::Permission,
            ErrorKind::NotFound,
            ErrorKind::Busy,
            ErrorKind::Timeout,
            ErrorKind::Corrupt,
            ErrorKind::Unsupported,
            ErrorKind::Cancelled,
            ErrorKind::Internal,
        ];
        for kind in all {
            assert_eq!(kind.is_retryable(), retryable.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn context_prefixes_message_and_keeps_kind_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::from(io).context("connecting to primary");
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "connecting to primary: refused");
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some("refused")
        );
    }

    #[test]
    fn constructors_set_kind() {
        assert_eq!(Error::config("x").kind(), ErrorKind::Config);
        assert_eq!(Error::busy("x").kind(), ErrorKind::Busy);
        assert_eq!(Error::corrupt("x").kind(), ErrorKind::Corrupt);
        assert!(!Error::auth("x").is_retryable());
        let e: Result<()> = Err(Error::not_found("slot s"));
        let e = e.context_with(|| "dropping").unwrap_err();
        assert_eq!(e.message(), "dropping: slot s");
        assert_eq!(e.with_kind(ErrorKind::Config).kind(), ErrorKind::Config);
    }

    #[test]
    fn io_not_found_maps_to_not_found() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(Error::from(io).kind(), ErrorKind::NotFound);
    }
}
