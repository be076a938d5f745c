//! One supervised AMQP connection with a small pool of confirm-mode channels.
//!
//! Design constraints:
//! - A caller never waits on a broker that is known to be down: after a failed connect, calls fail at once
//!   with [`BrokerError::Backoff`] until the next attempt is due. The delay between attempts grows
//!   exponentially with jitter (backon), so a fleet of regrelay processes does not hammer a broker that is
//!   restarting. The ingest API turns that error into a fast `503`.
//! - Reconnection is single-flight: one caller connects while the others wait for its result.
//! - Every (re)connect re-declares the topology, so a broker that lost its definitions heals itself.
//! - A channel that died (a channel-level error, or the connection under it) is never handed out again;
//!   the whole connection is rebuilt, which also restores the topology.
//! - A cluster is several addresses (`url` is a comma-separated list): the connection uses one and,
//!   when connecting to it fails, moves to the next for the next attempt (with the same backoff),
//!   round the list. Which one is in use is in `regrelay_broker_address{role,address}` and
//!   [`Broker::address`] (`/readyz`), password redacted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::time::Instant;

use crate::telemetry::ProducerMetrics;
use crate::topology::Topology;

/// How to reach the broker and how hard to try.
#[derive(Clone)]
pub struct BrokerSettings {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`, or several separated by commas (the
    /// nodes of a cluster). Contains a password: never logged.
    pub url: String,
    /// Shown in the management UI's connection list, so operators can tell processes apart.
    pub connection_name: String,
    /// What this connection is for (`publish` or `consume`): the `role` label of the broker metrics.
    /// Publishing and consuming use separate connections, because RabbitMQ blocks a publishing
    /// connection under memory pressure and a consumer on it would stall too.
    pub role: &'static str,
    /// Confirm-mode channels used round-robin for publishing; more channels, more confirms in parallel.
    pub publish_channels: usize,
    /// Upper bound for one connect attempt (TCP, AMQP handshake and topology declaration).
    pub connect_timeout: Duration,
    /// First delay after a failed connect; doubles up to `reconnect_max_delay`.
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Certificates for `amqps://` addresses.
    pub tls: BrokerTls,
}

/// TLS for `amqps://` addresses (rustls; the broker's host name is always verified). The files are
/// read at every connect, so renewed certificates are picked up without a restart.
#[derive(Debug, Clone, Default)]
pub struct BrokerTls {
    /// PEM CA certificates to trust besides the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for brokers that require client certificates.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
}

impl BrokerTls {
    /// What lapin needs, read from the files now.
    fn load(&self) -> Result<OwnedTLSConfig, BrokerError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| BrokerError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let cert_chain = match &self.ca_file {
            Some(path) => Some(String::from_utf8_lossy(&read(path)?).into_owned()),
            None => None,
        };
        let identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert)?,
                key: read(key)?,
            }),
            (None, None) => None,
            _ => return Err(BrokerError::TlsIdentityHalf),
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field(
                "url",
                &addresses(&self.url)
                    .iter()
                    .map(|a| redact_url(a))
                    .collect::<Vec<_>>(),
            )
            .field("connection_name", &self.connection_name)
            .field("publish_channels", &self.publish_channels)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to the broker at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: lapin::Error,
    },
    #[error("connecting to the broker at {address} took longer than {timeout:?}")]
    ConnectTimeout { address: String, timeout: Duration },
    #[error("the broker is unreachable (last error: {last_error}); next attempt in {retry_in:?}")]
    Backoff {
        retry_in: Duration,
        last_error: String,
    },
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("cannot read the broker TLS file {path}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("amqp_client_cert_file and amqp_client_key_file must be set together")]
    TlsIdentityHalf,
}

/// A live connection and its publishing channels.
struct Live {
    connection: Connection,
    /// Replaced one at a time after a nack ([`Broker::replace_channel`]).
    channels: std::sync::RwLock<Vec<Channel>>,
    /// Round-robin cursor over `channels`.
    next: AtomicUsize,
}

impl Live {
    fn healthy_channel(&self) -> Option<Channel> {
        if !self.connection.status().connected() {
            return None;
        }
        let channels = self
            .channels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if channels.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % channels.len();
        let channel = &channels[i];
        channel.status().connected().then(|| channel.clone())
    }
}

/// When the next connect attempt may be made, after failures.
struct ReconnectGate {
    next_attempt: Option<Instant>,
    delays: ExponentialBackoff,
    last_error: String,
}

/// A shared handle on the broker: cheap to clone via `Arc`, used by every publisher in the process.
pub struct Broker {
    settings: BrokerSettings,
    topology: Topology,
    metrics: ProducerMetrics,
    /// The current connection; `None` before the first connect and after a failure was noticed.
    live: Mutex<Option<Arc<Live>>>,
    /// Serialises reconnects and carries the backoff state between them.
    gate: tokio::sync::Mutex<ReconnectGate>,
    /// The broker's addresses (`settings.url` split at commas), in order.
    addresses: Vec<String>,
    /// Index in `addresses` of the one connected to, or tried next.
    cursor: AtomicUsize,
}

impl Broker {
    /// Creates the handle. Does not connect: the first use does, so a process can start (and report
    /// "not ready") while the broker is still down.
    pub fn new(settings: BrokerSettings, topology: Topology, metrics: ProducerMetrics) -> Self {
        let gate = ReconnectGate {
            next_attempt: None,
            delays: backoff(&settings),
            last_error: String::new(),
        };
        let addresses = addresses(&settings.url);
        for address in &addresses {
            metrics
                .broker_address
                .with_label_values(&[settings.role, &redact_url(address)])
                .set(0);
        }
        Self {
            settings,
            topology,
            metrics,
            live: Mutex::new(None),
            gate: tokio::sync::Mutex::new(gate),
            addresses,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The address connected to (or tried next), password redacted.
    pub fn address(&self) -> String {
        redact_url(self.current_url())
    }

    fn current_url(&self) -> &str {
        let index = self.cursor.load(Ordering::Relaxed) % self.addresses.len().max(1);
        self.addresses
            .get(index)
            .map_or(self.settings.url.as_str(), String::as_str)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn metrics(&self) -> &ProducerMetrics {
        &self.metrics
    }

    /// A confirm-mode channel for publishing, connecting first if needed.
    pub async fn publish_channel(&self) -> Result<Channel, BrokerError> {
        if let Some(channel) = self.current().and_then(|live| live.healthy_channel()) {
            return Ok(channel);
        }
        let live = self.reconnect().await?;
        live.healthy_channel().ok_or_else(|| BrokerError::Backoff {
            retry_in: Duration::ZERO,
            last_error: "channel closed right after connecting".into(),
        })
    }

    /// Replaces `bad`, a publishing channel the broker nacked a publish on or left unconfirmed, with
    /// a fresh confirm-mode channel on the same connection, and closes it. After a quorum queue's
    /// leader node dies, RabbitMQ (seen with 3.10) can keep nacking every publish on a channel that
    /// was opened while the new leader was being elected, for minutes and even after the cluster
    /// is whole again; a new channel routes to the current leader. Best effort: when the channel
    /// cannot be made, the pool keeps the old one (and the next publish tells).
    pub async fn replace_channel(&self, bad: &Channel) {
        let Some(live) = self.current() else {
            return;
        };
        let present = live
            .channels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|c| c.id() == bad.id());
        if !present || !live.connection.status().connected() {
            return;
        }
        let fresh = match live.connection.create_channel().await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(message = "Cannot open a channel to replace a nacked one.", error = %error);
                return;
            }
        };
        if let Err(error) = fresh.confirm_select(ConfirmSelectOptions::default()).await {
            tracing::warn!(message = "Cannot open a channel to replace a nacked one.", error = %error);
            return;
        }
        let replaced = {
            let mut channels = live
                .channels
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match channels.iter().position(|c| c.id() == bad.id()) {
                Some(i) => Some(std::mem::replace(&mut channels[i], fresh.clone())),
                None => None,
            }
        };
        match replaced {
            Some(old) => {
                self.metrics.publish_channels_replaced.inc();
                tracing::info!(
                    message = "Publishing channel replaced after a nack.",
                    channel = old.id(),
                    by = fresh.id()
                );
                // Closed later, not now: other publishes may still wait for confirms on it (the
                // pool is shared), and closing it would fail them into a resend (a duplicate).
                let linger = 2 * self.settings.connect_timeout.max(Duration::from_secs(15));
                tokio::spawn(async move {
                    tokio::time::sleep(linger).await;
                    let _ = old.close(200, "replaced after a nack".into()).await;
                });
            }
            // Another caller replaced it meanwhile.
            None => {
                let _ = fresh.close(200, "not needed".into()).await;
            }
        }
    }

    /// A fresh channel on the shared connection, for a caller that needs its own (a consumer, a
    /// passive check). The caller owns it and closes it.
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        let live = match self.current() {
            Some(live) if live.connection.status().connected() => live,
            _ => self.reconnect().await?,
        };
        Ok(live.connection.create_channel().await?)
    }

    /// Declares the topology again on the current connection: after a publish came back
    /// unroutable because someone deleted a queue, this brings it back (and the publish is
    /// retried). Returns the outdated work queues (see [`Topology::declare_on`]).
    pub async fn redeclare_topology(&self) -> Result<Vec<String>, BrokerError> {
        let live = match self.current() {
            Some(live) if live.connection.status().connected() => live,
            _ => self.reconnect().await?,
        };
        let outdated = self.topology.declare_on(&live.connection).await?;
        tracing::warn!(
            message = "Topology declared again after an unroutable publish.",
            prefix = self.topology.prefix()
        );
        Ok(outdated)
    }

    /// Readiness: a real round trip to the broker that also proves the topology exists.
    pub async fn check(&self) -> Result<(), BrokerError> {
        let channel = self.publish_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let probe = channel.queue_declare(
            self.topology.events_queue().into(),
            options,
            FieldTable::default(),
        );
        match tokio::time::timeout(self.settings.connect_timeout, probe).await {
            Ok(result) => result.map(|_| ()).map_err(BrokerError::from),
            Err(_) => Err(BrokerError::ConnectTimeout {
                address: self.address(),
                timeout: self.settings.connect_timeout,
            }),
        }
    }

    /// Closes the connection (at shutdown). Later calls would reconnect.
    pub async fn close(&self) {
        let live = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(live) = live {
            let _ = live
                .connection
                .close(200, "regrelay shutting down".into())
                .await;
        }
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn reconnect(&self) -> Result<Arc<Live>, BrokerError> {
        let mut gate = self.gate.lock().await;
        // Another caller may have reconnected while this one waited for the gate.
        if let Some(live) = self.current() {
            if live.healthy_channel().is_some() {
                return Ok(live);
            }
        }
        if let Some(at) = gate.next_attempt {
            let now = Instant::now();
            if now < at {
                return Err(BrokerError::Backoff {
                    retry_in: at - now,
                    last_error: gate.last_error.clone(),
                });
            }
        }
        let stale = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stale) = stale {
            self.metrics
                .broker_connected
                .with_label_values(&[self.settings.role])
                .set(0);
            tracing::warn!(message = "Broker connection lost; reconnecting.");
            // Closing a connection that is already dead can hang on some failures; do it aside.
            tokio::spawn(async move {
                let _ = stale.connection.close(200, "reconnecting".into()).await;
            });
        }
        let address = self.address();
        let result = match self.settings.tls.load() {
            Err(error) => Err(error),
            Ok(tls) => {
                let attempt =
                    tokio::time::timeout(self.settings.connect_timeout, self.connect(tls));
                match attempt.await {
                    Ok(Ok(live)) => Ok(live),
                    Ok(Err(source)) => Err(BrokerError::Connect {
                        address: address.clone(),
                        source,
                    }),
                    Err(_) => Err(BrokerError::ConnectTimeout {
                        address: address.clone(),
                        timeout: self.settings.connect_timeout,
                    }),
                }
            }
        };
        match result {
            Ok(live) => {
                let live = Arc::new(live);
                *self.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(live.clone());
                gate.next_attempt = None;
                gate.delays = backoff(&self.settings);
                self.metrics
                    .broker_connects
                    .with_label_values(&[self.settings.role, "success"])
                    .inc();
                self.metrics
                    .broker_connected
                    .with_label_values(&[self.settings.role])
                    .set(1);
                for other in &self.addresses {
                    let other = redact_url(other);
                    self.metrics
                        .broker_address
                        .with_label_values(&[self.settings.role, &other])
                        .set(i64::from(other == address));
                }
                tracing::info!(message = "Connected to the broker.", %address, prefix = self.topology.prefix());
                Ok(live)
            }
            Err(error) => {
                let delay = gate
                    .delays
                    .next()
                    .unwrap_or(self.settings.reconnect_max_delay);
                gate.next_attempt = Some(Instant::now() + delay);
                gate.last_error = error.to_string();
                // The next attempt goes to the next address of the cluster.
                if self.addresses.len() > 1 {
                    self.cursor.fetch_add(1, Ordering::Relaxed);
                }
                self.metrics
                    .broker_connects
                    .with_label_values(&[self.settings.role, "failure"])
                    .inc();
                tracing::warn!(message = "Cannot connect to the broker.", error = %error, retry_in = ?delay);
                Err(error)
            }
        }
    }

    async fn connect(&self, tls: OwnedTLSConfig) -> Result<Live, lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.settings.connection_name.clone().into());
        let connection = Connection::connect_with_config(
            self.current_url(),
            properties,
            tls,
            lapin::runtime::default_runtime()?,
        )
        .await?;
        let mut channels = Vec::with_capacity(self.settings.publish_channels.max(1));
        for _ in 0..self.settings.publish_channels.max(1) {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        let outdated = self.topology.declare_on(&connection).await?;
        self.metrics
            .topology_outdated_queues
            .set(i64::try_from(outdated.len()).unwrap_or(i64::MAX));
        for queue in &outdated {
            tracing::error!(
                message = "A work queue has an older regrelay's arguments; using it as it is.",
                queue = %queue,
                what_to_do = %crate::topology::outdated_queue_advice(&self.topology, queue),
            );
        }
        Ok(Live {
            connection,
            channels: std::sync::RwLock::new(channels),
            next: AtomicUsize::new(0),
        })
    }
}

fn backoff(settings: &BrokerSettings) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(settings.reconnect_min_delay)
        .with_max_delay(settings.reconnect_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}

/// `url` split at commas, blanks dropped (`[url]` when that leaves nothing).
pub fn addresses(url: &str) -> Vec<String> {
    let list: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        vec![url.to_owned()]
    } else {
        list
    }
}

/// The URL without its credentials, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
