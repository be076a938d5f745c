//! Delivery history as the consumer records it, read back from the real PostgreSQL: one execution
//! and task per (event × policy × target), a log line per attempt, the exact body sent, Harbor's
//! statuses; Pending as soon as the event is matched, before any attempt (for a queued task: a
//! direct first attempt, see `matching`, records its outcome only).

mod common;

use std::time::Duration;

use common::{http_target, push, spec, Env, Options};
use regrelay_events::EventType;
use regrelay_history::executions::{Execution, ExecutionQuery, ExecutionTrigger, TaskStatus};
use regrelay_history::Database;
use regrelay_testkit::TestReceiver;

/// Waits until the policy's only execution reaches `status`; returns it.
async fn execution_in(db: &Database, policy_id: i64, status: TaskStatus) -> Execution {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (executions, _) = db
            .list_executions(policy_id, &ExecutionQuery::default())
            .await
            .unwrap();
        if let [only] = executions.as_slice() {
            if only.status == status {
                return only.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single {status:?} execution: {executions:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_attempt_is_logged_and_the_execution_ends_in_success() {
    let env = Env::start("history-success", Options::default()).await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[500, 503]);
    receiver.set_answer_body("try later");
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "ci",
                vec![http_target(receiver.url("/hook"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    let ids = env.publish(&[push("lib", "app", "v1")]).await;

    let execution = execution_in(&env.db, policy.id, TaskStatus::Success).await;
    assert_eq!(execution.vendor_id, policy.id);
    assert_eq!(execution.trigger, ExecutionTrigger::Event);
    assert_eq!(execution.event_type, "PUSH_ARTIFACT");
    assert_eq!(execution.metrics.task_count, 1);
    assert_eq!(execution.metrics.success_task_count, 1);
    assert!(execution.end_time.is_some());
    // The exact body the receiver got.
    let received = receiver.requests();
    assert_eq!(received.len(), 3);
    assert_eq!(
        execution.extra_attrs["payload"]
            .as_str()
            .unwrap()
            .as_bytes(),
        received[2].body.as_slice()
    );
    assert_eq!(execution.extra_attrs["event_type"], "PUSH_ARTIFACT");

    let (tasks, total) = env.db.list_tasks(execution.id, 1, 10).await.unwrap();
    assert_eq!(total, 1);
    assert_eq!(tasks[0].run_count, 3);
    assert_eq!(tasks[0].status, TaskStatus::Success);
    let log = env.db.task_log(tasks[0].id).await.unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[0].contains("attempt 1") && lines[0].contains("500"),
        "{log}"
    );
    assert!(
        lines[0].contains("try later"),
        "the answer's start is kept: {log}"
    );
    assert!(
        lines[1].contains("attempt 2") && lines[1].contains("503"),
        "{log}"
    );
    assert!(
        lines[2].contains("attempt 3") && lines[2].contains("200"),
        "{log}"
    );
    assert_eq!(ids.len(), 1);
    assert!(env.metric("regrelay_history_batch_size_count") >= 1.0);
}

#[tokio::test]
async fn a_dead_lettered_delivery_is_an_error_with_its_reason() {
    let env = Env::start("history-error", Options::default()).await;
    let receiver = TestReceiver::start().await;
    receiver.set_default_status(404);
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "gone",
                vec![http_target(receiver.url("/missing"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    env.publish(&[push("lib", "app", "v1")]).await;

    let execution = execution_in(&env.db, policy.id, TaskStatus::Error).await;
    assert!(
        execution.status_message.contains("404"),
        "{}",
        execution.status_message
    );
    assert_eq!(execution.metrics.error_task_count, 1);
    assert_eq!(env.dead_letters(1, Duration::from_secs(5)).await.len(), 1);
}

#[tokio::test]
async fn a_matched_event_is_pending_in_history_before_any_attempt() {
    let env = Env::start("history-pending", Options::default()).await;
    let receiver = TestReceiver::start().await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "later",
                vec![http_target(receiver.url("/hook"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    // Deliveries paused: matching still runs and records the task.
    env.db.set_notification_enabled(false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.publish(&[push("lib", "app", "v1")]).await;

    // Harbor's roll-up: an execution with a Pending task is Running.
    let pending = execution_in(&env.db, policy.id, TaskStatus::Running).await;
    assert_eq!(pending.metrics.pending_task_count, 1);
    assert_eq!(receiver.count(), 0);

    env.db.set_notification_enabled(true).await.unwrap();
    let done = execution_in(&env.db, policy.id, TaskStatus::Success).await;
    assert_eq!(done.id, pending.id, "the same execution moves on");
}

#[tokio::test]
async fn without_history_deliveries_still_work_and_nothing_is_recorded() {
    let env = Env::start(
        "history-off",
        Options {
            history: false,
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "quiet",
                vec![http_target(receiver.url("/hook"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    env.publish(&[push("lib", "app", "v1")]).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let (executions, total) = env
        .db
        .list_executions(policy.id, &ExecutionQuery::default())
        .await
        .unwrap();
    assert_eq!((executions.len(), total), (0, 0));
}

/// PostgreSQL goes away mid-stream: deliveries wait (unacked) instead of being acked without their
/// history; when it is back, every event is delivered and every execution ends in Success.
#[tokio::test]
async fn a_database_outage_holds_deliveries_and_loses_no_history() {
    const EVENTS: usize = 40;
    let env = Env::start(
        "history-outage",
        Options {
            database_proxy: true,
            ..Options::default()
        },
    )
    .await;
    let proxy = env.db_proxy.as_ref().unwrap();
    let receiver = TestReceiver::start().await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "outage",
                vec![http_target(receiver.url("/hook"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    // Cut the consumer's database connections and refuse new ones, then send the events.
    proxy.set_refusing(true);
    proxy.sever();
    let events: Vec<String> = (0..EVENTS)
        .map(|i| push("lib", "app", &format!("t{i}")))
        .collect();
    env.publish(&events).await;
    // Attempts go out, but no outcome can be made durable, so nothing is acked.
    receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = "regrelay_deliveries_total{outcome=\"delivered\",target_type=\"http\"}";
    assert_eq!(
        env.metric(delivered),
        0.0,
        "nothing counted delivered without its history"
    );
    assert!(env.metric("regrelay_history_record_retries_total") > 0.0);

    proxy.set_refusing(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (executions, total) = env
            .db
            .list_executions(
                policy.id,
                &ExecutionQuery {
                    status: Some(TaskStatus::Success),
                    ..ExecutionQuery::default()
                },
            )
            .await
            .unwrap();
        if total == EVENTS as i64 {
            assert!(executions
                .iter()
                .all(|e| e.trigger == ExecutionTrigger::Event));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} of {EVENTS} executions in Success"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every tag reached the receiver exactly once: waiting for the database does not re-send.
    let tags: std::collections::HashSet<String> = receiver
        .requests()
        .iter()
        .map(|r| {
            r.json()["event_data"]["resources"][0]["tag"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(tags.len(), EVENTS);
    assert_eq!(
        receiver.count(),
        EVENTS,
        "no attempt was repeated during the outage"
    );
    // A delivery is counted just after its record is durable: wait for the last few.
    for _ in 0..50 {
        if env.metric(delivered) as usize >= EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.metric(delivered) as usize, EVENTS);
}
