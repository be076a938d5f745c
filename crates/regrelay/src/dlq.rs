//! `regrelay dlq list | show | replay | purge`: the operator's view of the dead-letter queue.
//!
//! Design constraints:
//! - The broker only: no database, so the commands work while PostgreSQL is down, from any machine
//!   that can reach RabbitMQ with the service's configuration (`--config`, `REGRELAY_*`).
//! - The work is [`DeadLetterQueue`]'s (shared with the HTTP API); this module parses arguments and
//!   prints. Its guarantees hold here: browsing loses nothing, a replay removes a dead letter only
//!   once the replayed task is confirmed.
//! - stdout carries the result only (tables, or JSON with `--json`, for scripts); diagnostics go to
//!   stderr, at `error` level unless `RUST_LOG` says otherwise, so the service's stdout logging is
//!   not used here.
//! - Exit status: 0 when everything asked for was done; 1 otherwise (an id not found, a replay that
//!   failed, a purge not confirmed, the broker unreachable), with the reason on stderr.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use prometheus::Registry;
use regrelay_dead_letters::{
    parse_age, parse_ids, DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterMetrics,
    DeadLetterQueue, DeadLetterReason, DeadLetterSummary, ReplayReport, ReplaySelection,
};
use regrelay_producer::{Broker, BrokerSettings, ConfirmedPublisher, ProducerMetrics, Topology};
use secrecy::ExposeSecret;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters in queue order (oldest first), as a table or JSON.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print a JSON array of objects, each with the `id` that `show` and `replay` take.
        #[arg(long)]
        json: bool,
    },
    /// Show everything known about one dead letter: reason, attempts, policy, target (redacted),
    /// headers and the whole body.
    Show {
        /// The dead letter's id (from `dlq list`).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Replay dead letters: each goes back to delivery as a new execution (trigger RETRY) with the
    /// same webhook-id; the dead letter is removed once the broker confirmed the replay.
    Replay {
        /// Dead-letter ids (from `dlq list`).
        #[arg(conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter that matches the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the dead letters that match the filters (all of them without filters).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command applies to; every filter given must match.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// The event's project (namespace).
    #[arg(long)]
    project: Option<String>,
    /// The policy id.
    #[arg(long = "policy")]
    policy_id: Option<i64>,
    /// The event type, e.g. PUSH_ARTIFACT.
    #[arg(long)]
    event_type: Option<String>,
    /// The dead-letter reason, e.g. attempts_exhausted, client_error, poison, delivery_limit.
    #[arg(long, value_parser = reason_arg)]
    reason: Option<DeadLetterReason>,
    /// Dead-lettered at least this long ago (90s, 10m, 1h30m, 2d).
    #[arg(long, value_parser = age_arg)]
    older_than: Option<Duration>,
    /// Dead-lettered at most this long ago.
    #[arg(long, value_parser = age_arg)]
    newer_than: Option<Duration>,
}

impl FilterArgs {
    fn into_filter(self) -> DeadLetterFilter {
        DeadLetterFilter {
            project: self.project,
            policy_id: self.policy_id,
            event_type: self.event_type,
            reason: self.reason,
            older_than: self.older_than,
            newer_than: self.newer_than,
        }
    }
}

fn reason_arg(text: &str) -> Result<DeadLetterReason, String> {
    text.trim()
        .parse()
        .map_err(|e: regrelay_dead_letters::UnknownReason| e.to_string())
}

fn age_arg(text: &str) -> Result<Duration, String> {
    parse_age(text).map_err(|e| e.to_string())
}

/// Runs one `dlq` command with the configuration at `config_path` (or the defaults and `REGRELAY_*`).
pub fn run(config_path: Option<PathBuf>, command: DlqCommand) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    init_stderr_logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (broker, queue) = connect(&config)?;
        let result = execute(&queue, command).await;
        broker.close().await;
        result
    })
}

/// Diagnostics to stderr, so stdout stays the command's output.
fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn connect(config: &Config) -> anyhow::Result<(Arc<Broker>, DeadLetterQueue)> {
    let registry = Registry::new();
    let topology = Topology::new(config.queue_prefix.clone())?;
    let broker = Arc::new(Broker::new(
        BrokerSettings {
            url: config.amqp_url.expose_secret().to_owned(),
            connection_name: format!("regrelay-dlq/{}", std::process::id()),
            role: "publish",
            publish_channels: 1,
            connect_timeout: config.broker_connect_timeout,
            reconnect_min_delay: config.broker_reconnect_min_delay,
            reconnect_max_delay: config.broker_reconnect_max_delay,
            tls: config.broker_tls(),
        },
        topology,
        ProducerMetrics::register(&registry).context("cannot register metrics")?,
    ));
    let queue = DeadLetterQueue::new(
        // Patient like the consumer's: a replay whose confirm is late is waited for, not left in
        // the dead-letter queue to be replayed (and delivered) a second time.
        ConfirmedPublisher::new(broker.clone(), config.publish_confirm_timeout)
            .with_patience(config.publish_confirm_patience),
        DeadLetterMetrics::register(&registry).context("cannot register metrics")?,
    );
    Ok((broker, queue))
}

async fn execute(queue: &DeadLetterQueue, command: DlqCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let found = queue
                .list(&filter.into_filter(), limit)
                .await
                .map_err(failed("cannot list dead letters"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?;
            } else {
                write!(out, "{}", table(&found))?;
            }
        }
        DlqCommand::Show { id, json } => {
            let [id] = parse_ids(&[id])?[..] else {
                bail!("expected one dead-letter id");
            };
            let letter = queue
                .show(id)
                .await
                .map_err(failed("cannot read the dead-letter queue"))?
                .ok_or_else(|| anyhow!("no dead letter {id} on {}", queue.queue_name()))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&letter)?)?;
            } else {
                write!(out, "{}", details(&letter)?)?;
            }
        }
        DlqCommand::Replay {
            ids,
            all,
            filter,
            json,
        } => {
            let selection = if all {
                ReplaySelection::All(filter.into_filter())
            } else if ids.is_empty() {
                bail!("give the ids of the dead letters to replay, or --all (with filters)");
            } else if !filter.into_filter().is_empty() {
                bail!("filters apply to --all only; with ids, every id given is replayed");
            } else {
                ReplaySelection::Ids(parse_ids(&ids)?)
            };
            let report = queue
                .replay(&selection)
                .await
                .map_err(failed("cannot replay dead letters"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{}", replay_text(&report))?;
            }
            out.flush()?;
            if !report.is_complete() {
                bail!(
                    "{} not found, {} failed; those dead letters were not replayed",
                    report.not_found.len(),
                    report.failed.len()
                );
            }
        }
        DlqCommand::Purge { filter, yes } => {
            let filter = filter.into_filter();
            if !yes {
                let matching = queue
                    .list(&filter, usize::MAX)
                    .await
                    .map_err(failed("cannot read the dead-letter queue"))?
                    .len();
                if matching == 0 {
                    writeln!(out, "No dead letters match; nothing to purge.")?;
                    return Ok(());
                }
                let mut err = std::io::stderr().lock();
                write!(
                    err,
                    "Purge {matching} dead letter(s) {} from {}? This cannot be undone. [y/N] ",
                    describe(&filter),
                    queue.queue_name()
                )?;
                err.flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                    bail!(
                        "purge not confirmed; nothing was purged (pass --yes to skip the question)"
                    );
                }
            }
            let purged = queue
                .purge(&filter)
                .await
                .map_err(failed("cannot purge dead letters"))?;
            writeln!(out, "Purged {purged} dead letter(s).")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The error as one line: a [`DeadLetterError`] already names its cause (the broker's redacted
/// address, the I/O error), so its source chain would only repeat it.
fn failed(what: &'static str) -> impl FnOnce(DeadLetterError) -> anyhow::Error {
    move |error| anyhow!("{what}: {error}")
}

/// The filter in words, for the confirmation question.
fn describe(filter: &DeadLetterFilter) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &filter.project {
        parts.push(format!("project={p}"));
    }
    if let Some(p) = filter.policy_id {
        parts.push(format!("policy={p}"));
    }
    if let Some(t) = &filter.event_type {
        parts.push(format!("event-type={t}"));
    }
    if let Some(r) = &filter.reason {
        parts.push(format!("reason={r}"));
    }
    if let Some(d) = filter.older_than {
        parts.push(format!("older-than={}", age(d.as_secs())));
    }
    if let Some(d) = filter.newer_than {
        parts.push(format!("newer-than={}", age(d.as_secs())));
    }
    if parts.is_empty() {
        "(all of them)".to_owned()
    } else {
        format!("matching {}", parts.join(" "))
    }
}

fn table(found: &[DeadLetterSummary]) -> String {
    let header = [
        "ID", "AGE", "REASON", "EVENT", "PROJECT", "POLICY", "ATTEMPTS", "LAST",
    ];
    let rows: Vec<[String; 8]> = found
        .iter()
        .map(|s| {
            [
                s.id.to_string(),
                s.age_seconds.map(age).unwrap_or_else(|| "-".into()),
                s.reason.to_string(),
                s.event_type.clone().unwrap_or_else(|| "-".into()),
                s.project.clone().unwrap_or_else(|| "-".into()),
                s.policy
                    .as_ref()
                    .map(|p| format!("{} ({})", p.id, p.name))
                    .unwrap_or_else(|| "-".into()),
                s.attempts.to_string(),
                last(s),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(&header.map(str::to_owned));
    for row in &rows {
        text.push_str(&line(row));
    }
    text.push_str(&format!("{} dead letter(s)\n", rows.len()));
    text
}

/// The last attempt's result, short.
fn last(s: &DeadLetterSummary) -> String {
    match (&s.last_status, &s.last_error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => {
            let short: String = error.chars().take(48).collect();
            if short.len() < error.len() {
                format!("{short}…")
            } else {
                short
            }
        }
        (None, None) => "-".into(),
    }
}

/// `42s`, `5m`, `3h`, `2d`.
fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn details(letter: &DeadLetter) -> anyhow::Result<String> {
    let s = &letter.summary;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut rows: Vec<(&str, String)> = vec![
        ("ID", s.id.to_string()),
        ("Reason", s.reason.to_string()),
        ("Detail", s.detail.clone()),
        (
            "Dead-lettered",
            match s.age_seconds {
                Some(secs) => format!("{} ({} ago)", s.dead_lettered_at, age(secs)),
                None => or_dash(Some(s.dead_lettered_at.clone()).filter(|t| !t.is_empty())),
            },
        ),
        ("Attempts", s.attempts.to_string()),
        ("Last status", or_dash(s.last_status.map(|v| v.to_string()))),
        ("Last error", or_dash(s.last_error.clone())),
        ("Event type", or_dash(s.event_type.clone())),
        ("Project", or_dash(s.project.clone())),
        (
            "Policy",
            or_dash(s.policy.as_ref().map(|p| match &p.project {
                Some(project) => format!("{} ({}) in project {project}", p.id, p.name),
                None => format!("{} ({}), system-wide", p.id, p.name),
            })),
        ),
        (
            "Target",
            or_dash(s.target.as_ref().map(|t| {
                if t.payload_format.is_empty() {
                    format!("{} {}", t.kind.as_str(), t.address)
                } else {
                    format!("{} {} ({})", t.kind.as_str(), t.address, t.payload_format)
                }
            })),
        ),
        (
            "Replayable",
            if s.replayable { "yes" } else { "no" }.to_owned(),
        ),
        (
            "Message",
            format!(
                "on {}, message id {}, {} bytes{}",
                letter.message.queue,
                letter.message.message_id.as_deref().unwrap_or("-"),
                letter.message.size_bytes,
                if letter.message.redelivered {
                    ", seen before"
                } else {
                    ""
                }
            ),
        ),
    ];
    let mut text = String::new();
    for (name, value) in rows.drain(..) {
        text.push_str(&format!("{name:<14}{value}\n"));
    }
    text.push_str("\nHeaders:\n");
    for (name, value) in &letter.headers {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("  {name}: {value}\n"));
    }
    text.push_str("\nBody:\n");
    text.push_str(&serde_json::to_string_pretty(&letter.body)?);
    text.push('\n');
    Ok(text)
}

fn replay_text(report: &ReplayReport) -> String {
    let mut text = String::new();
    for id in &report.replayed {
        text.push_str(&format!("replayed   {id}\n"));
    }
    for id in &report.not_found {
        text.push_str(&format!("not found  {id}\n"));
    }
    for (id, reason) in &report.failed {
        text.push_str(&format!("failed     {id}: {reason}\n"));
    }
    text.push_str(&format!(
        "Replayed {}, not found {}, failed {}.\n",
        report.replayed.len(),
        report.not_found.len(),
        report.failed.len()
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_short() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(300), "5m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(3 * 86_400), "3d");
    }

    #[test]
    fn filters_are_described() {
        assert_eq!(describe(&DeadLetterFilter::default()), "(all of them)");
        let filter = DeadLetterFilter {
            project: Some("lib".into()),
            older_than: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        assert_eq!(describe(&filter), "matching project=lib older-than=1h");
    }
}
