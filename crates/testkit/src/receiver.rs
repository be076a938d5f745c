//! [`TestReceiver`]: a real HTTP webhook receiver on 127.0.0.1 whose answers a test scripts and
//! changes mid-test, recording every request it gets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct Behaviour {
    /// Statuses to answer, in order; when empty, `default_status`.
    script: VecDeque<u16>,
    default_status: u16,
    /// Extra headers on every answer (e.g. Retry-After).
    answer_headers: Vec<(String, String)>,
    delay: Duration,
    /// The body of every answer.
    answer_body: String,
    /// When set, the body of every answer is this template with the request echoed into it (see
    /// [`TestReceiver::set_echo`]); `answer_body` is ignored.
    echo: Option<String>,
    requests: Vec<ReceivedRequest>,
}

pub struct TestReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<Behaviour>>,
    arrived: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

/// The answer body of an echoing receiver (see [`TestReceiver::set_echo`]).
fn echo(template: &str, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    let value = |v: &axum::http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let mut out = template.replace("{uri}", uri.path_and_query().map_or("", |p| p.as_str()));
    if out.contains("{headers}") {
        let all: String = headers
            .iter()
            .map(|(name, v)| format!("{name}: {}\n", value(v)))
            .collect();
        out = out.replace("{headers}", &all);
    }
    let mut from = 0;
    while let Some(start) = out[from..].find("{header:").map(|i| from + i) {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        let name = &out[start + "{header:".len()..start + len];
        let found = headers.get(name).map(value).unwrap_or_default();
        out.replace_range(start..=start + len, &found);
        // Echoed values are not templates.
        from = start + found.len();
    }
    out
}

impl TestReceiver {
    /// Starts a receiver answering 200 to everything.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(Behaviour {
            script: VecDeque::new(),
            default_status: 200,
            answer_headers: Vec::new(),
            delay: Duration::ZERO,
            answer_body: "ok".to_owned(),
            echo: None,
            requests: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let handler_state = state.clone();
        let handler_arrived = arrived.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: Bytes| {
                let state = handler_state.clone();
                let arrived = handler_arrived.clone();
                async move {
                    let (status, delay, extra, answer) = {
                        let mut guard = state.lock().expect("receiver state");
                        let status = guard.script.pop_front().unwrap_or(guard.default_status);
                        (
                            status,
                            guard.delay,
                            guard.answer_headers.clone(),
                            match &guard.echo {
                                Some(template) => echo(template, &uri, &headers),
                                None => guard.answer_body.clone(),
                            },
                        )
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    {
                        let mut guard = state.lock().expect("receiver state");
                        guard.requests.push(ReceivedRequest {
                            method: method.to_string(),
                            path: uri.path().to_owned(),
                            headers,
                            body: body.to_vec(),
                            at: Instant::now(),
                        });
                    }
                    arrived.notify_waiters();
                    let mut response: Response = (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        answer,
                    )
                        .into_response();
                    for (name, value) in extra {
                        if let (Ok(name), Ok(value)) = (
                            axum::http::HeaderName::from_bytes(name.as_bytes()),
                            axum::http::HeaderValue::from_str(&value),
                        ) {
                            response.headers_mut().insert(name, value);
                        }
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            state,
            arrived,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers these statuses to the next requests, in order, then the default again.
    pub fn script(&self, statuses: &[u16]) {
        self.state
            .lock()
            .expect("receiver state")
            .script
            .extend(statuses.iter().copied());
    }

    pub fn set_default_status(&self, status: u16) {
        self.state.lock().expect("receiver state").default_status = status;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().expect("receiver state").delay = delay;
    }

    /// The body of every answer from now on (`ok` by default).
    pub fn set_answer_body(&self, body: &str) {
        self.state.lock().expect("receiver state").answer_body = body.to_owned();
    }

    /// From now on, answer every request with `template`, in which `{uri}` becomes the request's
    /// path and query, `{headers}` every request header as `name: value` lines, and
    /// `{header:<name>}` one header's value (empty when absent): a receiver that echoes requests
    /// back, as some do in their error pages.
    pub fn set_echo(&self, template: &str) {
        self.state.lock().expect("receiver state").echo = Some(template.to_owned());
    }

    pub fn set_answer_header(&self, name: &str, value: &str) {
        self.state
            .lock()
            .expect("receiver state")
            .answer_headers
            .push((name.to_owned(), value.to_owned()));
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state.lock().expect("receiver state").requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().expect("receiver state").requests.len()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.requests()
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
