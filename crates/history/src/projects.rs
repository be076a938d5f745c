//! The `projects` table: a project ([`Project`], in the policy model) is named by the namespace of
//! the events and keeps a stable numeric id once a policy or an event names it (SPEC §4).
//!
//! Design constraints:
//! - [`Database::ensure_project`] is called on hot paths and by racing processes: it reads first
//!   (no write, no burnt identity value, when the project exists) and inserts with
//!   `ON CONFLICT DO NOTHING`, so concurrent callers all get the one row.

use tokio_postgres::Row;

use crate::policy::Project;
use crate::store::{Database, StoreError};

/// Longest project name accepted (Harbor's limit).
const MAX_PROJECT_NAME_CHARS: usize = 255;

impl Database {
    /// The project called `name`, created if it does not exist yet. Its id never changes.
    pub async fn ensure_project(&self, name: &str) -> Result<Project, StoreError> {
        validate_name(name)?;
        let client = self.client().await?;
        let select = "SELECT id, name FROM projects WHERE name = $1";
        if let Some(row) = client.query_opt(select, &[&name]).await? {
            return project_from_row(&row);
        }
        let inserted = client
            .query_opt(
                "INSERT INTO projects (name) VALUES ($1)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING id, name",
                &[&name],
            )
            .await?;
        let row = match inserted {
            Some(row) => row,
            // Another caller inserted it between our read and our insert; it is committed now.
            None => client.query_one(select, &[&name]).await?,
        };
        project_from_row(&row)
    }

    pub async fn find_project_by_id(&self, id: i64) -> Result<Option<Project>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT id, name FROM projects WHERE id = $1", &[&id])
            .await?
            .as_ref()
            .map(project_from_row)
            .transpose()
    }

    pub async fn find_project_by_name(&self, name: &str) -> Result<Option<Project>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT id, name FROM projects WHERE name = $1", &[&name])
            .await?
            .as_ref()
            .map(project_from_row)
            .transpose()
    }
}

fn project_from_row(row: &Row) -> Result<Project, StoreError> {
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
    })
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidProjectName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.chars().count() > MAX_PROJECT_NAME_CHARS {
        return Err(invalid("the name is longer than 255 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("the name contains control characters"));
    }
    Ok(())
}
