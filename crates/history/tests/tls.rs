//! TLS to the machine's real PostgreSQL (`ssl = on`, Debian's snakeoil certificate), through
//! `Database::connect` with libpq's `sslmode`/`sslrootcert` parameters.
//!
//! The snakeoil certificate is self-signed and names the host it was made on (`localhost` here; a
//! fresh machine regenerates it with its own name): the tests read the name from the certificate.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

use regrelay_history::{Database, SslMode, StoreError, SweepRules};
use regrelay_testkit::TestDatabase;
use rustls::client::verify_server_name;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ParsedCertificate;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The test database's URL with `host` for its host and `params` as its query.
fn url_for(database: &TestDatabase, host: &str, params: &str) -> String {
    let url = database.url.replace("@127.0.0.1:", &format!("@{host}:"));
    assert!(
        url.contains(&format!("@{host}:")),
        "unexpected test URL {url}"
    );
    if params.is_empty() {
        url
    } else {
        format!("{url}?{params}")
    }
}

/// A name the server's certificate is valid for and that resolves on this machine: `localhost`
/// if the certificate carries it, else the machine's host name if it does. `None` (with the
/// reason printed) when neither fits.
fn certificate_host() -> Option<String> {
    assert!(
        Path::new(SNAKEOIL).is_file(),
        "{SNAKEOIL} is missing: these tests need PostgreSQL with ssl = on and Debian's snakeoil certificate"
    );
    let cert = CertificateDer::from_pem_file(SNAKEOIL).unwrap();
    let parsed = ParsedCertificate::try_from(&cert).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    for candidate in ["localhost".to_owned(), hostname] {
        let Ok(name) = ServerName::try_from(candidate.clone()) else {
            continue;
        };
        if verify_server_name(&parsed, &name).is_ok() {
            if (candidate.as_str(), 5432)
                .to_socket_addrs()
                .is_ok_and(|mut addrs| addrs.any(|a| a.ip().is_loopback()))
            {
                return Some(candidate);
            }
            eprintln!("the certificate names {candidate}, which does not resolve to this machine");
        }
    }
    eprintln!("{SNAKEOIL} names neither localhost nor this machine's host name");
    None
}

async fn connect(url: &str) -> Result<Database, StoreError> {
    let db = Database::connect(url, 2)?;
    db.check().await?;
    Ok(db)
}

#[tokio::test]
async fn require_encrypts_without_verifying() {
    let database = TestDatabase::create("tls_require").await;
    let db = connect(&url_for(&database, "127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    assert_eq!(db.ssl_mode(), SslMode::Require);
    assert!(db.session_encrypted().await.unwrap());
}

#[tokio::test]
async fn prefer_uses_tls_when_offered_and_disable_does_not() {
    let database = TestDatabase::create("tls_prefer").await;
    // libpq's default is prefer.
    for params in ["", "sslmode=prefer"] {
        let db = connect(&url_for(&database, "127.0.0.1", params))
            .await
            .unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Prefer);
        assert!(db.session_encrypted().await.unwrap(), "{params:?}");
    }
    let db = connect(&url_for(&database, "127.0.0.1", "sslmode=disable"))
        .await
        .unwrap();
    assert!(!db.session_encrypted().await.unwrap());
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_name() {
    let database = TestDatabase::create("tls_verify_ca").await;
    // 127.0.0.1 is not a name the certificate carries: verify-ca does not care.
    let db = connect(&url_for(
        &database,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
    ))
    .await
    .unwrap();
    assert!(db.session_encrypted().await.unwrap());
    // The key=value form says the same.
    let key_value = format!(
        "host=127.0.0.1 port=5432 user=postgres dbname={} sslmode=verify-ca sslrootcert='{SNAKEOIL}'",
        database.name()
    );
    let db = connect(&key_value).await.unwrap();
    assert_eq!(db.ssl_mode(), SslMode::VerifyCa);
    assert!(db.session_encrypted().await.unwrap());
}

#[tokio::test]
async fn verify_ca_without_the_ca_fails_clearly() {
    let database = TestDatabase::create("tls_verify_ca_no_ca").await;
    let error = connect(&url_for(&database, "127.0.0.1", "sslmode=verify-ca"))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StoreError::Tls(_)), "{error:?}");
    assert!(!error.is_unavailable(), "{text}");
    assert!(text.contains("not signed by a CA"), "{text}");
    assert!(text.contains("sslrootcert is not set"), "{text}");
}

#[tokio::test]
async fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
    let database = TestDatabase::create("tls_require_rootcert").await;
    // Public CAs only: the self-signed snakeoil certificate is not among them.
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    assert!(Path::new(bundle).is_file(), "{bundle} is missing");
    let url = url_for(
        &database,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={bundle}"),
    );
    let error = connect(&url).await.unwrap_err();
    assert!(matches!(error, StoreError::Tls(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("sslmode=verify-ca"), "{text}");
    assert!(text.contains(&format!("sslrootcert={bundle}")), "{text}");
    let db = connect(&url_for(
        &database,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={SNAKEOIL}"),
    ))
    .await
    .unwrap();
    assert_eq!(db.ssl_mode(), SslMode::VerifyCa);
}

#[tokio::test]
async fn verify_full_checks_the_host_name() {
    let database = TestDatabase::create("tls_verify_full").await;
    let params = format!("sslmode=verify-full&sslrootcert={SNAKEOIL}");
    match certificate_host() {
        Some(host) => {
            let db = connect(&url_for(&database, &host, &params)).await.unwrap();
            assert!(db.session_encrypted().await.unwrap());
        }
        None => eprintln!("skipped: verify-full connecting by the certificate's name (see above)"),
    }
    // The password must not show in the error either (trust authentication ignores it).
    let url = url_for(&database, "127.0.0.1", &params).replace("postgres@", "postgres:pw-s3kr1t@");
    let error = connect(&url).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(matches!(error, StoreError::Tls(_)), "{error:?}");
    assert!(!error.is_unavailable(), "{text}");
    assert!(text.contains("host-name mismatch"), "{text}");
    assert!(text.contains("\"127.0.0.1\""), "{text}");
    assert!(!text.contains("pw-s3kr1t"), "{text}");
}

#[tokio::test]
async fn migrations_writes_and_the_sweep_share_the_verified_connector() {
    let database = TestDatabase::create("tls_all_paths").await;
    let host = certificate_host().unwrap_or_else(|| "127.0.0.1".to_owned());
    let mode = if host == "127.0.0.1" {
        "verify-ca"
    } else {
        "verify-full"
    };
    let db = Database::connect(
        &url_for(
            &database,
            &host,
            &format!("sslmode={mode}&sslrootcert={SNAKEOIL}"),
        ),
        3,
    )
    .unwrap();
    db.migrate().await.unwrap();
    db.set_notification_enabled(false).await.unwrap();
    assert!(!db.notification_enabled().await.unwrap());
    db.sweep_history(&SweepRules::new(10, Duration::from_secs(3600), 100))
        .await
        .unwrap();
    // Every session this pool opened on the test database is encrypted (asked over a plain
    // connection of another name).
    let (client, connection) = tokio_postgres::connect(
        &url_for(
            &database,
            "127.0.0.1",
            "sslmode=disable&application_name=tls-check",
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND a.application_name = 'regrelay'",
            &[],
        )
        .await
        .unwrap();
    let (unencrypted, sessions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(unencrypted, 0);
    assert!(sessions >= 1, "no regrelay session found");
}

#[tokio::test]
async fn a_missing_client_certificate_is_a_configuration_error() {
    let error = Database::connect(
        "postgres://postgres@127.0.0.1/x?sslmode=require&sslcert=/nonexistent/c.pem&sslkey=/nonexistent/k.pem",
        1,
    )
    .unwrap_err();
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
    assert!(
        error.to_string().contains("sslcert=/nonexistent/c.pem"),
        "{error}"
    );
}

/// A fake server that answers the SSLRequest with `answer` and then closes the connection.
async fn answering_server(answer: u8) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                let _ = socket.write_all(&[answer]).await;
            }
        }
    });
    port
}

#[tokio::test]
async fn a_server_without_tls_under_require_is_a_configuration_error() {
    let port = answering_server(b'N').await;
    let error = connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/x?sslmode=require"
    ))
    .await
    .unwrap_err();
    assert!(matches!(error, StoreError::Tls(_)), "{error:?}");
    assert!(!error.is_unavailable(), "{error}");
    assert!(error.to_string().contains("does not offer TLS"), "{error}");
}

#[tokio::test]
async fn a_connection_cut_during_the_handshake_is_an_outage() {
    // 'S' (TLS accepted), then the connection closes before any handshake byte.
    let port = answering_server(b'S').await;
    let error = connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/x?sslmode=verify-ca&sslrootcert={SNAKEOIL}"
    ))
    .await
    .unwrap_err();
    assert!(matches!(error, StoreError::Pool(_)), "{error:?}");
    assert!(error.is_unavailable(), "{error}");
}

#[tokio::test]
async fn sslmode_is_ignored_on_a_unix_socket_as_in_libpq() {
    let socket_dir = "/var/run/postgresql";
    assert!(
        Path::new(socket_dir).join(".s.PGSQL.5432").exists(),
        "no PostgreSQL socket in {socket_dir}"
    );
    let database = TestDatabase::create("tls_unix_socket").await;
    let db = connect(&format!(
        "host={socket_dir} user=postgres dbname={} sslmode=verify-full sslrootcert={SNAKEOIL}",
        database.name()
    ))
    .await
    .unwrap();
    assert!(!db.session_encrypted().await.unwrap());
    // libpq's default (prefer) over the socket.
    let db = connect(&format!(
        "host={socket_dir} user=postgres dbname={}",
        database.name()
    ))
    .await
    .unwrap();
    assert!(!db.session_encrypted().await.unwrap());
}
