//! One delivery attempt: one `POST` to the target, reduced to an [`AttemptResult`].
//!
//! Design constraints:
//! - One attempt, no loop: retries are the broker's job ([`crate::delivery`]), so this function
//!   never waits beyond the client's per-attempt timeout.
//! - Nothing secret leaves in an error text: the results' messages end up in logs, dead letters
//!   and task history, so they never contain header values (auth header, custom headers,
//!   signature) or the URL (whose query or user info may hold a token). reqwest errors are
//!   stripped of their URL before they are described.
//! - The SSRF guard has two halves: IP-literal URLs are checked here ([`ssrf::check_url`]), names
//!   in the client's resolver; a refusal from either becomes [`AttemptResult::Blocked`].
//! - The answer's body is read, up to [`MAX_BODY`]: reading it lets the connection go back to the
//!   pool for the next delivery; bounding it means a receiver cannot make us download an arbitrary
//!   amount. What was read is kept whole in the report, with the values of the secret headers
//!   actually sent (as reqwest built them: a URL's user info becomes `Authorization: Basic ...`),
//!   and is only ever taken out through [`crate::history::redact_snippet`], which blanks every
//!   credential first and cuts to [`MAX_SNIPPET`] after: cutting first would store the part of a
//!   secret that straddles the cut.
//! - Protocol headers win over a target's custom headers: `Content-Type`, `Authorization` and the
//!   signature headers are set last, so a custom header cannot break the signature the receiver
//!   checks; framing headers (`Content-Length`, `Host`, ...) cannot be set at all.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER,
};

use crate::classify::AttemptResult;
use crate::signing::{sign, SigningKey};
use crate::ssrf;

/// How much of an answer's body is read (and discarded) to let its connection be reused.
pub(crate) const MAX_BODY: usize = 4 * 1024;

/// Standard Webhooks headers.
pub(crate) const WEBHOOK_ID: &str = "webhook-id";
pub(crate) const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub(crate) const WEBHOOK_SIGNATURE: &str = "webhook-signature";

// Headers a target's custom headers may not set (the policy API refuses them; a policy stored
// before a header was refused has it skipped here).
use regrelay_history::policy::RESERVED_HEADERS;

/// Everything one attempt needs, borrowed from the task and its target.
pub(crate) struct AttemptRequest<'a> {
    /// The shared client (verifying or not, per the target's `skip_cert_verify`).
    pub client: &'a reqwest::Client,
    /// `POST`, or a `template` target's method.
    pub method: reqwest::Method,
    /// The target's address (a chat type's request URL, with its token or signature).
    pub url: &'a str,
    pub body: Vec<u8>,
    pub content_type: &'a str,
    /// A chat or template type's own headers (`regrelay_targets::Request::headers`), set before
    /// the protocol headers like custom headers. Their values are treated as credentials.
    pub vendor_headers: Option<&'a HeaderMap>,
    /// Credentials the request carries besides its headers (a bot token in the URL path, a
    /// signature in the query or body): blanked from the answer kept for history.
    pub credentials: &'a [String],
    /// Sent verbatim as `Authorization` (Harbor adds no prefix).
    pub auth_header: Option<&'a str>,
    /// The target's custom headers.
    pub headers: &'a BTreeMap<String, String>,
    /// The delivery id, sent as `webhook-id` on every request, signed or not, so any receiver
    /// can drop the duplicates at-least-once delivery makes.
    pub delivery_id: &'a str,
    /// The signing key, when the target has a secret.
    pub signing: Option<&'a SigningKey>,
    /// Whether the SSRF guard is off.
    pub allow_private: bool,
}

/// How long a response snippet kept for the task log may be.
pub(crate) const MAX_SNIPPET: usize = 512;

/// What one attempt came to, for classification and for the task log.
#[derive(Debug)]
pub(crate) struct AttemptReport {
    pub result: AttemptResult,
    pub elapsed: Duration,
    /// The start of the receiver's answer, not redacted yet: a receiver that echoes requests hands
    /// credentials back. Crate-private so that it leaves only through
    /// [`crate::history::redact_snippet`].
    pub(crate) answer: Option<Answer>,
}

/// The start of a receiver's answer as read, and what the request that got it carried.
pub(crate) struct Answer {
    /// The answer's headers (a chat vendor's rate-limit headers and `Retry-After`).
    pub(crate) headers: HeaderMap,
    /// Up to [`MAX_BODY`] bytes of the body, as lossy UTF-8.
    pub(crate) text: String,
    /// Whether `text` is the whole body. When it is not, its tail may hold the first part of a
    /// credential, which no redaction can recognise; the redaction drops that tail.
    pub(crate) complete: bool,
    /// The values of the secret headers sent (`Authorization` as reqwest sent it, the signature,
    /// custom headers), to be blanked along with the target's own credentials.
    pub(crate) sent_secrets: Vec<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("bytes", &self.text.len())
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
/// Makes the attempt; returns what came of it and how long it took.
pub(crate) async fn send(request: AttemptRequest<'_>) -> (AttemptResult, Duration) {
    let report = send_with_report(request).await;
    (report.result, report.elapsed)
}

/// Makes the attempt; returns what came of it, how long it took and the start of the answer.
pub(crate) async fn send_with_report(request: AttemptRequest<'_>) -> AttemptReport {
    let started = Instant::now();
    let mut answer = None;
    let result = attempt_result(request, &mut answer).await;
    AttemptReport {
        result,
        elapsed: started.elapsed(),
        answer,
    }
}

async fn attempt_result(request: AttemptRequest<'_>, answer: &mut Option<Answer>) -> AttemptResult {
    let url = match reqwest::Url::parse(request.url) {
        Ok(url) => url,
        // `ParseError`'s text names the problem, not the input.
        Err(error) => return AttemptResult::Other(format!("invalid target address: {error}")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return AttemptResult::Other(format!(
            "invalid target address: unsupported scheme {}",
            url.scheme()
        ));
    }
    if !request.allow_private {
        if let Err(blocked) = ssrf::check_url(&url) {
            tracing::warn!(message = "Target address refused.", host = %blocked.host);
            return AttemptResult::Blocked(blocked.to_string());
        }
    }
    let headers = match build_headers(&request) {
        Ok(headers) => headers,
        Err(message) => return AttemptResult::Other(message),
    };
    let built = request
        .client
        .request(request.method.clone(), url)
        .headers(headers)
        .body(request.body)
        .build();
    let built = match built {
        Ok(built) => built,
        Err(error) => return map_error(error),
    };
    let mut sent_secrets = secret_header_values(built.headers(), request.headers);
    if let Some(vendor) = request.vendor_headers {
        sent_secrets.extend(
            vendor
                .iter()
                .filter(|(name, _)| **name != CONTENT_TYPE)
                .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    sent_secrets.extend(request.credentials.iter().cloned());
    let sent = request.client.execute(built).await;
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => return map_error(error),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let answer_headers = response.headers().clone();
    let (text, complete) = drain(&mut response).await;
    *answer = Some(Answer {
        headers: answer_headers,
        text,
        complete,
        sent_secrets,
    });
    AttemptResult::Response {
        status,
        retry_after,
    }
}

/// The request's headers: custom ones first, then the protocol headers over them. Errors name the
/// header, never its value.
fn build_headers(request: &AttemptRequest<'_>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    if let Some(vendor) = request.vendor_headers {
        for (name, value) in vendor {
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
    }
    for (name, value) in request.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("custom header name {name:?} is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header_name.as_str()) {
            tracing::warn!(message = "Custom header ignored: the HTTP client sets it.", header = %header_name);
            continue;
        }
        let mut header_value = HeaderValue::from_str(value).map_err(|_| {
            format!("custom header {header_name} has a value that is not a valid header value")
        })?;
        // Custom headers often carry tokens: keep them out of any debug output.
        header_value.set_sensitive(true);
        headers.insert(header_name, header_value);
    }
    let content_type = HeaderValue::from_str(request.content_type)
        .map_err(|_| "the content type is not a valid header value".to_owned())?;
    headers.insert(CONTENT_TYPE, content_type);
    if let Some(auth) = request.auth_header {
        let mut value = HeaderValue::from_str(auth)
            .map_err(|_| "the target's auth header is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let id = HeaderValue::from_str(request.delivery_id)
        .map_err(|_| "the webhook id is not a valid header value".to_owned())?;
    headers.insert(HeaderName::from_static(WEBHOOK_ID), id);
    if let Some(key) = request.signing {
        let timestamp = unix_now();
        let signature = sign(key, request.delivery_id, timestamp, &request.body);
        headers.insert(
            HeaderName::from_static(WEBHOOK_TIMESTAMP),
            HeaderValue::from(timestamp),
        );
        // Base64 and a prefix: always a valid header value.
        let signature = HeaderValue::from_str(&signature)
            .map_err(|_| "the signature is not a valid header value".to_owned())?;
        headers.insert(HeaderName::from_static(WEBHOOK_SIGNATURE), signature);
    }
    Ok(headers)
}

/// Reduces a reqwest error to a result, with a message free of the URL and of header values.
fn map_error(error: reqwest::Error) -> AttemptResult {
    let error = error.without_url();
    // Blocked first: a refusal in the resolver surfaces as a connect error too.
    if let Some(blocked) = ssrf::blocked_address(&error) {
        return AttemptResult::Blocked(blocked.to_string());
    }
    if error.is_timeout() {
        return AttemptResult::Timeout;
    }
    let message = describe_chain(&error);
    if error.is_connect() {
        AttemptResult::Connect(message)
    } else {
        AttemptResult::Other(message)
    }
}

/// "outer: cause: root cause". reqwest's own text is terse ("error sending request"); the causes
/// say what happened ("Connection refused"). None of them holds the URL once it is stripped.
fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some layers repeat their cause's text in their own; say it once.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The values of the headers of a built request that are credentials: `Authorization` (the
/// target's auth header, or the `Basic` reqwest derives from the URL's user info), the signature,
/// and the target's custom headers. Protocol headers (`Content-Type`, `webhook-id`, ...) are not.
fn secret_header_values(sent: &HeaderMap, custom: &BTreeMap<String, String>) -> Vec<String> {
    let secret = |name: &HeaderName| {
        *name == AUTHORIZATION
            || name.as_str() == WEBHOOK_SIGNATURE
            || custom.keys().any(|c| c.eq_ignore_ascii_case(name.as_str()))
    };
    sent.iter()
        .filter(|(name, _)| secret(name))
        .map(|(_, value)| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect()
}

/// Reads up to [`MAX_BODY`] bytes of the answer; returns them (lossy UTF-8, empty for an empty
/// body) and whether that is the whole body. Errors are ignored: the status has already said what
/// the receiver thinks, and a broken body only costs the pooled connection.
async fn drain(response: &mut reqwest::Response) -> (String, bool) {
    let mut kept = Vec::new();
    let mut complete = false;
    while kept.len() < MAX_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY - kept.len();
                if chunk.len() > room {
                    kept.extend_from_slice(&chunk[..room]);
                    break;
                }
                kept.extend_from_slice(&chunk);
            }
            Ok(None) => {
                complete = true;
                break;
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), complete)
}

/// `Retry-After` as a delay from `now`: delta-seconds, or an HTTP-date (a past date means "now").
/// Anything else is ignored.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time"; the schedule caps it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::http_client::{HttpClients, HttpSettings};

    fn clients(allow_private_targets: bool, timeout: Duration) -> HttpClients {
        HttpClients::new(&HttpSettings {
            timeout,
            allow_private_targets,
            user_agent: "regrelay/test".into(),
            pool_idle_per_host: 2,
        })
        .unwrap()
    }

    fn request<'a>(
        client: &'a reqwest::Client,
        url: &'a str,
        headers: &'a BTreeMap<String, String>,
        allow_private: bool,
    ) -> AttemptRequest<'a> {
        AttemptRequest {
            client,
            method: reqwest::Method::POST,
            url,
            body: b"{}".to_vec(),
            content_type: "application/json",
            vendor_headers: None,
            credentials: &[],
            auth_header: None,
            headers,
            delivery_id: "msg_1",
            signing: None,
            allow_private,
        }
    }

    /// A one-connection HTTP server on 127.0.0.1: answers `answer` to the first request and
    /// returns the raw request text it read (empty if no one connected).
    async fn one_shot_server(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = tokio::spawn(async move {
            let accepted =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
            let Ok(Ok((mut socket, _))) = accepted else {
                return String::new();
            };
            let mut buffer = vec![0u8; 16 * 1024];
            let mut request = Vec::new();
            // Read the head and a small body; good enough for these tests.
            loop {
                let n = socket.read(&mut buffer).await.unwrap_or(0);
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request);
                if n == 0 || (text.contains("\r\n\r\n") && text.ends_with("{}")) {
                    break;
                }
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            let _ = socket.shutdown().await;
            String::from_utf8_lossy(&request).into_owned()
        });
        (format!("http://127.0.0.1:{port}/hook"), handle)
    }

    #[tokio::test]
    async fn a_private_literal_address_is_blocked_and_nothing_is_sent() {
        let (url, server) = one_shot_server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let clients = clients(false, Duration::from_secs(2));
        let headers = BTreeMap::new();
        let (result, _) = send(request(clients.for_target(false), &url, &headers, false)).await;
        assert!(
            matches!(&result, AttemptResult::Blocked(m) if m.contains("127.0.0.1")),
            "{result:?}"
        );
        assert_eq!(server.await.unwrap(), "", "the receiver got no connection");
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_blocked() {
        let clients = clients(false, Duration::from_secs(2));
        let headers = BTreeMap::new();
        // Refused by `check_url` before any connection (the resolver half is tested in `ssrf`
        // and `http_client`).
        let (result, _) = send(request(
            clients.for_target(false),
            "http://localhost:9/",
            &headers,
            false,
        ))
        .await;
        assert!(
            matches!(&result, AttemptResult::Blocked(m) if m.contains("localhost")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn headers_signature_and_retry_after_are_handled() {
        let (url, server) = one_shot_server(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 2\r\n\r\nno",
        )
        .await;
        let clients = clients(true, Duration::from_secs(2));
        let mut headers = BTreeMap::new();
        headers.insert("X-Team".to_owned(), "registry".to_owned());
        headers.insert("Content-Type".to_owned(), "text/plain".to_owned());
        headers.insert("Content-Length".to_owned(), "999".to_owned());
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut req = request(clients.for_target(false), &url, &headers, true);
        req.auth_header = Some("Token abc");
        req.signing = Some(&key);
        let (result, _) = send(req).await;
        assert_eq!(
            result,
            AttemptResult::Response {
                status: 429,
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let raw = server.await.unwrap().to_ascii_lowercase();
        assert!(raw.starts_with("post /hook http/1.1"), "{raw}");
        assert!(
            raw.contains("content-type: application/json\r\n"),
            "protocol header wins: {raw}"
        );
        assert!(!raw.contains("text/plain"), "{raw}");
        assert!(raw.contains("content-length: 2\r\n"), "{raw}");
        assert!(raw.contains("authorization: token abc\r\n"), "{raw}");
        assert!(raw.contains("x-team: registry\r\n"), "{raw}");
        assert!(raw.contains("user-agent: regrelay/test\r\n"), "{raw}");
        assert!(raw.contains("webhook-id: msg_1\r\n"), "{raw}");
        assert!(raw.contains("webhook-timestamp: "), "{raw}");
        assert!(raw.contains("webhook-signature: v1,"), "{raw}");
    }

    #[tokio::test]
    async fn unsigned_requests_carry_the_id_but_no_signature() {
        let (url, server) = one_shot_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let clients = clients(true, Duration::from_secs(2));
        let headers = BTreeMap::new();
        let (result, _) = send(request(clients.for_target(false), &url, &headers, true)).await;
        assert_eq!(
            result,
            AttemptResult::Response {
                status: 204,
                retry_after: None
            }
        );
        let raw = server.await.unwrap().to_ascii_lowercase();
        assert!(raw.contains("webhook-id: msg_1\r\n"), "{raw}");
        assert!(!raw.contains("webhook-timestamp"), "{raw}");
        assert!(!raw.contains("webhook-signature"), "{raw}");
        assert!(!raw.contains("authorization"), "{raw}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, server) = one_shot_server(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let clients = clients(true, Duration::from_secs(2));
        let headers = BTreeMap::new();
        let (result, _) = send(request(clients.for_target(false), &url, &headers, true)).await;
        assert!(
            matches!(result, AttemptResult::Response { status: 302, .. }),
            "{result:?}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn transport_failures_are_mapped_without_secrets() {
        let clients = clients(true, Duration::from_millis(300));
        let headers = BTreeMap::new();

        // Nothing listens: connect error, and the message has neither the query nor the user info.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://user:pw@127.0.0.1:{port}/x?token=s3cret");
        let (result, _) = send(request(clients.for_target(false), &url, &headers, true)).await;
        match &result {
            AttemptResult::Connect(message) => {
                assert!(
                    !message.contains("s3cret") && !message.contains("pw@"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }

        // Accepts and never answers: timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(socket);
        });
        let (result, elapsed) =
            send(request(clients.for_target(false), &url, &headers, true)).await;
        assert_eq!(result, AttemptResult::Timeout);
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        hold.abort();

        // Invalid inputs: Other, naming the problem but not the value.
        let (result, _) = send(request(
            clients.for_target(false),
            "not a url",
            &headers,
            true,
        ))
        .await;
        assert!(
            matches!(&result, AttemptResult::Other(m) if m.contains("invalid target address")),
            "{result:?}"
        );
        let (result, _) = send(request(
            clients.for_target(false),
            "ftp://example.com/",
            &headers,
            true,
        ))
        .await;
        assert!(
            matches!(&result, AttemptResult::Other(m) if m.contains("scheme")),
            "{result:?}"
        );
        let mut bad = BTreeMap::new();
        bad.insert("X-Token".to_owned(), "line\nbreak-s3cret".to_owned());
        let (result, _) = send(request(
            clients.for_target(false),
            "http://127.0.0.1:9/",
            &bad,
            true,
        ))
        .await;
        match &result {
            AttemptResult::Other(message) => {
                assert!(
                    message.contains("x-token") && !message.contains("s3cret"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_values() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let table = [
            ("0", Some(Duration::ZERO)),
            ("120", Some(Duration::from_secs(120))),
            (" 5 ", Some(Duration::from_secs(5))),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            // 2023-11-14T22:13:20Z is `now`; ten seconds later, and one day earlier.
            (
                "Tue, 14 Nov 2023 22:13:30 GMT",
                Some(Duration::from_secs(10)),
            ),
            ("Mon, 13 Nov 2023 22:13:20 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in table {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }
}
