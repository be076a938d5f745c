//! The bench's webhook receiver: a fast HTTP server on `127.0.0.1:0` that notes when each expected
//! delivery arrived.
//!
//! Design constraints:
//! - It must never be the bottleneck: axum on a keep-alive HTTP/1.1 server, one short lock per
//!   request, no allocation beyond reading the tag out of the body.
//! - A delivery is identified by (target path `/t/{i}`, event tag `b{n}`), both put there by the
//!   bench, so no id from regrelay is needed to correlate.
//! - Only the first successful answer per delivery counts: the service delivers at least once, so a
//!   duplicate is counted apart and never shortens a latency.
//! - Arrival counts are published through a `watch` channel, so the waiter wakes on progress instead
//!   of polling.
//! - Soak runs (`soak.rs`) tag events `s{n}-{µs}`: the event number and when its request was sent,
//!   in microseconds since the run's origin. The receiver keeps one byte per event (delivered,
//!   dead-lettered) and a latency histogram per report window, so an hour at thousands per second
//!   needs neither the send times in memory nor a scan at the end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::watch;

/// Where a tag that is not the bench's own goes (warm-up events, the ceilings' plain POSTs).
const WARMUP_PREFIX: &str = "w";

/// A running receiver; the server task stops when this is dropped.
pub struct Receiver {
    /// The bound address, for target URLs.
    addr: SocketAddr,
    /// Shared with the request handler.
    state: Arc<Shared>,
    /// The server task, aborted on drop.
    server: tokio::task::JoinHandle<()>,
}

/// How the receiver answers during one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Sleep this long before answering (a slow receiver).
    pub delay: Duration,
    /// Fraction of requests answered `500` (the service retries them).
    pub error_rate: f64,
}

/// What the receiver saw, taken at the end of a scenario.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Arrival of the first successful delivery, indexed `target * events + event`.
    pub first: Vec<Option<Instant>>,
    /// Successful deliveries counted once each.
    pub delivered: usize,
    /// Further successful deliveries of one already delivered (at-least-once duplicates).
    pub duplicates: usize,
    /// Requests answered `500` on purpose (the status mix).
    pub answered_errors: usize,
    /// Requests whose path or tag was not the bench's (a leftover policy, a malformed body).
    pub unexpected: usize,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Successful first deliveries so far (for waiting and the progress bar).
    delivered: watch::Sender<usize>,
}

struct Inner {
    behaviour: Behaviour,
    /// The soak run's bookkeeping, when one is running.
    soak: Option<SoakBook>,
    /// Events per target in the current layout.
    events: usize,
    /// Live targets in the current layout.
    targets: usize,
    /// Targets that saw at least one warm-up event (`true` by index).
    warmed: Vec<bool>,
    arrivals: Arrivals,
}

/// The part of a Default (Harbor) payload the bench reads: the tag it put there.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    event_data: EventData<'a>,
}

#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow)]
    resources: Vec<Resource<'a>>,
}

#[derive(Deserialize)]
struct Resource<'a> {
    #[serde(borrow, default)]
    tag: Option<&'a str>,
}

impl Receiver {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> anyhow::Result<Self> {
        let (delivered, _) = watch::channel(0);
        let state = Arc::new(Shared {
            inner: Mutex::new(Inner {
                behaviour: Behaviour {
                    delay: Duration::ZERO,
                    error_rate: 0.0,
                },
                events: 0,
                targets: 0,
                warmed: Vec::new(),
                arrivals: Arrivals::default(),
                soak: None,
            }),
            delivered,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the bench receiver")?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(message = "Bench receiver failed.", error = %error);
            }
        });
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of live target `index`.
    pub fn target_url(&self, index: usize) -> String {
        format!("{}/t/{index}", self.base_url())
    }

    /// Forgets everything and expects `events` events on each of `targets` targets.
    pub fn reset(&self, targets: usize, events: usize, behaviour: Behaviour) {
        let mut inner = lock(&self.state.inner);
        inner.behaviour = behaviour;
        inner.events = events;
        inner.targets = targets;
        inner.warmed = vec![false; targets];
        inner.soak = None;
        inner.arrivals = Arrivals {
            first: vec![None; targets * events],
            ..Arrivals::default()
        };
        self.state.delivered.send_replace(0);
    }

    /// Whether every live target has received a warm-up event.
    pub fn all_warmed(&self) -> bool {
        lock(&self.state.inner).warmed.iter().all(|w| *w)
    }

    /// A subscription to the count of first successful deliveries.
    pub fn progress(&self) -> watch::Receiver<usize> {
        self.state.delivered.subscribe()
    }

    /// Starts soak bookkeeping: events tagged `s{n}-{µs}` are counted against `origin`; every
    /// `reject_every`-th event (`n % reject_every == reject_every - 1`; 0: none) is always answered
    /// `400`, so the service dead-letters it, and `behaviour` applies to the others.
    pub fn start_soak(&self, origin: Instant, reject_every: u64, behaviour: Behaviour) {
        let mut inner = lock(&self.state.inner);
        inner.behaviour = behaviour;
        inner.soak = Some(SoakBook {
            origin,
            reject_every,
            state: Vec::new(),
            window: SoakWindow::default(),
            settled: 0,
        });
        self.state.delivered.send_replace(0);
    }

    /// What the soak run saw since the last call (a fresh window starts).
    pub fn take_soak_window(&self) -> SoakWindow {
        lock(&self.state.inner)
            .soak
            .as_mut()
            .map(|book| std::mem::take(&mut book.window))
            .unwrap_or_default()
    }

    /// Events of the soak run delivered or dead-lettered (answered `400`) so far, each counted once.
    pub fn soak_settled(&self) -> usize {
        lock(&self.state.inner)
            .soak
            .as_ref()
            .map_or(0, |book| book.settled)
    }

    /// Everything seen since the last [`Receiver::reset`]; the receiver keeps counting afterwards
    /// into an empty record.
    pub fn take(&self) -> Arrivals {
        std::mem::take(&mut lock(&self.state.inner).arrivals)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A poisoned lock only means a handler panicked mid-update; the counts are still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handle(State(state): State<Arc<Shared>>, uri: Uri, body: Bytes) -> StatusCode {
    let arrived = Instant::now();
    let behaviour = lock(&state.inner).behaviour;
    let fail = behaviour.error_rate > 0.0 && fastrand::f64() < behaviour.error_rate;
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let target = uri
        .path()
        .strip_prefix("/t/")
        .and_then(|i| i.parse::<usize>().ok());
    let tag = serde_json::from_slice::<Payload<'_>>(&body)
        .ok()
        .and_then(|p| p.event_data.resources.first().and_then(|r| r.tag))
        .map(str::to_owned);
    let mut inner = lock(&state.inner);
    if let (Some(book), Some(tag)) = (inner.soak.as_mut(), tag.as_deref()) {
        if let Some((n, sent_us)) = parse_soak_tag(tag) {
            let status = book.answer(n, sent_us, arrived, fail);
            let settled = book.settled;
            state.delivered.send_replace(settled);
            return status;
        }
    }
    if fail {
        inner.arrivals.answered_errors += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    match (target, tag.as_deref()) {
        (Some(target), Some(tag)) if tag.starts_with(WARMUP_PREFIX) => {
            if let Some(warmed) = inner.warmed.get_mut(target) {
                *warmed = true;
            }
        }
        (Some(target), Some(tag)) => {
            let event = tag.strip_prefix('b').and_then(|n| n.parse::<usize>().ok());
            let events = inner.events;
            let slot = event
                .filter(|event| *event < events && target < inner.targets)
                .map(|event| target * events + event);
            match slot {
                Some(slot) => {
                    if inner.arrivals.first[slot].is_none() {
                        inner.arrivals.first[slot] = Some(arrived);
                        inner.arrivals.delivered += 1;
                        state.delivered.send_replace(inner.arrivals.delivered);
                    } else {
                        inner.arrivals.duplicates += 1;
                    }
                }
                None => inner.arrivals.unexpected += 1,
            }
        }
        _ => inner.arrivals.unexpected += 1,
    }
    StatusCode::OK
}

/// Soak-run counts of one report window (see [`Receiver::take_soak_window`]).
#[derive(Debug)]
pub struct SoakWindow {
    /// Events delivered for the first time.
    pub delivered: u64,
    /// Events answered `400` for the first time (the service dead-letters them).
    pub rejected: u64,
    /// Further successful deliveries of an event already delivered.
    pub duplicates: u64,
    /// Requests answered `500` on purpose (the service retries them).
    pub answered_errors: u64,
    /// From each delivered event's request being sent to its first successful receipt, in µs.
    pub latency_us: Option<Histogram<u64>>,
}

impl Default for SoakWindow {
    fn default() -> Self {
        Self {
            delivered: 0,
            rejected: 0,
            duplicates: 0,
            answered_errors: 0,
            latency_us: new_histogram(),
        }
    }
}

/// A histogram of 1 µs to 1 h at 3 significant digits (`None` only if hdrhistogram refused those
/// constant bounds).
pub fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).ok()
}

/// Soak bookkeeping: one state byte per event number.
struct SoakBook {
    origin: Instant,
    reject_every: u64,
    /// [`UNSEEN`], [`DELIVERED`] or [`REJECTED`] per event number; grows as numbers arrive.
    state: Vec<u8>,
    window: SoakWindow,
    /// Events delivered or rejected, each once.
    settled: usize,
}

const UNSEEN: u8 = 0;
const DELIVERED: u8 = 1;
const REJECTED: u8 = 2;

impl SoakBook {
    fn slot(&mut self, n: usize) -> &mut u8 {
        if n >= self.state.len() {
            self.state.resize((n + 1).max(self.state.len() * 2), UNSEEN);
        }
        &mut self.state[n]
    }

    fn answer(&mut self, n: usize, sent_us: u64, arrived: Instant, fail: bool) -> StatusCode {
        if self.reject_every > 0 && n as u64 % self.reject_every == self.reject_every - 1 {
            let slot = self.slot(n);
            if *slot == UNSEEN {
                *slot = REJECTED;
                self.window.rejected += 1;
                self.settled += 1;
            }
            return StatusCode::BAD_REQUEST;
        }
        if fail {
            self.window.answered_errors += 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        let slot = self.slot(n);
        if *slot != UNSEEN {
            self.window.duplicates += 1;
            return StatusCode::OK;
        }
        *slot = DELIVERED;
        self.settled += 1;
        self.window.delivered += 1;
        let arrived_us =
            u64::try_from(arrived.duration_since(self.origin).as_micros()).unwrap_or(u64::MAX);
        if let Some(latency) = self.window.latency_us.as_mut() {
            latency.saturating_record(arrived_us.saturating_sub(sent_us).max(1));
        }
        StatusCode::OK
    }
}

/// The tag of soak event `n` sent `sent_us` µs after the run's origin.
pub fn soak_tag(n: usize, sent_us: u64) -> String {
    format!("s{n}-{sent_us}")
}

fn parse_soak_tag(tag: &str) -> Option<(usize, u64)> {
    let (n, sent) = tag.strip_prefix('s')?.split_once('-')?;
    Some((n.parse().ok()?, sent.parse().ok()?))
}

/// The tag of warm-up event `n` (not counted as a delivery).
pub fn warmup_tag(n: usize) -> String {
    format!("{WARMUP_PREFIX}{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_first_deliveries_and_counts_the_rest() {
        let receiver = Receiver::start().await.unwrap();
        receiver.reset(
            2,
            3,
            Behaviour {
                delay: Duration::ZERO,
                error_rate: 0.0,
            },
        );
        let client = reqwest::Client::new();
        let body = |tag: &str| format!(r#"{{"event_data":{{"resources":[{{"tag":"{tag}"}}]}}}}"#);
        for (path, tag) in [
            ("/t/0", "b0"),
            ("/t/1", "b2"),
            ("/t/1", "b2"),
            ("/t/9", "b0"),
            ("/t/0", "w0"),
            ("/x", "b1"),
        ] {
            let status = client
                .post(format!("{}{path}", receiver.base_url()))
                .body(body(tag))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        }
        assert_eq!(*receiver.progress().borrow(), 2);
        assert!(!receiver.all_warmed());
        let arrivals = receiver.take();
        assert_eq!(arrivals.delivered, 2);
        assert_eq!(arrivals.duplicates, 1);
        assert_eq!(arrivals.unexpected, 2);
        assert!(arrivals.first[0].is_some());
        assert!(arrivals.first[3 + 2].is_some());
        assert_eq!(arrivals.first.iter().flatten().count(), 2);
    }

    #[tokio::test]
    async fn soak_events_are_counted_once_and_every_nth_is_rejected() {
        let receiver = Receiver::start().await.unwrap();
        let origin = Instant::now();
        receiver.start_soak(
            origin,
            3,
            Behaviour {
                delay: Duration::ZERO,
                error_rate: 0.0,
            },
        );
        let client = reqwest::Client::new();
        let body = |tag: &str| format!(r#"{{"event_data":{{"resources":[{{"tag":"{tag}"}}]}}}}"#);
        let mut statuses = Vec::new();
        // Events 0, 1 and 2 (2 is rejected: 2 % 3 == 2), a duplicate of 0, a second 2, a warm-up.
        for tag in [
            soak_tag(0, 0),
            soak_tag(1, 0),
            soak_tag(2, 0),
            soak_tag(0, 0),
            soak_tag(2, 0),
            warmup_tag(0),
        ] {
            let status = client
                .post(format!("{}/t/0", receiver.base_url()))
                .body(body(&tag))
                .send()
                .await
                .unwrap()
                .status();
            statuses.push(status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 400, 200, 400, 200]);
        assert_eq!(receiver.soak_settled(), 3);
        let window = receiver.take_soak_window();
        assert_eq!(
            (window.delivered, window.rejected, window.duplicates),
            (2, 1, 1)
        );
        let latency = window.latency_us.unwrap();
        assert_eq!(latency.len(), 2);
        assert!(latency.max() >= 1);
        let next = receiver.take_soak_window();
        assert_eq!(
            (
                next.delivered,
                next.rejected,
                next.latency_us.unwrap().len()
            ),
            (0, 0, 0)
        );
        assert_eq!(receiver.soak_settled(), 3);
    }

    #[test]
    fn soak_tags_round_trip_and_others_are_not_soak_tags() {
        assert_eq!(parse_soak_tag(&soak_tag(42, 1234)), Some((42, 1234)));
        assert_eq!(parse_soak_tag("b42"), None);
        assert_eq!(parse_soak_tag("w0"), None);
        assert_eq!(parse_soak_tag("s42"), None);
    }
}
