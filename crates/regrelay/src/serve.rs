//! `regrelay serve`: builds the shared pieces (metrics registry, broker connections, database pool)
//! and runs the chosen roles until a shutdown signal, then drains them within `shutdown_timeout`.
//!
//! Roles: `api` (ingest, policy and configuration API), `consumer` (matching and delivery), or `all`.
//! Every role serves `/healthz`, `/readyz` and `/metrics` on `listen`.

use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use regrelay_api::{AdminSettings, AppState, IngestSettings, TestDeliverySettings};
use regrelay_consumer::{
    Consumer, ConsumerMetrics, ConsumerSettings, HttpClients, HttpSettings, RetentionSettings,
    RetrySchedule,
};
use regrelay_history::recorder::{RecorderMetrics, RecorderSettings};
use regrelay_history::SweepRules;
use regrelay_history::{Database, HistoryRecorder, SecretsKeyring, StoreError};
use regrelay_producer::{
    Broker, BrokerSettings, ConfirmedPublisher, EventPublisher, ProducerMetrics, Topology,
};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Which parts of regrelay this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything: API and consumer.
    All,
    /// Ingest, the policy and configuration API, health and metrics.
    Api,
    /// Matching and delivery, with health and metrics.
    Consumer,
}

impl Role {
    fn runs_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    fn runs_consumer(self) -> bool {
        matches!(self, Role::All | Role::Consumer)
    }
}

pub async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    // Check every required secret before connecting to anything.
    let api_secrets = if role.runs_api() {
        Some((
            config.require_ingest_token()?,
            config.require_admin_password()?,
        ))
    } else {
        None
    };

    let shutdown = Shutdown::default();
    shutdown.listen_for_signals();
    let registry = Registry::new();
    // CPU, memory, open files and start time of this process (`process_*`).
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("cannot register process metrics")?;
    crate::logging::register_metrics(&registry).context("cannot register logging metrics")?;
    crate::traces::register_metrics(&registry).context("cannot register trace export metrics")?;
    let producer_metrics =
        ProducerMetrics::register(&registry).context("cannot register producer metrics")?;
    let topology = Topology::new(config.queue_prefix.clone())?;
    let publish_broker = Arc::new(broker(
        &config,
        "publish",
        topology.clone(),
        producer_metrics.clone(),
    ));
    // Connect and declare the topology now, so a misconfigured broker shows in the first log lines;
    // a broker that is down is not fatal: the process starts, answers /readyz 503 and reconnects.
    if let Err(error) = publish_broker.check().await {
        tracing::warn!(message = "Broker not reachable at start-up; will keep trying.", error = %error);
    }

    let keyring = config.secrets_keyring()?;
    if let Some(warning) = secrets_at_rest_warning(keyring.as_ref()) {
        tracing::warn!(message = warning);
    }
    let db = database(&config, keyring)?;
    match db.migrate().await {
        Ok(()) => {
            // With sslmode=prefer (libpq's default) only the server knows whether TLS was used.
            let tls = match db.session_encrypted().await {
                Ok(true) => "on",
                Ok(false) => "off",
                Err(_) => "unknown",
            };
            tracing::info!(
                message = "Database schema is up to date.",
                database = %db.target(),
                sslmode = db.ssl_mode().as_str(),
                tls,
            )
        }
        // A refused TLS handshake (certificate, host name) is configuration: waiting will not fix
        // it, so stop now with the reason rather than answer 503 for ever.
        Err(error @ StoreError::Tls(_)) => {
            return Err(error).context(format!("cannot connect to {}", db.target()))
        }
        // Not fatal: the consumer waits for the database, the API answers 503 meanwhile.
        Err(error) => {
            tracing::warn!(message = "Cannot migrate the database at start-up.", error = %error)
        }
    }

    // One set of HTTP clients (connection pools) for deliveries and test deliveries.
    let clients = HttpClients::new(&HttpSettings {
        timeout: config.http_timeout,
        allow_private_targets: config.allow_private_targets,
        user_agent: format!("regrelay/{}", env!("CARGO_PKG_VERSION")),
        // Several targets often share a host (every Slack target is hooks.slack.com), so one
        // host can see all of a consumer's concurrent attempts, not just one target's: keep that
        // many connections open. With only `per_target_concurrency`, fan-out 10 to one host
        // closed and reopened connections on most requests (measured: docs/benchmarks.md).
        pool_idle_per_host: config
            .per_target_concurrency
            .max(usize::from(config.delivery_prefetch)),
    })
    .context("cannot build the HTTP client")?;
    let publisher = EventPublisher::new(publish_broker.clone(), config.publish_confirm_timeout);
    let mut state = AppState::new(publisher, db.clone(), registry.clone())
        .context("cannot register API metrics")?;
    if let Some((token, password)) = api_secrets {
        state = state
            .with_ingest(IngestSettings {
                token,
                max_body_bytes: config.max_body_bytes,
            })
            .with_admin(AdminSettings {
                user: config.admin_user.clone(),
                password,
                token: config.api_token.clone(),
            })
            .with_test_delivery(TestDeliverySettings {
                clients: clients.clone(),
                allow_private_targets: config.allow_private_targets,
            });
    }

    let mut consume_broker = None;
    if role.runs_consumer() {
        let consumer_metrics =
            ConsumerMetrics::register(&registry).context("cannot register consumer metrics")?;
        let recorder_metrics =
            RecorderMetrics::register(&registry).context("cannot register history metrics")?;
        let broker = Arc::new(broker(
            &config,
            "consume",
            topology.clone(),
            producer_metrics.clone(),
        ));
        consume_broker = Some(broker.clone());
        let consumer = Consumer {
            consume_broker: broker,
            publisher: ConfirmedPublisher::new(
                publish_broker.clone(),
                config.publish_confirm_timeout,
            )
            .with_patience(config.publish_confirm_patience),
            db: db.clone(),
            clients: clients.clone(),
            schedule: RetrySchedule::new(
                config.retry_initial_delay,
                config.retry_max_delay,
                config.retry_multiplier,
                config.max_attempts,
            )
            .context("invalid retry schedule")?,
            settings: ConsumerSettings {
                matching_prefetch: config.matching_prefetch,
                delivery_prefetch: config.delivery_prefetch,
                per_target_concurrency: config.per_target_concurrency,
                max_waiting_per_target: config.per_target_max_waiting,
                deferral_delay: config.deferral_delay,
                policy_refresh_interval: config.policy_refresh_interval,
                queue_depth_interval: config.queue_depth_interval,
                breaker_failures: config.breaker_failures,
                breaker_probe_interval: config.breaker_probe_interval,
                auto_disable_after: (!config.auto_disable_after.is_zero())
                    .then_some(config.auto_disable_after),
                allow_private_targets: config.allow_private_targets,
                direct_first_attempt: config.direct_first_attempt,
                outage_hold: config.outage_hold,
                history_outage_hold: config.history_outage_hold,
                max_in_flight_bytes: config.max_in_flight_bytes,
                // A task body is its event plus a few hundred bytes of its own fields.
                largest_message_bytes: config.max_body_bytes.saturating_add(4096),
            },
            metrics: consumer_metrics,
            history: config.history_enabled.then(|| {
                HistoryRecorder::spawn(
                    db.clone(),
                    RecorderSettings {
                        max_batch: config.history_batch_size.max(1),
                        linger: config.history_linger,
                        concurrency: config.history_write_concurrency,
                    },
                    recorder_metrics.clone(),
                )
            }),
            retention: (config.history_enabled && !config.history_sweep_interval.is_zero()).then(
                || RetentionSettings {
                    rules: SweepRules {
                        compact_share: config.history_sweep_compact_share,
                        keep_per_policy: config.history_keep_per_policy,
                        max_age: config.history_max_age,
                        batch: config.history_sweep_batch.max(1),
                        vacuum: config.history_sweep_vacuum,
                        pause_ratio: config.history_sweep_pause_ratio,
                        spread: config
                            .history_sweep_interval
                            .mul_f64(config.history_sweep_spread),
                    },
                    interval: config.history_sweep_interval,
                },
            ),
        };
        if config.allow_private_targets {
            tracing::warn!(message = "allow_private_targets is on: deliveries to loopback and private addresses are allowed. Use this for development and tests only.");
        }
        let token = shutdown.token.clone();
        shutdown.tracker.spawn(async move {
            consumer.run(token.clone()).await;
            // A consumer that stops on its own takes the process down, so the orchestrator restarts it.
            token.cancel();
        });
    }

    // The dead-letter queue's depth, for regrelay_dead_letter_queue_depth (every process reports it;
    // one passive declare per interval).
    if !config.dead_letter_depth_interval.is_zero() {
        shutdown.tracker.spawn(
            state
                .dead_letters()
                .clone()
                .monitor_depth(config.dead_letter_depth_interval, shutdown.token.clone()),
        );
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(message = "regrelay is serving.", role = ?role, listen = %config.listen, version = env!("CARGO_PKG_VERSION"), prefix = topology.prefix());
    let token = shutdown.token.clone();
    let api = shutdown.tracker.spawn(regrelay_api::serve(
        listener,
        state,
        regrelay_api::ServerSettings {
            request_timeout: config.request_timeout,
            header_read_timeout: config.http_header_read_timeout,
            idle_timeout: config.http_idle_timeout,
            max_connections: config.http_max_connections,
            drain: config.shutdown_timeout,
        },
        async move { token.cancelled_owned().await },
    ));
    shutdown.tracker.close();
    let result = api.await.context("API task panicked")?;
    // Whatever ends the HTTP server (a signal or an error) ends the process: cancel the other roles.
    shutdown.token.cancel();
    if tokio::time::timeout(config.shutdown_timeout, shutdown.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(message = "Roles still busy after shutdown_timeout; exiting. Unacked messages are redelivered.");
    }
    if let Some(broker) = consume_broker {
        broker.close().await;
    }
    publish_broker.close().await;
    tracing::info!(message = "regrelay stopped.");
    result.context("HTTP server failed")
}

/// `regrelay migrate`: applies the database migrations and exits. With `reencrypt`, then seals
/// every policy's credentials with the current `secrets_key` and prints how many rows changed.
pub async fn migrate(config: Config, reencrypt: bool) -> anyhow::Result<()> {
    // Plain migrations store no credential: the key is needed (and checked) for --reencrypt only.
    let keyring = match (reencrypt, config.secrets_keyring()?) {
        (true, None) => anyhow::bail!(
            "migrate --reencrypt needs secrets_key: set REGRELAY_SECRETS_KEY (or secrets_key in the config file)"
        ),
        (true, keyring) => keyring,
        (false, _) => None,
    };
    let db = database(&config, keyring)?;
    db.migrate().await.context("migration failed")?;
    tracing::info!(message = "Database schema is up to date.");
    if !reencrypt {
        return Ok(());
    }
    let report = db
        .reencrypt_policies()
        .await
        .context("re-encryption failed")?;
    for value in &report.unreadable {
        tracing::warn!(
            message = "A stored credential cannot be decrypted; left as it is.",
            policy_id = value.policy_id,
            field = %value.field,
            error = %value.error
        );
    }
    tracing::info!(
        message = "Policy credentials re-encrypted.",
        rows_seen = report.rows_seen,
        rows_changed = report.rows_changed,
        unreadable = report.unreadable.len()
    );
    println!(
        "re-encrypted {} of {} policies with key {}",
        report.rows_changed,
        report.rows_seen,
        db.secrets_key_id().unwrap_or("?")
    );
    if !report.unreadable.is_empty() {
        anyhow::bail!(
            "{} stored credential value(s) do not decrypt with the configured secrets_key and were left as they were (see the log for policy ids); keep the key that sealed them configured",
            report.unreadable.len()
        );
    }
    Ok(())
}

/// The store, sealing policy credentials with `keyring` when there is one.
fn database(config: &Config, keyring: Option<SecretsKeyring>) -> anyhow::Result<Database> {
    let db = Database::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
    )
    .context("invalid database_url")?;
    Ok(match keyring {
        Some(keyring) => {
            tracing::info!(
                message = "Policy credentials are encrypted at rest.",
                key_id = keyring.current_id(),
                keys = keyring.ids().count()
            );
            db.with_secrets(keyring)
        }
        None => db,
    })
}

/// What start-up says when policy credentials will be stored in plain text.
fn secrets_at_rest_warning(keyring: Option<&SecretsKeyring>) -> Option<&'static str> {
    match keyring {
        Some(_) => None,
        None => Some("secrets_key is not set: policy credentials (auth headers, signing secrets, custom header values) are stored in PostgreSQL in plain text. Set secrets_key to encrypt them (docs/deployment.md, \"Secrets at rest\")."),
    }
}

fn broker(
    config: &Config,
    role: &'static str,
    topology: Topology,
    metrics: ProducerMetrics,
) -> Broker {
    Broker::new(
        BrokerSettings {
            url: config.amqp_url.expose_secret().to_owned(),
            connection_name: connection_name(role),
            role,
            publish_channels: config.publish_channels,
            connect_timeout: config.broker_connect_timeout,
            reconnect_min_delay: config.broker_reconnect_min_delay,
            reconnect_max_delay: config.broker_reconnect_max_delay,
            tls: config.broker_tls(),
        },
        topology,
        metrics,
    )
}

/// `regrelay-<role>@<host>/<pid>`: what the management UI shows for this process's connections.
fn connection_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("regrelay-{role}@{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_warns_only_without_a_secrets_key() {
        let warning = secrets_at_rest_warning(None).unwrap();
        assert!(warning.starts_with("secrets_key is not set"), "{warning}");
        assert!(warning.contains("plain text"), "{warning}");
        let keyring =
            SecretsKeyring::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(secrets_at_rest_warning(Some(&keyring)), None);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closures return its large error type.
    fn secrets_key_is_validated_at_load_without_showing_it() {
        const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        figment::Jail::expect_with(|jail| {
            jail.set_env("REGRELAY_SECRETS_KEY", format!("k2:c2hvcnQ=,k1:{KEY}"));
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("secrets_key"), "{error}");
            assert!(error.contains("key k2: the key is 5 bytes"), "{error}");
            assert!(!error.contains("c2hvcnQ"), "{error}");

            jail.set_env("REGRELAY_SECRETS_KEY", format!("k2:{KEY},k1:{KEY}"));
            let config = Config::load(None).map_err(|e| e.to_string())?;
            let keyring = config.secrets_keyring().map_err(|e| e.to_string())?;
            let ids: Vec<_> = keyring.iter().flat_map(|k| k.ids()).collect();
            assert_eq!(ids, ["k2", "k1"]);
            assert!(!format!("{config:?}").contains(KEY));

            // Empty means unset: today's behaviour, with the warning.
            jail.set_env("REGRELAY_SECRETS_KEY", "");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert!(config
                .secrets_keyring()
                .map_err(|e| e.to_string())?
                .is_none());
            Ok(())
        });
    }
}
