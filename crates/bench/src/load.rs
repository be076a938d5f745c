//! What the bench does to regrelay over HTTP: create the scenario's policy, warm up, send the events.
//!
//! Design constraints:
//! - Only the public APIs a registry and an operator use (Harbor's policy API with HTTP Basic, the
//!   ingest API with the bearer token), so `--target` works against any running installation.
//! - Each event has a unique tag `b{n}`, so every delivery is correlated to the instant the `202`
//!   of the request that carried it arrived. One event per request unless `batch` says more (a
//!   Harbor JSON array, accepted or refused whole).
//! - Every answer other than `202` is counted by status (or as a transport error) and reported: a
//!   refused event is never silently left out of the figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::json;

use super::receiver::{warmup_tag, Receiver};

/// Targets one policy may hold (the policy API refuses more).
pub const MAX_TARGETS_PER_POLICY: usize = regrelay_history::policy::MAX_TARGETS;
/// The project every bench event and policy belongs to.
pub const PROJECT: &str = "bench";
/// Longest wait for the consumers to pick up a new policy (their refresh interval is 1 s by default).
const WARMUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one ingest request may take; a stalled service shows up as transport errors.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a regrelay API.
#[derive(Clone)]
pub struct Endpoint {
    /// `http://host:port`.
    pub api_url: String,
    pub ingest_token: String,
    pub admin_user: String,
    pub admin_password: String,
}

/// How to send the events.
#[derive(Debug, Clone, Copy)]
pub struct LoadSettings {
    pub events: usize,
    /// Events per request.
    pub batch: usize,
    pub concurrency: usize,
    /// Events per second, or as fast as they are accepted.
    pub rate: Option<f64>,
    /// Pad each event to about this many bytes (0: no padding).
    pub event_bytes: usize,
}

/// What the sending phase saw.
pub struct LoadResult {
    /// When each event's `202` arrived (`None`: not accepted).
    pub accepted_at: Vec<Option<Instant>>,
    /// When the first request was sent.
    pub started: Instant,
    /// When the last answer arrived.
    pub finished: Instant,
    /// Events not accepted, by the status of the answer to their request (`"transport"` for no
    /// answer at all).
    pub rejected: BTreeMap<String, usize>,
    /// A few of those answers, for the report.
    pub rejection_samples: Vec<String>,
}

impl LoadResult {
    pub fn accepted(&self) -> usize {
        self.accepted_at.iter().flatten().count()
    }
}

/// How long an idle keep-alive connection stays in the sender's pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A client with enough keep-alive connections for `concurrency` requests at once.
pub fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        // Below the api's `http_idle_timeout` (5 s): a connection the server is closing as idle
        // is not picked for a request (measured in the hour's soak: 3 requests of 432 000 lost
        // that race, "connection closed before message completed", when the pool kept 90 s).
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

/// Creates one policy in [`PROJECT`] for `PUSH_ARTIFACT` with one Default-format target per URL;
/// returns the policy's URL (for deleting it).
pub async fn create_policy(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    targets: &[String],
) -> anyhow::Result<String> {
    let targets: Vec<_> = targets
        .iter()
        .map(|address| json!({"type": "http", "address": address, "payload_format": "Default", "skip_cert_verify": false}))
        .collect();
    let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let response = client
        .post(format!(
            "{}/api/v2.0/projects/{PROJECT}/webhook/policies",
            endpoint.api_url
        ))
        .basic_auth(&endpoint.admin_user, Some(&endpoint.admin_password))
        .json(&json!({"name": name, "event_types": ["PUSH_ARTIFACT"], "enabled": true, "targets": targets}))
        .send()
        .await
        .context("cannot create the bench policy")?;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    if status != reqwest::StatusCode::CREATED {
        let body = response.text().await.unwrap_or_default();
        bail!("creating the bench policy answered {status}: {body}");
    }
    match location {
        Some(location) if location.starts_with('/') => {
            Ok(format!("{}{location}", endpoint.api_url))
        }
        Some(location) => Ok(location),
        None => bail!("creating the bench policy answered 201 without a Location"),
    }
}

/// Deletes the policy created by [`create_policy`].
pub async fn delete_policy(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    policy_url: &str,
) -> anyhow::Result<()> {
    let response = client
        .delete(policy_url)
        .basic_auth(&endpoint.admin_user, Some(&endpoint.admin_password))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("deleting {policy_url} answered {}", response.status());
    }
    Ok(())
}

/// Sends warm-up events until every live target has received one: the consumers have loaded the
/// policy, and their HTTP connections to the receiver are open, before anything is timed.
pub async fn warm_up(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    receiver: &Receiver,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WARMUP_TIMEOUT;
    let mut n = 0;
    while !receiver.all_warmed() {
        if tokio::time::Instant::now() >= deadline {
            bail!("no warm-up event reached every target within {WARMUP_TIMEOUT:?}: are the consumers running and allowed to deliver to 127.0.0.1 (allow_private_targets)?");
        }
        let response = post_event(client, endpoint, event_body(&warmup_tag(n))).await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            bail!("a warm-up event was answered {status}: {body}");
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Sends `settings.events` events in requests of `settings.batch`, `settings.concurrency` requests
/// at a time, at `settings.rate` events per second if given.
pub async fn send(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    settings: LoadSettings,
    progress: &ProgressBar,
) -> LoadResult {
    let batch = settings.batch.max(1);
    let event_bytes = settings.event_bytes;
    let ticker = settings.rate.filter(|r| *r > 0.0).map(|rate| {
        // One tick per request, so events flow at `rate`.
        let mut interval = tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate));
        // Fixed rate: a late tick is made up at once, so the mean rate stays the one asked for.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let started = Instant::now();
    let events = settings.events;
    // Each item: the events `first..end` of one request.
    let requests = futures::stream::unfold((0, ticker), move |(first, mut ticker)| async move {
        if first >= events {
            return None;
        }
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let end = (first + batch).min(events);
        Some((first..end, (end, ticker)))
    });
    let mut answers = std::pin::pin!(requests
        .map(|range| async move {
            let body = if batch == 1 {
                padded(event_body(&format!("b{}", range.start)), event_bytes)
            } else {
                let events: Vec<String> = range
                    .clone()
                    .map(|n| padded(event_body(&format!("b{n}")), event_bytes))
                    .collect();
                format!("[{}]", events.join(","))
            };
            let outcome = match post_event(client, endpoint, body).await {
                Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                    Ok(Instant::now())
                }
                Ok(response) => {
                    let status = response.status().as_u16().to_string();
                    let body = response.text().await.unwrap_or_default();
                    Err((status, body))
                }
                Err(error) => Err(("transport".to_owned(), format!("{error:#}"))),
            };
            (range, outcome)
        })
        .buffer_unordered(settings.concurrency.max(1)));
    let mut result = LoadResult {
        accepted_at: vec![None; settings.events],
        started,
        finished: started,
        rejected: BTreeMap::new(),
        rejection_samples: Vec::new(),
    };
    while let Some((range, outcome)) = answers.next().await {
        let count = range.len();
        match outcome {
            Ok(at) => {
                for n in range {
                    result.accepted_at[n] = Some(at);
                }
            }
            Err((status, body)) => {
                if result.rejection_samples.len() < 5 {
                    result.rejection_samples.push(format!(
                        "events b{}..b{}: {status}: {body}",
                        range.start,
                        range.end - 1
                    ));
                }
                *result.rejected.entry(status).or_default() += count;
            }
        }
        progress.inc(count as u64);
    }
    result.finished = Instant::now();
    result
}

pub async fn post_event(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    body: String,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(format!("{}/api/v1/events", endpoint.api_url))
        .bearer_auth(&endpoint.ingest_token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?)
}

/// `event` with an `x_padding` string field making it about `bytes` long (unchanged when it is
/// already longer). Harbor events keep unknown fields, so the padding travels to every receiver.
fn padded(event: String, bytes: usize) -> String {
    let filler = bytes.saturating_sub(event.len() + 16);
    if filler == 0 {
        return event;
    }
    let mut out = event;
    out.pop(); // the closing brace
    out.push_str(",\"x_padding\":\"");
    out.extend(std::iter::repeat_n('x', filler));
    out.push_str("\"}");
    out
}

/// One Harbor `PUSH_ARTIFACT` event in [`PROJECT`] with `tag`.
pub fn event_body(tag: &str) -> String {
    json!({
        "type": "PUSH_ARTIFACT",
        "occur_at": 1_700_000_000,
        "operator": "bench",
        "event_data": {
            "resources": [{
                "digest": "sha256:5a0c3c9b2f1e0d4c8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a",
                "tag": tag,
                "resource_url": format!("localhost/{PROJECT}/app:{tag}"),
            }],
            "repository": {
                "name": "app",
                "namespace": PROJECT,
                "repo_full_name": format!("{PROJECT}/app"),
                "repo_type": "private",
            },
        },
    })
    .to_string()
}
