//! Delivery history on the real PostgreSQL: idempotent, monotonic batch writes, the batching
//! recorder, reads, cascade on policy delete, and retention.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::spec;
use regrelay_history::executions::{
    AttemptLog, DeliveryRecord, ExecutionQuery, ExecutionTrigger, TaskStatus, VendorType,
};
use regrelay_history::{Database, HistoryRecorder, RecorderMetrics, RecorderSettings, SweepRules};
use uuid::Uuid;

async fn policy(db: &Database, name: &str) -> i64 {
    let project = db.ensure_project("library").await.unwrap();
    db.create_policy(Some(project.id), &spec(name))
        .await
        .unwrap()
        .id
}

fn at(seconds: i64) -> DateTime<Utc> {
    "2026-11-24T20:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(seconds)
}

/// A step of the delivery `key`: `run_count` attempts made, the last one logged.
fn step(key: Uuid, policy_id: i64, run_count: i32, status: TaskStatus) -> DeliveryRecord {
    DeliveryRecord {
        history_key: key,
        policy_id,
        vendor_type: VendorType::Webhook,
        trigger: ExecutionTrigger::Event,
        event_type: "PUSH_ARTIFACT".into(),
        event_id: Uuid::from_u128(7),
        status,
        status_message: format!("{status} after {run_count}"),
        run_count,
        payload: (run_count > 0).then(|| format!("{{\"attempt\":{run_count}}}")),
        attempt: (run_count > 0).then(|| AttemptLog {
            attempt: run_count,
            at: at(i64::from(run_count)),
            status_code: Some(if status == TaskStatus::Success {
                200
            } else {
                503
            }),
            error: None,
            duration: Duration::from_millis(12),
            response_snippet: Some("busy".into()),
        }),
        at: at(i64::from(run_count)),
        target: None,
    }
}

async fn only_execution(db: &Database, policy_id: i64) -> regrelay_history::executions::Execution {
    let (executions, total) = db
        .list_executions(policy_id, &ExecutionQuery::default())
        .await
        .unwrap();
    assert_eq!(total, 1, "{executions:?}");
    executions.into_iter().next().unwrap()
}

async fn only_task(db: &Database, execution_id: i64) -> regrelay_history::executions::Task {
    let (tasks, total) = db.list_tasks(execution_id, 1, 10).await.unwrap();
    assert_eq!(total, 1);
    tasks.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_delivery_is_one_execution_and_one_task_and_recording_twice_changes_nothing() {
    let store = common::store("history idempotent").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let key = Uuid::new_v4();

    db.record_deliveries(&[step(key, policy_id, 0, TaskStatus::Pending)])
        .await
        .unwrap();
    let execution = only_execution(db, policy_id).await;
    assert_eq!(execution.status, TaskStatus::Running, "Pending rolls up");
    assert_eq!(execution.vendor_type, VendorType::Webhook);
    assert_eq!(execution.vendor_id, policy_id);
    assert_eq!(execution.trigger, ExecutionTrigger::Event);
    assert_eq!(execution.end_time, None);
    assert_eq!(
        execution.extra_attrs,
        serde_json::json!({"event_type": "PUSH_ARTIFACT"}),
        "no payload before the first attempt"
    );
    assert_eq!(execution.metrics.task_count, 1);
    assert_eq!(execution.metrics.pending_task_count, 1);

    let first = step(key, policy_id, 1, TaskStatus::Scheduled);
    let done = step(key, policy_id, 2, TaskStatus::Success);
    for _ in 0..2 {
        db.record_deliveries(std::slice::from_ref(&first))
            .await
            .unwrap();
        db.record_deliveries(std::slice::from_ref(&done))
            .await
            .unwrap();
    }
    let execution = only_execution(db, policy_id).await;
    assert_eq!(execution.status, TaskStatus::Success);
    assert_eq!(execution.status_message, "Success after 2");
    assert_eq!(execution.start_time, at(0));
    assert_eq!(execution.end_time, Some(at(2)));
    assert_eq!(execution.extra_attrs["payload"], "{\"attempt\":2}");
    assert_eq!(execution.metrics.success_task_count, 1);
    assert_eq!(
        db.get_execution(policy_id, execution.id).await.unwrap(),
        Some(execution.clone())
    );

    let task = only_task(db, execution.id).await;
    assert_eq!(task.status, TaskStatus::Success);
    assert_eq!(task.run_count, 2);
    assert_eq!(task.creation_time, at(0));
    assert_eq!(task.start_time, at(0));
    assert_eq!(task.update_time, at(2));
    assert_eq!(task.end_time, Some(at(2)));
    assert_eq!(
        db.get_task(execution.id, task.id).await.unwrap(),
        Some(task.clone())
    );
    assert_eq!(db.get_task(execution.id + 1, task.id).await.unwrap(), None);

    let log = db.task_log(task.id).await.unwrap();
    assert_eq!(
        log,
        "2026-11-24T20:00:01.000Z attempt 1: HTTP 503 in 12 ms: busy\n\
         2026-11-24T20:00:02.000Z attempt 2: HTTP 200 in 12 ms: busy\n",
        "one line per attempt, however often recorded"
    );
}

#[tokio::test]
async fn a_stale_record_never_moves_a_task_backwards() {
    let store = common::store("history stale").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let key = Uuid::new_v4();

    db.record_deliveries(&[step(key, policy_id, 2, TaskStatus::Success)])
        .await
        .unwrap();
    // Redelivered older steps, in separate batches and together.
    db.record_deliveries(&[step(key, policy_id, 1, TaskStatus::Scheduled)])
        .await
        .unwrap();
    let mut running = step(key, policy_id, 2, TaskStatus::Running);
    running.attempt = None;
    db.record_deliveries(&[
        running.clone(),
        step(key, policy_id, 0, TaskStatus::Pending),
    ])
    .await
    .unwrap();

    let execution = only_execution(db, policy_id).await;
    assert_eq!(execution.status, TaskStatus::Success);
    assert_eq!(execution.end_time, Some(at(2)));
    assert_eq!(execution.extra_attrs["payload"], "{\"attempt\":2}");
    let task = only_task(db, execution.id).await;
    assert_eq!((task.run_count, task.status), (2, TaskStatus::Success));
    assert_eq!(task.status_message, "Success after 2");
    // The stale step's attempt is still logged: it happened.
    assert_eq!(db.task_log(task.id).await.unwrap().lines().count(), 2);

    // A stale record fills in a payload the execution lacks, and nothing else.
    let other = Uuid::new_v4();
    let mut no_payload = step(other, policy_id, 3, TaskStatus::Error);
    no_payload.payload = None;
    db.record_deliveries(&[no_payload]).await.unwrap();
    db.record_deliveries(&[step(other, policy_id, 1, TaskStatus::Scheduled)])
        .await
        .unwrap();
    let (executions, _) = db
        .list_executions(policy_id, &ExecutionQuery::default())
        .await
        .unwrap();
    assert_eq!(executions[0].status, TaskStatus::Error);
    assert_eq!(executions[0].extra_attrs["payload"], "{\"attempt\":1}");
}

#[tokio::test]
async fn a_batch_may_repeat_keys_and_skips_deleted_policies() {
    let store = common::store("history batch").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let gone = policy(db, "gone").await;
    assert!(db
        .delete_policy(
            db.find_project_by_name("library")
                .await
                .unwrap()
                .map(|p| p.id),
            gone
        )
        .await
        .unwrap());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

    db.record_deliveries(&[
        step(a, policy_id, 0, TaskStatus::Pending),
        step(b, policy_id, 1, TaskStatus::Scheduled),
        step(a, policy_id, 1, TaskStatus::Scheduled),
        step(Uuid::new_v4(), gone, 1, TaskStatus::Scheduled),
        step(a, policy_id, 2, TaskStatus::Error),
        step(a, policy_id, 1, TaskStatus::Scheduled),
        step(b, policy_id, 2, TaskStatus::Success),
    ])
    .await
    .unwrap();

    let (executions, total) = db
        .list_executions(policy_id, &ExecutionQuery::default())
        .await
        .unwrap();
    assert_eq!(total, 2, "the deleted policy's record was skipped");
    // Newest first: b was created after a.
    let statuses: Vec<TaskStatus> = executions.iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![TaskStatus::Success, TaskStatus::Error]);
    let a_task = only_task(db, executions[1].id).await;
    assert_eq!(a_task.run_count, 2);
    assert_eq!(a_task.start_time, at(0));
    assert_eq!(db.task_log(a_task.id).await.unwrap().lines().count(), 2);
    let b_task = only_task(db, executions[0].id).await;
    assert_eq!(db.task_log(b_task.id).await.unwrap().lines().count(), 2);

    // The same batch again: nothing changes.
    let before = db
        .list_executions(policy_id, &ExecutionQuery::default())
        .await
        .unwrap();
    db.record_deliveries(&[
        step(a, policy_id, 2, TaskStatus::Error),
        step(b, policy_id, 2, TaskStatus::Success),
    ])
    .await
    .unwrap();
    assert_eq!(
        db.list_executions(policy_id, &ExecutionQuery::default())
            .await
            .unwrap(),
        before
    );
}

#[tokio::test]
async fn lists_filter_and_page_newest_first_and_last_triggers_per_event_type() {
    let store = common::store("history lists").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let other = policy(db, "other").await;
    let mut records = Vec::new();
    for i in 0..5 {
        let mut record = step(
            Uuid::new_v4(),
            policy_id,
            1,
            if i % 2 == 0 {
                TaskStatus::Error
            } else {
                TaskStatus::Success
            },
        );
        if i == 4 {
            record.event_type = "DELETE_ARTIFACT".into();
            record.trigger = ExecutionTrigger::Manual;
        }
        record.at = at(i);
        records.push(record);
    }
    db.record_deliveries(&records).await.unwrap();

    let page = |page, page_size| ExecutionQuery {
        page,
        page_size,
        ..ExecutionQuery::default()
    };
    let (all, total) = db.list_executions(policy_id, &page(1, 0)).await.unwrap();
    assert_eq!(total, 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let (second, total) = db.list_executions(policy_id, &page(2, 2)).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(
        second.iter().map(|e| e.id).collect::<Vec<_>>(),
        all[2..4].iter().map(|e| e.id).collect::<Vec<_>>()
    );

    let errors = ExecutionQuery {
        status: Some(TaskStatus::Error),
        ..ExecutionQuery::default()
    };
    assert_eq!(db.list_executions(policy_id, &errors).await.unwrap().1, 3);
    let deletes = ExecutionQuery {
        event_type: Some("DELETE_ARTIFACT".into()),
        trigger: Some(ExecutionTrigger::Manual),
        status: Some(TaskStatus::Error),
        ..ExecutionQuery::default()
    };
    let (found, total) = db.list_executions(policy_id, &deletes).await.unwrap();
    assert_eq!(total, 1);
    assert_eq!(found[0].trigger, ExecutionTrigger::Manual);
    assert_eq!(db.list_executions(other, &page(1, 10)).await.unwrap().1, 0);
    assert_eq!(db.get_execution(other, all[0].id).await.unwrap(), None);

    let mut triggers = db.last_triggers(&[policy_id, other]).await.unwrap();
    triggers.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    let summary: Vec<(i64, &str, DateTime<Utc>)> = triggers
        .iter()
        .map(|t| (t.policy_id, t.event_type.as_str(), t.time))
        .collect();
    // The DELETE_ARTIFACT execution was a test delivery (MANUAL): not a trigger of that type.
    assert_eq!(summary, vec![(policy_id, "PUSH_ARTIFACT", at(3))]);
}

#[tokio::test]
async fn deleting_a_policy_deletes_its_history() {
    let store = common::store("history cascade").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let kept = policy(db, "kept").await;
    let key = Uuid::new_v4();
    db.record_deliveries(&[
        step(key, policy_id, 1, TaskStatus::Scheduled),
        step(Uuid::new_v4(), kept, 1, TaskStatus::Success),
    ])
    .await
    .unwrap();
    let execution = only_execution(db, policy_id).await;
    let task = only_task(db, execution.id).await;

    let project = db.find_project_by_name("library").await.unwrap().unwrap();
    assert!(db.delete_policy(Some(project.id), policy_id).await.unwrap());

    assert_eq!(
        db.get_execution(policy_id, execution.id).await.unwrap(),
        None
    );
    assert_eq!(db.get_task(execution.id, task.id).await.unwrap(), None);
    assert_eq!(db.task_log(task.id).await.unwrap(), "");
    assert_eq!(count(&store, "executions").await, 1);
    assert_eq!(count(&store, "tasks").await, 1);
    assert_eq!(count(&store, "task_logs").await, 1);
    // A late step of the deleted policy's delivery is skipped, not an error.
    db.record_deliveries(&[step(key, policy_id, 2, TaskStatus::Success)])
        .await
        .unwrap();
    assert_eq!(count(&store, "executions").await, 1);
}

/// Every execution of a policy (no page limit), and their total.
async fn all_executions(
    db: &Database,
    policy_id: i64,
) -> (Vec<regrelay_history::executions::Execution>, i64) {
    db.list_executions(
        policy_id,
        &ExecutionQuery {
            page_size: 0,
            ..ExecutionQuery::default()
        },
    )
    .await
    .unwrap()
}

async fn count(store: &common::Store, table: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(&store.database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let n = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = driver.await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_batches_concurrent_records() {
    let store = common::store("history recorder").await;
    let policy_id = policy(&store.db, "p").await;
    let registry = prometheus::Registry::new();
    let metrics = RecorderMetrics::register(&registry).unwrap();
    let recorder = HistoryRecorder::spawn(
        store.db.clone(),
        RecorderSettings {
            max_batch: 16,
            // No linger: batches form only from records that queue up behind writes in flight.
            linger: Duration::ZERO,
            concurrency: 2,
        },
        metrics.clone(),
    );

    const RECORDS: usize = 64;
    let mut calls = Vec::new();
    for i in 0..RECORDS {
        let recorder = recorder.clone();
        let mut record = step(Uuid::new_v4(), policy_id, 1, TaskStatus::Success);
        record.at = at(i64::try_from(i).unwrap());
        calls.push(tokio::spawn(async move { recorder.record(record).await }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Every record was durable when its call returned.
    let (_, total) = store
        .db
        .list_executions(policy_id, &ExecutionQuery::default())
        .await
        .unwrap();
    assert_eq!(total, i64::try_from(RECORDS).unwrap());
    let batches = metrics.batch_size.get_sample_count();
    assert!(
        batches < RECORDS as u64,
        "{batches} batches for {RECORDS} records"
    );
    assert_eq!(metrics.batch_size.get_sample_sum(), RECORDS as f64);
    assert_eq!(metrics.write_seconds.get_sample_count(), batches);
    assert_eq!(metrics.write_failures.get(), 0);
    let families: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    for name in [
        "regrelay_history_write_duration_seconds",
        "regrelay_history_batch_size",
        "regrelay_history_write_failures_total",
    ] {
        assert!(families.iter().any(|f| f == name), "{name}: {families:?}");
    }
}

#[tokio::test]
async fn a_failed_batch_fails_its_records_and_the_recorder_goes_on() {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        regrelay_testkit::unused_port()
    );
    let db = Database::connect(&url, 1).unwrap();
    let metrics = RecorderMetrics::register(&prometheus::Registry::new()).unwrap();
    let recorder = HistoryRecorder::spawn(
        db,
        RecorderSettings {
            max_batch: 4,
            linger: Duration::ZERO,
            concurrency: 2,
        },
        metrics.clone(),
    );
    for _ in 0..2 {
        let error = recorder
            .record(step(Uuid::new_v4(), 1, 1, TaskStatus::Success))
            .await
            .unwrap_err();
        assert!(
            matches!(error, regrelay_history::StoreError::BatchFailed(_)),
            "{error:?}"
        );
        assert!(error.is_unavailable(), "{error}");
    }
    assert_eq!(metrics.write_failures.get(), 2);
}

#[tokio::test]
async fn the_sweep_deletes_finished_executions_by_count_and_age_only() {
    sweeps_by_count_and_age_only("history sweep", 0.0).await;
}

#[tokio::test]
async fn a_compacting_sweep_keeps_exactly_what_a_deleting_one_keeps() {
    sweeps_by_count_and_age_only("history compact", 1.0).await;
}

/// The rules' outcome, by deleting (`compact_share` 0) or by compacting (1: whenever anything
/// goes).
async fn sweeps_by_count_and_age_only(name: &str, compact_share: f64) {
    let rules = |keep, max_age, batch| SweepRules {
        compact_share,
        ..SweepRules::new(keep, max_age, batch)
    };
    let store = common::store(name).await;
    let db = &store.db;
    let busy = policy(db, "busy").await;
    let old = policy(db, "old").await;
    let now = Utc::now();
    let mut records = Vec::new();
    // busy: 6 finished (recent), then 2 unfinished.
    for i in 0..6 {
        let mut record = step(Uuid::new_v4(), busy, 1, TaskStatus::Success);
        record.at = now - chrono::Duration::minutes(10 - i);
        records.push(record);
    }
    for _ in 0..2 {
        let mut record = step(Uuid::new_v4(), busy, 1, TaskStatus::Scheduled);
        record.at = now - chrono::Duration::days(30);
        records.push(record);
    }
    // old: 2 finished 10 days ago, 1 finished just now, 1 unfinished from long ago.
    for days in [10, 10, 0] {
        let mut record = step(Uuid::new_v4(), old, 1, TaskStatus::Error);
        record.at = now - chrono::Duration::days(days);
        records.push(record);
    }
    let mut stuck = step(Uuid::new_v4(), old, 0, TaskStatus::Pending);
    stuck.at = now - chrono::Duration::days(40);
    records.push(stuck);
    db.record_deliveries(&records).await.unwrap();
    let (busy_before, _) = db
        .list_executions(busy, &ExecutionQuery::default())
        .await
        .unwrap();

    let report = db
        .sweep_history(&rules(3, Duration::from_secs(7 * 24 * 3600), 2))
        .await
        .unwrap();
    assert_eq!(report.deleted_by_count, 3, "{report:?}");
    assert_eq!(report.deleted_by_age, 2, "{report:?}");
    assert_eq!(report.compacted, compact_share > 0.0, "{report:?}");

    let (busy_after, _) = all_executions(db, busy).await;
    // The 2 unfinished and the newest 3 finished remain.
    let kept: Vec<i64> = busy_before
        .iter()
        .filter(|e| !e.status.is_final())
        .chain(busy_before.iter().filter(|e| e.status.is_final()).take(3))
        .map(|e| e.id)
        .collect();
    let mut remaining: Vec<i64> = busy_after.iter().map(|e| e.id).collect();
    let mut expected = kept;
    remaining.sort();
    expected.sort();
    assert_eq!(remaining, expected);

    let (old_after, _) = db
        .list_executions(old, &ExecutionQuery::default())
        .await
        .unwrap();
    let statuses: Vec<TaskStatus> = old_after.iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![TaskStatus::Running, TaskStatus::Error]);
    // Tasks and logs went with their executions.
    assert_eq!(count(&store, "tasks").await, 2 + 3 + 2);
    assert_eq!(count(&store, "task_logs").await, 2 + 3 + 1);

    // Nothing more to do.
    assert_eq!(
        db.sweep_history(&rules(3, Duration::from_secs(7 * 24 * 3600), 2))
            .await
            .unwrap(),
        regrelay_history::SweepReport::default()
    );
    // Duration::MAX: no age limit.
    assert_eq!(
        db.sweep_history(&rules(100, Duration::MAX, 10))
            .await
            .unwrap(),
        regrelay_history::SweepReport::default()
    );
    // The kept rows keep their ids, and new ones continue the sequence.
    let more = step(Uuid::new_v4(), busy, 1, TaskStatus::Success);
    db.record_deliveries(&[more]).await.unwrap();
    let (newest, _) = db
        .list_executions(busy, &ExecutionQuery::default())
        .await
        .unwrap();
    assert!(
        newest[0].id > busy_before.iter().map(|e| e.id).max().unwrap(),
        "{:?}",
        newest.iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_compaction_while_the_recorder_writes_loses_none_of_its_rows() {
    let store = common::store("history compact concurrent").await;
    let db = &store.db;
    let busy = policy(db, "busy").await;
    let finished: Vec<_> = (0..400)
        .map(|_| step(Uuid::new_v4(), busy, 1, TaskStatus::Success))
        .collect();
    db.record_deliveries(&finished).await.unwrap();
    let compacting = SweepRules {
        compact_share: 0.5,
        ..SweepRules::new(10, Duration::MAX, 100)
    };
    // Unfinished deliveries recorded while the sweep runs: whether they commit before the sweep
    // locks the tables or after, every one of them is there at the end.
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut keys = Vec::new();
            for _ in 0..40 {
                let record = step(Uuid::new_v4(), busy, 1, TaskStatus::Scheduled);
                keys.push(record.history_key);
                db.record_deliveries(&[record]).await.unwrap();
            }
            keys
        })
    };
    let report = db.sweep_history(&compacting).await.unwrap();
    let written = writer.await.unwrap();
    assert!(report.compacted, "{report:?}");
    assert_eq!(report.deleted_by_count, 390, "{report:?}");
    let (left, total) = all_executions(db, busy).await;
    assert_eq!(total, 10 + written.len() as i64, "{total}");
    assert_eq!(
        left.iter().filter(|e| !e.status.is_final()).count(),
        written.len()
    );
    assert_eq!(count(&store, "tasks").await, 10 + written.len() as i64);
    assert_eq!(count(&store, "task_logs").await, 10 + written.len() as i64);
}

#[tokio::test]
async fn a_spread_sweep_paces_its_deletions_to_its_deadline_and_deletes_them_all() {
    let store = common::store("history sweep spread").await;
    let db = &store.db;
    let (busy, quiet) = (policy(db, "busy").await, policy(db, "quiet").await);
    let steps = |policy_id, n: usize| -> Vec<_> {
        (0..n)
            .map(|_| step(Uuid::new_v4(), policy_id, 1, TaskStatus::Success))
            .collect()
    };
    db.record_deliveries(&steps(busy, 34)).await.unwrap();
    db.record_deliveries(&steps(quiet, 10)).await.unwrap();
    // 30 + 6 rows beyond the 4 kept per policy, 6 per batch, spread over 600 ms: the batch that
    // brings the count to 36 is not due before 600 ms, so the sweep cannot finish sooner (how much
    // longer it takes is the machine's business, not this test's).
    let spread = SweepRules {
        spread: Duration::from_millis(600),
        ..SweepRules::new(4, Duration::MAX, 6)
    };
    let started = std::time::Instant::now();
    let report = db.sweep_history(&spread).await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.deleted_by_count, 36);
    assert!(took >= Duration::from_millis(500), "not paced: {took:?}");
    assert_eq!(count(&store, "executions").await, 8);
    // Nothing left to spread: the next sweep returns at once with nothing deleted.
    assert_eq!(
        db.sweep_history(&spread).await.unwrap(),
        regrelay_history::SweepReport::default()
    );
}

#[tokio::test]
async fn a_sweep_that_deleted_rows_vacuums_the_history_tables_when_asked() {
    let store = common::store("history sweep vacuum").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let record = |n: usize| -> Vec<_> {
        (0..n)
            .map(|_| step(Uuid::new_v4(), policy_id, 1, TaskStatus::Success))
            .collect()
    };
    // Manual vacuums only (`vacuum_count`; autovacuum has its own counter), from a fresh
    // connection so the statistics are not a cached snapshot.
    let vacuums = || async {
        let (client, connection) =
            tokio_postgres::connect(&store.database.url, tokio_postgres::NoTls)
                .await
                .unwrap();
        let driver = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT relname::text, vacuum_count FROM pg_stat_user_tables
                 WHERE relname IN ('executions', 'tasks', 'task_logs') ORDER BY relname",
                &[],
            )
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    db.record_deliveries(&record(30)).await.unwrap();
    let before = vacuums().await;

    // Without `vacuum`: deleted rows stay dead tuples.
    let report = db
        .sweep_history(&SweepRules::new(20, Duration::MAX, 100))
        .await
        .unwrap();
    assert_eq!((report.deleted_by_count, report.vacuumed), (10, false));
    assert_eq!(
        vacuums().await.iter().map(|v| v.1).collect::<Vec<_>>(),
        before.iter().map(|v| v.1).collect::<Vec<_>>()
    );

    // With it: each of the three tables is vacuumed once. Paced (a pause after each batch of
    // two, a throttled vacuum), which deletes the same rows.
    let paced = SweepRules {
        vacuum: true,
        pause_ratio: 1.0,
        ..SweepRules::new(5, Duration::MAX, 2)
    };
    let report = db.sweep_history(&paced).await.unwrap();
    assert_eq!((report.deleted_by_count, report.vacuumed), (15, true));
    let after = vacuums().await;
    assert_eq!(after.len(), 3, "{after:?}");
    for ((table, count), (_, count_before)) in after.iter().zip(&before) {
        assert_eq!(*count, count_before + 1, "{table}: {after:?}");
    }

    // Nothing deleted: no vacuum.
    let report = db.sweep_history(&paced).await.unwrap();
    assert_eq!(report, regrelay_history::SweepReport::default());
    assert_eq!(
        vacuums().await.iter().map(|v| v.1).collect::<Vec<_>>(),
        after.iter().map(|v| v.1).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_sweep_does_nothing_while_another_holds_the_lock() {
    let store = common::store("history sweep lock").await;
    let db = &store.db;
    let policy_id = policy(db, "p").await;
    let records: Vec<_> = (0..3)
        .map(|_| step(Uuid::new_v4(), policy_id, 1, TaskStatus::Success))
        .collect();
    db.record_deliveries(&records).await.unwrap();

    // Another process's sweeper, holding the lock.
    let (client, connection) = tokio_postgres::connect(&store.database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&0x7272_7377_6565_7021_i64],
        )
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    let report = db
        .sweep_history(&SweepRules::new(0, Duration::MAX, 10))
        .await
        .unwrap();
    assert_eq!(report, regrelay_history::SweepReport::default());

    // Released explicitly: a closed connection's session locks go only when the server's backend
    // has noticed the close, which can be after the next sweep's try-lock (CI saw that race).
    let unlocked: bool = client
        .query_one(
            "SELECT pg_advisory_unlock($1)",
            &[&0x7272_7377_6565_7021_i64],
        )
        .await
        .unwrap()
        .get(0);
    assert!(unlocked);
    drop(client);
    let _ = driver.await;
    let report = db
        .sweep_history(&SweepRules::new(0, Duration::MAX, 10))
        .await
        .unwrap();
    assert_eq!(report.deleted_by_count, 3);
    // The pool's connections do not keep the lock: the next sweep takes it again.
    let records: Vec<_> = (0..2)
        .map(|_| step(Uuid::new_v4(), policy_id, 1, TaskStatus::Success))
        .collect();
    db.record_deliveries(&records).await.unwrap();
    let report = db
        .sweep_history(&SweepRules::new(0, Duration::MAX, 10))
        .await
        .unwrap();
    assert_eq!(report.deleted_by_count, 2);
}

fn attempt_of(key: Uuid, policy_id: i64, run_count: i32, status: TaskStatus) -> DeliveryRecord {
    DeliveryRecord {
        target: Some(regrelay_history::executions::TargetRef {
            fingerprint: "fp-1".into(),
            address: "https://hooks.example.com/in?token=********".into(),
            target_type: "http".into(),
        }),
        ..step(key, policy_id, run_count, status)
    }
}

#[tokio::test]
async fn target_health_follows_the_attempts_recorded_once_each_and_drives_the_circuit() {
    use regrelay_history::target_health::{HealthQuery, HealthState};
    let store = common::store("history target health").await;
    let db = &store.db;
    let policy_id = policy(db, "health").await;
    let query = HealthQuery {
        page: 1,
        page_size: 10,
        ..Default::default()
    };

    // Three failed attempts of one delivery, recorded (and then recorded again: a redelivery).
    let key = Uuid::from_u128(1);
    let failures: Vec<DeliveryRecord> = (1..=3)
        .map(|n| attempt_of(key, policy_id, n, TaskStatus::Scheduled))
        .collect();
    db.record_deliveries(&failures).await.unwrap();
    db.record_deliveries(&failures).await.unwrap();
    let (health, total) = db.target_health(&query).await.unwrap();
    assert_eq!(total, 1);
    let h = &health[0];
    assert_eq!((h.attempts, h.successes, h.consecutive_failures), (3, 0, 3));
    assert_eq!(h.state, HealthState::Failing);
    assert_eq!(h.policy_name, "health");
    assert_eq!(h.project.as_deref(), Some("library"));
    assert_eq!(h.target_type, "http");
    assert_eq!(h.last_failure.as_deref(), Some("Scheduled after 3"));
    assert!(h.success_rate < 1.0);
    assert!(h.last_success_at.is_none());

    // At three consecutive failures the circuit opens, once; the probe is claimed once.
    assert!(db
        .open_circuits_due(4, Duration::from_millis(0))
        .await
        .unwrap()
        .is_empty());
    let opened = db
        .open_circuits_due(3, Duration::from_millis(0))
        .await
        .unwrap();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].consecutive_failures, 3);
    assert!(db
        .open_circuits_due(3, Duration::from_millis(0))
        .await
        .unwrap()
        .is_empty());
    let open = db.open_circuits().await.unwrap();
    assert_eq!(open.len(), 1);
    let claimed = db
        .claim_probe(
            policy_id,
            "fp-1",
            Duration::from_secs(30),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(claimed.is_some());
    assert!(db
        .claim_probe(
            policy_id,
            "fp-1",
            Duration::from_secs(30),
            Duration::from_secs(600)
        )
        .await
        .unwrap()
        .is_none());
    let (health, _) = db
        .target_health(&HealthQuery {
            state: Some(HealthState::Open),
            ..query.clone()
        })
        .await
        .unwrap();
    assert_eq!(health.len(), 1);

    // A success (the probe) resets the failures and closes the circuit, once.
    let success = attempt_of(key, policy_id, 4, TaskStatus::Success);
    db.record_deliveries(std::slice::from_ref(&success))
        .await
        .unwrap();
    let closed = db.close_recovered_circuits().await.unwrap();
    assert_eq!(closed.len(), 1);
    assert!(db.close_recovered_circuits().await.unwrap().is_empty());
    let (health, _) = db.target_health(&query).await.unwrap();
    let h = &health[0];
    assert_eq!((h.attempts, h.successes, h.consecutive_failures), (4, 1, 0));
    assert_eq!(h.state, HealthState::Healthy);
    assert!(h.last_success_at.is_some());
    assert!(h.circuit_opened_at.is_none());

    // Deliveries without a target (test deliveries) do not count; filters narrow the list.
    db.record_deliveries(&[step(Uuid::from_u128(2), policy_id, 1, TaskStatus::Error)])
        .await
        .unwrap();
    let (_, total) = db.target_health(&query).await.unwrap();
    assert_eq!(total, 1);
    for (filter, want) in [
        (
            HealthQuery {
                project: Some("other".into()),
                ..query.clone()
            },
            0,
        ),
        (
            HealthQuery {
                policy_id: Some(policy_id),
                ..query.clone()
            },
            1,
        ),
        (
            HealthQuery {
                state: Some(HealthState::Failing),
                ..query.clone()
            },
            0,
        ),
    ] {
        assert_eq!(
            db.target_health(&filter).await.unwrap().1,
            want,
            "{filter:?}"
        );
    }
}
