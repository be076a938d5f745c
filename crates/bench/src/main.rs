//! `regrelay-bench`: the end-to-end load tool of issue 5. It starts regrelay (or targets a running
//! one), a fast receiver, the scenario's policy, sends events through the ingest API and reports
//! rates, latency percentiles, CPU time and peak RSS, optionally beside this machine's ceilings.
//!
//! It is a binary of its own, not a `regrelay` subcommand, so that its dependencies (plotting, an
//! embedded font, histograms, a progress bar) stay out of the product binary. It runs the `regrelay`
//! binary named by `--regrelay-bin` / `REGRELAY_BIN`, by default the one next to its own executable
//! (`cargo build --release -p regrelay -p regrelay-bench` puts both in `target/release/`).
//!
//! Module map:
//! - `scenario`: the named scenarios and how flags override them.
//! - `cluster`: the regrelay processes, scratch database and queue prefix of one scenario.
//! - `receiver`: the built-in webhook receiver that records each delivery's arrival.
//! - `load`: the policy, the warm-up and the timed sending of events.
//! - `report`: figures (hdrhistogram percentiles), the table and the JSON.
//! - `ceilings`: raw broker, HTTP and history rates on the same services (`--ceilings`).
//! - `plot`: the latency-distribution PNG (`--latency-plot`) and the soak plot (`--plot`).
//! - `soak`: the soak run (`--rate R --duration D`) and the backlog drain (`--backlog N`), JSON
//!   lines per window (issue 16).
//!
//! Design constraints:
//! - Benchmarks are not tests: nothing here asserts a speed. The run fails (exit 1) only when
//!   something was lost or refused: missing deliveries at the timeout, events not answered `202`.
//! - stdout carries the result only (the table, or one JSON object with `--json`); the progress bar
//!   and diagnostics go to stderr, so `regrelay-bench --json | jq` works.
//! - Everything the bench creates (processes, queues, databases, policies) is removed at the end of
//!   each scenario, also when it failed or was interrupted with Ctrl-C.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod ceilings;
mod cluster;
mod host;
mod load;
mod plot;
mod receiver;
mod report;
mod scenario;
mod soak;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use cluster::{Cluster, ClusterSettings, ProcessSample, ScratchDatabase};
use load::{Endpoint, LoadSettings};
use receiver::{Behaviour, Receiver};
use report::{ProcessWindow, ScenarioReport};
use scenario::{Overrides, Settings};

/// Load-test regrelay end to end against the real RabbitMQ and PostgreSQL: starts it (or targets a
/// running one), a receiver and a scenario's policy, sends events, and reports rates, latency
/// percentiles, CPU time and peak RSS.
#[derive(Parser, Debug)]
#[command(name = "regrelay-bench", version, about)]
struct BenchArgs {
    /// Scenario to run: baseline, history-off, two-consumers, fanout-10, fanout-100, slow-receiver,
    /// dead-target, batched-ingest, or all (in that order, one table row each).
    #[arg(long, default_value = "baseline")]
    scenario: String,
    /// Events to send (default per scenario: 5000 at fan-out 1, 1000 at 10, 100 at 100, 3000 for
    /// slow-receiver, 20000 for batched-ingest).
    #[arg(long)]
    events: Option<usize>,
    /// Events per ingest request, sent as one Harbor JSON array (default 1, as Harbor sends them;
    /// 10 for batched-ingest, like a Distribution registry's notification envelope).
    #[arg(long)]
    batch: Option<usize>,
    /// Ingest requests in flight at once (keep-alive connections).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Send at this many events per second instead of as fast as they are accepted.
    #[arg(long)]
    rate: Option<f64>,
    /// Live targets in the scenario's policy.
    #[arg(long)]
    fanout: Option<usize>,
    /// Add one target on a port nothing listens on (true/false).
    #[arg(long)]
    dead_target: Option<bool>,
    /// Consumer processes to start beside the API process.
    #[arg(long)]
    consumers: Option<usize>,
    /// Record delivery history (REGRELAY_HISTORY_ENABLED of the started processes; true/false).
    #[arg(long)]
    history: Option<bool>,
    /// Export the started processes' spans to this OTLP/HTTP collector (REGRELAY_OTLP_ENDPOINT),
    /// to measure what tracing costs.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Log level of the started processes (REGRELAY_LOG_LEVEL); at `info` their spans are also
    /// built for log context.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// The receiver waits this long before answering (e.g. 50ms).
    #[arg(long, value_parser = duration_arg)]
    receiver_delay: Option<Duration>,
    /// Fraction of receiver answers that are 500 (0.0–1.0); the service retries them.
    #[arg(long)]
    receiver_errors: Option<f64>,
    /// Pad each event to about this many bytes of JSON (an `x_padding` field; at most the api's
    /// max_body_bytes), to measure memory with large events.
    #[arg(long)]
    event_bytes: Option<usize>,
    /// Longest wait for all deliveries, from the first event sent.
    #[arg(long, value_parser = duration_arg, default_value = "120s")]
    timeout: Duration,
    /// Print one JSON object on stdout instead of the table (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Measure the ceilings (raw broker, HTTP and history rates) first, and report each scenario's
    /// deliveries per second as a fraction of the lowest.
    #[arg(long)]
    ceilings: bool,
    /// Messages per ceiling measurement.
    #[arg(long, default_value_t = 20_000)]
    ceiling_messages: usize,
    /// Write a PNG of each scenario's latency distribution here.
    #[arg(long)]
    latency_plot: Option<PathBuf>,
    /// RabbitMQ URL for the started processes, queue clean-up and the ceilings.
    #[arg(
        long,
        env = "REGRELAY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
    /// PostgreSQL URL allowed to create and drop the bench's scratch databases.
    #[arg(
        long,
        env = "REGRELAY_BENCH_DATABASE_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_admin_url: String,
    /// Load an already running regrelay at this base URL (http://host:port) instead of starting
    /// processes; needs --token and --admin-password. No process figures then.
    #[arg(long, requires_all = ["token", "admin_password"])]
    target: Option<String>,
    /// The running regrelay's ingest token (with --target).
    #[arg(long, env = "REGRELAY_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The running regrelay's administrator (with --target).
    #[arg(long, default_value = "admin")]
    admin_user: String,
    /// The running regrelay's administrator password (with --target).
    #[arg(long, env = "REGRELAY_BENCH_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// The `regrelay` binary to start (default: `regrelay` next to this executable).
    #[arg(long, env = "REGRELAY_BIN")]
    regrelay_bin: Option<PathBuf>,
    /// Soak run: send at --rate for this long (e.g. 1h) with history and retention on, and print
    /// one JSON line per --window, then a summary line. Instead of the scenarios.
    #[arg(long, value_parser = duration_arg, conflicts_with_all = ["scenario", "events", "ceilings", "target"])]
    duration: Option<Duration>,
    /// Drain run: stop the consumers, accept this many events (--batch per request, default 10),
    /// start one consumer and report every --window until all are settled, while events keep
    /// arriving at --rate (default 20/s). Instead of the scenarios.
    #[arg(long, conflicts_with_all = ["scenario", "events", "ceilings", "target", "duration"])]
    backlog: Option<usize>,
    /// Soak and drain: the report period (default 60s for a soak, 10s for a drain).
    #[arg(long, value_parser = duration_arg)]
    window: Option<Duration>,
    /// Soak and drain: every n-th event is answered 400 by the receiver and dead-lettered (0: none).
    #[arg(long, default_value_t = 1000)]
    reject_every: u64,
    /// Soak and drain: REGRELAY_HISTORY_SWEEP_INTERVAL of the started processes.
    #[arg(long, value_parser = duration_arg, default_value = "1m")]
    sweep_interval: Duration,
    /// Soak and drain: write a PNG of the per-window series here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A configuration variable for the started processes, `REGRELAY_KEY=value` (repeatable), for
    /// A/B runs of a setting (e.g. `--set REGRELAY_HISTORY_LINGER=2ms`).
    #[arg(long = "set", value_name = "REGRELAY_KEY=VALUE", value_parser = env_arg)]
    set: Vec<(String, String)>,
}

impl BenchArgs {
    /// The processes to start: the broker, database, log level, traces and `--set` of the flags.
    fn cluster_settings(
        &self,
        regrelay_bin: PathBuf,
        consumers: usize,
        history: bool,
    ) -> ClusterSettings {
        ClusterSettings {
            regrelay_bin,
            amqp_url: self.amqp_url.clone(),
            database_admin_url: self.database_admin_url.clone(),
            consumers,
            history,
            otlp_endpoint: self.otlp_endpoint.clone(),
            log_level: self.log_level.clone(),
            extra_env: self.set.clone(),
        }
    }
}

/// `REGRELAY_KEY=value`.
fn env_arg(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if !key.starts_with("REGRELAY_") || key.len() == "REGRELAY_".len() {
        return Err(format!("{key:?} is not a REGRELAY_* variable"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// The whole run, as `--json` prints it.
#[derive(Serialize)]
struct RunReport {
    /// Logical CPUs of this machine (the figures mean little without it).
    cpus: usize,
    /// The ceilings and the lowest one's name, with `--ceilings`.
    ceilings: Option<CeilingsReport>,
    scenarios: Vec<ScenarioReport>,
    /// No delivery missing and every event accepted in every scenario.
    ok: bool,
}

#[derive(Serialize)]
struct CeilingsReport {
    #[serde(flatten)]
    figures: ceilings::Ceilings,
    lowest: &'static str,
    lowest_per_sec: f64,
    /// The composed ceiling (deliveries/s) at fan-out 1, 10 and 100.
    composed_per_sec: std::collections::BTreeMap<usize, f64>,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run(BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the cause chain on one line.
            eprintln!("regrelay-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench: the chosen scenarios, then the report on stdout.
fn run(args: BenchArgs) -> anyhow::Result<()> {
    init_stderr_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

/// Diagnostics to stderr at `warn` (or `RUST_LOG`), so stdout stays the result.
fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    if args.duration.is_some() || args.backlog.is_some() {
        return run_soak(args).await;
    }
    let overrides = Overrides {
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency,
        rate: args.rate,
        fanout: args.fanout,
        dead_target: args.dead_target,
        consumers: args.consumers,
        history: args.history,
        receiver_delay: args.receiver_delay,
        receiver_errors: args.receiver_errors,
        event_bytes: args.event_bytes,
    };
    let names: Vec<&str> = if args.scenario == "all" {
        scenario::NAMES.to_vec()
    } else {
        vec![args.scenario.as_str()]
    };
    let mut plan = Vec::new();
    for name in names {
        let settings = scenario::settings(name, &overrides).ok_or_else(|| {
            anyhow!(
                "unknown scenario {name:?}; one of: {}, all",
                scenario::NAMES.join(", ")
            )
        })?;
        validate(&settings)?;
        plan.push(settings);
    }
    if args.target.is_some()
        && (args.consumers.is_some() || args.history.is_some() || args.otlp_endpoint.is_some())
    {
        bail!("--consumers, --history and --otlp-endpoint apply to processes the bench starts, not to --target");
    }

    // Found before anything starts, so a missing binary fails at once with how to build it.
    let regrelay_bin = match &args.target {
        Some(_) => None,
        None => {
            let own = std::env::current_exe().context("cannot find this executable's path")?;
            Some(cluster::regrelay_binary(
                args.regrelay_bin.as_deref(),
                &own,
            )?)
        }
    };

    let receiver = Receiver::start().await?;
    let show_progress = !args.json && std::io::stderr().is_terminal();

    let ceilings = if args.ceilings {
        Some(measure_ceilings(&args, &receiver, show_progress).await?)
    } else {
        None
    };

    let mut reports = Vec::new();
    for settings in plan {
        let mut report = tokio::select! {
            result = run_scenario(&args, regrelay_bin.as_deref(), &receiver, settings, show_progress) => result?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; the scenario's processes, queues and database were removed"),
        };
        if let Some(c) = &ceilings {
            report.fraction_of_lowest_ceiling =
                (c.lowest_per_sec > 0.0).then(|| report.deliveries.per_sec / c.lowest_per_sec);
            let composed = c.figures.composed(report.settings.fanout);
            report.composed_ceiling_per_sec = Some(composed.round());
            report.fraction_of_composed_ceiling =
                (composed > 0.0).then(|| report.deliveries.per_sec / composed);
        }
        if show_progress {
            eprintln!(
                "{}: {:.0} deliveries/s, p99 {} ms",
                report.settings.scenario,
                report.deliveries.per_sec,
                report
                    .latency_ms
                    .as_ref()
                    .map_or("-".into(), |l| format!("{:.1}", l.p99))
            );
        }
        reports.push(report);
    }

    if let Some(path) = &args.latency_plot {
        let series: Vec<(String, Vec<Duration>)> = reports
            .iter()
            .map(|r| (r.settings.scenario.clone(), r.latencies.clone()))
            .collect();
        plot::latency_plot(&series, path)
            .with_context(|| format!("cannot write the latency plot {}", path.display()))?;
    }

    let ok = reports.iter().all(|r| r.problems.is_empty());
    let run = RunReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ceilings,
        scenarios: reports,
        ok,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&run)?)?;
    } else {
        write!(out, "{}", text_report(&run))?;
    }
    out.flush()?;
    if !run.ok {
        let problems: Vec<String> = run
            .scenarios
            .iter()
            .flat_map(|r| {
                r.problems
                    .iter()
                    .map(|p| format!("{}: {p}", r.settings.scenario))
            })
            .collect();
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// `--duration` or `--backlog`: one soak or drain run, JSON lines on stdout.
async fn run_soak(args: BenchArgs) -> anyhow::Result<()> {
    let backlog = args.backlog.unwrap_or(0);
    let settings = soak::SoakSettings {
        rate: args.rate.unwrap_or(if backlog > 0 { 20.0 } else { 0.0 }),
        duration: args.duration.unwrap_or_default(),
        backlog,
        window: args
            .window
            .unwrap_or(Duration::from_secs(if backlog > 0 { 10 } else { 60 })),
        batch: args.batch.unwrap_or(10),
        // The sender paces itself; the limit only has to cover the rate times ingest's latency
        // (2000/s at 10 ms is 20 requests) with room for a slow window.
        concurrency: args.concurrency.unwrap_or(64),
        error_rate: args.receiver_errors.unwrap_or(0.02),
        reject_every: args.reject_every,
        sweep_interval: args.sweep_interval,
        settle_timeout: args.timeout,
        consumers: args.consumers.unwrap_or(1),
    };
    soak::validate(&settings)?;
    let own = std::env::current_exe().context("cannot find this executable's path")?;
    let regrelay_bin = cluster::regrelay_binary(args.regrelay_bin.as_deref(), &own)?;
    let receiver = Receiver::start().await?;
    let cluster_settings = args.cluster_settings(regrelay_bin, settings.consumers, true);
    let show_progress = std::io::stderr().is_terminal();
    let mut stdout = std::io::stdout();
    let summary = soak::run(
        cluster_settings,
        &receiver,
        &settings,
        &mut stdout,
        args.plot.as_deref(),
        show_progress,
    )
    .await?;
    if !summary.problems.is_empty() {
        bail!("{}", summary.problems.join("; "));
    }
    Ok(())
}

fn validate(s: &Settings) -> anyhow::Result<()> {
    if s.events == 0 || s.batch == 0 || s.concurrency == 0 || s.fanout == 0 || s.consumers == 0 {
        bail!("--events, --batch, --concurrency, --fanout and --consumers must be at least 1");
    }
    if !(0.0..1.0).contains(&s.receiver_errors) {
        bail!("--receiver-errors must be at least 0 and below 1");
    }
    if s.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of events per second");
    }
    Ok(())
}

fn text_report(run: &RunReport) -> String {
    let mut text = String::new();
    if let Some(c) = &run.ceilings {
        text.push_str(&format!(
            "Ceilings on this machine ({} CPUs): ingest {:.0} req/s, broker {:.0} msg/s, HTTP {:.0} POST/s, history {:.0} rows/s; lowest: {} ({:.0}/s); composed: {:.0} deliveries/s at fan-out 1, {:.0} at 10, {:.0} at 100\n\n",
            run.cpus,
            c.figures.ingest_requests_per_sec,
            c.figures.broker_msgs_per_sec,
            c.figures.http_posts_per_sec,
            c.figures.history_rows_per_sec,
            c.lowest,
            c.lowest_per_sec,
            c.figures.composed(1),
            c.figures.composed(10),
            c.figures.composed(100)
        ));
    }
    text.push_str(&report::table(&run.scenarios));
    for r in &run.scenarios {
        for problem in &r.problems {
            text.push_str(&format!("{}: {problem}\n", r.settings.scenario));
        }
    }
    text
}

/// Measures the ceilings on a scratch database, with the receiver answering at once.
async fn measure_ceilings(
    args: &BenchArgs,
    receiver: &Receiver,
    show_progress: bool,
) -> anyhow::Result<CeilingsReport> {
    if show_progress {
        eprintln!("Measuring the ceilings (ingest, broker, HTTP, history)...");
    }
    receiver.reset(
        0,
        0,
        Behaviour {
            delay: Duration::ZERO,
            error_rate: 0.0,
        },
    );
    let database = ScratchDatabase::create(&args.database_admin_url).await?;
    let settings = ceilings::CeilingSettings {
        amqp_url: args.amqp_url.clone(),
        database_url: database.url.clone(),
        receiver_url: format!("{}/ceiling", receiver.base_url()),
        messages: args.ceiling_messages,
        concurrency: args.concurrency.unwrap_or(16),
    };
    let measured = tokio::select! {
        result = ceilings::measure(&settings) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if let Err(error) = database.drop_database().await {
        tracing::warn!(
            message = "Cannot drop the ceilings' database.",
            error = format!("{error:#}")
        );
    }
    let figures = measured?;
    let (lowest, lowest_per_sec) = figures.lowest();
    let composed_per_sec = [1, 10, 100]
        .into_iter()
        .map(|fanout| (fanout, figures.composed(fanout).round()))
        .collect();
    Ok(CeilingsReport {
        figures,
        lowest,
        lowest_per_sec,
        composed_per_sec,
    })
}

/// Starts what the scenario needs, runs it, and removes everything again whatever happened.
async fn run_scenario(
    args: &BenchArgs,
    regrelay_bin: Option<&std::path::Path>,
    receiver: &Receiver,
    settings: Settings,
    show_progress: bool,
) -> anyhow::Result<ScenarioReport> {
    let client = load::client(settings.concurrency)?;
    let mut cluster = None;
    let endpoint = match &args.target {
        Some(url) => Endpoint {
            api_url: url.trim_end_matches('/').to_owned(),
            ingest_token: args.token.clone().unwrap_or_default(),
            admin_user: args.admin_user.clone(),
            admin_password: args.admin_password.clone().unwrap_or_default(),
        },
        None => {
            let regrelay_bin = regrelay_bin
                .ok_or_else(|| anyhow!("no regrelay binary to start"))?
                .to_owned();
            if show_progress {
                eprintln!(
                    "{}: starting regrelay (1 api, {} consumer(s))...",
                    settings.scenario, settings.consumers
                );
            }
            let started = Cluster::start(&args.cluster_settings(
                regrelay_bin,
                settings.consumers,
                settings.history,
            ))
            .await?;
            let endpoint = Endpoint {
                api_url: started.api_url.clone(),
                ingest_token: started.ingest_token.clone(),
                admin_user: "admin".into(),
                admin_password: started.admin_password.clone(),
            };
            cluster = Some(started);
            endpoint
        }
    };

    let mut policies = Vec::new();
    let result = drive(
        args,
        receiver,
        &settings,
        &client,
        &endpoint,
        cluster.as_mut(),
        &mut policies,
        show_progress,
    )
    .await;

    // With --target the policy would keep sending to a receiver that is gone; started clusters lose
    // it with their database.
    for policy in policies.iter().filter(|_| cluster.is_none()) {
        if let Err(error) = load::delete_policy(&client, &endpoint, policy).await {
            tracing::warn!(
                message = "Cannot delete the bench policy.",
                error = format!("{error:#}")
            );
        }
    }
    if let Some(cluster) = cluster {
        cluster.teardown().await;
    }
    let (load, arrivals, windows) = result?;
    let regrelay = if args.target.is_some() {
        "external"
    } else {
        "started"
    };
    Ok(ScenarioReport::compute(
        settings, regrelay, &load, &arrivals, windows,
    ))
}

type Measured = (load::LoadResult, receiver::Arrivals, Vec<ProcessWindow>);

/// Creates the policy, warms up, sends, waits for the deliveries and samples the processes.
#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &BenchArgs,
    receiver: &Receiver,
    settings: &Settings,
    client: &reqwest::Client,
    endpoint: &Endpoint,
    mut cluster: Option<&mut Cluster>,
    policies: &mut Vec<String>,
    show_progress: bool,
) -> anyhow::Result<Measured> {
    let mut targets: Vec<String> = (0..settings.fanout)
        .map(|i| receiver.target_url(i))
        .collect();
    if settings.dead_target {
        targets.push(format!("http://127.0.0.1:{}/t/dead", cluster::free_port()?));
    }
    receiver.reset(
        settings.fanout,
        settings.events,
        Behaviour {
            delay: settings.receiver_delay,
            error_rate: settings.receiver_errors,
        },
    );
    // A policy holds at most 32 targets (the API's limit): wider fan-outs use several policies on
    // the same events, which fans each event out the same way.
    for chunk in targets.chunks(load::MAX_TARGETS_PER_POLICY) {
        policies.push(load::create_policy(client, endpoint, chunk).await?);
    }
    load::warm_up(client, endpoint, receiver).await?;

    let sample = |cluster: &Option<&mut Cluster>| -> Vec<(String, ProcessSample)> {
        cluster.as_ref().map_or_else(Vec::new, |c| {
            c.processes()
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.sample()?)))
                .collect()
        })
    };
    let before = sample(&cluster);

    let started = Instant::now();
    let sending = progress_bar(
        show_progress,
        settings.events,
        &format!("{} sending", settings.scenario),
    );
    let load = load::send(
        client,
        endpoint,
        LoadSettings {
            events: settings.events,
            batch: settings.batch,
            concurrency: settings.concurrency,
            rate: settings.rate,
            event_bytes: settings.event_bytes,
        },
        &sending,
    )
    .await;
    sending.finish_and_clear();

    let expected = load.accepted() * settings.fanout;
    let waiting = progress_bar(
        show_progress,
        expected,
        &format!("{} deliveries", settings.scenario),
    );
    let mut progress = receiver.progress();
    let deadline = tokio::time::Instant::from_std(started + args.timeout);
    loop {
        let delivered = *progress.borrow_and_update();
        waiting.set_position(delivered as u64);
        if delivered >= expected {
            break;
        }
        if let Some(cluster) = cluster.as_deref_mut() {
            cluster.check_alive()?;
        }
        tokio::select! {
            changed = progress.changed() => changed.context("the receiver stopped")?,
            // Wake now and then to notice a process that died.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    waiting.finish_and_clear();
    let after = sample(&cluster);
    let arrivals = receiver.take();

    let windows = after
        .into_iter()
        .map(|(name, after)| {
            let before = before
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            ProcessWindow {
                name,
                before,
                after,
            }
        })
        .collect();
    Ok((load, arrivals, windows))
}

/// A progress bar on stderr, or a hidden one (not a terminal, or `--json`).
fn progress_bar(show: bool, length: usize, message: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(message.to_owned());
    bar
}
