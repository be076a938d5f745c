//! The reads behind Harbor's history API: a policy's executions (paged, filtered), an execution's
//! tasks, a task's log, and the last trigger per (policy, event type).

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::log_line::format_log_line;
use super::model::{parse_column, Execution, ExecutionQuery, LastTrigger, Task, TaskMetrics};
use crate::store::{Database, PageWindow, StoreError};

/// The `q` filters shared by the count and the page.
struct Filter<'a> {
    sql: String,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

const SELECT_EXECUTION: &str = "
    SELECT e.id, e.vendor_type, e.vendor_id, e.status, e.status_message, e.trigger, e.event_type,
           e.extra_attrs, e.start_time, e.end_time,
           m.task_count, m.success_task_count, m.error_task_count, m.pending_task_count,
           m.running_task_count, m.scheduled_task_count, m.stopped_task_count
    FROM executions e
    CROSS JOIN LATERAL (
        SELECT count(*) AS task_count,
               count(*) FILTER (WHERE t.status = 'Success') AS success_task_count,
               count(*) FILTER (WHERE t.status = 'Error') AS error_task_count,
               count(*) FILTER (WHERE t.status = 'Pending') AS pending_task_count,
               count(*) FILTER (WHERE t.status = 'Running') AS running_task_count,
               count(*) FILTER (WHERE t.status = 'Scheduled') AS scheduled_task_count,
               count(*) FILTER (WHERE t.status = 'Stopped') AS stopped_task_count
        FROM tasks t WHERE t.execution_id = e.id
    ) m";

const SELECT_TASK: &str = "
    SELECT id, execution_id, status, status_message, run_count, extra_attrs, creation_time,
           update_time, start_time, end_time
    FROM tasks";

impl Database {
    /// One page of a policy's executions, newest first, and how many match in all.
    pub async fn list_executions(
        &self,
        policy_id: i64,
        query: &ExecutionQuery,
    ) -> Result<(Vec<Execution>, i64), StoreError> {
        let status = query.status.map(|s| s.as_str());
        let trigger = query.trigger.map(|t| t.as_str());
        let mut filter = Filter {
            sql: "e.vendor_id = $1".to_owned(),
            params: vec![&policy_id],
        };
        if let Some(status) = &status {
            filter.push("e.status", status);
        }
        if let Some(event_type) = &query.event_type {
            filter.push("e.event_type", event_type);
        }
        if let Some(trigger) = &trigger {
            filter.push("e.trigger", trigger);
        }

        let window = PageWindow::new(query.page, query.page_size);
        let mut sql = format!("{SELECT_EXECUTION} WHERE {} ORDER BY e.id DESC", filter.sql);
        let mut page_params = filter.params.clone();
        window.apply(&mut sql, &mut page_params);
        let (total, rows) = self
            .count_and_page(
                &format!("SELECT count(*) FROM executions e WHERE {}", filter.sql),
                &filter.params,
                &sql,
                &page_params,
            )
            .await?;
        let executions = rows
            .iter()
            .map(execution_from_row)
            .collect::<Result<_, _>>()?;
        Ok((executions, total))
    }

    /// The execution `id` if it is one of the policy's.
    pub async fn get_execution(
        &self,
        policy_id: i64,
        id: i64,
    ) -> Result<Option<Execution>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("{SELECT_EXECUTION} WHERE e.id = $1 AND e.vendor_id = $2"),
                &[&id, &policy_id],
            )
            .await?
            .as_ref()
            .map(execution_from_row)
            .transpose()
    }

    /// One page of an execution's tasks, newest first, and how many it has. `page_size` 0: all.
    pub async fn list_tasks(
        &self,
        execution_id: i64,
        page: u64,
        page_size: u64,
    ) -> Result<(Vec<Task>, i64), StoreError> {
        let window = PageWindow::new(page, page_size);
        let mut sql = format!("{SELECT_TASK} WHERE execution_id = $1 ORDER BY id DESC");
        let mut page_params: Vec<&(dyn ToSql + Sync)> = vec![&execution_id];
        window.apply(&mut sql, &mut page_params);
        let (total, rows) = self
            .count_and_page(
                "SELECT count(*) FROM tasks WHERE execution_id = $1",
                &[&execution_id],
                &sql,
                &page_params,
            )
            .await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok((tasks, total))
    }

    /// The task `task_id` if it is one of the execution's.
    pub async fn get_task(
        &self,
        execution_id: i64,
        task_id: i64,
    ) -> Result<Option<Task>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("{SELECT_TASK} WHERE id = $1 AND execution_id = $2"),
                &[&task_id, &execution_id],
            )
            .await?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    /// A task's log as text: one line per attempt, oldest first, each ending in a newline (see
    /// [`format_log_line`]). Empty before the first attempt (or for an unknown task).
    pub async fn task_log(&self, task_id: i64) -> Result<String, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT attempt, time, status_code, error, duration_ms, response_snippet
                 FROM task_logs WHERE task_id = $1 ORDER BY attempt",
                &[&task_id],
            )
            .await?;
        let mut log = String::new();
        for row in &rows {
            let error: Option<String> = row.try_get("error")?;
            let snippet: Option<String> = row.try_get("response_snippet")?;
            log.push_str(&format_log_line(
                row.try_get("attempt")?,
                row.try_get("time")?,
                row.try_get("status_code")?,
                error.as_deref(),
                row.try_get("duration_ms")?,
                snippet.as_deref(),
            ));
            log.push('\n');
        }
        Ok(log)
    }

    /// The newest execution's start time per (policy, event type), for the given policies.
    /// Pairs never triggered are absent.
    pub async fn last_triggers(&self, policy_ids: &[i64]) -> Result<Vec<LastTrigger>, StoreError> {
        if policy_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // DISTINCT ON walks executions_vendor_event_type_idx: one row per pair, no sort of all.
        // Only registry events trigger: a test delivery (MANUAL) or a replay (RETRY) is not a new
        // event of that type.
        let rows = client
            .query(
                "SELECT DISTINCT ON (vendor_id, event_type) vendor_id, event_type, start_time
                 FROM executions
                 WHERE vendor_id = ANY($1) AND trigger = 'EVENT'
                 ORDER BY vendor_id, event_type, id DESC",
                &[&policy_ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LastTrigger {
                    policy_id: row.try_get(0)?,
                    event_type: row.try_get(1)?,
                    time: row.try_get(2)?,
                })
            })
            .collect()
    }
}

impl<'a> Filter<'a> {
    fn push(&mut self, column: &str, value: &'a (dyn ToSql + Sync)) {
        self.params.push(value);
        self.sql
            .push_str(&format!(" AND {column} = ${}", self.params.len()));
    }
}

fn execution_from_row(row: &Row) -> Result<Execution, StoreError> {
    Ok(Execution {
        id: row.try_get("id")?,
        vendor_type: parse_column(row, "vendor_type")?,
        vendor_id: row.try_get("vendor_id")?,
        status: parse_column(row, "status")?,
        status_message: row.try_get("status_message")?,
        metrics: TaskMetrics {
            task_count: row.try_get("task_count")?,
            success_task_count: row.try_get("success_task_count")?,
            error_task_count: row.try_get("error_task_count")?,
            pending_task_count: row.try_get("pending_task_count")?,
            running_task_count: row.try_get("running_task_count")?,
            scheduled_task_count: row.try_get("scheduled_task_count")?,
            stopped_task_count: row.try_get("stopped_task_count")?,
        },
        trigger: parse_column(row, "trigger")?,
        event_type: row.try_get("event_type")?,
        extra_attrs: row.try_get("extra_attrs")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
    })
}

fn task_from_row(row: &Row) -> Result<Task, StoreError> {
    Ok(Task {
        id: row.try_get("id")?,
        execution_id: row.try_get("execution_id")?,
        status: parse_column(row, "status")?,
        status_message: row.try_get("status_message")?,
        run_count: row.try_get("run_count")?,
        extra_attrs: row.try_get("extra_attrs")?,
        creation_time: row.try_get("creation_time")?,
        update_time: row.try_get("update_time")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
    })
}
