//! The consumer role: matches events against webhook policies and delivers them, durably.
//!
//! Module map:
//! - `policy_cache`: every consumer's in-memory copy of the policies and the global switch.
//! - `matching`: stage 1, `<prefix>.events` → one task per (policy, target) → a direct first
//!   attempt (fast targets) or `<prefix>.deliveries`.
//! - `delivery`: stage 2, one HTTP attempt per task, then ack, retry (broker-held) or dead-letter.
//! - `classify`: the pure "retry?" decision (SPEC §3's status table).
//! - `retry`: the pure "when?" decision ([`RetrySchedule`]).
//! - `render`: the payload for a target (Default, CloudEvents, Slack).
//! - [`signing`]: Standard Webhooks signatures.
//! - `ssrf`: refuses private, loopback, link-local and multicast addresses, on the resolved address.
//! - `http_client`, `attempt`: the shared HTTP clients and one attempt.
//! - `request`: the request for one target (payload, signing, attempt), shared by deliveries
//!   and test deliveries.
//! - `limiter`: per-target concurrency, so one slow receiver starves no one.
//! - `dead_letter`: publishing a dead letter (the body and the operator tooling are in
//!   `regrelay-dead-letters`).
//! - `history`: records each delivery's progress (durably, before the message is settled) and
//!   runs the history retention sweep.
//! - `byte_budget`: bounds the bytes of message bodies a stage holds; adapts the prefetch.
//! - `stage`: the consume loop both stages share (prefetch, pause, clean stop) and `settle`, the
//!   one place a message is acked, parked or put back.
//! - `settlement`: `Settlement`, `StageError` and `Stage`, the typed outcome a handler returns.
//! - `outage`: waiting out a database or broker outage for a bounded time (`outage_hold`).
//! - `context`: the handles the stages share, and [`ConsumerSettings`].
//! - `queue_depth`: the queue depth gauges (`regrelay_queue_messages`), from passive declares.
//! - `telemetry`: the consumer's metrics.
//!
//! [`Consumer::run`] runs both stages and the policy refresher until shutdown.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![warn(unreachable_pub)]

mod ack_window;
mod attempt;
mod byte_budget;
mod circuit;
mod classify;
mod context;
mod dead_letter;
mod delivery;
mod history;
mod http_client;
mod limiter;
mod matching;
mod open_circuits;
mod outage;
mod policy_cache;
mod queue_depth;
mod rate_limit;
mod render;
mod request;
mod retry;
mod settlement;
pub mod signing;
mod ssrf;
mod stage;
mod telemetry;
pub mod test_delivery;

use std::sync::Arc;
use std::time::Duration;

use regrelay_history::Database;
use regrelay_producer::{Broker, ConfirmedPublisher};
use tokio_util::sync::CancellationToken;

pub use context::{ConsumerSettings, DeliveryContext};
pub use history::RetentionSettings;
pub use http_client::{HttpClients, HttpSettings};
pub use policy_cache::PolicyCache;
pub use retry::RetrySchedule;
pub use telemetry::ConsumerMetrics;

/// Everything the consumer role needs, before it runs.
pub struct Consumer {
    pub consume_broker: Arc<Broker>,
    pub publisher: ConfirmedPublisher,
    pub db: Database,
    pub clients: HttpClients,
    pub schedule: RetrySchedule,
    pub settings: ConsumerSettings,
    pub metrics: ConsumerMetrics,
    /// Writes delivery history; `None` turns history off.
    pub history: Option<regrelay_history::HistoryRecorder>,
    /// Runs the history retention sweep in this process; `None` leaves it to others.
    pub retention: Option<RetentionSettings>,
}

impl Consumer {
    /// Runs until `shutdown`: loads the policies (waiting for the database if it is down), then runs
    /// the matching stage, the delivery stage and the policy refresher. Returns once in-flight work
    /// has settled.
    pub async fn run(self, shutdown: CancellationToken) {
        let cache = match load_cache(&self.db, &self.metrics, &shutdown).await {
            Some(cache) => Arc::new(cache),
            None => return,
        };
        let topology = self.publisher.broker().topology().clone();
        let ctx = Arc::new(DeliveryContext::new(
            topology.clone(),
            self.consume_broker,
            self.publisher,
            cache.clone(),
            self.db,
            self.clients,
            self.schedule,
            self.settings.clone(),
            self.metrics.clone(),
            self.history,
            shutdown.clone(),
        ));
        let sweeper = self.retention.map(|retention| {
            tokio::spawn(history::sweep_until(
                ctx.db.clone(),
                retention,
                self.metrics.clone(),
                shutdown.clone(),
            ))
        });
        let refresher = tokio::spawn(
            cache
                .clone()
                .refresh_until(self.settings.policy_refresh_interval, shutdown.clone()),
        );
        let depth = tokio::spawn(queue_depth::monitor_until(
            ctx.clone(),
            self.settings.queue_depth_interval,
            shutdown.clone(),
        ));
        let matching = tokio::spawn(stage::consume_until(
            ctx.clone(),
            "matching",
            topology.events_queue(),
            self.settings.matching_prefetch,
            None,
            shutdown.clone(),
            matching::handle_event,
        ));
        let delivery = tokio::spawn(stage::consume_until(
            ctx.clone(),
            "delivery",
            topology.deliveries_queue(),
            self.settings.delivery_prefetch,
            Some(cache.enabled()),
            shutdown.clone(),
            delivery::handle_task,
        ));
        let breaker = tokio::spawn(circuit::watch_until(ctx.clone(), shutdown.clone()));
        let _ = tokio::join!(refresher, matching, delivery, depth, breaker);
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        tracing::info!(message = "Consumer stopped.");
    }
}

async fn load_cache(
    db: &Database,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> Option<PolicyCache> {
    let mut delay = Duration::from_millis(200);
    loop {
        match PolicyCache::load(db.clone(), metrics.clone()).await {
            Ok(cache) => return Some(cache),
            Err(error) => {
                metrics.policy_reloads.with_label_values(&["failure"]).inc();
                tracing::warn!(message = "Cannot load policies; consumer waits for the database.", error = %error, retry_in = ?delay);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
