//! `regrelay targets`: receiver health as a table (or JSON), failing first, the same list as
//! `GET /api/v1/targets/health`. Reads PostgreSQL only.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use regrelay_history::target_health::{HealthQuery, HealthState, TargetHealth};
use regrelay_history::Database;
use secrecy::ExposeSecret;

use crate::config::Config;

#[derive(Args)]
pub struct TargetsArgs {
    /// `open` (circuit open), `failing` (last attempt failed) or `healthy`.
    #[arg(long, value_parser = state_arg)]
    state: Option<HealthState>,
    /// A project's name.
    #[arg(long)]
    project: Option<String>,
    /// A policy id.
    #[arg(long)]
    policy: Option<i64>,
    /// Rows to print (at most 100).
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// One JSON array instead of the table.
    #[arg(long)]
    json: bool,
}

fn state_arg(text: &str) -> Result<HealthState, String> {
    HealthState::parse(text.trim())
        .ok_or_else(|| format!("unknown state {text:?}: expected open, failing or healthy"))
}

pub fn run(config_path: Option<PathBuf>, args: TargetsArgs) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let db = Database::connect(config.database_url.expose_secret(), 1)
            .context("invalid database_url")?;
        let query = HealthQuery {
            state: args.state,
            project: args.project,
            policy_id: args.policy,
            page: 1,
            page_size: args.limit.clamp(1, 100),
        };
        let (rows, total) = db
            .target_health(&query)
            .await
            .context("cannot read target health")?;
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &rows)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", table(&rows))?;
            if total > i64::try_from(rows.len()).unwrap_or(i64::MAX) {
                writeln!(out, "({} of {total} targets; --limit for more)", rows.len())?;
            }
        }
        Ok(())
    })
}

/// The rows as an aligned table.
fn table(rows: &[TargetHealth]) -> String {
    let mut lines = vec![[
        "STATE".to_owned(),
        "POLICY".to_owned(),
        "TYPE".to_owned(),
        "TARGET".to_owned(),
        "SUCCESS".to_owned(),
        "FAILS".to_owned(),
        "LAST SUCCESS".to_owned(),
        "LAST FAILURE".to_owned(),
    ]];
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
    };
    for row in rows {
        let failure = row
            .last_failure
            .as_deref()
            .map(|m| regrelay_history::policy::clip(m, 60).into_owned())
            .unwrap_or_default();
        lines.push([
            row.state.as_str().to_owned(),
            format!("{} {}", row.policy_id, row.policy_name),
            row.target_type.clone(),
            row.target_address.clone(),
            format!("{:.0}%", row.success_rate * 100.0),
            row.consecutive_failures.to_string(),
            time(row.last_success_at),
            format!("{} {failure}", time(row.last_failure_at))
                .trim()
                .to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_says_what_failed() {
        let row = TargetHealth {
            policy_id: 3,
            policy_name: "ci".into(),
            project: Some("lib".into()),
            target_fingerprint: "fp".into(),
            target_type: "telegram".into(),
            target_address: "https://api.telegram.org".into(),
            state: HealthState::Open,
            attempts: 12,
            successes: 2,
            success_rate: 0.25,
            consecutive_failures: 10,
            last_success_at: None,
            last_failure_at: "2026-12-02T01:00:00Z".parse().ok(),
            last_failure: Some("HTTP 502".into()),
            circuit_opened_at: None,
            next_probe_at: None,
            updated_at: chrono::Utc::now(),
        };
        let text = table(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("STATE  POLICY  TYPE"), "{text}");
        assert!(lines[1].starts_with("open   3 ci    telegram"), "{text}");
        assert!(lines[1].ends_with("2026-12-02 01:00:00 HTTP 502"), "{text}");
        assert!(lines[1].contains("25%"));
    }
}
