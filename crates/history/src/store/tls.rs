//! TLS to PostgreSQL with libpq's meanings: `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert`, `sslcert` and `sslkey`, over rustls.
//!
//! - `params`: [`TlsParams`], the four parameters taken out of the connection string.
//! - Here: [`SslMode`], the [`connector`] and its certificate check, the stream, and
//!   [`TlsError`] (`refusal_in`).
//!
//! Design constraints:
//! - tokio-postgres knows only `disable`, `prefer` and `require`, and nothing of certificates: these
//!   four parameters are taken out of the connection string here ([`split_tls_params`]) and the rest
//!   goes to tokio-postgres unchanged.
//! - One connector ([`MakeRustlsConnect`]) serves every connection of the pool, so the migrations,
//!   the history writer, the API and the retention sweep all connect the same way.
//! - Trusted roots: the file `sslrootcert` names; without it, the public CAs built into the binary
//!   (webpki-roots, as the HTTP client uses); `sslrootcert=system`, the operating system's store
//!   (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), as libpq 16.
//! - `prefer` and `require` encrypt without checking the certificate (libpq's meaning), but still
//!   check the handshake's signatures; `require` with `sslrootcert` is `verify-ca`, as in libpq.
//!   `verify-ca` checks the chain to `sslrootcert` (or the system roots) and not the name;
//!   `verify-full` checks both.
//! - A certificate refused by the client, or a handshake refused by the server, is configuration,
//!   not an outage: it becomes a [`TlsError`], which the store reports as such
//!   (`StoreError::Tls`, not `is_unavailable`), so nothing waits for it to heal.
//! - Files are read when the pool is built, so a missing CA file stops start-up with its path
//!   rather than failing every connection later.
//! - No channel binding (`tls-server-end-point`): SCRAM runs without it, as with libpq's default
//!   `channel_binding=prefer` against a server that does not offer it.

mod params;

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;

pub(crate) use params::{percent_decode, split_tls_params, TlsParams};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            // libpq's `allow` (plain first, TLS if the server insists) has no equivalent in
            // tokio-postgres; `prefer` is the nearest and is never weaker.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is optional or required.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// A TLS handshake that failed for a reason no retry will fix: the certificate, or the server's
/// refusal of ours.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("TLS to {host} failed (sslmode={mode}): {reason}")]
    Refused {
        host: String,
        mode: &'static str,
        reason: String,
    },
    #[error("the server does not offer TLS, and sslmode={mode} requires it")]
    NotOffered { mode: &'static str },
    #[error("invalid host name {host:?} for TLS")]
    InvalidName { host: String },
}

/// The connector every pooled connection uses, and the negotiation tokio-postgres is told.
pub(crate) fn connector(
    params: &TlsParams,
) -> Result<(tokio_postgres::config::SslMode, MakeRustlsConnect), String> {
    let mut mode = match &params.sslmode {
        None => SslMode::Prefer, // libpq's default
        Some(value) => SslMode::parse(value).ok_or_else(|| {
            format!(
                "invalid sslmode {value:?}: use disable, prefer, require, verify-ca or verify-full"
            )
        })?,
    };
    let rootcert = params.sslrootcert.as_deref().filter(|p| !p.is_empty());
    if mode == SslMode::Require && rootcert.is_some() {
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        mode = SslMode::VerifyCa;
    }
    if rootcert == Some("system") && !matches!(mode, SslMode::VerifyFull | SslMode::Disable) {
        // As libpq 16: trusting every public CA without checking the name would trust anyone.
        return Err("sslrootcert=system requires sslmode=verify-full".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Check::Signatures,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::ChainAndName,
    };
    let roots = match (check, rootcert) {
        (Check::Signatures, _) => RootCertStore::empty(),
        (_, None) => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        (_, Some("system")) => system_roots()?,
        (_, Some(path)) => roots_from_file(path)?,
    };
    let verifier = Arc::new(Verifier {
        check,
        roots: Arc::new(roots),
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let sslcert = params.sslcert.as_deref().filter(|p| !p.is_empty());
    let sslkey = params.sslkey.as_deref().filter(|p| !p.is_empty());
    let config = match (sslcert, sslkey) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates_in(cert, "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read the private key sslkey={key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert and sslkey do not make a client certificate: {e}"))?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err("sslcert and sslkey must be given together".into())
        }
    };
    Ok((
        mode.negotiation(),
        MakeRustlsConnect {
            config: Arc::new(config),
            mode,
            rootcert: rootcert.map(str::to_owned).into(),
        },
    ))
}

/// What the client checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Only that the handshake is signed by the certificate's key (`prefer`, `require`).
    Signatures,
    /// Also that the certificate chains to a trusted root (`verify-ca`).
    Chain,
    /// Also that it names the host connected to (`verify-full`).
    ChainAndName,
}

#[derive(Debug)]
struct Verifier {
    check: Check,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check != Check::Signatures {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            if self.check == Check::ChainAndName {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn certificates_in(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {key}={path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}={path} holds no PEM certificate"));
    }
    Ok(certs)
}

fn roots_from_file(path: &str) -> Result<RootCertStore, String> {
    if !Path::new(path).is_file() {
        return Err(format!("sslrootcert={path} does not exist"));
    }
    let mut roots = RootCertStore::empty();
    for cert in certificates_in(path, "sslrootcert")? {
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert={path} holds an unusable certificate: {e}"))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Like every client of the system store: skip the odd certificate rustls cannot use.
    let (_added, _skipped) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "no system root certificates found{why}: set sslrootcert to the server's CA file"
        ));
    }
    Ok(roots)
}

/// Makes a [`RustlsConnect`] per connection (tokio-postgres passes the host name).
#[derive(Clone)]
pub(crate) struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    /// For error messages: what was asked for.
    mode: SslMode,
    /// For error messages: where the trusted roots came from (`None`: the system's).
    rootcert: Arc<Option<String>>,
}

impl MakeRustlsConnect {
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }
}

impl MakeTlsConnect<Socket> for MakeRustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsError> {
        // tokio-postgres asks for a connector before it knows whether TLS will be used (a Unix
        // socket passes ""): an unusable name is an error only if a handshake is attempted.
        let server_name =
            ServerName::try_from(domain.to_owned()).map_err(|_| TlsError::InvalidName {
                host: domain.to_owned(),
            });
        Ok(RustlsConnect {
            make: self.clone(),
            server_name,
        })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    make: MakeRustlsConnect,
    server_name: Result<ServerName<'static>, TlsError>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, Self::Error>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let server_name = self.server_name.clone()?;
            let connector = tokio_rustls::TlsConnector::from(self.make.config.clone());
            match connector.connect(server_name.clone(), stream).await {
                Ok(stream) => Ok(RustlsStream(stream)),
                Err(error) => Err(self.describe(&server_name, error)),
            }
        })
    }
}

impl RustlsConnect {
    /// A TLS-level refusal becomes a [`TlsError`] that says what to fix; an I/O error (the
    /// connection broke mid-handshake) stays one, so the store treats it as an outage.
    fn describe(
        &self,
        server_name: &ServerName<'_>,
        error: io::Error,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        let Some(refusal) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Box::new(error);
        };
        let roots = match self.make.rootcert.as_deref() {
            None => "the built-in public roots (sslrootcert is not set: set it to the file of the CA that signed the server's certificate)".to_owned(),
            Some("system") => "the system's roots (sslrootcert=system)".to_owned(),
            Some(path) => format!("sslrootcert={path}"),
        };
        let reason = match refusal {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                format!("the server's certificate is not signed by a CA in {roots}")
            }
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                format!("the server's certificate does not verify against {roots}")
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "host-name mismatch: {refusal} (connect with the name the certificate carries, \
                 or use sslmode=verify-ca to check the CA only)"
            ),
            other => other.to_string(),
        };
        Box::new(TlsError::Refused {
            host: server_name.to_str().into_owned(),
            mode: self.make.mode.as_str(),
            reason,
        })
    }
}

/// A TLS-wrapped connection to PostgreSQL.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The TLS refusal behind a failed connect, if that is what it was.
pub(crate) fn refusal_in(
    error: &(dyn std::error::Error + 'static),
    mode: SslMode,
) -> Option<TlsError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<TlsError>() {
            return Some(tls.clone());
        }
        // tokio-postgres' own words when the server answers the SSLRequest with 'N'.
        if error.to_string() == "server does not support TLS" {
            return Some(TlsError::NotOffered {
                mode: mode.as_str(),
            });
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_libpq() {
        let mode = |sslmode: Option<&str>, rootcert: Option<&str>| {
            connector(&TlsParams {
                sslmode: sslmode.map(str::to_owned),
                sslrootcert: rootcert.map(str::to_owned),
                ..TlsParams::default()
            })
            .map(|(negotiation, make)| (negotiation, make.mode()))
        };
        use tokio_postgres::config::SslMode as Negotiation;
        let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
        assert_eq!(
            mode(None, None).unwrap(),
            (Negotiation::Prefer, SslMode::Prefer)
        );
        assert_eq!(
            mode(Some("disable"), None).unwrap(),
            (Negotiation::Disable, SslMode::Disable)
        );
        assert_eq!(
            mode(Some("require"), None).unwrap(),
            (Negotiation::Require, SslMode::Require)
        );
        if Path::new(snakeoil).is_file() {
            assert_eq!(
                mode(Some("require"), Some(snakeoil)).unwrap(),
                (Negotiation::Require, SslMode::VerifyCa)
            );
        }
        let error = mode(Some("verify-ca"), Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        let error = mode(Some("verify-all"), None).unwrap_err();
        assert!(error.contains("invalid sslmode"), "{error}");
        let error = mode(Some("verify-ca"), Some("system")).unwrap_err();
        assert!(error.contains("verify-full"), "{error}");
        let error = connector(&TlsParams {
            sslcert: Some("/c.pem".into()),
            ..TlsParams::default()
        })
        .err()
        .unwrap_or_default();
        assert!(error.contains("together"), "{error}");
    }
}
