//! The regrelay processes one scenario runs against, started by the bench itself.
//!
//! Design constraints:
//! - Isolation: every scenario gets a fresh queue prefix (`bench-<random>`) and a fresh database
//!   (`bench_<random>`), so figures never include another run's backlog or history rows, and the
//!   bench never touches an installation's data.
//! - Clean-up always runs, also after an error: [`Cluster::teardown`] stops the processes (SIGTERM,
//!   then SIGKILL), deletes the prefix's queues and exchange, and drops the database. The children
//!   are also `kill_on_drop`, so a panic cannot leave them running.
//! - A child's stdout and stderr are always read: a pipe nobody reads fills up and blocks the child
//!   in `write`, which would look like a stalled service. The last lines are kept for error messages.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use regrelay_producer::Topology;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;

/// Lines of a child's output kept for an error message.
const TAIL_LINES: usize = 40;
/// How long a process may take to answer `/readyz` 200 after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The `regrelay` executable every process runs (see [`regrelay_binary`]).
    pub regrelay_bin: PathBuf,
    /// RabbitMQ URL (a secret: never printed).
    pub amqp_url: String,
    /// A PostgreSQL URL allowed to create and drop databases.
    pub database_admin_url: String,
    /// Consumer processes beside the one API process.
    pub consumers: usize,
    /// `REGRELAY_HISTORY_ENABLED`.
    pub history: bool,
    /// `REGRELAY_OTLP_ENDPOINT`, when set.
    pub otlp_endpoint: Option<String>,
    /// `REGRELAY_LOG_LEVEL`.
    pub log_level: String,
    /// Further `REGRELAY_*` settings of every started process (the soak's sweep interval).
    pub extra_env: Vec<(String, String)>,
}

/// A running set of regrelay processes and the scratch resources they use.
pub struct Cluster {
    /// The API's base URL (`http://127.0.0.1:<port>`).
    pub api_url: String,
    /// Bearer token for ingest, generated per cluster.
    pub ingest_token: String,
    /// Password of `admin`, generated per cluster.
    pub admin_password: String,
    /// The scratch database's URL (given to the ceilings too).
    pub database_url: String,
    /// Every started process (the API first).
    processes: Vec<Process>,
    /// The scratch database, dropped at teardown.
    database: Option<ScratchDatabase>,
    /// The queue prefix, whose queues are deleted at teardown.
    topology: Topology,
    amqp_url: String,
    /// Consumers started so far, for the next one's name.
    consumers_started: usize,
}

/// One child process.
pub struct Process {
    /// `api` or `consumer-<n>`, for reports.
    pub name: String,
    child: Child,
    /// `http://127.0.0.1:<port>` for `/readyz`.
    base: String,
    /// The last lines of stdout and stderr.
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// CPU time and memory of one process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcessSample {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// Resident set size now (`VmRSS`), in bytes.
    #[serde(skip)]
    pub rss_bytes: u64,
}

/// A database created for one run and dropped after it.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl ScratchDatabase {
    /// `CREATE DATABASE bench_<random>` through `admin_url`.
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let client = connect(admin_url).await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// `DROP DATABASE ... WITH (FORCE)`, so connections still open cannot block it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let client = connect(&self.admin_url).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("cannot drop database {}", self.name))?;
        Ok(())
    }
}

impl Cluster {
    /// Creates the database and starts the processes; waits until every one is ready. On error,
    /// whatever was already created is cleaned up before the error is returned.
    pub async fn start(settings: &ClusterSettings) -> anyhow::Result<Self> {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology::new(format!("bench-{}", &random[..12]))?;
        let mut cluster = Cluster {
            api_url: String::new(),
            ingest_token: format!("bench-ingest-{}", uuid::Uuid::new_v4().simple()),
            admin_password: format!("bench-admin-{}", uuid::Uuid::new_v4().simple()),
            database_url: String::new(),
            processes: Vec::new(),
            database: None,
            topology,
            amqp_url: settings.amqp_url.clone(),
            consumers_started: 0,
        };
        match cluster.start_inner(settings).await {
            Ok(()) => Ok(cluster),
            Err(error) => {
                cluster.teardown().await;
                Err(error)
            }
        }
    }

    async fn start_inner(&mut self, settings: &ClusterSettings) -> anyhow::Result<()> {
        let database = ScratchDatabase::create(&settings.database_admin_url).await?;
        self.database_url = database.url.clone();
        self.database = Some(database);
        let exe = &settings.regrelay_bin;
        // The API first: it applies the migrations; consumers started meanwhile would wait anyway.
        let api = self.spawn(exe, "api", "api", settings)?;
        self.api_url = api.base.clone();
        self.processes.push(api);
        for _ in 0..settings.consumers {
            self.consumers_started += 1;
            let name = format!("consumer-{}", self.consumers_started);
            let consumer = self.spawn(exe, &name, "consumer", settings)?;
            self.processes.push(consumer);
        }
        let client = reqwest::Client::new();
        for process in &mut self.processes {
            process.wait_ready(&client).await?;
        }
        Ok(())
    }

    fn spawn(
        &self,
        exe: &Path,
        name: &str,
        role: &str,
        settings: &ClusterSettings,
    ) -> anyhow::Result<Process> {
        let port = free_port()?;
        let mut command = Command::new(exe);
        command.args(["serve", "--role", role]);
        // The bench's own environment may configure another installation: none of it applies here.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGRELAY_") {
                command.env_remove(&key);
            }
        }
        command
            .env("REGRELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("REGRELAY_AMQP_URL", &settings.amqp_url)
            .env("REGRELAY_QUEUE_PREFIX", self.topology.prefix())
            .env("REGRELAY_DATABASE_URL", &self.database_url)
            .env("REGRELAY_INGEST_TOKEN", &self.ingest_token)
            .env("REGRELAY_ADMIN_PASSWORD", &self.admin_password)
            .env("REGRELAY_ALLOW_PRIVATE_TARGETS", "true")
            .env("REGRELAY_HISTORY_ENABLED", settings.history.to_string())
            .env("REGRELAY_LOG_LEVEL", &settings.log_level)
            .env("REGRELAY_SHUTDOWN_TIMEOUT", "5s")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(endpoint) = &settings.otlp_endpoint {
            command.env("REGRELAY_OTLP_ENDPOINT", endpoint);
        }
        for (key, value) in &settings.extra_env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(drain(stdout, tail.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(drain(stderr, tail.clone()));
        }
        Ok(Process {
            name: name.to_owned(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            tail,
        })
    }

    /// The started processes (API first).
    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    /// The RabbitMQ URL the processes use (a secret: never print it).
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// The queue names of this cluster.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Stops every consumer process (SIGTERM, as an operator would); the API keeps accepting.
    pub async fn stop_consumers(&mut self) {
        for process in &mut self.processes {
            if process.name.starts_with("consumer") {
                process.stop().await;
            }
        }
        self.processes.retain(|p| !p.name.starts_with("consumer"));
    }

    /// Starts one more consumer process and waits until it is ready.
    pub async fn start_consumer(&mut self, settings: &ClusterSettings) -> anyhow::Result<()> {
        self.consumers_started += 1;
        let name = format!("consumer-{}", self.consumers_started);
        let mut consumer = self.spawn(&settings.regrelay_bin, &name, "consumer", settings)?;
        consumer.wait_ready(&reqwest::Client::new()).await?;
        self.processes.push(consumer);
        Ok(())
    }

    /// Fails with the process's last output when any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Ok(Some(status)) = process.child.try_wait() {
                bail!(
                    "regrelay {} exited ({status}); its last output:\n{}",
                    process.name,
                    process.tail()
                );
            }
        }
        Ok(())
    }

    /// Stops the processes, deletes the queues and drops the database. Problems are logged, not
    /// returned: clean-up must go on past each of them, and the run's result matters more.
    pub async fn teardown(mut self) {
        for process in &mut self.processes {
            process.stop().await;
        }
        if let Err(error) = delete_topology(&self.amqp_url, &self.topology).await {
            tracing::warn!(
                message = "Cannot delete the bench's queues.",
                prefix = self.topology.prefix(),
                error = format!("{error:#}")
            );
        }
        if let Some(database) = self.database.take() {
            if let Err(error) = database.drop_database().await {
                tracing::warn!(
                    message = "Cannot drop the bench database.",
                    error = format!("{error:#}")
                );
            }
        }
    }
}

impl Process {
    /// Reads CPU time and peak RSS from `/proc/<pid>`; `None` once the process is gone.
    pub fn sample(&self) -> Option<ProcessSample> {
        sample_pid(self.child.id()?)
    }

    /// `http://127.0.0.1:<port>/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base)
    }

    fn tail(&self) -> String {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "regrelay {} exited during start-up ({status}); its last output:\n{}",
                    self.name,
                    self.tail()
                );
            }
            let ready = client
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "regrelay {} not ready within {READY_TIMEOUT:?}; its last output:\n{}",
                    self.name,
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
            tracing::warn!(message = "regrelay did not stop after SIGTERM; killing it.", process = %self.name);
        }
        let _ = self.child.kill().await;
    }
}

/// Keeps the last [`TAIL_LINES`] lines of a child's stream, reading until end of file.
async fn drain(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut tail = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// The `regrelay` executable the bench starts: `explicit` (`--regrelay-bin` / `REGRELAY_BIN`) when
/// given, else `regrelay` in the directory of `own_exe` (this executable), where
/// `cargo build -p regrelay -p regrelay-bench` puts both. Fails with how to build or name it.
pub fn regrelay_binary(explicit: Option<&Path>, own_exe: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!(
                "--regrelay-bin / REGRELAY_BIN: {} is not a file; build regrelay with \
                 `cargo build --release -p regrelay`, or name its binary",
                path.display()
            );
        }
        return Ok(path.to_owned());
    }
    let beside = own_exe.with_file_name(format!("regrelay{}", std::env::consts::EXE_SUFFIX));
    if !beside.is_file() {
        bail!(
            "no regrelay binary at {}: build it next to this one with \
             `cargo build --release -p regrelay -p regrelay-bench` (or `cargo build -p regrelay` \
             for a debug bench), or name one with --regrelay-bin / REGRELAY_BIN",
            beside.display()
        );
    }
    Ok(beside)
}

/// Reads `/proc/<pid>/stat` (fields 14 and 15: utime and stime in clock ticks) and
/// `/proc/<pid>/status` (`VmHWM`).
pub fn sample_pid(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(ProcessSample {
        cpu_seconds: ticks as f64 / per_second as f64,
        peak_rss_bytes: parse_status_kb(&status, "VmHWM:")?,
        rss_bytes: parse_status_kb(&status, "VmRSS:").unwrap_or(0),
    })
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM:   12345 kB` (for `field` `VmHWM:`) in bytes.
fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A port nothing listens on right now (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a port")?;
    Ok(listener.local_addr()?.port())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| anyhow!("cannot connect to PostgreSQL at {}: {e}", redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Deletes every queue and exchange of `topology` (retry buckets included; deleting one that was
/// never declared is not an error in RabbitMQ). A failed delete closes its channel, so the next
/// deletion opens a fresh one.
async fn delete_topology(amqp_url: &str, topology: &Topology) -> anyhow::Result<()> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| anyhow!("cannot connect to RabbitMQ: {e}"))?;
    let mut failed = Vec::new();
    let mut channel = connection.create_channel().await?;
    for queue in topology.queues() {
        if let Err(error) = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            failed.push(format!("{queue}: {error}"));
            channel = connection.create_channel().await?;
        }
    }
    for exchange in topology.exchanges() {
        if let Err(error) = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
        {
            failed.push(format!("{exchange}: {error}"));
            channel = connection.create_channel().await?;
        }
    }
    let _ = channel.close(200, "bench done".into()).await;
    let _ = connection.close(200, "bench done".into()).await;
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

/// `url` with its database replaced by `database` (`postgres://user@host:port/<database>?params`).
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    match query {
        Some(query) => format!("{scheme}://{authority}/{database}?{query}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

/// A URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_parsed() {
        let stat = "1234 (regrelay (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        let status =
            "Name:\tregrelay\nVmPeak:\t  200000 kB\nVmHWM:\t   31744 kB\nVmRSS:\t 30000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(31744 * 1024));
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(30000 * 1024));
        assert_eq!(parse_status_kb("Name: x\n", "VmHWM:"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample_pid(std::process::id()).unwrap();
        assert!(sample.peak_rss_bytes > 0);
        assert!(sample.cpu_seconds >= 0.0);
    }

    #[test]
    fn the_regrelay_binary_is_named_or_found_next_to_this_one() {
        let this = std::env::current_exe().unwrap();
        assert_eq!(
            regrelay_binary(Some(&this), Path::new("/x/y")).unwrap(),
            this
        );

        let error = regrelay_binary(Some(Path::new("/nonexistent/regrelay")), &this)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/nonexistent/regrelay is not a file"),
            "{error}"
        );

        let error = regrelay_binary(None, Path::new("/nonexistent/bin/regrelay-bench"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/bin/regrelay"), "{error}");
        assert!(
            error.contains("cargo build --release -p regrelay"),
            "{error}"
        );

        // A directory holding a `regrelay` file: found beside the bench's executable.
        let dir = std::env::temp_dir().join(format!("bench-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let regrelay = dir.join(format!("regrelay{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&regrelay, b"").unwrap();
        let found = regrelay_binary(None, &dir.join("regrelay-bench"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), regrelay);
    }

    #[test]
    fn database_is_replaced_and_passwords_redacted() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "b1"),
            "postgres://u:p@h:5432/b1?sslmode=disable"
        );
        assert!(!redact("postgres://u:secret@h/db").contains("secret"));
    }
}
