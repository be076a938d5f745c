//! Sustained load (issue 16): the soak run (`--rate R --duration D`) and the backlog drain
//! (`--backlog N`), reported window by window as JSON lines.
//!
//! A soak run starts one api and the consumers with history and retention on at their defaults,
//! except `history_sweep_interval` (`--sweep-interval`, 1 min by default, so the sweep runs many
//! times in an hour). It sends at a fixed rate for the duration; the receiver answers `500` to a
//! share of requests (`--receiver-errors`, retried) and `400` to every `--reject-every`-th event
//! (dead-lettered), and every `--window` one JSON object goes to stdout: rates, latency, each
//! process's RSS and CPU per delivery, queue depths, history table and index sizes, dead tuples,
//! autovacuum runs and what the sweep deleted and how long it took. The last line is the summary.
//!
//! A drain run warms up, stops the consumers, accepts `--backlog` events as fast as ingest takes
//! them, starts one consumer and reports every window until everything is settled, while events
//! keep arriving at `--rate` so ingest's latency during the drain is measured too.
//!
//! Design constraints:
//! - Nothing here asserts a speed (benchmarks are not tests). The run fails only when something
//!   was lost (an accepted event neither delivered nor dead-lettered when the run ends) or refused.
//! - Latency is from the moment an event's request is sent to its first successful receipt: the
//!   send time travels in the event's tag (`s{n}-{µs}`), so nothing per event is kept in memory
//!   but one state byte in the receiver.
//! - Every figure is read from outside the processes: `/proc` for CPU and RSS, the processes'
//!   `/metrics` for the sweep and the retry buckets, passive declares for the main queues,
//!   `pg_stat_user_tables` and the size functions for the history tables, and (`host`) the
//!   machine's CPU, iowait and disk writes and PostgreSQL's checkpoints and WAL.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;
use tokio_postgres::NoTls;

use super::cluster::{Cluster, ClusterSettings, ProcessSample};
use super::host::{HostFigures, HostSample};
use super::load::{self, Endpoint};
use super::receiver::{new_histogram, soak_tag, Behaviour, Receiver};

/// The history tables whose size and vacuum state each window reports.
const HISTORY_TABLES: &[&str] = &["executions", "tasks", "task_logs"];
const MIB: f64 = 1024.0 * 1024.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakSettings {
    /// Events per second (soak), or of the trickle during a drain.
    pub rate: f64,
    /// How long to send at `rate` (soak only).
    pub duration: Duration,
    /// Events accepted with the consumers stopped before the drain (0: a soak run).
    pub backlog: usize,
    /// Report period.
    pub window: Duration,
    /// Events per ingest request while filling the backlog.
    pub batch: usize,
    /// Ingest requests in flight at once.
    pub concurrency: usize,
    /// Share of receiver answers that are `500`.
    pub error_rate: f64,
    /// Every n-th event is answered `400` and dead-lettered (0: none).
    pub reject_every: u64,
    /// `REGRELAY_HISTORY_SWEEP_INTERVAL` of the started processes.
    pub sweep_interval: Duration,
    /// Longest wait after sending for every accepted event to be settled.
    pub settle_timeout: Duration,
    /// Consumer processes (soak; a drain starts exactly one).
    pub consumers: usize,
}

/// One window, one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub window: usize,
    /// Seconds since the timed part began, at the window's end.
    pub elapsed_s: f64,
    /// `send`, `fill` (backlog, consumers stopped), `drain` or `settle` (after sending).
    pub phase: &'static str,
    pub accepted_per_sec: f64,
    /// Events answered other than `202` in this window.
    pub refused: u64,
    /// Ingest request latency (to the `202`), ms.
    pub ingest_ms: Option<Percentiles>,
    /// Events delivered for the first time in this window, and per second.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Events dead-lettered (answered `400` for the first time).
    pub dead_lettered: u64,
    /// Requests answered `500` on purpose (each one a retry).
    pub failed_answers: u64,
    pub duplicates: u64,
    /// From sending the event to its receipt, ms, over the events delivered in this window.
    pub latency_ms: Option<Percentiles>,
    pub processes: Vec<ProcessFigures>,
    pub queues: QueueFigures,
    pub history: Vec<TableFigures>,
    /// Autovacuum workers running at the window's end (`pg_stat_progress_vacuum`).
    pub vacuums_running: i64,
    pub sweep: SweepFigures,
    /// Retries and redeliveries in the window (from the consumers' metrics): what can repeat a
    /// delivery the receiver already has.
    pub repeats: RepeatFigures,
    /// The machine (CPU, iowait, steal, disk writes) and PostgreSQL's checkpoints and WAL.
    pub host: HostFigures,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    pub name: String,
    pub rss_mib: f64,
    /// Share of one CPU over the window.
    pub cpu_percent: f64,
    /// CPU time over the window per event delivered in it.
    pub cpu_ms_per_delivery: Option<f64>,
}

/// Messages ready in each queue at the window's end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueFigures {
    pub events: Option<u32>,
    pub deliveries: Option<u32>,
    pub dead_letter: Option<u32>,
    /// All retry buckets together (from the consumers' `regrelay_queue_messages`).
    pub retry: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableFigures {
    pub table: String,
    /// `pg_total_relation_size`: table, indexes and TOAST.
    pub total_mib: f64,
    /// `pg_indexes_size`.
    pub index_mib: f64,
    pub live_rows: i64,
    pub dead_rows: i64,
    /// Autovacuum and autoanalyze runs on the table during the window.
    pub autovacuums: i64,
    pub autoanalyzes: i64,
}

/// The retention sweep during the window (from the consumers' metrics).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SweepFigures {
    pub runs: f64,
    pub deleted_by_count: f64,
    pub deleted_by_age: f64,
    /// Time spent sweeping in the window.
    pub seconds: f64,
}

impl SweepFigures {
    /// Counted since `before`, clamped at zero (see [`RepeatFigures::since`]).
    fn since(self, before: Self) -> Self {
        Self {
            runs: (self.runs - before.runs).max(0.0),
            deleted_by_count: (self.deleted_by_count - before.deleted_by_count).max(0.0),
            deleted_by_age: (self.deleted_by_age - before.deleted_by_age).max(0.0),
            seconds: (self.seconds - before.seconds).max(0.0),
        }
    }
}

/// What can make the receiver see an event twice, counted in one window. A retry after a
/// timeout repeats a request the receiver may have answered; a redelivered message was put back
/// by a nack, a closed channel or a dead consumer (its attempt may have been made). And how the
/// consumers' acks travelled (messages per ack frame: the `multiple` acks of `ack_window`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct RepeatFigures {
    /// Retries scheduled because an attempt timed out (`reason="timeout"`).
    pub timeout_retries: f64,
    /// Retries for every other reason (the receiver's `500`s, refused connections, ...).
    pub other_retries: f64,
    /// Messages taken with the `redelivered` flag, both stages.
    pub redelivered: f64,
    /// Publishes of retry tasks and fanned-out tasks tried again after a broker nack or confirm
    /// timeout (`regrelay_outage_retries_total{call="publish_retry"|"publish_tasks"}`): a
    /// publish whose confirm was late may be in the queue twice.
    pub republished: f64,
    /// Consumer publishes whose confirms came later than `publish_confirm_timeout` and that
    /// waited on for them instead of publishing again (`regrelay_publish_confirms_late_total`).
    pub late_confirms: f64,
    /// Ack frames the consumers sent, both stages (`regrelay_ack_frames_total`).
    pub ack_frames: f64,
    /// Messages those frames acked (`regrelay_messages_acked_total`).
    pub messages_acked: f64,
    /// Messages whose ack could not be sent (`regrelay_ack_failures_total`): redelivered.
    pub ack_failures: f64,
}

impl RepeatFigures {
    /// The consumers' cumulative counters, summed over their metrics texts.
    fn totals(metrics: &[String]) -> Self {
        let mut totals = Self::default();
        for text in metrics {
            let retries = metric_sum(text, "regrelay_delivery_retries_scheduled_total", "");
            let timeouts = metric_sum(
                text,
                "regrelay_delivery_retries_scheduled_total",
                "reason=\"timeout\"",
            );
            totals.timeout_retries += timeouts;
            totals.other_retries += retries - timeouts;
            totals.redelivered += metric_sum(text, "regrelay_messages_redelivered_total", "");
            totals.republished += metric_sum(
                text,
                "regrelay_outage_retries_total",
                "call=\"publish_retry\"",
            ) + metric_sum(
                text,
                "regrelay_outage_retries_total",
                "call=\"publish_tasks\"",
            );
            totals.late_confirms += metric_sum(text, "regrelay_publish_confirms_late_total", "");
            totals.ack_frames += metric_sum(text, "regrelay_ack_frames_total", "");
            totals.messages_acked += metric_sum(text, "regrelay_messages_acked_total", "");
            totals.ack_failures += metric_sum(text, "regrelay_ack_failures_total", "");
        }
        totals
    }

    /// Counted since `before`; a restarted consumer's counters start again at zero, so the
    /// deltas are clamped at zero.
    fn since(self, before: Self) -> Self {
        Self {
            timeout_retries: (self.timeout_retries - before.timeout_retries).max(0.0),
            other_retries: (self.other_retries - before.other_retries).max(0.0),
            redelivered: (self.redelivered - before.redelivered).max(0.0),
            republished: (self.republished - before.republished).max(0.0),
            late_confirms: (self.late_confirms - before.late_confirms).max(0.0),
            ack_frames: (self.ack_frames - before.ack_frames).max(0.0),
            messages_acked: (self.messages_acked - before.messages_acked).max(0.0),
            ack_failures: (self.ack_failures - before.ack_failures).max(0.0),
        }
    }
}

/// The last line: totals and the figures issue 16 asks about.
#[derive(Debug, Serialize)]
pub struct SoakSummary {
    pub summary: bool,
    pub mode: &'static str,
    pub rate: f64,
    pub duration_s: f64,
    pub sweep_interval_s: f64,
    pub sent: usize,
    pub accepted: usize,
    pub refused: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    /// In the dead-letter queue at the end (should equal `dead_lettered`).
    pub dead_letter_queue: Option<u32>,
    /// Accepted but neither delivered nor dead-lettered when the run ended.
    pub lost: i64,
    pub duplicates: u64,
    /// Delivered/s over the windows of the timed phase: lowest and highest, as a share of the
    /// median (within ±10% is flat).
    pub delivered_per_sec_min: f64,
    pub delivered_per_sec_median: f64,
    pub delivered_per_sec_max: f64,
    /// p99 of the first and last ten windows of sending (the highest window p99 of each).
    pub p99_first_ms: Option<f64>,
    pub p99_last_ms: Option<f64>,
    /// RSS growth over the timed phase, by a least-squares line (MiB per hour).
    pub rss_trend_mib_per_hour: BTreeMap<String, f64>,
    /// History size (all three tables) at the end and its highest value.
    pub history_mib_end: f64,
    pub history_mib_max: f64,
    /// Longest time spent sweeping in one window, and the sweep interval.
    pub sweep_seconds_max: f64,
    pub problems: Vec<String>,
}

/// What the sender saw in one window.
struct IngestWindow {
    accepted: u64,
    refused: u64,
    latency_us: Option<Histogram<u64>>,
}

impl Default for IngestWindow {
    fn default() -> Self {
        Self {
            accepted: 0,
            refused: 0,
            latency_us: new_histogram(),
        }
    }
}

/// Shared between the sender tasks and the reporter.
#[derive(Default)]
struct IngestBook {
    window: Mutex<IngestWindow>,
    sent: AtomicUsize,
    accepted: AtomicUsize,
    /// The next event number.
    next: AtomicUsize,
    samples: Mutex<Vec<String>>,
}

impl IngestBook {
    fn take_window(&self) -> IngestWindow {
        std::mem::take(&mut *lock(&self.window))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the cluster, runs the soak or the drain, writes the JSON lines to `out`, and removes
/// everything again. The summary is returned (and written as the last line).
pub async fn run(
    mut cluster_settings: ClusterSettings,
    receiver: &Receiver,
    settings: &SoakSettings,
    out: &mut (dyn Write + Send),
    plot: Option<&Path>,
    progress: bool,
) -> anyhow::Result<SoakSummary> {
    let depth_interval = settings.window.div_f64(2.0).min(Duration::from_secs(15));
    cluster_settings.extra_env.extend([
        (
            "REGRELAY_HISTORY_SWEEP_INTERVAL".to_owned(),
            humantime::format_duration(settings.sweep_interval).to_string(),
        ),
        (
            "REGRELAY_QUEUE_DEPTH_INTERVAL".to_owned(),
            format!("{}ms", depth_interval.as_millis().max(1000)),
        ),
    ]);
    cluster_settings.consumers = if settings.backlog > 0 {
        1
    } else {
        settings.consumers.max(1)
    };
    cluster_settings.history = true;
    let mut cluster = Cluster::start(&cluster_settings).await?;
    let result = tokio::select! {
        result = drive(&mut cluster, &cluster_settings, receiver, settings, out, plot, progress) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; the run's processes, queues and database were removed")),
    };
    cluster.teardown().await;
    result
}

async fn drive(
    cluster: &mut Cluster,
    cluster_settings: &ClusterSettings,
    receiver: &Receiver,
    settings: &SoakSettings,
    out: &mut (dyn Write + Send),
    plot: Option<&Path>,
    progress: bool,
) -> anyhow::Result<SoakSummary> {
    let client = load::client(settings.concurrency)?;
    let endpoint = Endpoint {
        api_url: cluster.api_url.clone(),
        ingest_token: cluster.ingest_token.clone(),
        admin_user: "admin".into(),
        admin_password: cluster.admin_password.clone(),
    };
    receiver.reset(
        1,
        0,
        Behaviour {
            delay: Duration::ZERO,
            error_rate: 0.0,
        },
    );
    load::create_policy(&client, &endpoint, &[receiver.target_url(0)]).await?;
    load::warm_up(&client, &endpoint, receiver).await?;

    let origin = Instant::now();
    receiver.start_soak(
        origin,
        settings.reject_every,
        Behaviour {
            delay: Duration::ZERO,
            error_rate: settings.error_rate,
        },
    );
    let book = Arc::new(IngestBook::default());
    let mut reporter = Reporter::new(cluster, settings, origin).await?;

    if settings.backlog > 0 {
        cluster.stop_consumers().await;
        let filler = tokio::spawn(send(
            client.clone(),
            endpoint.clone(),
            book.clone(),
            origin,
            Pace::Fill(settings.backlog),
            settings.batch,
            settings.concurrency,
        ));
        reporter
            .run_until(cluster, receiver, &book, out, progress, "fill", || {
                filler.is_finished()
            })
            .await?;
        filler.await.context("the backlog sender failed")?;
        cluster.start_consumer(cluster_settings).await?;
        // Events keep arriving while the backlog drains; they queue behind it.
        let trickle = tokio::spawn(send(
            client.clone(),
            endpoint.clone(),
            book.clone(),
            origin,
            Pace::Rate(settings.rate, None),
            1,
            settings.concurrency,
        ));
        let deadline = Instant::now() + settings.settle_timeout;
        let backlog = settings.backlog;
        let drained = reporter
            .run_until(cluster, receiver, &book, out, progress, "drain", || {
                receiver.soak_settled() >= backlog || Instant::now() >= deadline
            })
            .await;
        trickle.abort();
        drained?;
    } else {
        let until = Instant::now() + settings.duration;
        let sender = tokio::spawn(send(
            client.clone(),
            endpoint.clone(),
            book.clone(),
            origin,
            Pace::Rate(settings.rate, Some(until)),
            1,
            settings.concurrency,
        ));
        reporter
            .run_until(cluster, receiver, &book, out, progress, "send", || {
                sender.is_finished()
            })
            .await?;
        sender.await.context("the sender failed")?;
    }

    // Everything accepted must be settled: delivered or dead-lettered.
    let deadline = Instant::now() + settings.settle_timeout;
    reporter
        .run_until(cluster, receiver, &book, out, progress, "settle", || {
            receiver.soak_settled() >= book.accepted.load(Ordering::Relaxed)
                || Instant::now() >= deadline
        })
        .await?;
    // A last short window, so the queue and dead-letter counts include the final settlements.
    let summary = reporter.summary(cluster, receiver, &book, settings).await;
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    out.flush()?;
    if let Some(path) = plot {
        super::plot::soak_plot(&reporter.rows, path)
            .with_context(|| format!("cannot write the soak plot {}", path.display()))?;
    }
    Ok(summary)
}

/// How a sender paces its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// Exactly this many events, as fast as they are accepted.
    Fill(usize),
    /// This many events per second, until the instant (or until aborted).
    Rate(f64, Option<Instant>),
}

/// Sends events numbered from `book.next`, `batch` per request, `concurrency` requests at once.
async fn send(
    client: reqwest::Client,
    endpoint: Endpoint,
    book: Arc<IngestBook>,
    origin: Instant,
    pace: Pace,
    batch: usize,
    concurrency: usize,
) {
    let batch = batch.max(1);
    let mut ticker = match pace {
        Pace::Rate(rate, _) => {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate));
            // A late tick is made up at once, so the mean rate stays the one asked for.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            Some(interval)
        }
        Pace::Fill(_) => None,
    };
    let mut remaining = match pace {
        Pace::Fill(n) => n,
        Pace::Rate(..) => usize::MAX,
    };
    let until = match pace {
        Pace::Rate(_, until) => until,
        Pace::Fill(_) => None,
    };
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        let more = remaining > 0 && until.is_none_or(|u| Instant::now() < u);
        if !more && in_flight.is_empty() {
            break;
        }
        if more && in_flight.len() < concurrency.max(1) {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                () = tick(ticker.as_mut()) => {}
            }
            let count = batch.min(remaining);
            remaining -= count;
            let first = book.next.fetch_add(count, Ordering::Relaxed);
            let sent_us = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
            let body = if count == 1 {
                load::event_body(&soak_tag(first, sent_us))
            } else {
                let events: Vec<String> = (first..first + count)
                    .map(|n| load::event_body(&soak_tag(n, sent_us)))
                    .collect();
                format!("[{}]", events.join(","))
            };
            book.sent.fetch_add(count, Ordering::Relaxed);
            let (client, endpoint, book) = (client.clone(), endpoint.clone(), book.clone());
            in_flight.push(async move {
                let started = Instant::now();
                let answer = load::post_event(&client, &endpoint, body).await;
                let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let accepted = match answer {
                    Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => true,
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        note_refusal(&book, format!("{status}: {text}"));
                        false
                    }
                    Err(error) => {
                        note_refusal(&book, format!("transport: {error:#}"));
                        false
                    }
                };
                let mut window = lock(&book.window);
                if accepted {
                    window.accepted += count as u64;
                    book.accepted.fetch_add(count, Ordering::Relaxed);
                    if let Some(h) = window.latency_us.as_mut() {
                        h.saturating_record(took_us.max(1));
                    }
                } else {
                    window.refused += count as u64;
                }
            });
        } else {
            in_flight.next().await;
        }
    }
}

async fn tick(ticker: Option<&mut tokio::time::Interval>) {
    if let Some(ticker) = ticker {
        ticker.tick().await;
    }
}

fn note_refusal(book: &IngestBook, text: String) {
    let mut samples = lock(&book.samples);
    if samples.len() < 5 {
        samples.push(text);
    }
}

/// Samples everything once per window and keeps the rows for the summary and the plot.
struct Reporter {
    window: Duration,
    origin: Instant,
    rows: Vec<WindowReport>,
    /// Process samples at the last window's end, by name.
    last_samples: BTreeMap<String, ProcessSample>,
    /// Cumulative sweep counters and per-table vacuum counters at the last window's end.
    last_sweep: SweepFigures,
    last_repeats: RepeatFigures,
    last_vacuums: BTreeMap<String, (i64, i64)>,
    last_host: HostSample,
    last_at: Instant,
    database: tokio_postgres::Client,
    amqp: lapin::Connection,
    http: reqwest::Client,
}

impl Reporter {
    async fn new(
        cluster: &Cluster,
        settings: &SoakSettings,
        origin: Instant,
    ) -> anyhow::Result<Self> {
        let (database, connection) = tokio_postgres::connect(&cluster.database_url, NoTls)
            .await
            .context("cannot connect to the run's database")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let amqp =
            lapin::Connection::connect(cluster.amqp_url(), lapin::ConnectionProperties::default())
                .await
                .map_err(|e| anyhow!("cannot connect to RabbitMQ: {e}"))?;
        let mut reporter = Self {
            window: settings.window,
            origin,
            rows: Vec::new(),
            last_samples: BTreeMap::new(),
            last_sweep: SweepFigures::default(),
            last_repeats: RepeatFigures::default(),
            last_vacuums: BTreeMap::new(),
            last_host: HostSample::default(),
            last_at: Instant::now(),
            database,
            amqp,
            http: reqwest::Client::new(),
        };
        reporter.last_samples = samples(cluster);
        reporter.last_host = HostSample::take(&reporter.database).await;
        let metrics = reporter.consumer_metrics(cluster).await;
        reporter.last_sweep = sweep_totals(&metrics);
        reporter.last_repeats = RepeatFigures::totals(&metrics);
        reporter.last_vacuums = reporter
            .tables()
            .await
            .into_iter()
            .map(|t| (t.table.clone(), (t.autovacuums, t.autoanalyzes)))
            .collect();
        Ok(reporter)
    }

    /// Reports a window every `self.window` until `done()` (checked every 200 ms), then reports
    /// the partial window it ended in.
    #[allow(clippy::too_many_arguments)]
    async fn run_until(
        &mut self,
        cluster: &mut Cluster,
        receiver: &Receiver,
        book: &IngestBook,
        out: &mut (dyn Write + Send),
        progress: bool,
        phase: &'static str,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let mut next = self.last_at + self.window;
        loop {
            cluster.check_alive()?;
            let finished = done();
            if finished || Instant::now() >= next {
                let row = self.report(cluster, receiver, book, phase).await;
                writeln!(out, "{}", serde_json::to_string(&row)?)?;
                out.flush()?;
                if progress {
                    eprintln!("{}", row_line(&row));
                }
                self.rows.push(row);
                next = self.last_at + self.window;
            }
            if finished {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn report(
        &mut self,
        cluster: &Cluster,
        receiver: &Receiver,
        book: &IngestBook,
        phase: &'static str,
    ) -> WindowReport {
        let now = Instant::now();
        let seconds = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        self.last_at = now;
        let delivered = receiver.take_soak_window();
        let ingest = book.take_window();
        let samples = samples(cluster);
        let processes = samples
            .iter()
            .map(|(name, sample)| {
                let before = self.last_samples.get(name).copied().unwrap_or_default();
                let cpu = (sample.cpu_seconds - before.cpu_seconds).max(0.0);
                ProcessFigures {
                    name: name.clone(),
                    rss_mib: sample.rss_bytes as f64 / MIB,
                    cpu_percent: 100.0 * cpu / seconds,
                    cpu_ms_per_delivery: (delivered.delivered > 0)
                        .then(|| 1000.0 * cpu / delivered.delivered as f64),
                }
            })
            .collect();
        self.last_samples = samples;
        // Each consumer's /metrics once per window: the sweep counters and the retry buckets.
        let metrics = self.consumer_metrics(cluster).await;
        let sweep_totals = sweep_totals(&metrics);
        // A restarted consumer starts its counters at zero: `since` clamps the deltas at zero
        // and its new totals become the baseline.
        let sweep = sweep_totals.since(self.last_sweep);
        self.last_sweep = sweep_totals;
        let repeat_totals = RepeatFigures::totals(&metrics);
        let repeats = repeat_totals.since(self.last_repeats);
        self.last_repeats = repeat_totals;
        let mut history = self.tables().await;
        for table in &mut history {
            let (vacuums, analyzes) = (table.autovacuums, table.autoanalyzes);
            let (before_v, before_a) = self
                .last_vacuums
                .insert(table.table.clone(), (vacuums, analyzes))
                .unwrap_or((vacuums, analyzes));
            table.autovacuums = vacuums - before_v;
            table.autoanalyzes = analyzes - before_a;
        }
        let vacuums_running = self
            .database
            .query_one("SELECT count(*) FROM pg_stat_progress_vacuum", &[])
            .await
            .and_then(|row| row.try_get::<_, i64>(0))
            .unwrap_or(0);
        let queues = self.queues(cluster, &metrics).await;
        let host_sample = HostSample::take(&self.database).await;
        let host = host_sample.since(&self.last_host, seconds);
        self.last_host = host_sample;
        WindowReport {
            window: self.rows.len() + 1,
            elapsed_s: round(now.duration_since(self.origin).as_secs_f64(), 1),
            phase,
            accepted_per_sec: round(ingest.accepted as f64 / seconds, 1),
            refused: ingest.refused,
            ingest_ms: ingest.latency_us.as_ref().and_then(percentiles),
            delivered: delivered.delivered,
            delivered_per_sec: round(delivered.delivered as f64 / seconds, 1),
            dead_lettered: delivered.rejected,
            failed_answers: delivered.answered_errors,
            duplicates: delivered.duplicates,
            latency_ms: delivered.latency_us.as_ref().and_then(percentiles),
            processes,
            queues,
            history,
            vacuums_running,
            sweep,
            repeats,
            host,
        }
    }

    /// The Prometheus text of every consumer that answered (a consumer being started or stopped
    /// may not).
    async fn consumer_metrics(&self, cluster: &Cluster) -> Vec<String> {
        let mut texts = Vec::new();
        for process in cluster.processes() {
            if !process.name.starts_with("consumer") {
                continue;
            }
            let response = self
                .http
                .get(process.metrics_url())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(text) = async { response?.text().await }.await {
                texts.push(text);
            }
        }
        texts
    }

    async fn queues(&self, cluster: &Cluster, metrics: &[String]) -> QueueFigures {
        let topology = cluster.topology();
        QueueFigures {
            events: self.ready(&topology.events_queue()).await,
            deliveries: self.ready(&topology.deliveries_queue()).await,
            dead_letter: self.ready(&topology.dead_letter_queue()).await,
            // Every consumer reads the same buckets: take the largest reading, not the sum.
            retry: metrics
                .iter()
                .map(|text| metric_sum(text, "regrelay_queue_messages", "queue=\"retry_"))
                .reduce(f64::max),
        }
    }

    /// Messages ready in `queue`, by a passive declare on a channel of its own.
    async fn ready(&self, queue: &str) -> Option<u32> {
        let channel = self.amqp.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| q.message_count());
        let _ = channel.close(200, "read".into()).await;
        declared
    }

    async fn tables(&self) -> Vec<TableFigures> {
        let names: Vec<String> = HISTORY_TABLES.iter().map(|t| (*t).to_owned()).collect();
        let rows = self
            .database
            .query(
                "SELECT relname::text, pg_total_relation_size(relid), pg_indexes_size(relid),
                        n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count
                 FROM pg_stat_user_tables WHERE relname = ANY($1) ORDER BY relname",
                &[&names],
            )
            .await
            .unwrap_or_default();
        rows.iter()
            .filter_map(|row| {
                Some(TableFigures {
                    table: row.try_get(0).ok()?,
                    total_mib: round(row.try_get::<_, i64>(1).ok()? as f64 / MIB, 2),
                    index_mib: round(row.try_get::<_, i64>(2).ok()? as f64 / MIB, 2),
                    live_rows: row.try_get(3).ok()?,
                    dead_rows: row.try_get(4).ok()?,
                    autovacuums: row.try_get(5).ok()?,
                    autoanalyzes: row.try_get(6).ok()?,
                })
            })
            .collect()
    }

    async fn summary(
        &self,
        cluster: &Cluster,
        receiver: &Receiver,
        book: &IngestBook,
        settings: &SoakSettings,
    ) -> SoakSummary {
        // Let the dead-letter queue's count catch up with the receiver's last answers.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let totals = |f: fn(&WindowReport) -> u64| self.rows.iter().map(f).sum::<u64>();
        let delivered = totals(|r| r.delivered);
        let dead_lettered = totals(|r| r.dead_lettered);
        let accepted = book.accepted.load(Ordering::Relaxed);
        let timed: Vec<&WindowReport> = self
            .rows
            .iter()
            .filter(|r| matches!(r.phase, "send" | "drain"))
            .collect();
        // The last window of a phase is partial, and a drain's first one holds the consumer's
        // start-up: leave them out of the rate figures.
        let skip_first = usize::from(settings.backlog > 0 && timed.len() > 3);
        let full: Vec<&WindowReport> = if timed.len() > 2 {
            timed[skip_first..timed.len() - 1].to_vec()
        } else {
            timed.clone()
        };
        let mut rates: Vec<f64> = full.iter().map(|r| r.delivered_per_sec).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        let p99_of = |rows: &[&WindowReport]| {
            rows.iter()
                .filter_map(|r| r.latency_ms.map(|l| l.p99))
                .reduce(f64::max)
        };
        let first: Vec<&WindowReport> = full.iter().take(10).copied().collect();
        let last: Vec<&WindowReport> = full.iter().rev().take(10).copied().collect();
        let mut rss_trend = BTreeMap::new();
        let names: Vec<String> = full
            .first()
            .map(|r| r.processes.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let points: Vec<(f64, f64)> = full
                .iter()
                .filter_map(|r| {
                    let p = r.processes.iter().find(|p| p.name == name)?;
                    Some((r.elapsed_s / 3600.0, p.rss_mib))
                })
                .collect();
            if let Some(slope) = slope(&points) {
                rss_trend.insert(name, round(slope, 2));
            }
        }
        let history_mib = |r: &WindowReport| r.history.iter().map(|t| t.total_mib).sum::<f64>();
        let dead_letter_queue = self.ready(&cluster.topology().dead_letter_queue()).await;
        let refused = totals(|r| r.refused);
        // A request still unanswered when the run stopped sending (the drain's trickle is
        // stopped mid-flight) may have been accepted: its event then settles without counting
        // as accepted, so settled can exceed accepted by up to the unanswered requests.
        let lost = (accepted as i64 - receiver.soak_settled() as i64).max(0);
        let mut problems = Vec::new();
        if lost > 0 {
            problems.push(format!(
                "{lost} accepted events neither delivered nor dead-lettered within {:?} of the end",
                settings.settle_timeout
            ));
        }
        let mut accepted_rates: Vec<f64> = full
            .iter()
            .filter(|r| r.phase == "send")
            .map(|r| r.accepted_per_sec)
            .collect();
        accepted_rates.sort_by(f64::total_cmp);
        if let Some(&sent_median) = accepted_rates.get(accepted_rates.len() / 2) {
            if settings.backlog == 0 && sent_median < settings.rate * 0.97 {
                problems.push(format!(
                    "the sender fell behind the rate: a median of {sent_median:.0} accepted/s of \
                     the {:.0}/s asked, with {} requests in flight at most (raise --concurrency)",
                    settings.rate, settings.concurrency
                ));
            }
        }
        if refused > 0 {
            problems.push(format!(
                "{refused} events refused by ingest: {}",
                lock(&book.samples).join("; ")
            ));
        }
        SoakSummary {
            summary: true,
            mode: if settings.backlog > 0 {
                "drain"
            } else {
                "soak"
            },
            rate: settings.rate,
            duration_s: round(
                timed.last().map_or(0.0, |r| r.elapsed_s)
                    - timed
                        .first()
                        .map_or(0.0, |r| r.elapsed_s - self.window.as_secs_f64()),
                1,
            ),
            sweep_interval_s: settings.sweep_interval.as_secs_f64(),
            sent: book.sent.load(Ordering::Relaxed),
            accepted,
            refused,
            delivered,
            dead_lettered,
            dead_letter_queue,
            lost,
            duplicates: totals(|r| r.duplicates),
            delivered_per_sec_min: rates.first().copied().unwrap_or(0.0),
            delivered_per_sec_median: median,
            delivered_per_sec_max: rates.last().copied().unwrap_or(0.0),
            p99_first_ms: p99_of(&first),
            p99_last_ms: p99_of(&last),
            rss_trend_mib_per_hour: rss_trend,
            history_mib_end: round(self.rows.last().map_or(0.0, history_mib), 2),
            history_mib_max: round(self.rows.iter().map(history_mib).fold(0.0, f64::max), 2),
            sweep_seconds_max: round(
                self.rows
                    .iter()
                    .map(|r| r.sweep.seconds)
                    .fold(0.0, f64::max),
                3,
            ),
            problems,
        }
    }
}

/// The consumers' cumulative sweep counters, summed over their metrics texts.
fn sweep_totals(metrics: &[String]) -> SweepFigures {
    let mut totals = SweepFigures::default();
    for text in metrics {
        totals.runs += metric_sum(text, "regrelay_history_sweep_duration_seconds_count", "");
        totals.seconds += metric_sum(text, "regrelay_history_sweep_duration_seconds_sum", "");
        totals.deleted_by_count +=
            metric_sum(text, "regrelay_history_swept_total", "rule=\"count\"");
        totals.deleted_by_age += metric_sum(text, "regrelay_history_swept_total", "rule=\"age\"");
    }
    totals
}

fn samples(cluster: &Cluster) -> BTreeMap<String, ProcessSample> {
    cluster
        .processes()
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.sample()?)))
        .collect()
}

/// p50, p99 and max in ms of a µs histogram; `None` when it is empty.
fn percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    (!h.is_empty()).then(|| Percentiles {
        p50: round(h.value_at_quantile(0.5) as f64 / 1000.0, 2),
        p99: round(h.value_at_quantile(0.99) as f64 / 1000.0, 2),
        max: round(h.max() as f64 / 1000.0, 2),
    })
}

/// The sum of every sample of `name` whose label set contains `label` (all of them for `""`), in
/// the Prometheus text format.
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The least-squares slope of `points` (`None` with fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One line for a person watching stderr.
fn row_line(row: &WindowReport) -> String {
    let p99 = row
        .latency_ms
        .map_or("-".to_owned(), |l| format!("{:.1}", l.p99));
    let history: f64 = row.history.iter().map(|t| t.total_mib).sum();
    let rss: Vec<String> = row
        .processes
        .iter()
        .map(|p| format!("{} {:.0} MiB", p.name, p.rss_mib))
        .collect();
    format!(
        "[{:>6.0}s {}] accepted {:.0}/s delivered {:.0}/s p99 {p99} ms, history {history:.1} MiB, swept {:.0} in {:.2}s, queued {}, {}, iowait {}%, checkpoints {}, duplicates {} (timeout retries {:.0}, redelivered {:.0}, republished {:.0}, late confirms {:.0}), {:.1} acks per frame",
        row.elapsed_s,
        row.phase,
        row.accepted_per_sec,
        row.delivered_per_sec,
        row.sweep.deleted_by_count + row.sweep.deleted_by_age,
        row.sweep.seconds,
        row.queues.events.unwrap_or(0),
        rss.join(", "),
        row.host
            .iowait_percent
            .map_or("-".to_owned(), |v| format!("{v:.1}")),
        row.host.checkpoints.unwrap_or(0),
        row.duplicates,
        row.repeats.timeout_retries,
        row.repeats.redelivered,
        row.repeats.republished,
        row.repeats.late_confirms,
        row.repeats.messages_acked / row.repeats.ack_frames.max(1.0),
    )
}

/// Checks the soak flags before anything starts.
pub fn validate(settings: &SoakSettings) -> anyhow::Result<()> {
    if !(settings.rate > 0.0 && settings.rate.is_finite()) {
        bail!("--rate must be a positive number of events per second");
    }
    if settings.backlog == 0 && settings.duration.is_zero() {
        bail!("--duration must be longer than 0s");
    }
    if settings.window < Duration::from_secs(1) {
        bail!("--window must be at least 1s");
    }
    if !(0.0..1.0).contains(&settings.error_rate) {
        bail!("--receiver-errors must be at least 0 and below 1");
    }
    if settings.sweep_interval.is_zero() {
        bail!("--sweep-interval must be longer than 0s (the soak measures the sweep)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_split_timeouts_from_other_retries_and_sum_both_stages() {
        let consumer = |timeouts: u32, status: u32, matching: u32, delivery: u32| {
            format!(
                "regrelay_delivery_retries_scheduled_total{{reason=\"timeout\"}} {timeouts}\n\
                 regrelay_delivery_retries_scheduled_total{{reason=\"status_5xx\"}} {status}\n\
                 regrelay_delivery_retries_scheduled_total{{reason=\"connect\"}} 1\n\
                 regrelay_messages_redelivered_total{{stage=\"matching\"}} {matching}\n\
                 regrelay_messages_redelivered_total{{stage=\"delivery\"}} {delivery}\n\
                 regrelay_outage_retries_total{{call=\"publish_retry\"}} {status}\n\
                 regrelay_outage_retries_total{{call=\"publish_tasks\"}} 1\n\
                 regrelay_outage_retries_total{{call=\"project_id\"}} 7\n\
                 regrelay_publish_confirms_late_total {matching}\n\
                 regrelay_ack_frames_total{{stage=\"matching\"}} {delivery}\n\
                 regrelay_messages_acked_total{{stage=\"matching\"}} {status}\n\
                 regrelay_ack_failures_total{{stage=\"delivery\"}} {timeouts}\n"
            )
        };
        let before = RepeatFigures::totals(&[consumer(2, 10, 0, 1)]);
        let after = RepeatFigures::totals(&[consumer(5, 14, 3, 1), consumer(1, 0, 0, 0)]);
        assert_eq!(
            after,
            RepeatFigures {
                timeout_retries: 6.0,
                other_retries: 16.0,
                redelivered: 4.0,
                republished: 16.0,
                late_confirms: 3.0,
                ack_frames: 1.0,
                messages_acked: 14.0,
                ack_failures: 6.0,
            }
        );
        assert_eq!(
            after.since(before),
            RepeatFigures {
                timeout_retries: 4.0,
                other_retries: 5.0,
                redelivered: 3.0,
                republished: 5.0,
                late_confirms: 3.0,
                ack_frames: 0.0,
                messages_acked: 4.0,
                ack_failures: 4.0,
            }
        );
        // A consumer restarted with fresh counters does not make the window negative.
        assert_eq!(before.since(after), RepeatFigures::default());
    }

    #[test]
    fn metrics_are_summed_by_name_and_label() {
        let text = "# HELP x\n\
            regrelay_history_swept_total{rule=\"count\"} 12\n\
            regrelay_history_swept_total{rule=\"age\"} 3\n\
            regrelay_history_sweep_duration_seconds_sum 1.5\n\
            regrelay_history_sweep_duration_seconds_count 2\n\
            regrelay_queue_messages{queue=\"retry_1s\",state=\"ready\"} 4\n\
            regrelay_queue_messages{queue=\"retry_2s\",state=\"ready\"} 5\n\
            regrelay_queue_messages{queue=\"events\",state=\"ready\"} 7\n";
        assert_eq!(
            metric_sum(text, "regrelay_history_swept_total", "rule=\"count\""),
            12.0
        );
        assert_eq!(metric_sum(text, "regrelay_history_swept_total", ""), 15.0);
        assert_eq!(
            metric_sum(text, "regrelay_history_sweep_duration_seconds_sum", ""),
            1.5
        );
        assert_eq!(
            metric_sum(text, "regrelay_queue_messages", "queue=\"retry_"),
            9.0
        );
        assert_eq!(metric_sum(text, "regrelay_missing", ""), 0.0);
    }

    #[test]
    fn slope_is_the_least_squares_trend() {
        assert_eq!(slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 14.0)]), Some(2.0));
        assert_eq!(slope(&[(0.0, 10.0), (1.0, 10.0)]), Some(0.0));
        assert_eq!(slope(&[(1.0, 10.0)]), None);
        assert_eq!(slope(&[(1.0, 10.0), (1.0, 11.0)]), None);
    }

    #[test]
    fn bad_flags_are_refused() {
        let good = SoakSettings {
            rate: 100.0,
            duration: Duration::from_secs(10),
            backlog: 0,
            window: Duration::from_secs(60),
            batch: 10,
            concurrency: 16,
            error_rate: 0.02,
            reject_every: 1000,
            sweep_interval: Duration::from_secs(60),
            settle_timeout: Duration::from_secs(60),
            consumers: 1,
        };
        assert!(validate(&good).is_ok());
        for bad in [
            SoakSettings {
                rate: 0.0,
                ..good.clone()
            },
            SoakSettings {
                duration: Duration::ZERO,
                ..good.clone()
            },
            SoakSettings {
                window: Duration::ZERO,
                ..good.clone()
            },
            SoakSettings {
                error_rate: 1.0,
                ..good.clone()
            },
            SoakSettings {
                sweep_interval: Duration::ZERO,
                ..good.clone()
            },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        // A drain needs no duration.
        assert!(validate(&SoakSettings {
            duration: Duration::ZERO,
            backlog: 10,
            ..good
        })
        .is_ok());
    }
}
