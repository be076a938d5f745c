//! `regrelay-bench` as a user runs it: a short baseline run against the real RabbitMQ and
//! PostgreSQL, so the load tool cannot rot. Benchmarks are not tests: nothing here asserts a speed.
//!
//! The bench starts `regrelay` processes: the `regrelay` binary of the same target directory, which
//! `cargo test --workspace` (scripts/test.sh) builds in the same invocation, before any test runs,
//! for regrelay's own e2e test. Alone, `cargo test -p regrelay-bench` needs `cargo build -p regrelay`
//! first.

use std::path::PathBuf;
use std::process::Command;

use regrelay_testkit::{admin_database_url, amqp_url};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_regrelay-bench");

/// `regrelay-bench` with the `regrelay` binary beside it (named explicitly, so a `REGRELAY_BIN` of
/// the caller's environment cannot pick another one).
fn bench() -> Command {
    let regrelay =
        PathBuf::from(BIN).with_file_name(format!("regrelay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        regrelay.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test.sh), or \
         `cargo build -p regrelay` before `cargo test -p regrelay-bench`",
        regrelay.display()
    );
    let mut command = Command::new(BIN);
    command.env("REGRELAY_BIN", regrelay);
    command
}

/// Runs `regrelay-bench` with `args` against the machine's RabbitMQ and PostgreSQL and returns its
/// stdout and stderr; the test fails, showing both, if it exits with an error.
fn run_ok<I, S>(args: I) -> (String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = bench()
        .args(args)
        .env("REGRELAY_AMQP_URL", amqp_url())
        .env("REGRELAY_BENCH_DATABASE_ADMIN_URL", admin_database_url())
        .output()
        .expect("run regrelay-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

#[test]
fn bench_smoke_run_delivers_everything_and_reports_figures() {
    let (stdout, stderr) = run_ok(["--events", "300", "--json", "--timeout", "60s"]);
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object on stdout");
    assert_eq!(report["ok"], true, "{report:#}");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 1);
    let run = &scenarios[0];
    assert_eq!(run["scenario"], "baseline");
    assert_eq!(run["regrelay"], "started");
    assert_eq!(run["ingest"]["sent"], 300);
    assert_eq!(run["ingest"]["accepted"], 300, "{run:#}");
    assert_eq!(run["deliveries"]["expected"], 300);
    assert_eq!(run["deliveries"]["delivered"], 300, "{run:#}");
    assert_eq!(run["deliveries"]["missing"], 0);
    assert!(run["problems"].as_array().is_some_and(Vec::is_empty));

    let latency = &run["latency_ms"];
    assert_eq!(latency["samples"], 300);
    let ms = |key: &str| {
        latency[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {latency}"))
    };
    assert!(ms("p50") <= ms("p90"), "{latency}");
    assert!(ms("p90") <= ms("p99"), "{latency}");
    assert!(ms("p99") <= ms("max"), "{latency}");
    assert!(ms("max") > 0.0, "{latency}");

    let processes = run["processes"].as_array().expect("processes");
    let names: Vec<&str> = processes
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["api", "consumer-1"]);
    for process in processes {
        assert!(
            process["cpu_seconds_total"].as_f64().unwrap_or(0.0) > 0.0,
            "{process}"
        );
        assert!(
            process["peak_rss_bytes"].as_u64().unwrap_or(0) > 0,
            "{process}"
        );
    }
    // No progress bar or log noise on stdout: it parsed as one object above. On stderr, nothing
    // at warn level or above.
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "{stderr}"
    );
}

#[test]
fn bench_batched_ingest_sends_several_events_per_request_and_accounts_for_each() {
    let (stdout, _) = run_ok([
        "--scenario",
        "batched-ingest",
        "--events",
        "305",
        "--json",
        "--timeout",
        "60s",
    ]);
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object on stdout");
    let run = &report["scenarios"][0];
    assert_eq!(run["batch"], 10, "{run:#}");
    // 30 requests of ten and one of five: every event accepted and delivered, each correlated to
    // its own request's answer.
    assert_eq!(run["ingest"]["accepted"], 305, "{run:#}");
    assert_eq!(run["deliveries"]["delivered"], 305, "{run:#}");
    assert_eq!(run["latency_ms"]["samples"], 305, "{run:#}");
    assert_eq!(report["ok"], true, "{report:#}");
}

/// The JSON lines of a soak or drain run: the windows, then the summary.
fn json_lines(stdout: &str) -> (Vec<Value>, Value) {
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["summary"], true, "{summary:#}");
    (lines, summary)
}

#[test]
fn soak_smoke_run_reports_each_window_and_loses_nothing() {
    let plot = std::env::temp_dir().join(format!("regrelay-soak-{}.png", std::process::id()));
    let mut args: Vec<std::ffi::OsString> = [
        "--rate",
        "100",
        "--duration",
        "6s",
        "--window",
        "2s",
        "--sweep-interval",
        "1s",
        "--reject-every",
        "50",
        "--receiver-errors",
        "0.02",
        "--timeout",
        "60s",
        "--plot",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(plot.clone().into());
    let (stdout, _) = run_ok(&args);
    let (windows, summary) = json_lines(&stdout);
    assert_eq!(summary["mode"], "soak");
    assert!(windows.iter().any(|w| w["phase"] == "send"), "{stdout}");
    let accepted = summary["accepted"].as_u64().unwrap();
    assert!(accepted >= 300, "{summary:#}");
    assert_eq!(summary["sent"].as_u64(), Some(accepted), "{summary:#}");
    assert_eq!(summary["lost"], 0, "{summary:#}");
    // Every 50th event was answered 400: dead-lettered, and the dead-letter queue holds each once.
    let dead = summary["dead_lettered"].as_u64().unwrap();
    assert_eq!(dead, accepted / 50, "{summary:#}");
    assert_eq!(
        summary["dead_letter_queue"].as_u64(),
        Some(dead),
        "{summary:#}"
    );
    assert_eq!(
        summary["delivered"].as_u64().unwrap() + dead,
        accepted,
        "{summary:#}"
    );
    // The windows carry what issue 16 asks for: processes, queues, tables, the sweep.
    let first = &windows[0];
    let names: Vec<&str> = first["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["api", "consumer-1"], "{first:#}");
    let tables: Vec<&str> = first["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["table"].as_str())
        .collect();
    assert_eq!(tables, ["executions", "task_logs", "tasks"], "{first:#}");
    assert!(first["queues"]["events"].is_u64(), "{first:#}");
    // The sweep ran (every second) and deleted executions beyond the newest 50.
    let swept: f64 = windows
        .iter()
        .map(|w| w["sweep"]["deleted_by_count"].as_f64().unwrap())
        .sum();
    assert!(swept > 0.0, "{stdout}");
    let runs: f64 = windows
        .iter()
        .map(|w| w["sweep"]["runs"].as_f64().unwrap())
        .sum();
    assert!(runs >= 2.0, "{stdout}");
    let png = std::fs::read(&plot).expect("the soak plot");
    let _ = std::fs::remove_file(&plot);
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn drain_smoke_run_fills_a_backlog_with_the_consumers_stopped_then_drains_it() {
    let (stdout, _) = run_ok([
        "--backlog",
        "400",
        "--rate",
        "10",
        "--window",
        "1s",
        "--reject-every",
        "100",
        "--receiver-errors",
        "0",
        "--timeout",
        "90s",
    ]);
    let (windows, summary) = json_lines(&stdout);
    assert_eq!(summary["mode"], "drain");
    // While filling, nothing is delivered (no consumer runs) and the events queue grows.
    let fill: Vec<&Value> = windows.iter().filter(|w| w["phase"] == "fill").collect();
    assert!(!fill.is_empty(), "{stdout}");
    assert!(fill.iter().all(|w| w["delivered"] == 0), "{stdout}");
    assert!(
        fill.iter()
            .all(|w| w["processes"].as_array().unwrap().len() == 1),
        "only the api runs while filling: {stdout}"
    );
    assert!(windows.iter().any(|w| w["phase"] == "drain"), "{stdout}");
    let accepted = summary["accepted"].as_u64().unwrap();
    assert!(accepted >= 400, "{summary:#}");
    assert_eq!(summary["lost"], 0, "{summary:#}");
    assert_eq!(
        summary["delivered"].as_u64().unwrap() + summary["dead_lettered"].as_u64().unwrap(),
        accepted,
        "{summary:#}"
    );
}
