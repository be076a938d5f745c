//! [`Database`]: the pool every role shares, and [`StoreError`], the store's one error type.
//!
//! Design constraints:
//! - [`Database::connect`] does no I/O, so a process starts while PostgreSQL is down; each call gets
//!   a connection from the pool and fails fast (connect and wait timeouts) while it stays down.
//! - The URL's password never appears in an error, a log line or `Debug`: parse errors are scrubbed,
//!   and the pool is described by user, hosts and database name only.
//! - TLS with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` ([`tls`]): one connector for
//!   every pooled connection. A refused certificate is [`StoreError::Tls`], configuration rather
//!   than an outage.

mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use tls::percent_decode;
pub use tls::{SslMode, TlsError};

use crate::policy::{PolicyError, REDACTED};

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pooled connection before giving up.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long checking a returned connection may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is taken, e.g. `notification policy <name> already exists`.
    #[error("{0}")]
    Conflict(String),
    /// The policy does not pass validation; the message is the API's.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// No connection could be had: the database is unreachable, refusing, or every connection is
    /// busy. Callers may retry.
    #[error("database unavailable: {0}")]
    Pool(PoolError),
    /// The TLS handshake was refused: the server's certificate does not verify (CA or host name),
    /// the server refused ours, or it offers no TLS while `sslmode` requires it. Configuration:
    /// not [`StoreError::is_unavailable`], so nothing waits for it to heal.
    #[error(transparent)]
    Tls(TlsError),
    /// tokio-postgres says only "db error" for a server-side error; the server's message and
    /// SQLSTATE are what tell an operator what went wrong (never the detail, which may hold values).
    #[error("database error: {}", describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The URL or the pool settings are invalid (never contains the password).
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// A stored row cannot be decoded (or a required row is missing).
    #[error("stored data cannot be decoded: {0}")]
    Corrupt(String),
    /// A migration's SQL failed; nothing of it was applied.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A policy names a project id that does not exist.
    #[error("project {0} not found")]
    UnknownProject(i64),
    #[error("invalid project name {name:?}: {reason}")]
    InvalidProjectName { name: String, reason: &'static str },
    /// The history batch this record was written in failed; every record of the batch gets the
    /// same cause.
    #[error("history batch failed: {0}")]
    BatchFailed(#[source] Arc<StoreError>),
    /// The history recorder's writer has stopped (shutdown, or its runtime is gone): nothing more
    /// is written through it.
    #[error("the history recorder is closed")]
    RecorderClosed,
}

impl StoreError {
    /// Whether the database could not be reached (or the connection broke), as opposed to a
    /// refused request or a bug: the caller may answer "try again".
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Db(error) => {
                error.is_closed()
                    || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
            }
            StoreError::BatchFailed(cause) => cause.is_unavailable(),
            _ => false,
        }
    }
}

fn describe_db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// The PostgreSQL store. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    /// `postgres://user@host:port/dbname`, password left out: what `Debug` and logs show.
    target: Arc<str>,
    /// The keys policy credentials are sealed with (`Database::with_secrets`); `None`: stored as
    /// given. See `sealing`.
    pub(crate) secrets: Option<Arc<crate::sealing::SecretsKeyring>>,
    /// The effective `sslmode` (after libpq's `require` + `sslrootcert` rule): for errors and
    /// [`Database::ssl_mode`].
    ssl_mode: SslMode,
}

impl Database {
    /// Builds the pool from a `postgres://` URL (or a `key=value` connection string). No I/O: the
    /// first call opens the first connection.
    pub fn connect(url: &str, max_connections: usize) -> Result<Database, StoreError> {
        if max_connections == 0 {
            return Err(StoreError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let invalid =
            |e: String| StoreError::Config(scrub(&format!("invalid database URL: {e}"), url));
        let (rest, tls_params) = tls::split_tls_params(url).map_err(invalid)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
        let (negotiation, connector) = tls::connector(&tls_params).map_err(invalid)?;
        config.ssl_mode(negotiation);
        // libpq ignores sslmode on Unix-domain sockets (PostgreSQL offers no TLS there).
        let unix_only = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)));
        if unix_only {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        let ssl_mode = connector.mode();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("regrelay");
        }
        // A connection whose peer vanished without a FIN (a crashed host, a dropped route) would
        // otherwise hang a query for hours; deliveries wait on history writes, so notice in seconds.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        let target: Arc<str> = describe(&config).into();
        let manager = Manager::from_config(
            config,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(WAIT_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))?;
        Ok(Database {
            pool,
            target,
            secrets: None,
            ssl_mode,
        })
    }

    /// Readiness: one `SELECT 1` on a pooled connection.
    pub async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Whether a pooled connection is encrypted, as the server sees it (`pg_stat_ssl`): what
    /// `sslmode=prefer` ended up with.
    pub async fn session_encrypted(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Where the store connects, without the password (for logs).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The `sslmode` in effect (libpq's: `require` with `sslrootcert` is `verify-ca`).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|error| {
            let refusal = match &error {
                PoolError::Backend(backend) => tls::refusal_in(backend, self.ssl_mode),
                _ => None,
            };
            match refusal {
                Some(refusal) => StoreError::Tls(refusal),
                None => StoreError::Pool(error),
            }
        })
    }

    /// Runs a paged list's count and page queries in one read-only snapshot, so the total agrees
    /// with what was listed. `count_sql` must return one `bigint`.
    pub(crate) async fn count_and_page(
        &self,
        count_sql: &str,
        count_params: &[&(dyn ToSql + Sync)],
        page_sql: &str,
        page_params: &[&(dyn ToSql + Sync)],
    ) -> Result<(i64, Vec<Row>), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let total: i64 = tx.query_one(count_sql, count_params).await?.try_get(0)?;
        let rows = tx.query(page_sql, page_params).await?;
        tx.commit().await?;
        Ok((total, rows))
    }
}

/// One page of a list as SQL `LIMIT`/`OFFSET`, from Harbor's 1-based `page` and `page_size`
/// (0: everything, no limit).
pub(crate) struct PageWindow {
    limit: i64,
    offset: i64,
    paged: bool,
}

impl PageWindow {
    pub(crate) fn new(page: u64, page_size: u64) -> Self {
        let page = page.max(1);
        Self {
            limit: i64::try_from(page_size).unwrap_or(i64::MAX),
            offset: i64::try_from((page - 1).saturating_mul(page_size)).unwrap_or(i64::MAX),
            paged: page_size > 0,
        }
    }

    /// Appends ` LIMIT $n OFFSET $m` to `sql`, adding the values to `params` (nothing when not
    /// paged).
    pub(crate) fn apply<'a>(&'a self, sql: &mut String, params: &mut Vec<&'a (dyn ToSql + Sync)>) {
        if !self.paged {
            return;
        }
        params.push(&self.limit);
        params.push(&self.offset);
        sql.push_str(&format!(
            " LIMIT ${} OFFSET ${}",
            params.len() - 1,
            params.len()
        ));
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("max_connections", &self.pool.status().max_size)
            .finish()
    }
}

/// `postgres://user@host:port[,host:port]/dbname`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{dbname}", hosts.join(","))
}

/// Replaces every form of the URL's password (as written, and percent-decoded) in `message`.
fn scrub(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    for secret in passwords_in(url) {
        if !secret.is_empty() {
            out = out.replace(&secret, REDACTED);
        }
    }
    out
}

/// The password of a `scheme://user:password@host` URL and of a `password=...` option, raw and
/// percent-decoded. Best effort: used only to scrub messages.
fn passwords_in(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_owned());
            }
        }
    }
    for (i, _) in url.match_indices("password=") {
        let value = &url[i + "password=".len()..];
        let end = value.find(['&', ' ', '#']).unwrap_or(value.len());
        let value = value[..end].trim_matches('\'');
        found.push(value.to_owned());
    }
    let decoded: Vec<String> = found.iter().map(|p| percent_decode(p)).collect();
    found.extend(decoded);
    // Longest first, so a password that contains another is replaced whole.
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_debug_never_show_the_password() {
        for url in [
            "postgres://app:hunter2@db.example:5432/regrelay?port=notaport",
            "postgres://app:hunter2@db.example:5432/regrelay?nonsense=1",
            "postgres://app:hun%74er2@db.example/regrelay?sslmode=bogus",
            "host=db password=hunter2 port=x",
        ] {
            let error = Database::connect(url, 4).unwrap_err();
            let text = format!("{error} {error:?}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(matches!(error, StoreError::Config(_)), "{text}");
        }
        let db = Database::connect("postgres://app:hunter2@db.example:6543/regrelay", 4).unwrap();
        let debug = format!("{db:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(db.target(), "postgres://app@db.example:6543/regrelay");
    }

    #[test]
    fn refuses_zero_connections_and_bad_tls_settings() {
        assert!(matches!(
            Database::connect("postgres://app@localhost/db", 0),
            Err(StoreError::Config(_))
        ));
        let db = Database::connect("postgres://app@localhost/db?sslmode=require", 2).unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Require);
        let db = Database::connect("host=localhost user=app sslmode=disable", 2).unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Disable);
        assert_eq!(db.target(), "postgres://app@localhost/");
        let error = Database::connect(
            "postgres://app:hunter2@localhost/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            2,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("sslrootcert=/nonexistent/ca.pem"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn password_extraction() {
        assert_eq!(
            passwords_in("postgres://u:p%40ss@h/db"),
            vec!["p%40ss".to_owned(), "p@ss".to_owned()]
        );
        assert!(passwords_in("postgres://u@h/db").is_empty());
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }
}
