//! Per-target rate limits, shared by every consumer process through PostgreSQL
//! (`regrelay_history::target_rates`).
//!
//! Design constraints:
//! - What a target is limited by is decided here, once ([`scope_of`]): a chat or template type's
//!   limits come from `regrelay_targets` (the built-in defaults, or the target's `rate_limit`);
//!   Slack is held to 1/s (Slack's documented limit for incoming webhooks) unless the target says
//!   otherwise; an `http` target is limited only when it sets `rate_limit`.
//! - A task over the limit waits in the broker, not in memory: it reserves its slot and is put
//!   back through the retry buckets until the slot comes ([`admit`]); the wait is not an
//!   attempt. The buckets are taken *at most* the remaining wait (so the slot is reached within a
//!   bucket hop of its time, not rounded up to the next bucket, which would bunch tasks); the
//!   last part, shorter than the shortest bucket (100 ms), is slept where the task is (bounded,
//!   and it keeps slots precise to a few milliseconds).
//! - The shared state is the database the history is written to: when it is unreachable the
//!   delivery waits it out like a history write (`outage_hold`, then the message is parked),
//!   because sending without the limit could get a chat's bot banned, and the attempt's history
//!   could not be recorded anyway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regrelay_history::policy::{Target, TargetKind};
use regrelay_history::target_rates::LATENESS;
use regrelay_history::StoreError;
use regrelay_producer::task::target_fingerprint;
use regrelay_producer::topology::RETRY_BUCKETS;
use regrelay_producer::DeliveryTask;
use regrelay_targets::RateLimit;

use crate::context::DeliveryContext;
use crate::outage::GaveUp;
use crate::request::VendorTarget;

/// Slack's limit for incoming webhooks ("1 per second", with short bursts allowed).
const SLACK_DEFAULT: RateLimit = RateLimit::per_second(1);

/// What a target's requests are counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateScope {
    /// `<type>:<hash>`: the chat or webhook, never a credential.
    pub key: String,
    /// All of these apply; may be empty (Discord: only the vendor's own pauses).
    pub limits: Vec<RateLimit>,
}

/// The scope of `target`, or `None` when it is not limited.
pub(crate) fn scope_of(target: &Target, vendor: Option<&VendorTarget>) -> Option<RateScope> {
    if let Some(vendor) = vendor {
        return Some(RateScope {
            key: vendor.rate_key(),
            limits: vendor.rate_limits().to_vec(),
        });
    }
    let configured = target
        .options
        .rate_limit
        .as_deref()
        .filter(|l| !l.is_empty())
        .and_then(|l| l.parse::<RateLimit>().ok());
    let limits = match (target.kind, configured) {
        (_, Some(limit)) => vec![limit],
        (TargetKind::Slack, None) => vec![SLACK_DEFAULT],
        _ => return None,
    };
    Some(RateScope {
        key: format!(
            "{}:{}",
            target.kind.as_str(),
            target_fingerprint(&target.address)
        ),
        limits,
    })
}

/// Whether a task may be sent now.
#[derive(Debug)]
pub(crate) enum Admission {
    Go,
    /// Put it back for this long (its slot is reserved in the task).
    Later(Duration),
    /// The shared state could not be read for `outage_hold`.
    Unavailable(StoreError),
}

/// Waits shorter than this (the shortest retry bucket) are slept, not put back.
const SLEEP_UNDER: Duration = Duration::from_millis(100);

/// Decides whether `task` may be sent now under `scope`, reserving its slot when it may not.
pub(crate) async fn admit(
    ctx: &DeliveryContext,
    task: &mut DeliveryTask,
    scope: &RateScope,
) -> Admission {
    if let Some(slot) = task.rate_slot_ms.take() {
        match until(slot) {
            Ok(wait) if wait >= SLEEP_UNDER => {
                task.rate_slot_ms = Some(slot);
                return Admission::Later(wait);
            }
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                return Admission::Go;
            }
            Err(late) if late <= LATENESS => return Admission::Go,
            // Reached too late to be sent in its slot: sent now, it could crowd the requests of
            // the slots after it into one window. A new slot.
            Err(_) => {}
        }
    }
    let reserved = ctx
        .patiently("rate_limit", ctx.settings.outage_hold, || {
            ctx.db.reserve_rate_slot(&scope.key, &scope.limits)
        })
        .await;
    match reserved {
        Ok(slot) if slot.wait < SLEEP_UNDER => {
            tokio::time::sleep(slot.wait).await;
            Admission::Go
        }
        Ok(slot) => {
            // Kept on this host's clock (now + the wait the database's clock gave), so a skew
            // between this host and PostgreSQL does not move the slot.
            let wait_ms = i64::try_from(slot.wait.as_millis()).unwrap_or(i64::MAX);
            task.rate_slot_ms = Some(now_ms().saturating_add(wait_ms));
            Admission::Later(slot.wait)
        }
        Err(GaveUp::Refused(error) | GaveUp::Outlasted(error)) => Admission::Unavailable(error),
    }
}

/// This host's clock, ms since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long until `slot_ms` (ms since the Unix epoch), or how long ago it was.
fn until(slot_ms: i64) -> Result<Duration, Duration> {
    let ahead = slot_ms.saturating_sub(now_ms());
    let ms = Duration::from_millis(ahead.unsigned_abs());
    if ahead >= 0 {
        Ok(ms)
    } else {
        Err(ms)
    }
}

/// The retry bucket to wait in for `wait`: the longest one not longer than it (the shortest one
/// for a very short wait), so a slot is not overshot by more than a bucket hop.
pub(crate) fn bucket_within(wait: Duration) -> Duration {
    RETRY_BUCKETS
        .iter()
        .copied()
        .rev()
        .find(|bucket| *bucket <= wait)
        .unwrap_or(RETRY_BUCKETS[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use regrelay_history::policy::PayloadFormat;

    fn target(kind: TargetKind, rate_limit: Option<&str>) -> Target {
        Target {
            kind,
            address: "https://hooks.example.com/x".into(),
            auth_header: None,
            skip_cert_verify: false,
            payload_format: PayloadFormat::Default,
            secret: None,
            headers: Default::default(),
            options: regrelay_history::policy::TargetOptions {
                rate_limit: rate_limit.map(str::to_owned),
                ..Default::default()
            },
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(scope_of(&target(TargetKind::Http, None), None), None);
        let http = scope_of(&target(TargetKind::Http, Some("5/s")), None).unwrap();
        assert_eq!(http.limits, [RateLimit::per_second(5)]);
        assert!(http.key.starts_with("http:"), "{}", http.key);
        let slack = scope_of(&target(TargetKind::Slack, None), None).unwrap();
        assert_eq!(slack.limits, [RateLimit::per_second(1)]);
        let slack = scope_of(&target(TargetKind::Slack, Some("20/min")), None).unwrap();
        assert_eq!(slack.limits, [RateLimit::per_minute(20)]);
        // The key names the address by its fingerprint, never the address (Slack's is a secret).
        assert!(!slack.key.contains("hooks.example.com"));

        let mut telegram = target(
            TargetKind::Vendor(regrelay_targets::TargetKind::Telegram),
            None,
        );
        telegram.address = "https://api.telegram.org".into();
        telegram.options.bot_token = Some("123:abc".into());
        telegram.options.chat_id = Some("-100".into());
        let vendor = crate::request::vendor_target(&telegram).unwrap().unwrap();
        let scope = scope_of(&telegram, Some(&vendor)).unwrap();
        assert_eq!(
            scope.limits,
            [RateLimit::per_second(1), RateLimit::per_minute(20)]
        );
        assert_eq!(scope.key, vendor.rate_key());
    }

    #[test]
    fn waits_never_overshoot_by_a_bucket() {
        for (wait_ms, bucket_ms) in [
            (0, 100),
            (50, 100),
            (100, 100),
            (3_825, 2_000),
            (1_020, 1_000),
            (59_000, 30_000),
            (200_000_000, 86_400_000),
        ] {
            assert_eq!(
                bucket_within(Duration::from_millis(wait_ms)),
                Duration::from_millis(bucket_ms),
                "{wait_ms}"
            );
        }
        assert!(until(0).is_err());
        assert!(until(i64::MAX).is_ok());
    }
}
