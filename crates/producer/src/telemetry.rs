//! Metrics fed by the producer, registered once per process on the caller's registry.
//!
//! Label values come from fixed sets (event types, [`PublishFailure`] reasons, connect outcomes), never
//! from URLs or error texts, so the series count stays bounded.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Handles on the producer's metrics. Cloning shares the series.
#[derive(Clone)]
pub struct ProducerMetrics {
    /// `regrelay_events_published_total{event_type}`: events the broker confirmed.
    pub events_published: IntCounterVec,
    /// `regrelay_publish_failures_total{reason}`: publish calls that did not get every confirm.
    pub publish_failures: IntCounterVec,
    /// `regrelay_publish_channels_replaced_total`: publishing channels replaced after a nack or
    /// a confirm timeout.
    pub publish_channels_replaced: prometheus::IntCounter,
    /// `regrelay_publish_confirms_late_total`: publish calls still waiting for their confirms
    /// when `publish_confirm_timeout` passed, and waiting on (a patient publisher) instead of
    /// failing, so nothing is published twice.
    pub publish_confirms_late: prometheus::IntCounter,
    /// `regrelay_publish_confirm_duration_seconds`: from the first publish of a batch to its last confirm.
    pub publish_confirm_seconds: Histogram,
    /// `regrelay_broker_connects_total{role,outcome}`: connect attempts.
    pub broker_connects: IntCounterVec,
    /// `regrelay_broker_connected{role}`: 1 while the connection is up.
    pub broker_connected: IntGaugeVec,
    /// `regrelay_broker_address{role,address}`: 1 for the address (of the configured list,
    /// password redacted) the connection uses, 0 for the others.
    pub broker_address: IntGaugeVec,
    /// `regrelay_topology_outdated_queues`: work queues found with an older regrelay's arguments
    /// (no delivery limit or dead-letter target) at the last connect; the log says what to do.
    pub topology_outdated_queues: IntGauge,
}

/// Why a publish failed; the `reason` label of `regrelay_publish_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFailure {
    Unavailable,
    Nack,
    Returned,
    ConfirmTimeout,
    Amqp,
}

impl PublishFailure {
    pub const ALL: [PublishFailure; 5] = [
        PublishFailure::Unavailable,
        PublishFailure::Nack,
        PublishFailure::Returned,
        PublishFailure::ConfirmTimeout,
        PublishFailure::Amqp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PublishFailure::Unavailable => "unavailable",
            PublishFailure::Nack => "nack",
            PublishFailure::Returned => "returned",
            PublishFailure::ConfirmTimeout => "confirm_timeout",
            PublishFailure::Amqp => "amqp",
        }
    }
}

impl ProducerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events_published = IntCounterVec::new(
            Opts::new(
                "regrelay_events_published_total",
                "Events published to the events exchange and confirmed by the broker.",
            ),
            &["event_type"],
        )?;
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "regrelay_publish_failures_total",
                "Publish calls that failed before every message was confirmed, by reason.",
            ),
            &["reason"],
        )?;
        let publish_confirm_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "regrelay_publish_confirm_duration_seconds",
                "Time from publishing a batch of messages to the broker's last confirm.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let broker_connects = IntCounterVec::new(
            Opts::new(
                "regrelay_broker_connects_total",
                "Attempts to connect to RabbitMQ, by connection role and outcome.",
            ),
            &["role", "outcome"],
        )?;
        let broker_connected = IntGaugeVec::new(
            Opts::new(
                "regrelay_broker_connected",
                "1 while the connection to RabbitMQ is up, by connection role.",
            ),
            &["role"],
        )?;
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(publish_failures.clone()))?;
        let publish_channels_replaced = prometheus::IntCounter::new(
            "regrelay_publish_channels_replaced_total",
            "Publishing channels replaced by a fresh one after a nack or a confirm timeout.",
        )?;
        registry.register(Box::new(publish_channels_replaced.clone()))?;
        let publish_confirms_late = prometheus::IntCounter::new(
            "regrelay_publish_confirms_late_total",
            "Publish calls whose confirms were later than publish_confirm_timeout and that waited on for them instead of publishing again.",
        )?;
        registry.register(Box::new(publish_confirms_late.clone()))?;
        registry.register(Box::new(publish_confirm_seconds.clone()))?;
        registry.register(Box::new(broker_connects.clone()))?;
        let broker_address = IntGaugeVec::new(
            Opts::new(
                "regrelay_broker_address",
                "1 for the RabbitMQ address (password redacted) a connection role uses, 0 for the other configured ones.",
            ),
            &["role", "address"],
        )?;
        let topology_outdated_queues = IntGauge::new(
            "regrelay_topology_outdated_queues",
            "Work queues declared by an older regrelay (no delivery limit or dead-letter target), as found at the last connect.",
        )?;
        registry.register(Box::new(broker_connected.clone()))?;
        registry.register(Box::new(topology_outdated_queues.clone()))?;
        registry.register(Box::new(broker_address.clone()))?;
        // Touch every known series so dashboards show zeros instead of gaps.
        for failure in PublishFailure::ALL {
            publish_failures.with_label_values(&[failure.as_str()]);
        }
        for event_type in regrelay_events::EventType::ALL {
            events_published.with_label_values(&[event_type.as_str()]);
        }
        Ok(Self {
            events_published,
            publish_failures,
            publish_channels_replaced,
            publish_confirms_late,
            publish_confirm_seconds,
            broker_connects,
            broker_connected,
            topology_outdated_queues,
            broker_address,
        })
    }
}
