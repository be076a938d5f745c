//! Slow and odd clients (issue 11, item 4), against the real server loop on port 0, the real
//! PostgreSQL and RabbitMQ: slow request heads and idle connections are closed, the connection cap
//! holds new clients back, and shutdown stays graceful.
//!
//! Waits on the server are bounded guards (a test that would hang fails instead), never timing
//! assertions.

mod common;

use std::time::Duration;

use common::{DatabaseChoice, TestApi};
use regrelay_api::ServerSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
