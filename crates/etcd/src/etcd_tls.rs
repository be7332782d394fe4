//! TLS to etcd (spec §2.2). With `cacert` the server certificate is checked
//! by tonic's own TLS; `tls=enabled` without a CA keeps the reference's
//! behaviour (encrypt, check nothing), which tonic cannot express, so that
//! case dials through our own rustls connector with a verifier that accepts
//! any certificate but still checks the handshake signatures.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

use crate::dsn::TlsSettings;
use crate::error::{SyncError, SyncResult};

fn tls_error(what: &str, detail: impl std::fmt::Display) -> SyncError {
    SyncError::Etcd {
        message: format!("etcd TLS: {what}: {detail}"),
        retryable: false,
    }
}

fn read(path: &std::path::Path, what: &str) -> SyncResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| tls_error(&format!("cannot read {what} {}", path.display()), e))
}

/// tonic TLS options for the verified case (`cacert` given).
pub fn verified_options(tls: &TlsSettings) -> SyncResult<Option<TlsOptions>> {
    let Some(ca) = &tls.cacert else {
        return Ok(None);
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "cacert")?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
    }
    if let Some(name) = &tls.server_name {
        options = options.domain_name(name.clone());
    }
    Ok(Some(options))
}

/// Accepts any server certificate (the operator asked for `tls=enabled`
/// without a CA); handshake signatures are still verified.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials the DSN's hosts in order and wraps the first that answers in TLS
/// without certificate checks. The URI tonic passes is ignored, so one
/// channel fails over across every host.
#[derive(Clone)]
pub struct UnverifiedConnector {
    endpoints: Arc<Vec<String>>,
    server_name: Option<String>,
    dial_timeout: Duration,
    tls: TlsConnector,
}

impl UnverifiedConnector {
    pub fn new(
        endpoints: &[String],
        tls: &TlsSettings,
        dial_timeout: Duration,
    ) -> SyncResult<UnverifiedConnector> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)));
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_slice_iter(&read(cert, "cert")?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_error("cert", e))?;
                let key = PrivateKeyDer::from_pem_slice(&read(key, "key")?)
                    .map_err(|e| tls_error("key", e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| tls_error("client certificate", e))?
            }
            _ => builder.with_no_client_auth(),
        };
        // etcd's gRPC server speaks HTTP/2 only when ALPN says so.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(UnverifiedConnector {
            endpoints: Arc::new(endpoints.to_vec()),
            server_name: tls.server_name.clone(),
            dial_timeout,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn dial(self) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
        let mut last = std::io::Error::other("etcd DSN has no hosts");
        for endpoint in self.endpoints.iter() {
            let host = endpoint
                .rsplit_once(':')
                .map_or(endpoint.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = self.server_name.as_deref().unwrap_or(host);
            let server_name = ServerName::try_from(name.to_owned())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let attempt = async {
                let tcp = TcpStream::connect(endpoint.as_str()).await?;
                tcp.set_nodelay(true)?;
                self.tls.connect(server_name, tcp).await
            };
            match tokio::time::timeout(self.dial_timeout, attempt).await {
                Ok(Ok(stream)) => return Ok(TokioIo::new(stream)),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("dial {endpoint} timed out"),
                    )
                }
            }
        }
        Err(last)
    }
}

impl Service<Uri> for UnverifiedConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial())
    }
}
