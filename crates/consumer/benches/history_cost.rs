//! What delivery history costs: the same stream of deliveries through the real consumer, real
//! RabbitMQ, real PostgreSQL and a real receiver on 127.0.0.1, with history off and on; and the
//! store's write rate at several batch sizes.
//!
//! Run: `cargo bench -p regrelay-consumer --bench history_cost` (release build). Figures go into
//! docs/benchmarks.md. `HISTORY_BENCH_EVENTS` sets the stream length (default 3000),
//! `HISTORY_BENCH_ROUNDS` the rounds per setting (default 3). Not a test: it asserts nothing about
//! time, it only fails if deliveries go missing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{http_target, push, spec, Env, Options};
use regrelay_events::EventType;
use regrelay_history::executions::{
    AttemptLog, DeliveryRecord, ExecutionTrigger, TaskStatus, VendorType,
};
use regrelay_testkit::{TestDatabase, TestReceiver};
use uuid::Uuid;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs this with no `--bench` flag: keep that a quick smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let events = if smoke {
        50
    } else {
        env_number("HISTORY_BENCH_EVENTS", 3000)
    };
    let rounds = if smoke {
        1
    } else {
        env_number("HISTORY_BENCH_ROUNDS", 3)
    };

    println!("end-to-end: {events} events, one policy, one target answering 200 at once");
    println!("| history | round | seconds | deliveries/s | µs per delivery | mean batch | mean write ms |");
    println!("|---|---|---|---|---|---|---|");
    let mut per_delivery = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (slot, history) in [(0, false), (1, true)] {
            let run = stream(events, history).await;
            let micros = run.elapsed.as_secs_f64() * 1e6 / events as f64;
            per_delivery[slot].push(micros);
            println!(
                "| {} | {round} | {:.2} | {:.0} | {:.0} | {} | {} |",
                if history { "on" } else { "off" },
                run.elapsed.as_secs_f64(),
                events as f64 / run.elapsed.as_secs_f64(),
                micros,
                run.mean_batch.map_or("-".into(), |b| format!("{b:.1}")),
                run.mean_write_ms.map_or("-".into(), |w| format!("{w:.2}")),
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut per_delivery[0]), median(&mut per_delivery[1]));
    println!(
        "median µs per delivery: history off {off:.0}, on {on:.0}; history adds {:.0} µs ({:+.0}%)",
        on - off,
        (on - off) / off * 100.0
    );

    println!();
    println!("store: record_deliveries, {events} deliveries as Pending + Success-with-log records");
    println!("| batch size | records/s | ms per batch |");
    println!("|---|---|---|");
    let sizes: &[usize] = if smoke { &[1, 64] } else { &[1, 16, 64, 256] };
    for &size in sizes {
        let (rate, per_batch) = store_rate(events, size).await;
        println!("| {size} | {rate:.0} | {per_batch:.2} |");
    }
}

struct StreamRun {
    elapsed: Duration,
    mean_batch: Option<f64>,
    mean_write_ms: Option<f64>,
}

/// Publishes `events` push events and waits until every one is delivered (and, with history on,
/// recorded: the delivered counter moves only after the record is durable).
async fn stream(events: usize, history: bool) -> StreamRun {
    let env = Env::start(
        if history {
            "bench-history-on"
        } else {
            "bench-history-off"
        },
        Options {
            history,
            // serve's defaults
            matching_prefetch: 64,
            delivery_prefetch: 256,
            per_target_concurrency: 64,
            max_waiting_per_target: 256,
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    env.policy(
        Some("lib"),
        spec(
            "bench",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    let bodies: Vec<String> = (0..events)
        .map(|i| push("lib", "app", &format!("t{i}")))
        .collect();
    let started = Instant::now();
    for chunk in bodies.chunks(100) {
        env.publish(chunk).await;
    }
    let delivered = "regrelay_deliveries_total{outcome=\"delivered\",target_type=\"http\"}";
    let deadline = Instant::now() + Duration::from_secs(300);
    while (env.metric(delivered) as usize) < events {
        assert!(
            Instant::now() < deadline,
            "only {} of {events} delivered",
            env.metric(delivered)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let mean = |sum: &str, count: &str| {
        let count = env.metric(count);
        (count > 0.0).then(|| env.metric(sum) / count)
    };
    StreamRun {
        elapsed,
        mean_batch: mean(
            "regrelay_history_batch_size_sum",
            "regrelay_history_batch_size_count",
        ),
        mean_write_ms: mean(
            "regrelay_history_write_duration_seconds_sum",
            "regrelay_history_write_duration_seconds_count",
        )
        .map(|s| s * 1000.0),
    }
}

/// Writes `deliveries` deliveries' records straight to the store in batches of `size`; returns
/// records per second and milliseconds per batch.
async fn store_rate(deliveries: usize, size: usize) -> (f64, f64) {
    let database = TestDatabase::create("bench-history-store").await;
    let db = regrelay_history::Database::connect(&database.url, 4).unwrap();
    db.migrate().await.unwrap();
    let project = db.ensure_project("lib").await.unwrap();
    let policy = db
        .create_policy(
            Some(project.id),
            &spec(
                "bench",
                vec![http_target("http://127.0.0.1:9/".into())],
                &[EventType::PushArtifact],
            ),
        )
        .await
        .unwrap();
    let payload = push("lib", "app", "v1");
    let mut records = Vec::with_capacity(deliveries * 2);
    for _ in 0..deliveries {
        let key = Uuid::new_v4();
        let base = DeliveryRecord {
            history_key: key,
            policy_id: policy.id,
            vendor_type: VendorType::Webhook,
            trigger: ExecutionTrigger::Event,
            event_type: "PUSH_ARTIFACT".into(),
            event_id: key,
            status: TaskStatus::Pending,
            status_message: String::new(),
            run_count: 0,
            payload: None,
            attempt: None,
            at: Utc::now(),
            target: None,
        };
        records.push(base.clone());
        records.push(DeliveryRecord {
            status: TaskStatus::Success,
            status_message: "HTTP 200".into(),
            run_count: 1,
            payload: Some(payload.clone()),
            attempt: Some(AttemptLog {
                attempt: 1,
                at: Utc::now(),
                status_code: Some(200),
                error: None,
                duration: Duration::from_millis(3),
                response_snippet: Some("ok".into()),
            }),
            ..base
        });
    }
    // Pending records first, then the outcomes, as the stages write them.
    let (pending, done): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.status == TaskStatus::Pending);
    let started = Instant::now();
    let mut batches = 0;
    for batch in pending.chunks(size).chain(done.chunks(size)) {
        db.record_deliveries(batch).await.unwrap();
        batches += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    (
        (deliveries * 2) as f64 / elapsed,
        elapsed * 1000.0 / batches as f64,
    )
}
