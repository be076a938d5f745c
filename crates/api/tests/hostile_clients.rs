//! Slow and odd clients (issue 11, item 4), against the real server loop on port 0, the real
//! PostgreSQL and RabbitMQ: slow request heads and idle connections are closed, the connection cap
//! holds new clients back, invented methods add no metric series, every error answer has Harbor's
//! body, control characters answer 400 (not PostgreSQL's 500), `auth_header` is checked when it is
//! written, quoted text is bounded, and a policy's maxima hold.
//!
//! Waits on the server are bounded guards (a test that would hang fails instead), never timing
//! assertions.

mod common;

use std::time::Duration;

use common::{DatabaseChoice, TestApi};
use regrelay_api::ServerSettings;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLICIES: &str = "/api/v2.0/projects/lib/webhook/policies";

/// How long a test waits for the server to close or answer before it fails.
const GUARD: Duration = Duration::from_secs(10);

async fn setup_with(
    name: &'static str,
    server: ServerSettings,
) -> (regrelay_testkit::TestBroker, TestApi) {
    setup_until(name, server, std::future::pending()).await
}

async fn setup_until(
    name: &'static str,
    server: ServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (regrelay_testkit::TestBroker, TestApi) {
    let broker = regrelay_testkit::TestBroker::new(name).await;
    let api = TestApi::start_with(
        regrelay_testkit::amqp_url(),
        broker.topology.clone(),
        DatabaseChoice::Fresh(name),
        server,
        shutdown,
    )
    .await;
    (broker, api)
}

fn settings() -> ServerSettings {
    ServerSettings::with_defaults(Duration::from_secs(1))
}

fn addr(api: &TestApi) -> String {
    api.base.trim_start_matches("http://").to_owned()
}

fn policy(address: &str) -> Value {
    json!({
        "name": "hook",
        "event_types": ["PUSH_ARTIFACT"],
        "targets": [{"type": "http", "address": address}],
        "enabled": true
    })
}

/// Reads until the server closes the connection (EOF or reset); everything read is returned.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one complete keep-alive request and reads its response (headers and a small body).
async fn request_on(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn connections_trickling_headers_are_closed() {
    let mut server = settings();
    server.header_read_timeout = Duration::from_millis(500);
    server.idle_timeout = Duration::from_millis(500);
    let (_broker, api) = setup_with("hostile-slow-headers", server).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let addr = addr(&api);
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .unwrap();
            // One header byte every 100 ms: bytes keep moving, the head never completes in time.
            let closed = async {
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(_) => continue,
                        },
                        () = tokio::time::sleep(Duration::from_millis(100)) => {
                            if stream.write_all(b"X").await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::time::timeout(GUARD, closed).await.is_ok()
        }));
    }
    for client in clients {
        assert!(
            client.await.unwrap(),
            "a connection trickling its headers was still open after {GUARD:?}"
        );
    }
    // The server still serves.
    assert_eq!(api.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let mut server = settings();
    // Far longer than the guard: only the idle timeout can close the connection in time.
    server.header_read_timeout = Duration::from_secs(60);
    server.idle_timeout = Duration::from_millis(300);
    let (_broker, api) = setup_with("hostile-idle", server).await;
    let mut stream = TcpStream::connect(addr(&api)).await.unwrap();
    let answer = request_on(&mut stream, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rest = tokio::time::timeout(GUARD, read_until_closed(&mut stream))
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn over_the_connection_cap_new_clients_wait_until_one_closes() {
    let mut server = settings();
    server.max_connections = 2;
    server.header_read_timeout = Duration::from_secs(60);
    server.idle_timeout = Duration::from_secs(60);
    let (_broker, api) = setup_with("hostile-cap", server).await;
    let mut first = TcpStream::connect(addr(&api)).await.unwrap();
    let mut second = TcpStream::connect(addr(&api)).await.unwrap();
    assert!(request_on(&mut first, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(request_on(&mut second, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));

    // The third connects (the kernel's backlog) but is not served while two are open.
    let mut third = TcpStream::connect(addr(&api)).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a connection over the cap was served");

    drop(first);
    let n = tokio::time::timeout(GUARD, third.read(&mut buf))
        .await
        .expect("the waiting client was not served after a connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The connection loop keeps graceful shutdown: after the signal, a request in flight is still
/// answered, idle connections are closed, and `serve` returns.
#[tokio::test]
async fn on_shutdown_a_request_in_flight_finishes_and_serve_returns() {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = ServerSettings::with_defaults(Duration::from_secs(30));
    server.idle_timeout = Duration::from_secs(10);
    let (_broker, api) = setup_until("hostile-shutdown", server, async move {
        let _ = stop_rx.await;
    })
    .await;
    let mut idle = TcpStream::connect(addr(&api)).await.unwrap();
    assert!(request_on(&mut idle, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(addr(&api)).await.unwrap();
    let body = "[]";
    // `Expect: 100-continue`: the server's `100 Continue` says the handler is reading the body,
    // so the request is in flight when the shutdown comes.
    busy.write_all(
        format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            common::TOKEN,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(GUARD, busy.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stop_tx.send(()).unwrap();
    // The idle connection is closed at once; that is also how the test knows the server stopped.
    tokio::time::timeout(GUARD, read_until_closed(&mut idle))
        .await
        .expect("an idle connection stayed open after shutdown");
    busy.write_all(body.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(GUARD, read_until_closed(&mut busy))
        .await
        .expect("the request in flight was not answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    tokio::time::timeout(GUARD, api.server)
        .await
        .expect("serve did not return after its connections closed")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr_of(&api.base)).await.is_err());
}

fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// A request whose body never arrives runs into `request_timeout`: the timeout layer's 408 has
/// Harbor's body.
#[tokio::test]
async fn the_request_timeout_answers_408_with_harbors_body() {
    let mut server = settings();
    server.request_timeout = Duration::from_millis(300);
    let (_broker, api) = setup_with("hostile-408", server).await;
    let mut stream = TcpStream::connect(addr(&api)).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
                common::TOKEN
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(GUARD, read_until_closed(&mut stream))
        .await
        .expect("no answer to a request past its timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(body["errors"][0]["code"], "REQUEST_TIMEOUT", "{body}");
}

fn series(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .count()
}

#[tokio::test]
async fn invented_methods_add_at_most_one_series() {
    let (_broker, api) = setup_with("hostile-methods", settings()).await;
    // Warm up: the scrape's own request is counted after it.
    api.get("/metrics").await;
    let (_, before) = api.get("/metrics").await;
    for i in 0..300 {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let reply = api.admin(method, "/healthz", None).await;
        assert_eq!(reply.status, 405, "{}", reply.text);
        assert_eq!(reply.json()["errors"][0]["code"], "METHOD_NOT_ALLOWED");
    }
    let (_, after) = api.get("/metrics").await;
    for name in [
        "regrelay_http_requests_total",
        "regrelay_http_request_duration_seconds_count",
    ] {
        let added = series(&after, name) - series(&before, name);
        assert!(
            added <= 1,
            "{name}: 300 invented methods added {added} series"
        );
    }
    assert!(
        after.contains(
            r#"regrelay_http_requests_total{method="other",route="/healthz",status="405"} 300"#
        ),
        "{after}"
    );
}

#[tokio::test]
async fn every_error_answer_has_harbors_body() {
    let (_broker, api) = setup_with("hostile-bodies", settings()).await;
    let check = |reply: &common::Reply, status: u16, code: &str| {
        assert_eq!(reply.status, status, "{}", reply.text);
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{}",
            reply.text
        );
        assert_eq!(reply.json()["errors"][0]["code"], code, "{}", reply.text);
        assert!(!reply.message().is_empty(), "{}", reply.text);
    };
    check(
        &api.admin(Method::GET, "/no/such/path", None).await,
        404,
        "NOT_FOUND",
    );
    let not_allowed = api.admin(Method::DELETE, "/healthz", None).await;
    check(&not_allowed, 405, "METHOD_NOT_ALLOWED");
    check(
        &api.admin(Method::PATCH, POLICIES, None).await,
        405,
        "METHOD_NOT_ALLOWED",
    );
    // Path: not UTF-8 after percent-decoding.
    check(
        &api.admin(Method::GET, "/api/v2.0/projects/%FF/webhook/policies", None)
            .await,
        400,
        "BAD_REQUEST",
    );
    // Query: a parameter given twice.
    check(
        &api.admin(Method::GET, &format!("{POLICIES}?page=1&page=2"), None)
            .await,
        400,
        "BAD_REQUEST",
    );
    // A body over the default limit of a test delivery.
    let huge = api
        .client
        .post(format!("{}/api/v1/system/webhook/policies/test", api.base))
        .basic_auth(common::ADMIN_USER, Some(common::ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    let huge = common::Reply {
        status: huge.status().as_u16(),
        headers: huge.headers().clone(),
        text: huge.text().await.unwrap(),
    };
    check(&huge, 413, "PAYLOAD_TOO_LARGE");
    // A JSON body with the wrong content type.
    let wrong_type = api
        .client
        .put(format!("{}/api/v2.0/configurations", api.base))
        .basic_auth(common::ADMIN_USER, Some(common::ADMIN_PASSWORD))
        .body(r#"{"notification_enable": true}"#)
        .send()
        .await
        .unwrap();
    let wrong_type = common::Reply {
        status: wrong_type.status().as_u16(),
        headers: wrong_type.headers().clone(),
        text: wrong_type.text().await.unwrap(),
    };
    check(&wrong_type, 400, "BAD_REQUEST");
}

#[tokio::test]
async fn control_characters_answer_400_not_500() {
    let (_broker, api) = setup_with("hostile-control", settings()).await;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = policy("https://ci.example.com/hook");
        change(&mut body);
        body
    };
    let cases: Vec<(&str, Value)> = vec![
        ("name", with(&|b| b["name"] = json!("a\u{0}b"))),
        ("name", with(&|b| b["name"] = json!("a\nb"))),
        ("description", with(&|b| b["description"] = json!("x\u{0}"))),
        (
            "address",
            with(&|b| b["targets"][0]["address"] = json!("https://ci.example.com/a\u{0}b")),
        ),
        (
            "address",
            with(&|b| b["targets"][0]["address"] = json!("https://ci.exam\nple.com/")),
        ),
        (
            "auth_header",
            with(&|b| b["targets"][0]["auth_header"] = json!("Bearer \u{0}")),
        ),
        (
            "secret",
            with(&|b| b["targets"][0]["secret"] = json!("s\u{0}")),
        ),
        (
            "header",
            with(&|b| b["targets"][0]["headers"] = json!({"X-A": "v\u{0}"})),
        ),
        (
            "filter",
            with(&|b| b["filters"] = json!({"repositories": ["a\u{0}"]})),
        ),
        (
            "filter",
            with(&|b| b["filters"] = json!({"tags": ["v1\u{7}"]})),
        ),
    ];
    for (field, body) in cases {
        let reply = api.admin(Method::POST, POLICIES, Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{field}: {body} -> {}", reply.text);
        assert_eq!(reply.json()["errors"][0]["code"], "BAD_REQUEST");
    }
    // A description may span lines.
    let multi_line = with(&|b| b["description"] = json!("line one\nline two\tend"));
    let reply = api.admin(Method::POST, POLICIES, Some(multi_line)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);

    // The `q` filter, on policies and on executions.
    for path in [
        format!("{POLICIES}?q=name%3Da%00b"),
        format!("{POLICIES}?q=name%3D~a%0Ab"),
        "/api/v1/system/webhook/policies?q=name%3Da%00".to_owned(),
        format!("{POLICIES}/1/executions?q=event_type%3Da%00"),
    ] {
        let reply = api.admin(Method::GET, &path, None).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert!(
            reply.message().contains("control character"),
            "{}",
            reply.text
        );
    }
    // A project name in the path: list, create, read, history.
    let project = "/api/v2.0/projects/li%00b/webhook";
    for (method, path, body) in [
        (Method::GET, format!("{project}/policies"), None),
        (
            Method::POST,
            format!("{project}/policies"),
            Some(policy("https://ci.example.com/hook")),
        ),
        (Method::GET, format!("{project}/policies/1"), None),
        (
            Method::GET,
            format!("{project}/policies/1/executions"),
            None,
        ),
        (Method::GET, format!("{project}/lasttrigger"), None),
        (
            Method::POST,
            format!("{project}/policies/test"),
            Some(policy("https://ci.example.com/hook")),
        ),
    ] {
        let reply = api.admin(method.clone(), &path, body).await;
        assert_eq!(reply.status, 400, "{method} {path}: {}", reply.text);
        assert!(
            reply.message().contains("control character"),
            "{}",
            reply.text
        );
    }
}

#[tokio::test]
async fn auth_header_and_custom_headers_are_checked_when_written() {
    let (_broker, api) = setup_with("hostile-auth-header", settings()).await;
    let mut body = policy("https://ci.example.com/hook");
    body["targets"][0]["auth_header"] = json!("a\nb");
    let reply = api.admin(Method::POST, POLICIES, Some(body.clone())).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.message(),
        "invalid auth_header: header values must be visible ASCII without line breaks"
    );
    // The same on PUT.
    let created = api
        .admin(
            Method::POST,
            POLICIES,
            Some(policy("https://ci.example.com/hook")),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let location = created.header("location").unwrap().to_owned();
    body["targets"][0]["auth_header"] = json!("a\r\nX-Injected: 1");
    let reply = api.admin(Method::PUT, &location, Some(body.clone())).await;
    assert_eq!(reply.status, 400, "{}", reply.text);

    body["targets"][0]["auth_header"] = json!("Bearer ok");
    body["targets"][0]["headers"] = json!({"Bad Name": "x"});
    assert_eq!(
        api.admin(Method::PUT, &location, Some(body.clone()))
            .await
            .status,
        400
    );
    body["targets"][0]["headers"] = json!({"X-Ok": "line\rbreak"});
    assert_eq!(
        api.admin(Method::PUT, &location, Some(body.clone()))
            .await
            .status,
        400
    );
    body["targets"][0]["headers"] = json!({"X-Ok": "fine value"});
    let reply = api.admin(Method::PUT, &location, Some(body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn text_quoted_in_error_messages_is_bounded() {
    let (_broker, api) = setup_with("hostile-echo", settings()).await;
    let long_sort = "\u{e9}".repeat(5000); // multi-byte: a byte-index cut would panic
    const SYSTEM: &str = "/api/v1/system/webhook/policies";
    let paths = [
        format!("{SYSTEM}?sort={long_sort}"),
        format!("{SYSTEM}?page={}", "9".repeat(5000)),
        format!("{SYSTEM}?q={}", "x".repeat(5000)),
        format!("{POLICIES}/{}", "1x".repeat(2000)),
        format!("/no/such/{}", "\u{e9}".repeat(3000)),
    ];
    for path in paths {
        let reply = api.admin(Method::GET, &path, None).await;
        assert!(
            (400..500).contains(&reply.status),
            "{path}: {}",
            reply.status
        );
        let message = reply.message();
        assert!(
            message.chars().count() <= 300,
            "{} characters: {message}",
            message.chars().count()
        );
        assert!(message.contains('\u{2026}'), "{message}");
    }
    // A long address in a policy body.
    let address = format!("ftp{}://example.com/", "s".repeat(1000));
    let reply = api
        .admin(Method::POST, POLICIES, Some(policy(&address)))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(
        reply.message().chars().count() <= 300,
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn a_policy_has_maxima() {
    let (_broker, api) = setup_with("hostile-maxima", settings()).await;
    let targets = |n: usize| {
        (0..n)
            .map(|i| json!({"type": "http", "address": format!("https://ci.example.com/{i}")}))
            .collect::<Vec<_>>()
    };
    let mut body = policy("https://ci.example.com/hook");
    body["targets"] = json!(targets(33));
    let reply = api.admin(Method::POST, POLICIES, Some(body.clone())).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.message(), "too many targets: at most 32");
    body["targets"] = json!(targets(32));
    let reply = api.admin(Method::POST, POLICIES, Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"filters": {"tags": (0..65).map(|i| format!("v{i}")).collect::<Vec<_>>()}}),
            "too many tag filters: at most 64",
        ),
        (
            json!({"filters": {"repositories": ["a".repeat(257)]}}),
            "a repository filter is too long: at most 256 characters",
        ),
        (
            json!({"headers": (0..33).map(|i| (format!("X-H{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "too many headers on a target: at most 32",
        ),
        (
            json!({"headers": {"X-Big": "v".repeat(4097)}}),
            "the value of header X-Big is too long: at most 4096 bytes",
        ),
        (
            json!({"auth_header": "v".repeat(4097)}),
            "auth_header is too long: at most 4096 bytes",
        ),
        (
            json!({"description": "d".repeat(4097)}),
            "description is too long: at most 4096 characters",
        ),
    ];
    for (change, message) in cases {
        let mut body = policy("https://ci.example.com/hook");
        body["name"] = json!("other");
        for (key, value) in change.as_object().unwrap() {
            match key.as_str() {
                "headers" | "auth_header" => body["targets"][0][key] = value.clone(),
                _ => body[key] = value.clone(),
            }
        }
        let reply = api.admin(Method::POST, POLICIES, Some(body)).await;
        assert_eq!(reply.status, 400, "{message}: {}", reply.text);
        assert_eq!(reply.message(), message);
    }
}
