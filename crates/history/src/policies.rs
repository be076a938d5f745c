//! The `notification_policies` table: webhook policies, per project or system-wide.
//!
//! - [`PolicyQuery`], [`NameMatch`], [`PolicySort`]: what a list asks for (page, name, enabled, order).
//! - `Database::{list_policies, create_policy, get_policy, update_policy, delete_policy}`: the API's
//!   verbs, always within one scope (`Some(project_id)` or `None` for system-wide).
//! - `Database::enabled_policies`: the consumer's load, every scope at once.
//! - `Database::reencrypt_policies`: `regrelay migrate --reencrypt`, every row's credentials sealed
//!   with the current key.
//!
//! Design constraints:
//! - A scope is a wall: a policy is read, replaced or deleted only through its own project (or
//!   through the system-wide scope), so an id from another project is "not found".
//! - Names are unique per scope, enforced by a unique index (not a read-then-write), so two racing
//!   creates cannot both succeed; the violation becomes [`StoreError::Conflict`].
//! - Every write bumps the generation in its transaction (see `settings`); a write that changes
//!   nothing (unknown id) rolls back and bumps nothing.
//! - Targets and filters are JSONB (serde of [`Target`] and [`Filters`]), event types `text[]`.
//!   Rows are decoded strictly: a row that does not decode is [`StoreError::Corrupt`], not skipped.
//! - Credentials in `targets` are sealed with the database's keyring when one is set (`sealing`):
//!   sealed on every write, opened on every read. A value that does not open is logged and left
//!   sealed (the policy still loads; the consumer dead-letters its deliveries to that target).
//!   The id of a new policy is taken from the identity sequence before the insert, so its values
//!   are bound to it.

use chrono::{DateTime, Utc};
use regrelay_events::EventType;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;

use crate::policy::{Filters, Policy, PolicySpec, Project, Target};
use crate::sealing::{self, SecretsKeyring, UnreadableValue};
use crate::settings::bump_generation;
use crate::store::{Database, PageWindow, StoreError};

/// How a list selects by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    /// The whole name, case-sensitive.
    Exact(String),
    /// A case-insensitive substring (`%` and `_` are literal).
    Fuzzy(String),
}

/// The order of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicySort {
    /// Harbor's default: newest first; ties by id, newest first.
    #[default]
    NewestFirst,
    CreationTimeAsc,
    NameAsc,
    NameDesc,
}

/// One page of a list, and what selects the policies in it.
#[derive(Debug, Clone, Default)]
pub struct PolicyQuery {
    /// 1-based; 0 is read as 1.
    pub page: u64,
    /// 0: no paging, every matching policy.
    pub page_size: u64,
    pub name: Option<NameMatch>,
    pub enabled: Option<bool>,
    pub sort: PolicySort,
}

const SELECT_POLICY: &str = "
    SELECT p.id, p.name, p.description, p.project_id, pr.name AS project_name, p.targets,
           p.event_types, p.filters, p.creator, p.creation_time, p.update_time, p.enabled
    FROM notification_policies p
    LEFT JOIN projects pr ON pr.id = p.project_id";

/// What `regrelay migrate --reencrypt` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Policies looked at.
    pub rows_seen: u64,
    /// Policies whose stored targets changed (a credential sealed for the first time, or resealed
    /// from an older key).
    pub rows_changed: u64,
    /// Values that do not open with the configured keys, left as they were.
    pub unreadable: Vec<UnreadableValue>,
}

/// Rows rewritten per `--reencrypt` transaction.
pub const REENCRYPT_BATCH: i64 = 100;

/// The unique index behind "already exists".
const NAME_INDEX: &str = "notification_policies_scope_name_key";

impl PolicySort {
    fn order_by(self) -> &'static str {
        match self {
            PolicySort::NewestFirst => "p.creation_time DESC, p.id DESC",
            PolicySort::CreationTimeAsc => "p.creation_time ASC, p.id ASC",
            PolicySort::NameAsc => "p.name ASC, p.id ASC",
            PolicySort::NameDesc => "p.name DESC, p.id DESC",
        }
    }
}

impl Database {
    /// One page of a scope's policies and how many match in all. `None`: the system-wide ones only.
    pub async fn list_policies(
        &self,
        project_id: Option<i64>,
        query: &PolicyQuery,
    ) -> Result<(Vec<Policy>, i64), StoreError> {
        let fuzzy = match &query.name {
            Some(NameMatch::Fuzzy(part)) => Some(format!("%{}%", escape_like(part))),
            _ => None,
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&project_id];
        let mut conditions = vec!["p.project_id IS NOT DISTINCT FROM $1".to_owned()];
        match (&query.name, &fuzzy) {
            (Some(NameMatch::Fuzzy(_)), Some(pattern)) => {
                params.push(pattern);
                conditions.push(format!("p.name ILIKE ${} ESCAPE '\\'", params.len()));
            }
            (Some(NameMatch::Exact(name)), _) => {
                params.push(name);
                conditions.push(format!("p.name = ${}", params.len()));
            }
            _ => {}
        }
        if let Some(enabled) = &query.enabled {
            params.push(enabled);
            conditions.push(format!("p.enabled = ${}", params.len()));
        }
        let filter = conditions.join(" AND ");

        let window = PageWindow::new(query.page, query.page_size);
        let mut sql = format!(
            "{SELECT_POLICY} WHERE {filter} ORDER BY {}",
            query.sort.order_by()
        );
        let mut page_params = params.clone();
        window.apply(&mut sql, &mut page_params);
        let (total, rows) = self
            .count_and_page(
                &format!("SELECT count(*) FROM notification_policies p WHERE {filter}"),
                &params,
                &sql,
                &page_params,
            )
            .await?;
        let policies = rows
            .iter()
            .map(|row| policy_from_row(row, self.keyring()))
            .collect::<Result<_, _>>()?;
        Ok((policies, total))
    }

    /// Validates and stores a new policy in a scope.
    pub async fn create_policy(
        &self,
        project_id: Option<i64>,
        spec: &PolicySpec,
    ) -> Result<Policy, StoreError> {
        spec.validate()?;
        let event_types = event_type_names(&spec.event_types);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The id first, so the sealed credentials can be bound to it.
        let id: i64 = tx
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('notification_policies', 'id'))",
                &[],
            )
            .await?
            .try_get(0)?;
        let targets =
            sealing::seal_targets(self.keyring(), id, &spec.targets, &Default::default())?;
        tx.execute(
            "INSERT INTO notification_policies
                 (id, project_id, name, description, targets, event_types, filters, creator, enabled)
             OVERRIDING SYSTEM VALUE
             VALUES ($9, $1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &project_id,
                &spec.name,
                &spec.description,
                &Json(&targets),
                &event_types,
                &Json(&spec.filters),
                &spec.creator,
                &spec.enabled,
                &id,
            ],
        )
        .await
        .map_err(|e| write_error(e, spec, project_id))?;
        let policy = fetch(&tx, self.keyring(), project_id, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("policy {id} vanished after insert")))?;
        bump_generation(&tx).await?;
        tx.commit().await?;
        Ok(policy)
    }

    /// The policy `id` if it belongs to the scope.
    pub async fn get_policy(
        &self,
        project_id: Option<i64>,
        id: i64,
    ) -> Result<Option<Policy>, StoreError> {
        let client = self.client().await?;
        fetch(&client, self.keyring(), project_id, id).await
    }

    /// Replaces a policy's fields (keeps its creator and creation time; sets the update time).
    /// `None` when the policy is not in the scope.
    pub async fn update_policy(
        &self,
        project_id: Option<i64>,
        id: i64,
        spec: &PolicySpec,
    ) -> Result<Option<Policy>, StoreError> {
        spec.validate()?;
        let event_types = event_type_names(&spec.event_types);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The stored sealed values: one that did not open on load may be written back unchanged.
        let Some(stored) = tx
            .query_opt(
                "SELECT targets FROM notification_policies
                 WHERE id = $1 AND project_id IS NOT DISTINCT FROM $2
                 FOR UPDATE",
                &[&id, &project_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let stored = decode_targets(id, stored.try_get("targets")?)?;
        let targets = sealing::seal_targets(
            self.keyring(),
            id,
            &spec.targets,
            &sealing::sealed_values(&stored),
        )?;
        let updated = tx
            .execute(
                "UPDATE notification_policies
                 SET name = $3, description = $4, targets = $5, event_types = $6, filters = $7,
                     enabled = $8, update_time = now()
                 WHERE id = $1 AND project_id IS NOT DISTINCT FROM $2",
                &[
                    &id,
                    &project_id,
                    &spec.name,
                    &spec.description,
                    &Json(&targets),
                    &event_types,
                    &Json(&spec.filters),
                    &spec.enabled,
                ],
            )
            .await
            .map_err(|e| write_error(e, spec, project_id))?;
        if updated == 0 {
            // Dropping the transaction rolls it back; nothing changed, nothing to announce.
            return Ok(None);
        }
        let policy = fetch(&tx, self.keyring(), project_id, id).await?;
        bump_generation(&tx).await?;
        tx.commit().await?;
        Ok(policy)
    }

    /// Deletes a policy of the scope; `false` when it is not there. Its history goes with it (the
    /// history tables reference policies `ON DELETE CASCADE`).
    pub async fn delete_policy(
        &self,
        project_id: Option<i64>,
        id: i64,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = tx
            .execute(
                "DELETE FROM notification_policies
                 WHERE id = $1 AND project_id IS NOT DISTINCT FROM $2",
                &[&id, &project_id],
            )
            .await?;
        if deleted == 0 {
            return Ok(false);
        }
        bump_generation(&tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every enabled policy of every scope, with its project, in id order (the consumer's load).
    pub async fn enabled_policies(&self) -> Result<Vec<Policy>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{SELECT_POLICY} WHERE p.enabled ORDER BY p.id"),
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| policy_from_row(row, self.keyring()))
            .collect()
    }

    /// `regrelay migrate --reencrypt`: every policy's credentials sealed with the current key
    /// (plain text ones too), [`REENCRYPT_BATCH`] rows per transaction, the generation bumped once
    /// (with the first batch that changes a row) so consumers reload. Values already sealed with
    /// the current key are left alone; values that do not open are left as they are and reported.
    pub async fn reencrypt_policies(&self) -> Result<ReencryptReport, StoreError> {
        let keyring = self.keyring().ok_or_else(|| {
            StoreError::Config("secrets_key is not set: there is no key to encrypt with".into())
        })?;
        let mut report = ReencryptReport::default();
        let mut client = self.client().await?;
        let mut after = 0_i64;
        let mut bumped = false;
        loop {
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "SELECT id, targets FROM notification_policies
                     WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
                    &[&after, &REENCRYPT_BATCH],
                )
                .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.try_get("id")?;
            let mut changed = 0;
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                let stored = decode_targets(id, row.try_get("targets")?)?;
                report.rows_seen += 1;
                if let Some(resealed) =
                    sealing::reseal_stored(keyring, id, &stored, &mut report.unreadable)?
                {
                    tx.execute(
                        "UPDATE notification_policies SET targets = $2 WHERE id = $1",
                        &[&id, &Json(&resealed)],
                    )
                    .await?;
                    changed += 1;
                }
            }
            if changed > 0 && !bumped {
                bump_generation(&tx).await?;
                bumped = true;
            }
            tx.commit().await?;
            report.rows_changed += changed;
        }
        Ok(report)
    }

    /// This store with `keyring` sealing policy credentials on write and opening them on read
    /// (see `sealing`). Clones share it.
    pub fn with_secrets(mut self, keyring: SecretsKeyring) -> Database {
        self.secrets = Some(std::sync::Arc::new(keyring));
        self
    }

    /// The id of the key new values are sealed with; `None` without a keyring.
    pub fn secrets_key_id(&self) -> Option<&str> {
        self.keyring().map(SecretsKeyring::current_id)
    }

    fn keyring(&self) -> Option<&SecretsKeyring> {
        self.secrets.as_deref()
    }
}

async fn fetch(
    client: &impl deadpool_postgres::GenericClient,
    keyring: Option<&SecretsKeyring>,
    project_id: Option<i64>,
    id: i64,
) -> Result<Option<Policy>, StoreError> {
    client
        .query_opt(
            &format!("{SELECT_POLICY} WHERE p.id = $1 AND p.project_id IS NOT DISTINCT FROM $2"),
            &[&id, &project_id],
        )
        .await?
        .as_ref()
        .map(|row| policy_from_row(row, keyring))
        .transpose()
}

fn event_type_names(types: &[EventType]) -> Vec<&'static str> {
    types.iter().map(|t| t.as_str()).collect()
}

/// A unique-name violation is a conflict; a missing project is named; the rest is a database error.
fn write_error(
    error: tokio_postgres::Error,
    spec: &PolicySpec,
    project_id: Option<i64>,
) -> StoreError {
    if let Some(db_error) = error.as_db_error() {
        if *db_error.code() == SqlState::UNIQUE_VIOLATION
            && db_error.constraint() == Some(NAME_INDEX)
        {
            return StoreError::Conflict(format!(
                "notification policy {} already exists",
                spec.name
            ));
        }
        if *db_error.code() == SqlState::FOREIGN_KEY_VIOLATION {
            if let Some(id) = project_id {
                return StoreError::UnknownProject(id);
            }
        }
    }
    StoreError::Db(error)
}

/// `%`, `_` and the escape character itself match literally.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `targets` column as stored (credentials sealed or plain, not opened).
fn decode_targets(id: i64, targets: serde_json::Value) -> Result<Vec<Target>, StoreError> {
    serde_json::from_value(targets)
        .map_err(|e| StoreError::Corrupt(format!("notification policy {id}: targets: {e}")))
}

fn policy_from_row(row: &Row, keyring: Option<&SecretsKeyring>) -> Result<Policy, StoreError> {
    let id: i64 = row.try_get("id")?;
    let corrupt = |what: &str, detail: String| {
        StoreError::Corrupt(format!("notification policy {id}: {what}: {detail}"))
    };
    let project_id: Option<i64> = row.try_get("project_id")?;
    let project_name: Option<String> = row.try_get("project_name")?;
    let project = match (project_id, project_name) {
        (Some(id), Some(name)) => Some(Project { id, name }),
        (None, _) => None,
        (Some(project), None) => {
            return Err(corrupt(
                "project",
                format!("project {project} does not exist"),
            ))
        }
    };
    let mut targets = decode_targets(id, row.try_get("targets")?)?;
    for unreadable in sealing::open_targets(keyring, id, &mut targets) {
        tracing::warn!(
            message = "A stored credential cannot be decrypted; deliveries to its target are dead-lettered.",
            policy_id = id,
            field = %unreadable.field,
            error = %unreadable.error
        );
    }
    let filters: serde_json::Value = row.try_get("filters")?;
    let filters: Filters =
        serde_json::from_value(filters).map_err(|e| corrupt("filters", e.to_string()))?;
    let names: Vec<String> = row.try_get("event_types")?;
    let event_types = names
        .iter()
        .map(|name| name.parse::<EventType>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt("event_types", e.to_string()))?;
    let creation_time: DateTime<Utc> = row.try_get("creation_time")?;
    let update_time: DateTime<Utc> = row.try_get("update_time")?;
    Ok(Policy {
        id,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        project,
        targets,
        event_types,
        filters,
        creator: row.try_get("creator")?,
        creation_time,
        update_time,
        enabled: row.try_get("enabled")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escaping() {
        assert_eq!(escape_like("a%b_c\\d"), "a\\%b\\_c\\\\d");
        assert_eq!(escape_like("plain"), "plain");
    }
}
