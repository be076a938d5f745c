//! Fakes of the chat vendors' webhook APIs: real HTTP servers on 127.0.0.1 that behave as each
//! vendor documents (paths, credential and signature checks, success and error bodies, length
//! limits, 429 with the vendor's retry hint), so targets are tested end to end without the
//! vendors, which cannot be reached from here.
//!
//! - [`FakeVendor`]: the server every fake runs on: a record of what it received (with the
//!   time, to count per minute), and a [`Script`] of failures to answer next.
//! - One module per vendor with its `start` function and its rules: [`telegram`], [`teams`],
//!   [`discord`], [`dingtalk`], [`feishu`], [`wecom`]. Each module's docs list what it checks.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

pub mod dingtalk;
pub mod discord;
pub mod feishu;
pub mod teams;
pub mod telegram;
pub mod wecom;

/// A failure the fake answers to the next request, instead of judging it.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// The vendor's own "too many requests" answer, with its retry hint where it has one.
    RateLimited { retry_after_secs: f64 },
    /// A 5xx (502, as a vendor's front end answers when its backend is down).
    ServerError,
    /// Any answer.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

/// One request as the fake saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Query parameters, decoded.
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status the fake answered.
    pub status: u16,
    /// Whether the fake took the message (the vendor would have posted it).
    pub accepted: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A request, as a vendor's rules see it.
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a HashMap<String, String>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// A vendor's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the message was taken.
    pub accepted: bool,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value, accepted: bool) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            accepted,
        }
    }

    /// A scripted [`Script::Raw`] answer, exactly as given (never counted as accepted).
    pub fn raw(status: u16, headers: &[(String, String)], body: &str) -> Answer {
        Answer {
            status,
            headers: headers.to_vec(),
            body: body.to_owned(),
            accepted: false,
        }
    }

    pub fn empty(status: u16, accepted: bool) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
            accepted,
        }
    }

    fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A vendor's rules: how it answers a request, or a scripted failure.
pub(crate) trait Rules: Send + Sync + 'static {
    /// The answer to a request the script did not decide.
    fn answer(&self, request: &Incoming<'_>) -> Answer;
    /// The vendor's answer to a scripted failure.
    fn scripted(&self, script: &Script) -> Answer;
}

struct State {
    script: VecDeque<Script>,
    received: Vec<Received>,
}

/// A running fake vendor.
pub struct FakeVendor {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeVendor {
    pub(crate) async fn start(rules: impl Rules) -> FakeVendor {
        let rules = Arc::new(rules);
        let state = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            received: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let (handler_state, handler_arrived) = (state.clone(), arrived.clone());
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (state, arrived, rules) = (
                    handler_state.clone(),
                    handler_arrived.clone(),
                    rules.clone(),
                );
                async move {
                    let query = decode_query(uri.query().unwrap_or(""));
                    let scripted = state.lock().expect("fake state").script.pop_front();
                    let answer = match &scripted {
                        Some(script) => rules.scripted(script),
                        None => rules.answer(&Incoming {
                            method: &method,
                            path: uri.path(),
                            query: &query,
                            headers: &headers,
                            body: &body,
                        }),
                    };
                    state.lock().expect("fake state").received.push(Received {
                        method: method.to_string(),
                        path: uri.path().to_owned(),
                        query,
                        headers,
                        body: body.to_vec(),
                        at: Instant::now(),
                        status: answer.status,
                        accepted: answer.accepted,
                    });
                    arrived.notify_waiters();
                    respond(answer)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake vendor");
        let addr = listener.local_addr().expect("fake vendor address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeVendor {
            addr,
            state,
            arrived,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url()` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url())
    }

    /// Answers the next requests with these failures, in order, then judges again.
    pub fn script(&self, failures: impl IntoIterator<Item = Script>) {
        self.state
            .lock()
            .expect("fake state")
            .script
            .extend(failures);
    }

    /// Everything received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("fake state").received.clone()
    }

    /// The requests the vendor took (would have posted).
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.accepted).collect()
    }

    /// The most requests taken within any `window` (a sliding window over the arrival times):
    /// "how many messages did the chat get in one minute".
    pub fn max_accepted_within(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.accepted().iter().map(|r| r.at).collect();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if self.received().len() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.received()
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `a=1&b=x%20y` → {a: 1, b: "x y"} (form decoding: `+` is a space).
fn decode_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// HMAC-SHA256 then base64, as the vendors sign.
pub(crate) fn hmac_base64(key: &[u8], message: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Seconds since the epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = decode_query("access_token=abc&sign=a%2Bb%2F%3D&x=1+2&bad=%zz&end=%4");
        assert_eq!(q["access_token"], "abc");
        assert_eq!(q["sign"], "a+b/=");
        assert_eq!(q["x"], "1 2");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
