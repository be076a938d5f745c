//! TLS to PostgreSQL with libpq's meanings: `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert`, `sslcert` and `sslkey`, over rustls.
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

/// The TLS parameters of a connection string, as written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<String>,
    pub(crate) sslcert: Option<String>,
    pub(crate) sslkey: Option<String>,
}

impl TlsParams {
    /// Takes `key` if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
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

/// Splits `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a `postgres://` URL (query
/// parameters) or a `key=value` connection string; returns the rest for tokio-postgres.
pub(crate) fn split_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The query starts at the first `?` after the credentials (a password may hold a `?`
        // only percent-encoded, but an `@` marks where the credentials end either way).
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let search_from = url[after_scheme..]
            .rfind('@')
            .map_or(after_scheme, |i| after_scheme + i + 1);
        let Some(q) = url[search_from..].find('?').map(|i| search_from + i) else {
            return Ok((url.to_owned(), params));
        };
        let mut kept = Vec::new();
        for pair in url[q + 1..].split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !params.take(&percent_decode(key), percent_decode(value)) {
                kept.push(pair);
            }
        }
        let mut rest = url[..q].to_owned();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        return Ok((rest, params));
    }
    let mut kept = Vec::new();
    for (key, value) in parse_key_values(url)? {
        if !params.take(&key, value.clone()) {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{escaped}'"));
        }
    }
    Ok((kept.join(" "), params))
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

/// libpq's `key=value` syntax, as tokio-postgres parses it: values bare (backslash escapes) or in
/// single quotes (backslash escapes), separated by whitespace, `=` optionally spaced.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err("invalid connection string: a parameter has no name".into());
            }
            return Ok(out);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "invalid connection string: expected `=` after {key}"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!(
                            "invalid connection string: unterminated quoted value of {key}"
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(format!("invalid connection string: {key} has no value"));
            }
        }
        out.push((key, value));
    }
}

/// `%XX` escapes decoded, as libpq reads a URL's values; an invalid escape is kept as written.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsParams) {
        split_tls_params(url).unwrap()
    }

    #[test]
    fn tls_parameters_are_taken_out_of_urls() {
        let (rest, params) = split(
            "postgres://u:p%3Fw@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p%3Fw@db:5432/app?application_name=x");
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, params) = split("postgresql://db/app?sslmode=require");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(params.sslmode.as_deref(), Some("require"));
        let (rest, params) = split("postgres://db/app");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(params, TlsParams::default());
        // A `?` in the password (before the `@`) is not the query.
        let (rest, params) = split("postgres://u:a?b@db/app?sslmode=disable");
        assert_eq!(rest, "postgres://u:a?b@db/app");
        assert_eq!(params.sslmode.as_deref(), Some("disable"));
    }

    #[test]
    fn tls_parameters_are_taken_out_of_key_value_strings() {
        let (rest, params) = split(
            "host=db  sslmode = verify-ca password='it\\'s secret' sslrootcert='/my certs/ca.pem' sslcert=/c.pem sslkey=/k.pem",
        );
        assert_eq!(rest, "host='db' password='it\\'s secret'");
        assert_eq!(params.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/my certs/ca.pem"));
        assert_eq!(params.sslcert.as_deref(), Some("/c.pem"));
        assert_eq!(params.sslkey.as_deref(), Some("/k.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's secret"[..]));
        assert!(split_tls_params("host=db sslmode='x").is_err());
        assert!(split_tls_params("host").is_err());
    }

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
