//! Black-box tests of the `regrelay` binary: start it as a user would (environment variables only),
//! talk to it over HTTP, read what it published from the real RabbitMQ, stop it with SIGTERM, or
//! kill it with SIGKILL in the middle of deliveries.

mod cluster;
mod delivery;
mod dlq;
mod policy_changes;
mod targets;
mod traces;

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use regrelay_testkit::{amqp_url, unused_port, TestBroker};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_regrelay");
const TOKEN: &str = "e2e-token";

/// A running `regrelay serve`, killed when dropped.
///
/// Its stdout and stderr are drained continuously into memory: a child whose pipe nobody reads
/// blocks in `write` once the 64 KiB pipe buffer is full, which looks exactly like a stalled consumer.
struct Service {
    child: Child,
    base: String,
    stdout: CapturedStream,
    stderr: CapturedStream,
}

/// Whether the test reads the service's stdout.
#[derive(Clone, Copy)]
enum StdoutReading {
    Drained,
    NeverRead,
}

/// What one of the child's output streams has written so far, read by a background thread.
struct CapturedStream {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl CapturedStream {
    fn drain(mut source: impl Read + Send + 'static) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n) = source.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        Self {
            bytes,
            reader: Some(reader),
        }
    }

    /// A stream nobody reads.
    fn empty() -> Self {
        Self {
            bytes: Arc::default(),
            reader: None,
        }
    }

    /// Everything written so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// Waits for end of file (the child has exited) and returns everything.
    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.text()
    }
}

/// How a stopped `regrelay serve` ended, and what it wrote.
struct Stopped {
    status: ExitStatus,
    stdout: String,
}

impl Service {
    fn start(prefix: &str, amqp: &str) -> Self {
        Self::start_with(prefix, amqp, &[], &[])
    }

    /// Starts `regrelay serve` with `args` and extra `env` over the basic environment.
    fn start_with(prefix: &str, amqp: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        Self::start_with_output(prefix, amqp, args, env, StdoutReading::Drained)
    }

    /// Like [`Service::start_with`], choosing whether anyone reads the service's stdout.
    fn start_with_output(
        prefix: &str,
        amqp: &str,
        args: &[&str],
        env: &[(&str, String)],
        reading: StdoutReading,
    ) -> Self {
        let port = unused_port();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REGRELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("REGRELAY_AMQP_URL", amqp)
            .env("REGRELAY_QUEUE_PREFIX", prefix)
            .env("REGRELAY_INGEST_TOKEN", TOKEN)
            .env("REGRELAY_ADMIN_PASSWORD", "e2e-admin-password")
            .env("REGRELAY_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "REGRELAY_DATABASE_URL") {
            // No database given: point at one nobody has, so nothing here touches shared data.
            command.env(
                "REGRELAY_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/none", unused_port()),
            );
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn regrelay");
        let stdout = match reading {
            StdoutReading::Drained => {
                CapturedStream::drain(child.stdout.take().expect("piped stdout"))
            }
            // The pipe stays open in `child` and is never read: once its buffer is full, every
            // write the service makes to stdout would block.
            StdoutReading::NeverRead => CapturedStream::empty(),
        };
        let stderr = CapturedStream::drain(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
        }
    }

    /// The last `lines` lines of the service's stdout and stderr, for a failure message.
    fn log_tail(&self, lines: usize) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            last_lines(&self.stdout.text(), lines),
            last_lines(&self.stderr.text(), lines)
        )
    }

    /// Waits until `/healthz` answers.
    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client.get(format!("{}/healthz", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("regrelay exited early with {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("regrelay did not become healthy");
    }

    /// The value of one metric series (`name{labels}` exactly as exposed), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(&mut self) -> Stopped {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
        let status = self.child.wait().expect("wait for regrelay");
        self.stderr.finish();
        Stopped {
            status,
            stdout: self.stdout.finish(),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn serve_accepts_an_event_and_stops_cleanly_on_sigterm() {
    let broker = TestBroker::new("e2e").await;
    let database = regrelay_testkit::TestDatabase::create("e2e").await;
    let mut service = Service::start_with(
        broker.prefix(),
        &amqp_url(),
        // The api role alone: no consumer takes the event before the test reads it.
        &["--role", "api"],
        &[("REGRELAY_DATABASE_URL", database.url.clone())],
    );
    service.wait_healthy().await;

    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let event = r#"{"type":"DELETE_ARTIFACT","occur_at":1680502598,"operator":"admin","event_data":{"resources":[{"digest":"sha256:2bb5","tag":"3.8","resource_url":"localhost/e2e/alpine:3.8"}],"repository":{"name":"alpine","namespace":"e2e","repo_full_name":"e2e/alpine","repo_type":"private"}},"x_extra":{"kept":true}}"#;
    let response = client
        .post(format!("{}/api/v1/events", service.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("x-request-id", "e2e-request-1")
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "e2e-request-1");
    let body: Value = response.json().await.unwrap();
    let id = body["event_ids"][0].as_str().unwrap().to_owned();

    let messages = broker
        .take(&broker.topology.events_queue(), 1, Duration::from_secs(5))
        .await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].delivery.data, event.as_bytes());
    assert_eq!(
        messages[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        id
    );

    let metrics = client
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("regrelay_events_published_total{event_type=\"DELETE_ARTIFACT\"} 1"));

    let output = service.terminate();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let logs = &output.stdout;
    assert!(logs.contains("regrelay stopped."), "{logs}");
    // The broker password and the ingest token never reach the logs.
    assert!(
        !logs.contains("guest:guest") && !logs.contains(TOKEN),
        "{logs}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_without_an_ingest_token() {
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("REGRELAY_LISTEN", format!("127.0.0.1:{}", unused_port()))
        .output()
        .expect("run regrelay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REGRELAY_INGEST_TOKEN"), "{stderr}");

    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("REGRELAY_INGEST_TOKEN", TOKEN)
        .output()
        .expect("run regrelay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REGRELAY_ADMIN_PASSWORD"), "{stderr}");
}

#[tokio::test]
async fn serve_reports_a_bad_configuration_value_by_key() {
    let output = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/regrelay.toml"])
        .env_clear()
        .output()
        .expect("run regrelay");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/regrelay.toml"));

    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("REGRELAY_INGEST_TOKEN", TOKEN)
        .env("REGRELAY_MAX_BODY_BYTES", "lots")
        .output()
        .expect("run regrelay");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .to_lowercase()
        .contains("max_body_bytes"));
}

#[tokio::test]
async fn serve_starts_while_the_broker_is_down_and_reports_not_ready() {
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", unused_port());
    let mut service = Service::start(&regrelay_testkit::unique_prefix("e2e-down"), &dead);
    service.wait_healthy().await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let output = service.terminate();
    assert!(output.status.success());
}

/// The last `lines` lines of `text` (for a failure message).
fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
