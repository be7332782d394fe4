//! Frontend/backend message framing over a TCP or Unix socket.
//!
//! We own the read buffer (instead of using tokio-postgres) because a
//! replication connection needs `CopyBothResponse` and, later, interleaved
//! reads and writes of `CopyData` during WAL streaming, which tokio-postgres
//! 0.7 cannot express.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pgtandem_core::conninfo::{Host, HostSpec};
use postgres_protocol::message::backend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::error::{Error, Result, ServerError};

/// Tag of `CopyBothResponse`, which postgres-protocol's parser does not know.
pub(crate) const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// Refuse absurd lengths before allocating: the server never sends a message
/// of 1 GiB or more (its own `PQ_LARGE_MESSAGE_LIMIT`).
const MAX_MESSAGE_LEN: usize = 1 << 30;

/// libpq-style description of a target, for connection error messages.
pub(crate) fn describe_target(target: &HostSpec) -> String {
    match (&target.host, &target.hostaddr) {
        (Host::Unix(_), _) => format!(
            "server on socket \"{}\"",
            target.socket_path().unwrap_or_default().display()
        ),
        (Host::Tcp(host), Some(addr)) if host != addr => {
            format!("server at \"{host}\" ({addr}), port {}", target.port)
        }
        (Host::Tcp(host), _) => format!("server at \"{host}\", port {}", target.port),
    }
}

/// A connected byte stream of either family.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Connects to `hostaddr` if given (no name resolution), else `host`.
    pub(crate) async fn connect(target: &HostSpec) -> io::Result<Socket> {
        match (&target.host, &target.hostaddr) {
            (Host::Unix(dir), _) => {
                let path = dir.join(format!(".s.PGSQL.{}", target.port));
                Ok(Socket::Unix(UnixStream::connect(path).await?))
            }
            (Host::Tcp(name), addr) => {
                let host = addr.as_deref().unwrap_or(name);
                let stream = TcpStream::connect((host, target.port)).await?;
                stream.set_nodelay(true)?;
                Ok(Socket::Tcp(stream))
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One backend message.
pub(crate) enum Incoming {
    /// Any message postgres-protocol knows how to parse.
    Message(backend::Message),
    /// `CopyBothResponse`: the server entered WAL streaming mode.
    CopyBothResponse,
}

/// A socket plus its read and write buffers.
#[derive(Debug)]
pub(crate) struct Framed {
    socket: Socket,
    read_buf: BytesMut,
    /// Frontend messages are encoded here and sent by [`Framed::flush`].
    pub(crate) write_buf: BytesMut,
}

impl Framed {
    pub(crate) fn new(socket: Socket) -> Self {
        Self {
            socket,
            read_buf: BytesMut::with_capacity(16 * 1024),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Sends everything encoded in `write_buf`.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.socket
            .write_all(&self.write_buf)
            .await
            .map_err(|e| Error::io("could not send data to server", e))?;
        self.write_buf.clear();
        self.socket
            .flush()
            .await
            .map_err(|e| Error::io("could not send data to server", e))
    }

    /// Reads the next complete message, waiting for more bytes as needed.
    pub(crate) async fn read(&mut self) -> Result<Incoming> {
        loop {
            if let Some(message) = self.try_parse()? {
                return Ok(message);
            }
            let n = self
                .socket
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|e| Error::io("could not receive data from server", e))?;
            if n == 0 {
                return Err(Error::io(
                    "server closed the connection unexpectedly",
                    io::Error::from(io::ErrorKind::UnexpectedEof),
                ));
            }
        }
    }

    fn try_parse(&mut self) -> Result<Option<Incoming>> {
        let Some(header) =
            backend::Header::parse(&self.read_buf).map_err(|e| Error::Protocol(e.to_string()))?
        else {
            return Ok(None);
        };
        // Header::parse rejects len < 4, so this cannot underflow.
        let total = usize::try_from(header.len())
            .map_err(|_| Error::Protocol("negative message length".into()))?
            + 1;
        if total > MAX_MESSAGE_LEN {
            return Err(Error::Protocol(format!(
                "message of {total} bytes exceeds the {MAX_MESSAGE_LEN} byte limit"
            )));
        }
        if self.read_buf.len() < total {
            self.read_buf.reserve(total - self.read_buf.len());
            return Ok(None);
        }
        if header.tag() == COPY_BOTH_RESPONSE_TAG {
            self.read_buf.advance(total);
            return Ok(Some(Incoming::CopyBothResponse));
        }
        match backend::Message::parse(&mut self.read_buf) {
            Ok(Some(message)) => Ok(Some(Incoming::Message(message))),
            Ok(None) => Err(Error::Protocol("incomplete message after framing".into())),
            Err(e) => Err(Error::Protocol(e.to_string())),
        }
    }

    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        self.socket
            .shutdown()
            .await
            .map_err(|e| Error::io("could not close connection", e))
    }
}

/// Decodes an `ErrorResponse`/`NoticeResponse` field list.
pub(crate) fn server_error(mut fields: backend::ErrorFields<'_>) -> Result<ServerError> {
    let mut severity = None;
    let mut localized_severity = None;
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut hint = None;
    while let Some(field) = fields
        .next()
        .map_err(|e| Error::Protocol(format!("malformed error response: {e}")))?
    {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => severity = Some(value),
            b'S' => localized_severity = Some(value),
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    let severity = severity
        .or(localized_severity)
        .unwrap_or_else(|| "ERROR".to_owned());
    Ok(ServerError::new(severity, code, message).with_detail_hint(detail, hint))
}

/// A human-readable name for an unexpected message in protocol errors.
pub(crate) fn describe(incoming: &Incoming) -> &'static str {
    use backend::Message as M;
    match incoming {
        Incoming::CopyBothResponse => "CopyBothResponse",
        Incoming::Message(m) => match m {
            M::AuthenticationOk => "AuthenticationOk",
            M::BackendKeyData(_) => "BackendKeyData",
            M::CommandComplete(_) => "CommandComplete",
            M::CopyData(_) => "CopyData",
            M::CopyDone => "CopyDone",
            M::CopyInResponse(_) => "CopyInResponse",
            M::CopyOutResponse(_) => "CopyOutResponse",
            M::DataRow(_) => "DataRow",
            M::EmptyQueryResponse => "EmptyQueryResponse",
            M::ErrorResponse(_) => "ErrorResponse",
            M::NoticeResponse(_) => "NoticeResponse",
            M::ParameterStatus(_) => "ParameterStatus",
            M::ReadyForQuery(_) => "ReadyForQuery",
            M::RowDescription(_) => "RowDescription",
            _ => "an unexpected message",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_described_like_libpq() {
        let unix = HostSpec {
            host: Host::Unix("/var/run/postgresql".into()),
            hostaddr: None,
            port: 5433,
        };
        assert_eq!(
            describe_target(&unix),
            "server on socket \"/var/run/postgresql/.s.PGSQL.5433\""
        );
        let tcp = HostSpec {
            host: Host::Tcp("db1".into()),
            hostaddr: Some("10.0.0.1".into()),
            port: 5432,
        };
        assert_eq!(
            describe_target(&tcp),
            "server at \"db1\" (10.0.0.1), port 5432"
        );
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_copy_both() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut framed = Framed::new(Socket::Unix(a));
        // ParameterStatus "a"="b", then CopyBothResponse, then ReadyForQuery.
        let mut bytes = vec![b'S', 0, 0, 0, 8, b'a', 0, b'b', 0];
        bytes.extend_from_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        bytes.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(3) {
                b.write_all(chunk).await.unwrap();
                b.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            b
        });
        match framed.read().await.unwrap() {
            Incoming::Message(backend::Message::ParameterStatus(p)) => {
                assert_eq!(p.name().unwrap(), "a");
                assert_eq!(p.value().unwrap(), "b");
            }
            other => panic!("unexpected {}", describe(&other)),
        }
        assert!(matches!(
            framed.read().await.unwrap(),
            Incoming::CopyBothResponse
        ));
        match framed.read().await.unwrap() {
            Incoming::Message(backend::Message::ReadyForQuery(r)) => assert_eq!(r.status(), b'I'),
            other => panic!("unexpected {}", describe(&other)),
        }
        drop(writer.await.unwrap());
        let eof = framed.read().await;
        assert!(matches!(eof, Err(Error::Io { .. })));
    }
}
