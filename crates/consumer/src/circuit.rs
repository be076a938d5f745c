//! The circuit breaker: a target that keeps failing stops getting attempts; its tasks wait in the
//! broker while one probe at a time finds out whether it is back.
//!
//! Design constraints:
//! - The state is shared (`regrelay_history::target_health`): a circuit opened because of one
//!   consumer's attempts holds for all of them. Each consumer keeps the open circuits in memory
//!   ([`Circuits`]), refreshed every [`WATCH_INTERVAL`] by [`watch_until`], so a delivery to a
//!   healthy target costs no database call here.
//! - Transitions (open after `breaker_failures` consecutive failed attempts, closed after a
//!   success) are single statements in the store, so each is logged once, by the consumer that
//!   made it.
//! - A task of an open circuit is not attempted and not held: it waits in the retry buckets until
//!   the next probe is due (not an attempt, not a failure). The one consumer that claims the probe
//!   ([`Database::claim_probe`]) attempts; the probe interval doubles with every probe, from
//!   `breaker_probe_interval` up to `retry_max_delay`.
//! - Other targets are never slowed: the check is a map lookup.
//! - Opt-in auto-disable (`auto_disable_after`): a circuit open that long is claimed by one
//!   consumer (its health row reset in the claiming statement), which marks the target disabled
//!   in its policy, publishes `REGRELAY_TARGET_DISABLED` on the events exchange and warns.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use regrelay_events::operational;
use regrelay_history::target_health::DisableDue;
use regrelay_history::StoreError;
use regrelay_producer::task::target_fingerprint;
use regrelay_producer::DeliveryTask;
use regrelay_producer::{EventMessage, EventPublisher, EventSource};
use tokio_util::sync::CancellationToken;

use crate::context::DeliveryContext;

/// How often each consumer moves circuits and re-reads the open ones.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest wait of a task whose circuit is open (the probe may just have been claimed).
const MIN_WAIT: Duration = Duration::from_secs(1);

/// What to do with a task before its attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// The circuit is closed (or the breaker is off).
    Pass,
    /// The circuit is open and this task is its probe.
    Probe,
    /// The circuit is open: wait this long in the broker.
    Wait(Duration),
}

/// Whether `task` may be attempted now.
pub(crate) async fn gate(ctx: &DeliveryContext, task: &DeliveryTask) -> Result<Gate, StoreError> {
    if ctx.settings.breaker_failures == 0 {
        return Ok(Gate::Pass);
    }
    let Some(open) = ctx.circuits.get(task.policy_id, &task.target_fingerprint) else {
        return Ok(Gate::Pass);
    };
    let until_probe = (open.next_probe_at - Utc::now()).to_std().ok();
    if let Some(wait) = until_probe.filter(|w| !w.is_zero()) {
        return Ok(Gate::Wait(wait.max(MIN_WAIT)));
    }
    let claimed = ctx
        .db
        .claim_probe(
            task.policy_id,
            &task.target_fingerprint,
            ctx.settings.breaker_probe_interval,
            ctx.schedule.max_delay(),
        )
        .await?;
    Ok(match claimed {
        Some(_) => Gate::Probe,
        // Another consumer took this probe (or the circuit just closed: the next refresh says).
        None => Gate::Wait(MIN_WAIT.max(ctx.settings.breaker_probe_interval / 4)),
    })
}

/// Disables the target of a circuit open for `after` (this consumer claimed it): marks it in its
/// policy, publishes `REGRELAY_TARGET_DISABLED` and warns. Its waiting deliveries are
/// dead-lettered as `target_disabled` when they come back (`delivery`). Failures are logged: the
/// claim reset the circuit, so a target still failing opens it again and is disabled again later.
async fn disable(ctx: &DeliveryContext, due: &DisableDue, after: Duration) {
    let change = &due.change;
    let Some(cached) = ctx.cache.snapshot().policy(change.policy_id) else {
        return;
    };
    let Some(index) = cached
        .policy
        .targets
        .iter()
        .position(|t| target_fingerprint(&t.address) == change.target_fingerprint)
    else {
        return;
    };
    match ctx.db.disable_target(change.policy_id, index).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::error!(message = "Cannot disable a target whose circuit stayed open.", policy_id = change.policy_id, error = %error);
            return;
        }
    }
    let after_text = humantime::format_duration(after).to_string();
    tracing::warn!(
        message = "Target disabled: its circuit stayed open too long. Its waiting deliveries are dead-lettered (target_disabled); a PUT of the policy enables it again.",
        policy_id = change.policy_id,
        target_type = %change.target_type,
        target = %change.target_address,
        open_since = %due.circuit_opened_at,
        auto_disable_after = %after_text,
    );
    let project = cached
        .policy
        .project
        .as_ref()
        .map_or("system", |p| p.name.as_str());
    let event = operational::target_disabled(&operational::TargetDisabled {
        project,
        policy_id: change.policy_id,
        policy_name: &cached.policy.name,
        target_type: &change.target_type,
        target_address: &change.target_address,
        circuit_opened_at: due.circuit_opened_at.timestamp(),
        consecutive_failures: change.consecutive_failures,
        last_failure: change.last_failure.as_deref(),
        disabled_after: &after_text,
        occur_at: Utc::now().timestamp(),
    });
    let published = match event {
        Ok(event) => {
            let message = EventMessage::new(event, EventSource::Harbor, "regrelay-auto-disable");
            EventPublisher::over(ctx.queue.publisher().clone())
                .publish(std::slice::from_ref(&message))
                .await
                .map_err(|e| e.to_string())
        }
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = published {
        tracing::error!(message = "Cannot publish the REGRELAY_TARGET_DISABLED event.", policy_id = change.policy_id, error = %error);
    }
}

/// Moves circuits (open the failing, close the recovered), logs each transition this consumer
/// made, and refreshes the open set and `regrelay_targets_open`, every [`WATCH_INTERVAL`].
pub(crate) async fn watch_until(ctx: Arc<DeliveryContext>, shutdown: CancellationToken) {
    if ctx.settings.breaker_failures == 0 {
        return;
    }
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = watch_once(&ctx).await {
            ctx.metrics
                .breaker_checks
                .with_label_values(&["failure"])
                .inc();
            tracing::warn!(message = "Cannot check the circuit breakers.", error = %error);
        } else {
            ctx.metrics
                .breaker_checks
                .with_label_values(&["success"])
                .inc();
        }
    }
}

async fn watch_once(ctx: &DeliveryContext) -> Result<(), StoreError> {
    let db = &ctx.db;
    for opened in db
        .open_circuits_due(
            ctx.settings.breaker_failures,
            ctx.settings.breaker_probe_interval,
        )
        .await?
    {
        tracing::warn!(
            message = "Circuit opened: the target's deliveries wait for probes.",
            policy_id = opened.policy_id,
            target_type = %opened.target_type,
            target = %opened.target_address,
            consecutive_failures = opened.consecutive_failures,
            last_failure = opened.last_failure.as_deref(),
            probe_in = ?ctx.settings.breaker_probe_interval,
        );
    }
    for closed in db.close_recovered_circuits().await? {
        tracing::info!(
            message = "Circuit closed: the target answered a probe; its deliveries flow again.",
            policy_id = closed.policy_id,
            target_type = %closed.target_type,
            target = %closed.target_address,
        );
    }
    if let Some(after) = ctx.settings.auto_disable_after {
        for due in db.claim_disable_due(after).await? {
            disable(ctx, &due, after).await;
        }
    }
    let open = db.open_circuits().await?;
    let n = ctx.circuits.replace(open);
    ctx.metrics
        .targets_open
        .set(i64::try_from(n).unwrap_or(i64::MAX));
    Ok(())
}
