//! Frontend/backend message framing over a TCP or Unix socket.
//!
//! We own the read buffer (instead of using tokio-postgres) because a
//! replication connection needs `CopyBothResponse` and, later, interleaved
//! reads and writes of `CopyData` during WAL streaming, which tokio-postgres
//! 0.7 cannot express.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
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

/// Where a server listens: a TCP host name/address or a Unix socket directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAddr {
    /// Host name or IP address.
    Tcp(String),
    /// Directory containing `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl HostAddr {
    /// libpq rule: a host starting with `/` is a socket directory.
    pub fn parse(host: &str) -> Self {
        if host.starts_with('/') {
            HostAddr::Unix(PathBuf::from(host))
        } else {
            HostAddr::Tcp(host.to_owned())
        }
    }

    /// Human-readable target, formatted like libpq's connection errors.
    pub fn describe(&self, port: u16) -> String {
        match self {
            HostAddr::Tcp(host) => format!("server at \"{host}\", port {port}"),
            HostAddr::Unix(dir) => format!(
                "server on socket \"{}\"",
                dir.join(format!(".s.PGSQL.{port}")).display()
            ),
        }
    }
}

/// A connected byte stream of either family.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    pub(crate) async fn connect(host: &HostAddr, port: u16) -> io::Result<Socket> {
        match host {
            HostAddr::Tcp(name) => {
                let stream = TcpStream::connect((name.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                Ok(Socket::Tcp(stream))
            }
            HostAddr::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Ok(Socket::Unix(UnixStream::connect(path).await?))
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
        let Some(header) = backend::Header::parse(&self.read_buf)
            .map_err(|e| Error::Protocol(e.to_string()))?
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
pub(crate) fn server_error(
    mut fields: backend::ErrorFields<'_>,
) -> Result<ServerError> {
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
    fn host_kinds_follow_libpq() {
        assert_eq!(HostAddr::parse("/tmp"), HostAddr::Unix(PathBuf::from("/tmp")));
        assert_eq!(
            HostAddr::parse("127.0.0.1"),
            HostAddr::Tcp("127.0.0.1".into())
        );
        assert_eq!(
            HostAddr::parse("/var/run/postgresql").describe(5433),
            "server on socket \"/var/run/postgresql/.s.PGSQL.5433\""
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
        assert!(matches!(framed.read().await.unwrap(), Incoming::CopyBothResponse));
        match framed.read().await.unwrap() {
            Incoming::Message(backend::Message::ReadyForQuery(r)) => assert_eq!(r.status(), b'I'),
            other => panic!("unexpected {}", describe(&other)),
        }
        drop(writer.await.unwrap());
        let eof = framed.read().await;
        assert!(matches!(eof, Err(Error::Io { .. })));
    }
}
