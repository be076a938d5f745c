//! Test harness shared by regrelay's integration tests.
//!
//! - [`TestBroker`]: a unique queue prefix on the machine's real RabbitMQ, read back with `basic_get`,
//!   and deleted when the test ends (also when it fails).
//! - [`TcpProxy`]: a TCP forwarder a test controls, to cut a live connection, refuse new ones or
//!   hold the server's replies (a slow broker), so a broker outage is simulated without touching
//!   the shared RabbitMQ.
//! - [`unused_port`]: a local port nothing listens on, for "unreachable" cases.
//! - [`TestReceiver`]: a real HTTP receiver on 127.0.0.1 with scripted answers.
//! - [`TestDatabase`]: a fresh database on the machine's real PostgreSQL, dropped when the test ends.
//! - [`vendors`]: fakes of the chat vendors' APIs (Telegram, Teams, Discord, DingTalk, Feishu,
//!   WeCom) that check requests as the vendors do.
//!
//! The services are found at `REGRELAY_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! and `REGRELAY_TEST_DATABASE_ADMIN_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{Channel, Connection, ConnectionProperties};
use regrelay_producer::Topology;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub mod database;
pub mod receiver;
pub mod tls;
pub mod vendors;

pub use database::{admin_database_url, TestDatabase};
pub use lapin::message::BasicGetMessage;
pub use receiver::{ReceivedRequest, TestReceiver};
pub use tls::{TestCa, TestCert, TlsProxy};

/// The broker URL tests use.
pub fn amqp_url() -> String {
    std::env::var("REGRELAY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A prefix no other test run uses: `rrtest-<name>-<8 hex>`.
pub fn unique_prefix(name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("rrtest-{name}-{}", &id[..8])
}

/// A local TCP port that nothing listens on (bound, then released).
pub fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One test's slice of the real broker.
pub struct TestBroker {
    pub topology: Topology,
    connection: Connection,
    channel: Channel,
}

impl TestBroker {
    pub async fn new(name: &str) -> Self {
        let topology = Topology::new(unique_prefix(name)).expect("valid prefix");
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/services.sh starts it)");
        let channel = connection.create_channel().await.expect("open channel");
        Self {
            topology,
            connection,
            channel,
        }
    }

    pub fn prefix(&self) -> &str {
        self.topology.prefix()
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares the topology (as the service would at start-up).
    pub async fn declare(&self) {
        self.topology
            .declare(&self.channel)
            .await
            .expect("declare topology");
    }

    /// Takes (and acks) up to `n` messages from `queue`, waiting up to `wait` for them to arrive.
    pub async fn take(&self, queue: &str, n: usize, wait: Duration) -> Vec<BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut taken = Vec::new();
        while taken.len() < n {
            let Some(message) = self.get_until(queue, deadline).await else {
                break;
            };
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            taken.push(message);
        }
        taken
    }

    /// Takes one message from `queue` and puts it back (nack with requeue), as a consumer that
    /// dies holding it would: the broker delivers it again marked `redelivered`. False when none
    /// arrived within `wait`.
    pub async fn put_back(&self, queue: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let Some(message) = self.get_until(queue, deadline).await else {
            return false;
        };
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
        true
    }

    /// One unsettled message of `queue`, polling until `deadline`.
    async fn get_until(
        &self,
        queue: &str,
        deadline: tokio::time::Instant,
    ) -> Option<BasicGetMessage> {
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic_get");
            match got {
                Some(message) => return Some(message),
                None if tokio::time::Instant::now() >= deadline => return None,
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// How many messages wait in `queue` (0 when it does not exist).
    pub async fn depth(&self, queue: &str) -> u32 {
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let channel = self.connection.create_channel().await.expect("channel");
        let depth = match channel
            .queue_declare(queue.into(), options, Default::default())
            .await
        {
            Ok(queue) => queue.message_count(),
            Err(_) => 0,
        };
        let _ = channel.close(200, "done".into()).await;
        depth
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // Delete this test's queues and exchanges even when the test failed. Drop cannot await, so a
        // short-lived thread with its own runtime does the work and is joined.
        let topology = self.topology.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(connection) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                for queue in topology.queues() {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for exchange in topology.exchanges() {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                let _ = connection.close(200, "test done".into()).await;
            });
        })
        .join();
    }
}

/// A TCP forwarder from a local port to `target`, under the test's control.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    /// While true, what the target sends is read but not passed on (see [`TcpProxy::hold_replies`]).
    holding: tokio::sync::watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    refusing: bool,
    connections: Vec<JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let (holding, held) = tokio::sync::watch::channel(false);
        let accept_state = state.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut guard = accept_state.lock().expect("proxy state");
                if guard.refusing {
                    drop(inbound);
                    continue;
                }
                let held = held.clone();
                guard.connections.push(tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        forward(inbound, outbound, held).await;
                    }
                }));
            }
        });
        Self {
            addr,
            state,
            holding,
            accept_task,
        }
    }

    /// While `hold` is true, the target's bytes are kept back (in order) and passed on once it is
    /// false again: a broker that stores but confirms late, without a closed connection.
    pub fn hold_replies(&self, hold: bool) {
        self.holding.send_replace(hold);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection, as a broker crash or network failure would.
    pub fn sever(&self) {
        let mut guard = self.state.lock().expect("proxy state");
        for task in guard.connections.drain(..) {
            task.abort();
        }
    }

    /// While refusing, new connections are closed at once (the broker is "down").
    pub fn set_refusing(&self, refusing: bool) {
        self.state.lock().expect("proxy state").refusing = refusing;
    }
}

/// Copies client → target as it comes, and target → client except while `held` says true.
async fn forward(
    inbound: TcpStream,
    outbound: TcpStream,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut target_read, mut target_write) = outbound.into_split();
    let upstream = tokio::io::copy(&mut client_read, &mut target_write);
    let downstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match target_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if held.wait_for(|holding| !holding).await.is_err() {
                return;
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.sever();
        self.accept_task.abort();
    }
}
