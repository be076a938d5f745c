//! `regrelay serve`: builds the shared pieces (metrics registry, broker, publisher) and runs the roles
//! until a shutdown signal, then drains them within `shutdown_timeout`.

use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use regrelay_api::{AppState, IngestSettings};
use regrelay_producer::{Broker, BrokerSettings, EventPublisher, ProducerMetrics, Topology};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::shutdown::Shutdown;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::default();
    shutdown.listen_for_signals();

    let registry = Registry::new();
    let producer_metrics =
        ProducerMetrics::register(&registry).context("cannot register producer metrics")?;
    let topology = Topology::new(config.queue_prefix.clone())?;
    let broker = Arc::new(Broker::new(
        BrokerSettings {
            url: config.amqp_url.expose_secret().to_owned(),
            connection_name: connection_name("publish"),
            role: "publish",
            publish_channels: config.publish_channels,
            connect_timeout: config.broker_connect_timeout,
            reconnect_min_delay: config.broker_reconnect_min_delay,
            reconnect_max_delay: config.broker_reconnect_max_delay,
        },
        topology,
        producer_metrics,
    ));
    // Connect and declare the topology now, so a misconfigured broker shows in the first log lines;
    // a broker that is down is not fatal: the API starts, answers /readyz 503 and reconnects.
    if let Err(error) = broker.check().await {
        tracing::warn!(message = "Broker not reachable at start-up; will keep trying.", error = %error);
    }
    let publisher = EventPublisher::new(broker.clone(), config.publish_confirm_timeout);

    let ingest = IngestSettings {
        token: config.require_ingest_token()?,
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
    };
    let state =
        AppState::new(publisher, ingest, registry).context("cannot register API metrics")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(message = "regrelay is serving.", listen = %config.listen, version = env!("CARGO_PKG_VERSION"));

    let token = shutdown.token.clone();
    let api = shutdown.tracker.spawn(regrelay_api::serve(
        listener,
        state,
        async move { token.cancelled_owned().await },
        config.shutdown_timeout,
    ));
    shutdown.tracker.close();
    let result = api.await.context("API task panicked")?;
    // Whatever ends the API (a signal or an error) ends the process: cancel the other roles too.
    shutdown.token.cancel();
    shutdown.tracker.wait().await;
    broker.close().await;
    tracing::info!(message = "regrelay stopped.");
    result.context("HTTP server failed")
}

/// `regrelay-<role>@<host>/<pid>`: what the management UI shows for this process's connections.
fn connection_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("regrelay-{role}@{host}/{}", std::process::id())
}
