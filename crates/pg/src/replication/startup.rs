//! Startup packet and authentication (trust, cleartext, MD5, SCRAM-SHA-256)
//! for our own protocol layer.

use std::collections::HashMap;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::wire::{Framed, Incoming, describe, server_error};
use crate::error::{Error, Result};

/// What the server told us while the session started.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// `ParameterStatus` values (server_version, integer_datetimes, ...).
    pub(crate) parameters: HashMap<String, String>,
    /// Process id and secret key for cancel requests.
    pub(crate) backend_key: Option<(i32, i32)>,
}

/// Sends the startup packet, authenticates, and reads until the first
/// `ReadyForQuery`.
///
/// `password` is called only if the server asks for one, so `.pgpass` is not
/// read for trust connections.
pub(crate) async fn startup(
    framed: &mut Framed,
    parameters: &[(&str, &str)],
    user: &str,
    password: impl FnOnce() -> Option<String>,
) -> Result<Session> {
    frontend::startup_message(parameters.iter().copied(), &mut framed.write_buf)
        .map_err(|e| Error::Config(format!("invalid startup parameter: {e}")))?;
    framed.flush().await?;
    authenticate(framed, user, password).await?;
    read_until_ready(framed).await
}

async fn authenticate(
    framed: &mut Framed,
    user: &str,
    password: impl FnOnce() -> Option<String>,
) -> Result<()> {
    let mut password = Some(password);
    let mut take_password = move || -> Result<String> {
        password.take().and_then(|f| f()).ok_or_else(|| {
            Error::Auth("the server requested a password, but none was supplied".into())
        })
    };
    loop {
        match framed.read().await? {
            Incoming::Message(Message::AuthenticationOk) => return Ok(()),
            Incoming::Message(Message::AuthenticationCleartextPassword) => {
                let pw = take_password()?;
                send_password(framed, pw.as_bytes()).await?;
            }
            Incoming::Message(Message::AuthenticationMd5Password(body)) => {
                let pw = take_password()?;
                let hashed = md5_hash(user.as_bytes(), pw.as_bytes(), body.salt());
                send_password(framed, hashed.as_bytes()).await?;
            }
            Incoming::Message(Message::AuthenticationSasl(body)) => {
                let mut mechanisms = body.mechanisms();
                let mut scram_offered = false;
                while let Some(m) = mechanisms
                    .next()
                    .map_err(|e| Error::Protocol(format!("malformed SASL mechanism list: {e}")))?
                {
                    scram_offered |= m == SCRAM_SHA_256;
                }
                if !scram_offered {
                    return Err(Error::Auth(
                        "the server offers no SASL mechanism we support (need SCRAM-SHA-256)"
                            .into(),
                    ));
                }
                let pw = take_password()?;
                scram(framed, pw.as_bytes()).await?;
            }
            Incoming::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(body.fields())?.into());
            }
            Incoming::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
            Incoming::Message(
                Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential,
            ) => {
                return Err(Error::Auth(
                    "the server requested GSSAPI/SSPI/Kerberos authentication, which is not supported".into(),
                ));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected {} during authentication",
                    describe(&other)
                )));
            }
        }
    }
}

async fn send_password(framed: &mut Framed, password: &[u8]) -> Result<()> {
    frontend::password_message(password, &mut framed.write_buf)
        .map_err(|e| Error::Auth(format!("cannot encode password: {e}")))?;
    framed.flush().await
}

/// SCRAM-SHA-256 without channel binding: we speak plaintext TCP, so there
/// is no TLS channel to bind to.
async fn scram(framed: &mut Framed, password: &[u8]) -> Result<()> {
    let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut framed.write_buf)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    framed.flush().await?;

    let server_first = match framed.read().await? {
        Incoming::Message(Message::AuthenticationSaslContinue(body)) => body,
        Incoming::Message(Message::ErrorResponse(body)) => {
            return Err(server_error(body.fields())?.into());
        }
        other => {
            return Err(Error::Protocol(format!(
                "expected SASL continue, got {}",
                describe(&other)
            )));
        }
    };
    scram
        .update(server_first.data())
        .map_err(|e| Error::Auth(format!("SCRAM exchange failed: {e}")))?;
    frontend::sasl_response(scram.message(), &mut framed.write_buf)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    framed.flush().await?;

    match framed.read().await? {
        Incoming::Message(Message::AuthenticationSaslFinal(body)) => scram
            .finish(body.data())
            .map_err(|e| Error::Auth(format!("server signature verification failed: {e}"))),
        Incoming::Message(Message::ErrorResponse(body)) => Err(server_error(body.fields())?.into()),
        other => Err(Error::Protocol(format!(
            "expected SASL final, got {}",
            describe(&other)
        ))),
    }
}

async fn read_until_ready(framed: &mut Framed) -> Result<Session> {
    let mut session = Session::default();
    loop {
        match framed.read().await? {
            Incoming::Message(Message::ParameterStatus(p)) => {
                let name = p.name().map_err(|e| Error::Protocol(e.to_string()))?;
                let value = p.value().map_err(|e| Error::Protocol(e.to_string()))?;
                session.parameters.insert(name.to_owned(), value.to_owned());
            }
            Incoming::Message(Message::BackendKeyData(key)) => {
                session.backend_key = Some((key.process_id(), key.secret_key()));
            }
            Incoming::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
            Incoming::Message(Message::ReadyForQuery(_)) => return Ok(session),
            Incoming::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(body.fields())?.into());
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected {} during session startup",
                    describe(&other)
                )));
            }
        }
    }
}

/// Server notices are informational; keep them in the log, verbatim.
pub(crate) fn log_notice(fields: postgres_protocol::message::backend::ErrorFields<'_>) {
    match server_error(fields) {
        Ok(notice) => tracing::info!(code = notice.code(), "{notice}"),
        Err(e) => tracing::debug!(error = %e, "unparsable notice from server"),
    }
}
