//! The `settings` row (Harbor's `notification_enable`) and the `store_generation` counter.
//!
//! Design constraints:
//! - Both tables hold exactly one row, created by the first migration; a missing row is reported as
//!   [`StoreError::Corrupt`], never silently defaulted.
//! - [`bump_generation`] runs inside the transaction of the write it announces, so a reader never
//!   sees the new generation without the change, nor the change under an old generation for
//!   longer than one poll.

use crate::store::{Database, StoreError};

impl Database {
    /// The change generation: moves on every write to policies or settings. Consumers poll it and
    /// reload when it moved.
    pub async fn generation(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        // Read for every ingest request and by every consumer's refresh: prepared once per
        // connection, so each read is one round trip.
        let statement = client
            .prepare_cached("SELECT generation FROM store_generation")
            .await?;
        let row = client
            .query_opt(&statement, &[])
            .await?
            .ok_or_else(|| missing("store_generation"))?;
        Ok(row.try_get(0)?)
    }

    /// Harbor's "Webhooks enabled" switch; `true` on a fresh database.
    pub async fn notification_enabled(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT notification_enabled FROM settings", &[])
            .await?
            .ok_or_else(|| missing("settings"))?;
        Ok(row.try_get(0)?)
    }

    /// Turns every delivery off or on (events keep being accepted and queued).
    pub async fn set_notification_enabled(&self, enabled: bool) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute("UPDATE settings SET notification_enabled = $1", &[&enabled])
            .await?;
        if updated != 1 {
            return Err(missing("settings"));
        }
        bump_generation(&tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Moves the generation; call inside the transaction of the write.
pub(crate) async fn bump_generation(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<i64, StoreError> {
    let row = tx
        .query_opt(
            "UPDATE store_generation SET generation = generation + 1 RETURNING generation",
            &[],
        )
        .await?
        .ok_or_else(|| missing("store_generation"))?;
    Ok(row.try_get(0)?)
}

fn missing(table: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "the {table} row is missing; was the database migrated?"
    ))
}
