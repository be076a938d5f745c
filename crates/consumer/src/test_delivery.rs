//! Test deliveries (Harbor's and JFrog's "Test Endpoint"): a sample event of a chosen type sent
//! to every target of a policy now, each target's result returned, and (for a saved policy) the
//! attempt recorded in history with trigger `MANUAL`.
//!
//! Design constraints:
//! - The same request a real delivery makes: same rendering, signing, headers, SSRF guard and
//!   timeout ([`crate::request::prepare`], [`crate::request::send_prepared`]); only the event
//!   is a sample ([`regrelay_events::samples`]). One attempt, no retry: the user is waiting.
//! - Nothing goes through RabbitMQ: a test is answered synchronously, and a failed one is not
//!   dead-lettered (the user sees the failure in the response).
//! - The answer shows the receiver's response with the target's credentials blanked, like history.
//! - At most [`TEST_DELIVERY_CONCURRENCY`] targets are called at once (a policy has at most
//!   `MAX_TARGETS`), so one test cannot open a connection to every target at the same moment;
//!   results come back in the policy's target order.

use chrono::Utc;
use futures::StreamExt;
use regrelay_events::cloudevents::CloudEventContext;
use regrelay_events::samples::sample_event;
use regrelay_events::EventType;
use regrelay_history::executions::{DeliveryRecord, ExecutionTrigger, TaskStatus};
use regrelay_history::policy::Target;
use regrelay_history::{Database, StoreError};
use serde::Serialize;
use uuid::Uuid;

use crate::classify::{AttemptResult, DeliveryOutcome};
use crate::history::{attempt_log, redact_snippet, vendor_type};
use crate::http_client::HttpClients;
use crate::request::{prepare, send_prepared, RequestContext};
use regrelay_dead_letters::TargetSummary;

/// Targets one test delivery calls at once.
pub const TEST_DELIVERY_CONCURRENCY: usize = 8;

/// Where a test delivery goes and how.
pub struct TestDelivery<'a> {
    pub clients: &'a HttpClients,
    pub allow_private_targets: bool,
    pub event_type: EventType,
    /// The project the sample event belongs to, and its id (CloudEvents `source`).
    pub project: &'a str,
    pub project_id: i64,
    /// The saved policy, when there is one: its id names the CloudEvents source and the history.
    pub policy_id: Option<i64>,
    /// The policy's name (a template's `policy.name`).
    pub policy_name: &'a str,
    pub targets: &'a [Target],
}

/// What one target made of the test.
#[derive(Debug, Serialize)]
pub struct TargetTestResult {
    pub target: TargetSummary,
    /// True for a 2xx answer.
    pub success: bool,
    /// `delivered`, `would_retry` (a real delivery would be retried) or `would_dead_letter`.
    pub outcome: &'static str,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// What a chat vendor said about the message (Telegram's `description`, DingTalk's
    /// `errmsg`, ...), credentials blanked; absent for Harbor's types and when it said nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_message: Option<String>,
    pub duration_ms: u64,
    /// The start of the receiver's answer, credentials blanked.
    pub response: Option<String>,
    /// The `webhook-id` sent.
    pub delivery_id: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum TestDeliveryError {
    #[error("cannot build a sample {0} event: {1}")]
    Sample(&'static str, String),
    #[error("cannot record the test delivery in history: {0}")]
    History(#[from] StoreError),
}

/// Sends the sample to every target ([`TEST_DELIVERY_CONCURRENCY`] at a time, results in target
/// order) and, when `history` is given and the policy is saved, records each attempt as an
/// execution with trigger `MANUAL`.
pub async fn run_test_delivery(
    test: TestDelivery<'_>,
    history: Option<&Database>,
) -> Result<Vec<TargetTestResult>, TestDeliveryError> {
    let now = Utc::now();
    let event = sample_event(test.event_type, test.project, now.timestamp())
        .map_err(|e| TestDeliveryError::Sample(test.event_type.as_str(), e.to_string()))?;
    // Collected first: a lazy `map` inside the stream trips the compiler's `Send` proof of the
    // handler's future (a higher-ranked lifetime it cannot name).
    let attempts: Vec<_> = test
        .targets
        .iter()
        .map(|target| {
            let event = &event;
            async move {
                let delivery_id = Uuid::new_v4();
                let context = RequestContext {
                    cloud: CloudEventContext {
                        id: delivery_id,
                        project_id: test.project_id,
                        policy_id: test.policy_id.unwrap_or(0),
                        request_id: format!("test-{delivery_id}"),
                    },
                    policy_name: test.policy_name,
                    event_id: delivery_id,
                };
                match prepare(target, None, event, &context) {
                    Ok(prepared) => {
                        let payload = String::from_utf8_lossy(&prepared.body).into_owned();
                        let report = send_prepared(
                            test.clients,
                            target,
                            prepared,
                            delivery_id,
                            test.allow_private_targets,
                        )
                        .await;
                        (target, delivery_id, Ok((report, payload)))
                    }
                    Err(unsendable) => (target, delivery_id, Err(unsendable.detail)),
                }
            }
        })
        .collect();
    let outcomes: Vec<_> = futures::stream::iter(attempts)
        .buffered(TEST_DELIVERY_CONCURRENCY)
        .collect()
        .await;

    let mut results = Vec::with_capacity(outcomes.len());
    let mut records = Vec::new();
    for (target, delivery_id, outcome) in outcomes {
        let summary = TargetSummary::of(target);
        match outcome {
            Ok((sent, payload)) => {
                let verdict = sent.verdict();
                let described = sent.describe(&verdict);
                let report = &sent.report;
                let snippet = redact_snippet(report, target);
                let (outcome, status) = match verdict.outcome {
                    DeliveryOutcome::Delivered => ("delivered", TaskStatus::Success),
                    DeliveryOutcome::Retry { .. } => ("would_retry", TaskStatus::Error),
                    DeliveryOutcome::DeadLetter { .. } => ("would_dead_letter", TaskStatus::Error),
                };
                let (status_code, error) = match &report.result {
                    AttemptResult::Response { status, .. } => (Some(*status), None),
                    other => (None, Some(other.describe())),
                };
                if let Some(policy_id) = test.policy_id {
                    records.push(DeliveryRecord {
                        history_key: Uuid::new_v4(),
                        policy_id,
                        vendor_type: vendor_type(target.kind),
                        trigger: ExecutionTrigger::Manual,
                        event_type: test.event_type.as_str().to_owned(),
                        event_id: delivery_id,
                        status,
                        status_message: format!("test delivery: {described}"),
                        run_count: 1,
                        payload: Some(payload),
                        attempt: Some(attempt_log(report, snippet.clone(), 1, now)),
                        at: now,
                        target: None,
                    });
                }
                results.push(TargetTestResult {
                    target: summary,
                    success: status == TaskStatus::Success,
                    outcome,
                    status_code,
                    error,
                    vendor_message: verdict.vendor_message,
                    duration_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
                    response: snippet,
                    delivery_id,
                });
            }
            Err(detail) => results.push(TargetTestResult {
                target: summary,
                success: false,
                outcome: "would_dead_letter",
                status_code: None,
                error: Some(detail),
                vendor_message: None,
                duration_ms: 0,
                response: None,
                delivery_id,
            }),
        }
    }
    if let (Some(db), false) = (history, records.is_empty()) {
        db.record_deliveries(&records).await?;
    }
    Ok(results)
}
