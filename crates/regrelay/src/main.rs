//! The `regrelay` binary: runs the service's roles (`serve`) and the operator's commands.
//!
//! Module map:
//! - `config`: the typed, layered configuration.
//! - `logging`: structured logs through a non-blocking writer, and its dropped-line metric.
//! - `shutdown`: the cancellation signal and task tracker handed to every role.
//! - `serve`: wires the crates into running roles.
//! - `dlq`: the operator's dead-letter commands (`regrelay dlq list | show | replay | purge`).
//!
//! The load tool is its own binary, `regrelay-bench` (crates/bench), so none of its dependencies
//! reach this one.
//!
//! `anyhow` lives in the binaries only (this one and `regrelay-bench`): the libraries return precise
//! errors, and `main` reports the whole cause chain before exiting non-zero.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

/// jemalloc instead of the system's (glibc) allocator: allocation was the largest item in a
/// profile of the api and consumer (about 18 % of their CPU in `malloc`, `free` and their
/// consolidation), and jemalloc's per-thread caches cost 11–20 % less CPU per delivery at the same
/// peak RSS (docs/benchmarks.md, "The allocator"). Its options are compiled in from
/// `.cargo/config.toml`; `_RJEM_MALLOC_CONF` overrides them at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod config;
mod dlq;
mod logging;
mod serve;
mod shutdown;
mod targets;
mod traces;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A durable webhook delivery service for container-registry events.
#[derive(Parser)]
#[command(name = "regrelay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: ingest and policy API, matching and delivery, health and metrics.
    Serve {
        /// TOML configuration file, layered over the defaults and under REGRELAY_* variables.
        #[arg(long, env = "REGRELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Which roles to run in this process.
        #[arg(long, value_enum, default_value = "all", env = "REGRELAY_ROLE")]
        role: serve::Role,
    },
    /// Apply the database migrations and exit (serve also applies them at start-up).
    Migrate {
        #[arg(long, env = "REGRELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Then encrypt every policy's stored credentials with the first `secrets_key` (plain-text
        /// rows and rows sealed with an older key), and print how many rows changed.
        #[arg(long)]
        reencrypt: bool,
    },
    /// Inspect, replay and purge dead letters (needs the broker only, not the database).
    Dlq {
        #[arg(long, env = "REGRELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Receiver health, failing first: each target's success rate, consecutive failures, last
    /// success and failure, and whether its circuit is open (needs the database only).
    Targets {
        #[arg(long, env = "REGRELAY_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: targets::TargetsArgs,
    },
    /// Print the built-in default configuration (the reference for every key).
    DefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DefaultConfig => {
            print!("{}", config::DEFAULTS);
            Ok(())
        }
        Command::Serve { config, role } => run(config, |config| serve::serve(config, role)),
        Command::Migrate { config, reencrypt } => {
            run(config, move |config| serve::migrate(config, reencrypt))
        }
        // Not `run`: the service logs to stdout, and stdout is the command's output here.
        Command::Dlq { config, command } => dlq::run(config, command),
        Command::Targets { config, args } => targets::run(config, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the cause chain on one line: "cannot start: invalid configuration: ...".
            eprintln!("regrelay: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration, starts logging and the runtime, and runs `command` on it.
fn run<F, Fut>(config_path: Option<PathBuf>, command: F) -> anyhow::Result<()>
where
    F: FnOnce(config::Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = config::Config::load(config_path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Held until the command returns, so queued spans are exported and queued log lines flushed
    // before exit; dropped before the runtime, which the span exports run on.
    let logs = logging::init(&config, runtime.handle().clone())?;
    let result = runtime.block_on(command(config));
    if let Err(error) = &result {
        tracing::error!(message = "Exiting on error.", error = format!("{error:#}"));
    }
    drop(logs);
    drop(runtime);
    result
}
