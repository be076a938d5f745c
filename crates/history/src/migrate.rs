//! Schema migrations: numbered SQL files in `crates/history/migrations/`, embedded at build time and
//! recorded in `regrelay_schema_migrations (version, name, applied_at)`.
//!
//! Design constraints:
//! - Any number of processes may call [`Database::migrate`] at once: each migration runs in its own
//!   transaction that first takes `pg_advisory_xact_lock(MIGRATION_LOCK)`, then checks whether the
//!   version is recorded. The lock is released at commit or rollback, so a crash never leaves it held.
//! - A migration is all or nothing: its SQL and its record commit together.
//! - Migrations are append-only. A recorded version whose name differs from this build's is an
//!   error (the database belongs to another lineage); versions newer than this build's are left
//!   alone (a newer process migrated first) and logged.

use crate::store::{Database, StoreError};

/// The advisory lock key: "regrelay" in ASCII.
const MIGRATION_LOCK: i64 = 0x7265_6772_656c_6179;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. A new one is a new file `NNNN_<name>.sql` and a new entry here (a
/// unit test checks that the two agree).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "policies",
        sql: include_str!("../migrations/0001_policies.sql"),
    },
    Migration {
        version: 2,
        name: "history",
        sql: include_str!("../migrations/0002_history.sql"),
    },
    Migration {
        version: 3,
        name: "targets",
        sql: include_str!("../migrations/0003_targets.sql"),
    },
];

const CREATE_MIGRATIONS_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS regrelay_schema_migrations (
        version    INTEGER PRIMARY KEY,
        name       TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )";

impl Database {
    /// Applies every migration the database lacks. Idempotent; safe to run concurrently.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        {
            // Even `CREATE TABLE IF NOT EXISTS` races with itself, so it runs under the lock too.
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(CREATE_MIGRATIONS_TABLE).await?;
            tx.commit().await?;
        }
        for migration in MIGRATIONS {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            let recorded = tx
                .query_opt(
                    "SELECT name FROM regrelay_schema_migrations WHERE version = $1",
                    &[&migration.version],
                )
                .await?;
            if let Some(row) = recorded {
                let name: String = row.try_get(0)?;
                if name != migration.name {
                    return Err(StoreError::Corrupt(format!(
                        "migration {} is recorded as {name:?} but this build calls it {:?}",
                        migration.version, migration.name
                    )));
                }
                tx.commit().await?;
                continue;
            }
            tx.batch_execute(migration.sql)
                .await
                .map_err(|source| StoreError::Migration {
                    version: migration.version,
                    name: migration.name,
                    source,
                })?;
            tx.execute(
                "INSERT INTO regrelay_schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(
                message = "Database migration applied.",
                version = migration.version,
                name = migration.name
            );
        }
        let newest: Option<i32> = client
            .query_one("SELECT max(version) FROM regrelay_schema_migrations", &[])
            .await?
            .try_get(0)?;
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if newest.is_some_and(|v| v > known) {
            tracing::warn!(
                message = "Database schema is newer than this build; continuing.",
                database_version = newest,
                build_version = known
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_and_list_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, listed);
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                migration.version,
                i32::try_from(i + 1).unwrap(),
                "versions are 1, 2, ..."
            );
            assert!(!migration.sql.trim().is_empty());
        }
    }
}
