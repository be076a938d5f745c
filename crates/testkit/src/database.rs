//! [`TestDatabase`]: a fresh PostgreSQL database per test, dropped when the test ends.
//!
//! Design constraints:
//! - Each test gets its own database (`regrelay_test_<name>_<random>`), so tests run in parallel
//!   and never see each other's rows.
//! - The database is dropped (`WITH (FORCE)`, so pooled connections the test still holds do not
//!   block it) from `Drop`, also when the test panicked. `Drop` cannot await and may run inside or
//!   outside a tokio runtime, so it does the work on a short-lived thread with its own runtime and
//!   joins it.

use tokio_postgres::NoTls;

/// The most characters PostgreSQL keeps of an identifier.
const MAX_IDENTIFIER: usize = 63;

/// The maintenance database URL tests connect to in order to create and drop their databases.
pub fn admin_database_url() -> String {
    std::env::var("REGRELAY_TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One test's database on the machine's real PostgreSQL.
pub struct TestDatabase {
    /// Connection URL of the new database (the admin URL with the database name replaced).
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database for the test `name` (no schema: call `Database::migrate`).
    pub async fn create(name: &str) -> TestDatabase {
        let admin = admin_database_url();
        let database = unique_name(name);
        let client = connect(&admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {database}: {e}"));
        TestDatabase {
            url: with_database(&admin, &database),
            name: database,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&admin_database_url(), NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                let driver = tokio::spawn(connection);
                let result = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string());
                drop(client);
                let _ = driver.await;
                result
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("warning: cannot drop test database {}: {error}", self.name)
            }
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| {
        panic!("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it), or set REGRELAY_TEST_DATABASE_ADMIN_URL: {e}")
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `regrelay_test_<sanitised name>_<8 hex>`: lowercase `[a-z0-9_]`, at most 63 characters.
fn unique_name(name: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let suffix = &random[..8];
    let prefix = "regrelay_test_";
    let room = MAX_IDENTIFIER - prefix.len() - 1 - suffix.len();
    let sanitised: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(room)
        .collect();
    format!("{prefix}{sanitised}_{suffix}")
}

/// `url` with its database replaced by `database` (`postgres://user@host:port/<database>?params`).
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_identifiers() {
        let name =
            unique_name("Policy CRUD/with-Odd chars and a very long name that goes on and on");
        assert!(name.len() <= MAX_IDENTIFIER, "{name}");
        assert!(
            name.starts_with("regrelay_test_policy_crud_with_odd_chars"),
            "{name}"
        );
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_ne!(unique_name("x"), unique_name("x"));
    }

    #[test]
    fn database_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
    }

    #[tokio::test]
    async fn creates_and_drops_a_database() {
        let database = TestDatabase::create("testkit self test").await;
        let name = database.name().to_owned();
        let (client, connection) = tokio_postgres::connect(&database.url, NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), name);
        // Still connected: the drop must force it.
        drop(database);
        let admin = connect(&admin_database_url()).await;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap();
        assert!(exists.is_none(), "{name} still exists");
        drop(client);
        let _ = driver.await;
    }
}
