//! Recording each delivery's progress in the history tables (SPEC §5), and the retention sweep.
//!
//! Design constraints:
//! - Record, then settle: a stage writes a delivery's history and waits until it is durable
//!   (its batch committed) *before* it acks, retries or dead-letters the message. A process killed
//!   in between leaves the message unacked; RabbitMQ redelivers it, the attempt is made again and
//!   recorded again. Records are idempotent (keyed by the task's history key, log lines by attempt
//!   number), so a redelivery never duplicates history, and a delivered event never lacks its record.
//! - History must not become the bottleneck: writes go through the batching
//!   [`HistoryRecorder`], so many concurrent deliveries share one transaction.
//! - A database outage holds deliveries, it does not lose their history: while the database is
//!   unreachable (or a write takes longer than [`RECORD_ATTEMPT_TIMEOUT`]) the write is retried with
//!   capped backoff for up to `history_outage_hold`, and the message stays unacked. The attempt is
//!   not made again (putting the message back would re-send the webhook on every cycle, and on
//!   brokers with a quorum-queue delivery limit eventually drop it). Meanwhile the prefetch fills
//!   and the consumer takes no more work: the backpressure we want. If the process stops
//!   meanwhile, the message is redelivered and attempted again (at-least-once, same `webhook-id`).
//! - The hold is bounded (default 10 min) well below RabbitMQ's `consumer_timeout` (30 min), past
//!   which the broker would close the channel and re-send everything in flight: an outage that
//!   outlasts it settles the delivery without its record, loudly
//!   (`regrelay_history_records_abandoned_total`, an error log line). The delivery itself is never
//!   lost for it: delivered stays delivered, a retry or dead letter is still published.
//! - A write the database refuses for another reason is retried for [`RECORD_PATIENCE`]; then the
//!   delivery is settled without its record, loudly (`regrelay_history_records_abandoned_total`,
//!   an error log line): a record that can never be written must not hold a delivery forever.
//! - Nothing secret is recorded: the payload is the body sent (no headers), and a receiver's
//!   answer has the target's credentials blanked before it is stored, since some receivers echo
//!   requests back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use regrelay_history::executions::{
    AttemptLog, DeliveryRecord, ExecutionTrigger, TargetRef, TaskStatus, VendorType,
};
use regrelay_history::policy::{redact_address, Target, TargetKind, REDACTED};
use regrelay_history::{Database, HistoryRecorder, SweepRules};
use tokio_util::sync::CancellationToken;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::attempt::{AttemptReport, MAX_SNIPPET};
use crate::classify::AttemptResult;
use crate::context::DeliveryContext;
use crate::telemetry::ConsumerMetrics;
use regrelay_producer::{DeliveryTask, Trigger};

/// How long a write that fails for a reason other than an unreachable database (a constraint, a
/// value PostgreSQL refuses) is retried before the delivery is settled without its record.
pub(crate) const RECORD_PATIENCE: Duration = Duration::from_secs(30);

/// Longest one write may take before it is treated as an unreachable database and retried.
pub(crate) const RECORD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the retention sweep runs (the `history_*` configuration keys).
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// What each sweep deletes, in batches of how many rows (so it never holds locks writers wait
    /// on for long), whether it vacuums after, and how it paces itself.
    pub rules: SweepRules,
    /// Time between sweeps.
    pub interval: Duration,
}

/// One step of a delivery, before it is turned into a [`DeliveryRecord`].
pub(crate) struct Step<'a> {
    pub task: &'a DeliveryTask,
    pub event_type: &'a str,
    pub kind: TargetKind,
    pub status: TaskStatus,
    pub status_message: String,
    /// The body sent, once there was an attempt.
    pub payload: Option<&'a [u8]>,
    /// The attempt this step records (`task.attempts` is already its number).
    pub attempt: Option<(&'a AttemptReport, Option<String>)>,
    /// The target's address, when the attempt counts for its health (`target_health`).
    pub target_address: Option<&'a str>,
}

impl Step<'_> {
    fn into_record(self) -> DeliveryRecord {
        let now = Utc::now();
        let attempt = self
            .attempt
            .map(|(report, snippet)| attempt_log(report, snippet, self.task.attempts, now));
        DeliveryRecord {
            history_key: self.task.history_key(),
            policy_id: self.task.policy_id,
            vendor_type: vendor_type(self.kind),
            trigger: trigger(self.task.trigger),
            event_type: self.event_type.to_owned(),
            event_id: self.task.event_id,
            status: self.status,
            status_message: self.status_message,
            run_count: i32::try_from(self.task.attempts).unwrap_or(i32::MAX),
            payload: self
                .payload
                .map(|body| String::from_utf8_lossy(body).into_owned()),
            target: self
                .target_address
                .filter(|_| attempt.is_some())
                .map(|address| TargetRef {
                    fingerprint: self.task.target_fingerprint.clone(),
                    address: redact_address(self.kind, address),
                    target_type: self.kind.as_str().to_owned(),
                }),
            attempt,
            at: now,
        }
    }
}

/// The task-log line of one attempt.
pub(crate) fn attempt_log(
    report: &AttemptReport,
    snippet: Option<String>,
    attempt: u32,
    at: DateTime<Utc>,
) -> AttemptLog {
    let (status_code, error) = match &report.result {
        AttemptResult::Response { status, .. } => (Some(*status), None),
        other => (None, Some(other.describe())),
    };
    AttemptLog {
        attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        at,
        status_code,
        error,
        duration: report.elapsed,
        response_snippet: snippet,
    }
}

pub(crate) fn vendor_type(kind: TargetKind) -> VendorType {
    match kind {
        TargetKind::Http => VendorType::Webhook,
        TargetKind::Slack => VendorType::Slack,
        TargetKind::Vendor(kind) => VendorType::Vendor(kind),
    }
}

pub(crate) fn trigger(trigger: Trigger) -> ExecutionTrigger {
    match trigger {
        Trigger::Event => ExecutionTrigger::Event,
        Trigger::Manual => ExecutionTrigger::Manual,
        Trigger::Retry => ExecutionTrigger::Retry,
    }
}

/// The receiver's answer as it may be stored: every credential blanked, *then* cut to
/// [`MAX_SNIPPET`] bytes at a character boundary (cutting first would keep the part of a secret
/// that straddles the cut), trimmed; `None` when there was no answer body.
///
/// What is blanked, as [`REDACTED`]: every form of the target's credentials
/// ([`credentials_of`]) and the secret headers the attempt actually sent (the `Authorization`
/// reqwest derived from the address's user info, the signature). A credential of 4 bytes or more
/// is blanked wherever it occurs. A shorter one (a password `abc`) is blanked only where it stands
/// as a whole word (no letter or digit either side): blanking every `a` of an answer would destroy
/// it and say which letter the secret is, while an echo of a credential sets it apart anyway
/// (`user:abc@`, `"abc"`, `=abc&`).
pub(crate) fn redact_snippet(report: &AttemptReport, target: &Target) -> Option<String> {
    let answer = report.answer.as_ref()?;
    if answer.text.trim().is_empty() {
        // Most receivers answer with nothing worth keeping: no credential list to build.
        return None;
    }
    let mut credentials = credentials_of(target);
    for value in &answer.sent_secrets {
        credentials.extend(header_value_forms(value));
    }
    let text = blank(&answer.text, credentials, answer.complete, MAX_SNIPPET);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Credentials shorter than this are blanked only as whole words (see [`redact_snippet`]).
const SHORT_CREDENTIAL: usize = 4;

/// `text` with every credential replaced by [`REDACTED`] in one pass, longest first at each
/// position (so a whole value goes before its parts and no part of a longer secret survives), cut
/// to at most `max` bytes. When `text` is not the whole answer (`complete` false), its last
/// `longest - 1` bytes are dropped before anything else: they may be the start of a credential
/// the read cut off, which cannot be recognised. Every credential that starts before that point
/// lies wholly inside `text` and is blanked.
fn blank(text: &str, mut credentials: Vec<String>, complete: bool, max: usize) -> String {
    credentials.retain(|c| !c.is_empty());
    credentials.sort_by_key(|c| std::cmp::Reverse(c.len()));
    credentials.dedup();
    let longest = credentials.first().map_or(0, String::len);
    let end = if complete {
        text.len()
    } else {
        text.len().saturating_sub(longest.saturating_sub(1))
    };
    let mut out = String::with_capacity(end.min(max));
    let mut at = 0;
    while at < end && out.len() < max {
        let rest = &text[at..];
        let found = credentials.iter().find(|c| {
            rest.starts_with(c.as_str())
                && (c.len() >= SHORT_CREDENTIAL || stands_alone(text, at, c.len()))
        });
        if let Some(credential) = found {
            out.push_str(REDACTED);
            at += credential.len();
            continue;
        }
        let Some(ch) = rest.chars().next() else {
            break;
        };
        out.push(ch);
        at += ch.len_utf8();
    }
    let mut cut = out.len().min(max);
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
}

/// Whether `text[at..at + len]` has no letter or digit right before or after it.
fn stands_alone(text: &str, at: usize, len: usize) -> bool {
    let before = text[..at].chars().next_back();
    let after = text[at + len..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// Every form of a target's credentials a receiver might echo: the auth header and the forms of
/// its value ([`header_value_forms`]); the signing secret as configured, its key part (the base64
/// after `whsec_`, or that base64 for a plain secret) and the key as text; custom header values
/// and their forms; the address as configured and as parsed, and of it the user info (as written
/// and percent-decoded, user, password and `user:password`), the query and each query value (as
/// written and decoded), and for Slack the path and its segments (a Slack webhook's path *is* its
/// secret). Each also JSON-escaped, when that differs (a receiver echoing into JSON).
fn credentials_of(target: &Target) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    if let Some(auth) = target.auth_header.as_deref() {
        values.extend(header_value_forms(auth));
    }
    if let Some(secret) = target.secret.as_deref() {
        values.push(secret.to_owned());
        match secret.strip_prefix(crate::signing::SECRET_PREFIX) {
            Some(encoded) => {
                values.push(encoded.to_owned());
                if let Ok(key) = STANDARD.decode(encoded) {
                    values.extend(String::from_utf8(key).ok());
                }
            }
            None => values.push(STANDARD.encode(secret)),
        }
    }
    for value in target.headers.values() {
        values.extend(header_value_forms(value));
    }
    if let Some(token) = target.options.bot_token.as_deref() {
        values.push(token.to_owned());
        // The secret half alone, as Telegram may quote it.
        values.extend(token.split_once(':').map(|(_, secret)| secret.to_owned()));
    }
    values.push(target.address.clone());
    if let Ok(url) = reqwest::Url::parse(&target.address) {
        values.push(url.as_str().to_owned());
        let user = url.username();
        let password = url.password();
        for raw in [Some(user), password].into_iter().flatten() {
            values.push(raw.to_owned());
            values.push(percent_decoded(raw));
        }
        if let Some(password) = password {
            values.push(format!("{user}:{password}"));
            values.push(format!(
                "{}:{}",
                percent_decoded(user),
                percent_decoded(password)
            ));
        }
        if let Some(query) = url.query() {
            values.push(query.to_owned());
            for pair in query.split('&') {
                let raw = pair.split_once('=').map_or(pair, |(_, value)| value);
                values.push(raw.to_owned());
            }
            values.extend(url.query_pairs().map(|(_, value)| value.into_owned()));
        }
        if let TargetKind::Vendor(_) = target.kind {
            // Chat webhooks keep their secret in the path (Discord's token, Feishu's hook id).
            values.extend(
                url.path_segments()
                    .into_iter()
                    .flatten()
                    .filter(|segment| segment.len() >= 16)
                    .map(str::to_owned),
            );
        }
        if target.kind == TargetKind::Slack {
            values.push(url.path().to_owned());
            values.extend(
                url.path_segments()
                    .into_iter()
                    .flatten()
                    .filter(|segment| *segment != "services")
                    .map(str::to_owned),
            );
        }
    }
    let escaped: Vec<String> = values
        .iter()
        .flat_map(|value| {
            let json = serde_json::to_string(value).unwrap_or_default();
            let json = json
                .strip_prefix('"')
                .and_then(|j| j.strip_suffix('"'))
                .unwrap_or_default()
                .to_owned();
            let slashes = json.replace('/', "\\/");
            [json, slashes]
        })
        .filter(|form| !values.contains(form))
        .collect();
    values.extend(escaped);
    values
}

/// The forms of a secret header value a receiver might echo: the value; the token after its
/// scheme (`abc123` of `Bearer abc123`); for `Basic`, the decoded `user:password`, the user and
/// the password; for a signature (`v1,<base64>`), the base64.
fn header_value_forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    if let Some((scheme, token)) = value.split_once(' ') {
        let token = token.trim();
        forms.push(token.to_owned());
        if scheme.eq_ignore_ascii_case("basic") {
            if let Some(decoded) = STANDARD
                .decode(token)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
            {
                if let Some((user, password)) = decoded.split_once(':') {
                    forms.push(user.to_owned());
                    forms.push(password.to_owned());
                }
                forms.push(decoded);
            }
        }
    }
    if let Some(signature) = value.strip_prefix("v1,") {
        forms.push(signature.to_owned());
    }
    forms
}

/// `%XX` sequences decoded (lossy UTF-8), as reqwest decodes user info before it encodes `Basic`.
fn percent_decoded(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes one step durably; returns once it is (or once it is abandoned, see the module's design
/// constraints). Returns at once when history is disabled.
pub(crate) async fn record(ctx: &DeliveryContext, step: Step<'_>) {
    let Some(recorder) = &ctx.history else {
        return;
    };
    record_with(
        recorder,
        &ctx.metrics,
        step.into_record(),
        ctx.settings.history_outage_hold,
    )
    .await;
}

/// Queues steps for writing without waiting for them. For the Pending records of the matching
/// stage only: they say "matched, not attempted yet", and the delivery stage writes (and waits for)
/// every outcome anyway. Not waiting means the event is acked sooner, and a Pending record still
/// queued when its delivery's outcome arrives is folded into the same row write (the recorder
/// batches by key), which is most of them under load.
///
/// Bounded: a record that finds the recorder's queue full (the database is slow or down) is
/// dropped and counted in `regrelay_history_pending_dropped_total`, so an outage cannot pile up
/// memory here; the execution then appears with its outcome. One that fails to write is not
/// retried, for the same reason.
pub(crate) fn record_in_background(ctx: &DeliveryContext, steps: Vec<Step<'_>>) {
    let Some(recorder) = &ctx.history else {
        return;
    };
    for step in steps {
        if !recorder.offer(step.into_record()) {
            ctx.metrics.history_pending_dropped.inc();
        }
    }
}

async fn record_with(
    recorder: &HistoryRecorder,
    metrics: &ConsumerMetrics,
    record: DeliveryRecord,
    outage_hold: Duration,
) {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let (error, transient) =
            match tokio::time::timeout(RECORD_ATTEMPT_TIMEOUT, recorder.record(record.clone()))
                .await
            {
                Ok(Ok(())) => return,
                Ok(Err(error)) => (error.to_string(), error.is_unavailable()),
                Err(_) => (
                    format!("no answer from the database within {RECORD_ATTEMPT_TIMEOUT:?}"),
                    true,
                ),
            };
        let patience = if transient {
            outage_hold
        } else {
            RECORD_PATIENCE
        };
        if started.elapsed() + delay >= patience {
            metrics.history_records_abandoned.inc();
            tracing::error!(message = "Delivery history cannot be recorded; settling the delivery without it.", history_key = %record.history_key, error = %error, waited = ?started.elapsed());
            return;
        }
        metrics.history_record_retries.inc();
        tracing::warn!(message = "Cannot record delivery history; retrying.", history_key = %record.history_key, error = %error, retry_in = ?delay);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Runs the retention sweep every `settings.interval` until `shutdown`. Several consumers may run
/// it; the store lets one sweep at a time (an advisory lock) and the others find nothing to do.
///
/// Sweeps start an interval apart (not an interval after the last one ended), so a sweep spread
/// over most of its interval (`SweepRules::spread`) is followed by the next at once and the
/// deletions go on at a steady rate; one that overruns its interval is followed by the next
/// without a burst of catch-up sweeps. Shutdown does not wait for a sweep: it is dropped midway
/// (each delete batch is its own transaction, and the store closes the connection holding the
/// sweep lock), and the next process's sweep deletes what it left.
pub(crate) async fn sweep_until(
    db: Database,
    settings: RetentionSettings,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) {
    let interval = settings.interval.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = std::time::Instant::now();
        let swept = tokio::select! {
            () = shutdown.cancelled() => {
                tracing::info!(message = "History sweep stopped for shutdown.", elapsed_ms = started.elapsed().as_millis() as u64);
                return;
            }
            swept = db.sweep_history(&settings.rules) => swept,
        };
        let elapsed = started.elapsed();
        metrics.history_sweep_seconds.observe(elapsed.as_secs_f64());
        match swept {
            Ok(report) => {
                metrics.history_sweeps.with_label_values(&["success"]).inc();
                metrics
                    .history_swept
                    .with_label_values(&["count"])
                    .inc_by(report.deleted_by_count);
                metrics
                    .history_swept
                    .with_label_values(&["age"])
                    .inc_by(report.deleted_by_age);
                tracing::info!(
                    message = "History swept.",
                    deleted_by_count = report.deleted_by_count,
                    deleted_by_age = report.deleted_by_age,
                    vacuumed = report.vacuumed,
                    compacted = report.compacted,
                    elapsed_ms = elapsed.as_millis() as u64
                );
            }
            Err(error) => {
                metrics.history_sweeps.with_label_values(&["failure"]).inc();
                tracing::warn!(message = "History sweep failed; will try again.", error = %error, elapsed_ms = elapsed.as_millis() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use regrelay_history::policy::PayloadFormat;

    use super::*;

    fn target(kind: TargetKind, address: &str, auth: Option<&str>) -> Target {
        Target {
            kind,
            address: address.to_owned(),
            auth_header: auth.map(str::to_owned),
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: Some("whsec_c2VjcmV0LWtleQ==".into()),
            headers: BTreeMap::from([("X-Api-Key".to_owned(), "key-12345".to_owned())]),
            options: Default::default(),
        }
    }

    /// The report of an attempt whose receiver answered `text`.
    fn answered(text: &str, complete: bool, sent_secrets: &[&str]) -> AttemptReport {
        AttemptReport {
            result: AttemptResult::Response {
                status: 400,
                retry_after: None,
            },
            elapsed: Duration::ZERO,
            answer: Some(crate::attempt::Answer {
                headers: Default::default(),
                text: text.to_owned(),
                complete,
                sent_secrets: sent_secrets.iter().map(|s| (*s).to_owned()).collect(),
            }),
        }
    }

    fn redact(text: &str, target: &Target) -> String {
        redact_snippet(&answered(text, true, &[]), target).unwrap()
    }

    #[test]
    fn echoed_credentials_are_blanked_in_any_form() {
        let http = target(
            TargetKind::Http,
            "https://ci:pa55word@hooks.example.com/in?token=qs-token-9",
            Some("Bearer tok-abc-123"),
        );
        let echoed = "bad token tok-abc-123; header Bearer tok-abc-123; key-12345; \
                      whsec_c2VjcmV0LWtleQ==; pa55word; qs-token-9; \
                      https://ci:pa55word@hooks.example.com/in?token=qs-token-9";
        let redacted = redact(echoed, &http);
        for secret in [
            "tok-abc-123",
            "key-12345",
            "whsec_",
            "pa55word",
            "qs-token-9",
        ] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(redacted.starts_with("bad token ********"), "{redacted}");

        let slack = target(
            TargetKind::Slack,
            "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
            None,
        );
        let redacted = redact("no_service for /services/T000/B000/XXXXSECRET", &slack);
        assert!(!redacted.contains("XXXXSECRET"), "{redacted}");
        // Only the secret token, JSON-escaped.
        let redacted = redact(
            r#"{"url":"https:\/\/hooks.slack.com\/services\/T000\/B000\/XXXXSECRET"}"#,
            &slack,
        );
        assert!(!redacted.contains("XXXXSECRET"), "{redacted}");
        let no_answer = AttemptReport {
            result: AttemptResult::Timeout,
            elapsed: Duration::ZERO,
            answer: None,
        };
        assert_eq!(redact_snippet(&no_answer, &slack), None);
    }

    #[test]
    fn every_encoding_of_user_info_query_and_secret_is_blanked() {
        let mut http = target(
            TargetKind::Http,
            "https://ci%40corp:p%2Fss%3Aword@hooks.example.com/in?token=a%2Bb%20c&x=1",
            None,
        );
        http.secret = Some("plain-signing-secret".into());
        let basic = format!("Basic {}", STANDARD.encode("ci@corp:p/ss:word"));
        let echoed = format!(
            "{basic} | ci%40corp:p%2Fss%3Aword | ci@corp:p/ss:word | p/ss:word | a+b c | a%2Bb%20c | \
             {} | c2VjcmV0LWtleQ",
            STANDARD.encode("plain-signing-secret")
        );
        let redacted = redact_snippet(&answered(&echoed, true, &[&basic]), &http).unwrap();
        for secret in [
            "Basic ",
            "p%2Fss",
            "p/ss",
            "word",
            "a+b c",
            "a%2Bb",
            &STANDARD.encode("plain-signing-secret"),
        ] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
    }

    #[test]
    fn a_secret_straddling_the_cut_is_blanked_whole() {
        let http = target(
            TargetKind::Http,
            "https://hooks.example.com/in",
            Some("Bearer 0123456789abcdef0123456789abcdef"),
        );
        // The 32-character token starts 15 bytes before the 512-byte cut.
        let text = format!(
            "{}Bearer 0123456789abcdef0123456789abcdef tail",
            "x".repeat(MAX_SNIPPET - 15 - "Bearer ".len())
        );
        let redacted = redact(&text, &http);
        assert!(redacted.len() <= MAX_SNIPPET);
        assert!(!redacted.contains("0123456789abcde"), "{redacted}");
        assert!(redacted.contains("x******** tail"), "{redacted}");
        // Multi-byte characters at the cut: the snippet stays valid UTF-8, at most 512 bytes.
        let wide = "\u{1F433}".repeat(200);
        let redacted = redact(&wide, &http);
        assert!(redacted.len() <= MAX_SNIPPET && redacted.len() > MAX_SNIPPET - 4);
    }

    #[test]
    fn the_tail_of_an_unfinished_answer_is_dropped() {
        let http = target(
            TargetKind::Http,
            "https://hooks.example.com/in",
            Some("Bearer tok-abc-123"),
        );
        // The read stopped inside the token; the redaction cannot know "tok-a" is one.
        let text = format!("{} Bearer tok-a", "answer ".repeat(20));
        let redacted = redact_snippet(&answered(&text, false, &[]), &http).unwrap();
        assert!(!redacted.contains("tok-a"), "{redacted}");
        assert!(redacted.starts_with("answer answer"), "{redacted}");
        // The same text, known to be whole, is kept up to its end.
        let redacted = redact_snippet(&answered(&text, true, &[]), &http).unwrap();
        assert!(redacted.ends_with("Bearer tok-a"), "{redacted}");
    }

    #[test]
    fn short_credentials_are_blanked_as_whole_words_only() {
        let http = target(
            TargetKind::Http,
            "https://u:abc@hooks.example.com/in?k=7",
            None,
        );
        let redacted = redact(
            r#"{"password":"abc","user":"u","k":7,"note":"abcdef cab u-turn 77"}"#,
            &http,
        );
        assert!(!redacted.contains("\"abc\""), "{redacted}");
        assert!(redacted.contains("abcdef cab"), "{redacted}");
        assert!(redacted.contains(r#""k":********"#), "{redacted}");
        assert!(redacted.contains(" 77"), "{redacted}");
    }

    #[test]
    fn signature_and_sent_headers_are_blanked() {
        let http = target(TargetKind::Http, "https://hooks.example.com/in", None);
        let signature = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=";
        let text = format!("got {signature} and K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=");
        let redacted = redact_snippet(&answered(&text, true, &[signature]), &http).unwrap();
        assert_eq!(redacted, "got ******** and ********");
    }
}
