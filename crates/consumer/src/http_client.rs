//! [`HttpClients`]: the two long-lived HTTP clients every delivery goes through.
//!
//! Design constraints:
//! - Built once per process and shared: a `reqwest::Client` owns a connection pool, so reusing it
//!   keeps connections (and TLS sessions) alive across deliveries to the same receiver instead of
//!   paying a handshake per attempt.
//! - Two clients, not one per target: certificate verification is a client-wide setting, and
//!   `skip_cert_verify` is the only per-target transport choice. Everything else per target
//!   (headers, auth, signing) is per request.
//! - Redirects are never followed (SPEC §3); a 3xx is an answer, classified as such.
//! - The per-attempt timeout covers the whole exchange (connect, send, answer, body), so one
//!   hanging receiver holds a delivery slot for at most that long.
//! - Unless private targets are allowed, the SSRF guard is the clients' DNS resolver, so it checks
//!   the very addresses that are connected to ([`crate::ssrf`]).
//! - No proxy, not even one from `HTTP(S)_PROXY`: through a proxy the resolver would only see the
//!   proxy's address and the guard would check the wrong thing.

use std::sync::Arc;
use std::time::Duration;

use reqwest::redirect::Policy;
use reqwest::Client;

use crate::ssrf::GuardedResolver;

/// The connect phase never gets longer than this, even with a long per-attempt timeout: a receiver
/// that does not accept a TCP connection in 10 s is down, and failing fast frees the slot.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept. Receivers commonly close idle connections after
/// 60–120 s; closing ours first avoids sending on a connection the other side is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// TCP keepalive on pooled connections, so dead peers are noticed between deliveries.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// How the HTTP clients are built.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Per-attempt timeout (Harbor's `webhook_job_http_client_timeout`).
    pub timeout: Duration,
    /// Deliver to loopback/private/link-local addresses (development and tests only).
    pub allow_private_targets: bool,
    /// `User-Agent` of every request (`regrelay/<version>`).
    pub user_agent: String,
    /// Idle connections kept per receiver host.
    pub pool_idle_per_host: usize,
}

/// The shared HTTP clients. Cloning shares the connection pools.
#[derive(Clone)]
pub struct HttpClients {
    /// Verifies TLS certificates: every target unless it sets `skip_cert_verify`.
    verified: Client,
    /// Accepts any certificate: only for targets that set `skip_cert_verify`.
    unverified: Client,
    /// Whether the SSRF guard is off; attempts check IP-literal URLs only when it is on.
    allow_private_targets: bool,
}

impl HttpClients {
    pub fn new(settings: &HttpSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            verified: build(settings, false)?,
            unverified: build(settings, true)?,
            allow_private_targets: settings.allow_private_targets,
        })
    }

    /// The client for a target: the one that skips certificate verification only when the target
    /// asks for it.
    pub fn for_target(&self, skip_cert_verify: bool) -> &Client {
        if skip_cert_verify {
            &self.unverified
        } else {
            &self.verified
        }
    }

    /// Whether the SSRF guard is off.
    pub fn allow_private_targets(&self) -> bool {
        self.allow_private_targets
    }
}

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClients")
            .field("allow_private_targets", &self.allow_private_targets)
            .finish_non_exhaustive()
    }
}

fn build(settings: &HttpSettings, skip_cert_verify: bool) -> Result<Client, reqwest::Error> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .redirect(Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(MAX_CONNECT_TIMEOUT))
        .user_agent(settings.user_agent.as_str())
        .pool_max_idle_per_host(settings.pool_idle_per_host)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .danger_accept_invalid_certs(skip_cert_verify);
    if !settings.allow_private_targets {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow_private_targets: bool) -> HttpSettings {
        HttpSettings {
            timeout: Duration::from_secs(2),
            allow_private_targets,
            user_agent: "regrelay/test".into(),
            pool_idle_per_host: 4,
        }
    }

    #[tokio::test]
    async fn clients_build_and_remember_the_guard_setting() {
        let clients = HttpClients::new(&settings(false)).unwrap();
        assert!(!clients.allow_private_targets());
        assert!(!std::ptr::eq(
            clients.for_target(true),
            clients.for_target(false)
        ));
        assert!(HttpClients::new(&settings(true))
            .unwrap()
            .allow_private_targets());
    }

    #[tokio::test]
    async fn the_guarded_client_refuses_a_name_that_resolves_to_loopback() {
        let clients = HttpClients::new(&settings(false)).unwrap();
        // Port 9 (discard) on loopback: were the guard missing, this would be a connect error.
        let error = clients
            .for_target(false)
            .post("http://localhost:9/")
            .send()
            .await
            .unwrap_err();
        assert!(crate::ssrf::is_blocked(&error), "{error:?}");
    }
}
