//! The API's metrics: ingest counters, per-route HTTP metrics, and the `/metrics` endpoint.
//!
//! Label values come from fixed sets: event types, [`RejectReason`], ignore reasons, the route
//! *pattern* (`MatchedPath`), never the raw path, and the method among the standard ones or
//! `other` ([`method_label`]), so a scan of random URLs or invented methods cannot explode the
//! series.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use regrelay_events::distribution::IgnoreReason;
use regrelay_events::EventType;

/// Why an ingest request was refused: the `reason` label of `regrelay_ingest_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Unauthorized,
    MediaType,
    TooLarge,
    Malformed,
    Invalid,
    BrokerUnavailable,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Unauthorized,
        RejectReason::MediaType,
        RejectReason::TooLarge,
        RejectReason::Malformed,
        RejectReason::Invalid,
        RejectReason::BrokerUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::MediaType => "unsupported_media_type",
            RejectReason::TooLarge => "body_too_large",
            RejectReason::Malformed => "malformed",
            RejectReason::Invalid => "invalid_event",
            RejectReason::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// Handles on the API's metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    /// `regrelay_events_received_total{event_type}`: valid events in accepted-or-attempted requests.
    events_received: IntCounterVec,
    /// `regrelay_ingest_rejected_total{reason}`: ingest requests refused.
    rejected: IntCounterVec,
    /// `regrelay_events_ignored_total{reason}`: Distribution notifications that are not artifact events.
    ignored: IntCounterVec,
    /// `regrelay_http_requests_total{method,route,status}`.
    http_requests: IntCounterVec,
    /// `regrelay_http_request_duration_seconds{method,route}`.
    http_duration: HistogramVec,
}

impl ApiMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events_received = IntCounterVec::new(
            Opts::new(
                "regrelay_events_received_total",
                "Valid events received on the ingest endpoint, by event type.",
            ),
            &["event_type"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "regrelay_ingest_rejected_total",
                "Ingest requests refused, by reason.",
            ),
            &["reason"],
        )?;
        let ignored = IntCounterVec::new(
            Opts::new(
                "regrelay_events_ignored_total",
                "Distribution notifications that are not artifact events, by reason.",
            ),
            &["reason"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new("regrelay_http_requests_total", "HTTP requests served."),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "regrelay_http_request_duration_seconds",
                "Time to answer an HTTP request.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route"],
        )?;
        registry.register(Box::new(events_received.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(ignored.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        for reason in RejectReason::ALL {
            rejected.with_label_values(&[reason.as_str()]);
        }
        for event_type in EventType::ALL {
            events_received.with_label_values(&[event_type.as_str()]);
        }
        Ok(Self {
            events_received,
            rejected,
            ignored,
            http_requests,
            http_duration,
        })
    }

    pub fn received(&self, event_type: EventType) {
        self.events_received
            .with_label_values(&[event_type.as_str()])
            .inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn ignored(&self, reason: IgnoreReason) {
        self.ignored.with_label_values(&[reason.as_str()]).inc();
    }
}

/// Counts and times every request by method, route pattern and status. Takes the metrics from
/// the application's state (`FromRef`), so this module needs nothing of the state's.
pub async fn track_http(
    State(metrics): State<ApiMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .http_duration
        .with_label_values(&[method, &route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[method, &route, response.status().as_str()])
        .inc();
    response
}

/// The `method` label: a standard method's name, `other` for any other (HTTP lets a client invent
/// methods, and each would be a new series).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics` in Prometheus text format: the process's registry, from the application's state.
pub async fn metrics(State(registry): State<Registry>) -> Response {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&registry.gather(), &mut buffer) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            buffer,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(message = "Cannot encode metrics.", error = %error);
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
