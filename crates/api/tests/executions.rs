//! Harbor's webhook history API against the real PostgreSQL: history is seeded with
//! `Database::record_deliveries` (what the consumer writes), then read the way a Harbor client
//! walks it: policies → executions → tasks → log, and lasttrigger.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{setup, TestApi};
use regrelay_history::executions::{
    AttemptLog, DeliveryRecord, ExecutionTrigger, TaskStatus, VendorType,
};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const POLICIES: &str = "/api/v2.0/projects/lib/webhook/policies";

/// Creates a policy through the API under `base` and returns its id.
async fn create_policy(api: &TestApi, base: &str, name: &str, event_types: &[&str]) -> i64 {
    let body = json!({
        "name": name,
        "event_types": event_types,
        "targets": [{"type": "http", "address": "https://ci.example.com/hook"}],
        "enabled": true
    });
    let reply = api.admin(Method::POST, base, Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply
        .header("location")
        .and_then(|l| l.rsplit('/').next())
        .and_then(|id| id.parse().ok())
        .expect("Location names the new policy")
}

fn at(seconds: i64) -> DateTime<Utc> {
    "2026-11-24T20:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(seconds)
}

/// One delivery's steps: a 503, then the outcome on the second attempt.
fn delivery(
    policy_id: i64,
    event_type: &str,
    outcome: TaskStatus,
    start: i64,
) -> Vec<DeliveryRecord> {
    let key = Uuid::new_v4();
    let base = DeliveryRecord {
        history_key: key,
        policy_id,
        vendor_type: VendorType::Webhook,
        trigger: ExecutionTrigger::Event,
        event_type: event_type.to_owned(),
        event_id: Uuid::new_v4(),
        status: TaskStatus::Pending,
        status_message: String::new(),
        run_count: 0,
        payload: None,
        attempt: None,
        at: at(start),
        target: None,
    };
    let attempt = |n: i32, code: u16, snippet: &str| AttemptLog {
        attempt: n,
        at: at(start + i64::from(n)),
        status_code: Some(code),
        error: None,
        duration: Duration::from_millis(12),
        response_snippet: Some(snippet.to_owned()),
    };
    vec![
        base.clone(),
        DeliveryRecord {
            status: TaskStatus::Scheduled,
            status_message: "HTTP 503; retry 2 of 5 in 1s".into(),
            run_count: 1,
            payload: Some(format!("{{\"type\":\"{event_type}\"}}")),
            attempt: Some(attempt(1, 503, "busy")),
            at: at(start + 1),
            ..base.clone()
        },
        DeliveryRecord {
            status: outcome,
            status_message: format!("{outcome} on attempt 2"),
            run_count: 2,
            payload: Some(format!("{{\"type\":\"{event_type}\"}}")),
            attempt: Some(attempt(
                2,
                if outcome == TaskStatus::Success {
                    200
                } else {
                    410
                },
                "done",
            )),
            at: at(start + 2),
            ..base
        },
    ]
}

#[tokio::test]
async fn a_harbor_client_walks_policies_executions_tasks_and_log() {
    let (_broker, api) = setup("history-walk").await;
    let policy_id = create_policy(&api, POLICIES, "ci", &["PUSH_ARTIFACT"]).await;
    let mut records = delivery(policy_id, "PUSH_ARTIFACT", TaskStatus::Success, 0);
    // A delivery still waiting for its retry.
    records.extend(
        delivery(policy_id, "PUSH_ARTIFACT", TaskStatus::Success, 100)
            .into_iter()
            .take(2),
    );
    api.db.record_deliveries(&records).await.unwrap();

    // policies → the policy's id
    let policies = api.admin(Method::GET, POLICIES, None).await;
    assert_eq!(policies.status, 200);
    assert_eq!(policies.json()[0]["id"], policy_id);

    // → executions, newest first
    let path = format!("{POLICIES}/{policy_id}/executions");
    let reply = api.admin(Method::GET, &path, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-total-count"), Some("2"));
    let executions = reply.json();
    let (newest, done) = (&executions[0], &executions[1]);
    assert!(newest["id"].as_i64() > done["id"].as_i64());
    assert_eq!(newest["status"], "Running");
    assert_eq!(newest["end_time"], "0001-01-01T00:00:00Z");
    assert_eq!(newest["metrics"]["scheduled_task_count"], 1);
    let keys: Vec<&str> = done
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "vendor_type",
            "vendor_id",
            "status",
            "status_message",
            "metrics",
            "trigger",
            "extra_attrs",
            "start_time",
            "end_time"
        ]
    );
    assert_eq!(done["vendor_type"], "WEBHOOK");
    assert_eq!(done["vendor_id"], policy_id);
    assert_eq!(done["status"], "Success");
    assert_eq!(done["status_message"], "Success on attempt 2");
    assert_eq!(done["trigger"], "EVENT");
    assert_eq!(
        done["extra_attrs"],
        json!({"event_type": "PUSH_ARTIFACT", "payload": "{\"type\":\"PUSH_ARTIFACT\"}"})
    );
    assert_eq!(done["start_time"], "2026-11-24T20:00:00.000Z");
    assert_eq!(done["end_time"], "2026-11-24T20:00:02.000Z");
    assert_eq!(
        done["metrics"],
        json!({
            "task_count": 1, "success_task_count": 1, "error_task_count": 0,
            "pending_task_count": 0, "running_task_count": 0, "scheduled_task_count": 0,
            "stopped_task_count": 0
        })
    );

    // → tasks
    let execution_id = done["id"].as_i64().unwrap();
    let tasks_path = format!("{path}/{execution_id}/tasks");
    let reply = api.admin(Method::GET, &tasks_path, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-total-count"), Some("1"));
    let task = &reply.json()[0];
    let keys: Vec<&str> = task
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "execution_id",
            "status",
            "status_message",
            "run_count",
            "extra_attrs",
            "creation_time",
            "update_time",
            "start_time",
            "end_time"
        ]
    );
    assert_eq!(task["execution_id"], execution_id);
    assert_eq!(task["status"], "Success");
    assert_eq!(task["run_count"], 2);
    assert_eq!(task["creation_time"], "2026-11-24T20:00:00.000Z");
    assert_eq!(task["update_time"], "2026-11-24T20:00:02.000Z");
    assert_eq!(task["end_time"], "2026-11-24T20:00:02.000Z");

    // → log
    let task_id = task["id"].as_i64().unwrap();
    let reply = api
        .admin(Method::GET, &format!("{tasks_path}/{task_id}/log"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    assert_eq!(
        reply.text,
        "2026-11-24T20:00:01.000Z attempt 1: HTTP 503 in 12 ms: busy\n\
         2026-11-24T20:00:02.000Z attempt 2: HTTP 200 in 12 ms: done\n"
    );

    // The project by numeric id reads the same.
    let project_id = policies.json()[0]["project_id"].as_i64().unwrap();
    let by_id = api
        .admin(
            Method::GET,
            &format!("/api/v2.0/projects/{project_id}/webhook/policies/{policy_id}/executions"),
            None,
        )
        .await;
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.json(), executions);
}

#[tokio::test]
async fn executions_are_paged_and_filtered_with_harbors_q() {
    let (_broker, api) = setup("history-paging").await;
    let policy_id =
        create_policy(&api, POLICIES, "ci", &["PUSH_ARTIFACT", "DELETE_ARTIFACT"]).await;
    let mut records = Vec::new();
    for i in 0..5 {
        let outcome = if i % 2 == 0 {
            TaskStatus::Error
        } else {
            TaskStatus::Success
        };
        records.extend(delivery(policy_id, "PUSH_ARTIFACT", outcome, i * 10));
    }
    let mut manual = delivery(policy_id, "DELETE_ARTIFACT", TaskStatus::Error, 100);
    for record in &mut manual {
        record.trigger = ExecutionTrigger::Manual;
    }
    records.extend(manual);
    api.db.record_deliveries(&records).await.unwrap();

    let path = format!("{POLICIES}/{policy_id}/executions");
    let all = api
        .admin(Method::GET, &format!("{path}?page_size=100"), None)
        .await
        .json();
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    let reply = api
        .admin(Method::GET, &format!("{path}?page=2&page_size=2"), None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-total-count"), Some("6"));
    assert_eq!(
        reply.header("link"),
        Some(
            format!(
                "<{path}?page=1&page_size=2>; rel=\"prev\" , <{path}?page=3&page_size=2>; rel=\"next\""
            )
            .as_str()
        )
    );
    let page_ids: Vec<i64> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page_ids, ids[2..4]);

    let errors = api
        .admin(Method::GET, &format!("{path}?q=status=Error"), None)
        .await;
    assert_eq!(errors.status, 200, "{}", errors.text);
    assert_eq!(errors.header("x-total-count"), Some("4"));
    assert!(errors
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["status"] == "Error"));

    let both = api
        .admin(
            Method::GET,
            &format!("{path}?q=status%3DError%2Cevent_type%3DPUSH_ARTIFACT&page_size=2"),
            None,
        )
        .await;
    assert_eq!(both.header("x-total-count"), Some("3"));
    assert!(both
        .header("link")
        .is_some_and(|l| l.contains("q=status=Error,event_type=PUSH_ARTIFACT")));

    let manual = api
        .admin(Method::GET, &format!("{path}?q=trigger=MANUAL"), None)
        .await;
    assert_eq!(manual.header("x-total-count"), Some("1"));
    assert_eq!(manual.json()[0]["trigger"], "MANUAL");
    assert_eq!(
        manual.json()[0]["extra_attrs"]["event_type"],
        "DELETE_ARTIFACT"
    );

    for bad in [
        "q=status=Done",
        "q=colour=blue",
        "q=trigger=CRON",
        "page_size=101",
        "sort=name",
    ] {
        let reply = api.admin(Method::GET, &format!("{path}?{bad}"), None).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert_eq!(reply.json()["errors"][0]["code"], "BAD_REQUEST");
    }
}

#[tokio::test]
async fn ids_from_elsewhere_are_harbors_404() {
    let (_broker, api) = setup("history-404").await;
    let policy_id = create_policy(&api, POLICIES, "ci", &["PUSH_ARTIFACT"]).await;
    let other_id = create_policy(&api, POLICIES, "other", &["PUSH_ARTIFACT"]).await;
    let elsewhere = create_policy(
        &api,
        "/api/v2.0/projects/elsewhere/webhook/policies",
        "far",
        &["PUSH_ARTIFACT"],
    )
    .await;
    let mut records = delivery(policy_id, "PUSH_ARTIFACT", TaskStatus::Success, 0);
    records.extend(delivery(other_id, "PUSH_ARTIFACT", TaskStatus::Success, 0));
    api.db.record_deliveries(&records).await.unwrap();

    let executions = |id: i64| format!("{POLICIES}/{id}/executions");
    let mine = api
        .admin(Method::GET, &executions(policy_id), None)
        .await
        .json()[0]["id"]
        .as_i64()
        .unwrap();
    let theirs = api
        .admin(Method::GET, &executions(other_id), None)
        .await
        .json()[0]["id"]
        .as_i64()
        .unwrap();
    let task_of = |execution: i64, policy: i64| {
        let path = format!("{}/{execution}/tasks", executions(policy));
        let api = &api;
        async move {
            api.admin(Method::GET, &path, None).await.json()[0]["id"]
                .as_i64()
                .unwrap()
        }
    };
    let my_task = task_of(mine, policy_id).await;
    let their_task = task_of(theirs, other_id).await;

    for path in [
        // The policy is in another project, or not there at all.
        executions(elsewhere),
        executions(999_999),
        format!("/api/v2.0/projects/nobody/webhook/policies/{policy_id}/executions"),
        format!("/api/v2.0/projects/999999/webhook/policies/{policy_id}/executions"),
        // The execution is another policy's.
        format!("{}/{theirs}/tasks", executions(policy_id)),
        format!("{}/{theirs}/tasks/{their_task}/log", executions(policy_id)),
        // The task is another execution's.
        format!("{}/{mine}/tasks/{their_task}/log", executions(policy_id)),
        format!("{}/{mine}/tasks/999999/log", executions(policy_id)),
        // A system-wide path for a project policy.
        format!("/api/v1/system/webhook/policies/{policy_id}/executions"),
    ] {
        let reply = api.admin(Method::GET, &path, None).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text);
        assert_eq!(reply.json()["errors"][0]["code"], "NOT_FOUND", "{path}");
        assert!(!reply.message().is_empty());
    }
    let ok = api
        .admin(
            Method::GET,
            &format!("{}/{mine}/tasks/{my_task}/log", executions(policy_id)),
            None,
        )
        .await;
    assert_eq!(ok.status, 200);
    let bad = api
        .admin(
            Method::GET,
            &format!("{}/x/tasks", executions(policy_id)),
            None,
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn lasttrigger_has_one_entry_per_policy_and_event_type() {
    let (_broker, api) = setup("history-lasttrigger").await;
    let ci = create_policy(&api, POLICIES, "ci", &["PUSH_ARTIFACT", "DELETE_ARTIFACT"]).await;
    let _quiet = create_policy(&api, POLICIES, "quiet", &["PULL_ARTIFACT"]).await;
    let mut records = delivery(ci, "PUSH_ARTIFACT", TaskStatus::Success, 0);
    records.extend(delivery(ci, "PUSH_ARTIFACT", TaskStatus::Error, 50));
    api.db.record_deliveries(&records).await.unwrap();

    let reply = api
        .admin(
            Method::GET,
            "/api/v2.0/projects/lib/webhook/lasttrigger",
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut entries: Vec<Value> = reply.json().as_array().unwrap().clone();
    entries.sort_by_key(|e| format!("{}{}", e["policy_name"], e["event_type"]));
    let summary: Vec<(String, String, String, bool)> = entries
        .iter()
        .map(|e| {
            (
                e["policy_name"].as_str().unwrap().to_owned(),
                e["event_type"].as_str().unwrap().to_owned(),
                e["last_trigger_time"].as_str().unwrap().to_owned(),
                e["enabled"].as_bool().unwrap(),
            )
        })
        .collect();
    let zero = "0001-01-01T00:00:00Z".to_owned();
    assert_eq!(
        summary,
        vec![
            ("ci".into(), "DELETE_ARTIFACT".into(), zero.clone(), true),
            (
                "ci".into(),
                "PUSH_ARTIFACT".into(),
                "2026-11-24T20:00:50.000Z".into(),
                true
            ),
            ("quiet".into(), "PULL_ARTIFACT".into(), zero, true),
        ]
    );
    let policy = api
        .admin(Method::GET, &format!("{POLICIES}/{ci}"), None)
        .await
        .json();
    assert_eq!(entries[0]["creation_time"], policy["creation_time"]);

    // A project nothing has named yet: nothing triggered.
    let unknown = api
        .admin(
            Method::GET,
            "/api/v2.0/projects/nobody/webhook/lasttrigger",
            None,
        )
        .await;
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json(), json!([]));
}

#[tokio::test]
async fn system_wide_policies_have_the_same_history_api() {
    let (_broker, api) = setup("history-system").await;
    let base = "/api/v1/system/webhook/policies";
    let policy_id = create_policy(&api, base, "everywhere", &["PUSH_ARTIFACT"]).await;
    api.db
        .record_deliveries(&delivery(policy_id, "PUSH_ARTIFACT", TaskStatus::Error, 0))
        .await
        .unwrap();

    let path = format!("{base}/{policy_id}/executions");
    let execution = &api.admin(Method::GET, &path, None).await.json()[0];
    assert_eq!(execution["status"], "Error");
    let execution_id = execution["id"].as_i64().unwrap();
    let tasks = api
        .admin(Method::GET, &format!("{path}/{execution_id}/tasks"), None)
        .await;
    assert_eq!(tasks.status, 200);
    let task_id = tasks.json()[0]["id"].as_i64().unwrap();
    let log = api
        .admin(
            Method::GET,
            &format!("{path}/{execution_id}/tasks/{task_id}/log"),
            None,
        )
        .await;
    assert_eq!(log.status, 200);
    assert!(log.text.contains("attempt 2: HTTP 410"), "{}", log.text);

    let last = api
        .admin(Method::GET, "/api/v1/system/webhook/lasttrigger", None)
        .await;
    assert_eq!(last.json()[0]["policy_name"], "everywhere");
    // The project path does not reach a system-wide policy.
    let reply = api
        .admin(
            Method::GET,
            &format!("{POLICIES}/{policy_id}/executions"),
            None,
        )
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn the_history_api_needs_the_administrator() {
    let (_broker, api) = setup("history-auth").await;
    let policy_id = create_policy(&api, POLICIES, "ci", &["PUSH_ARTIFACT"]).await;
    for path in [
        format!("{POLICIES}/{policy_id}/executions"),
        format!("{POLICIES}/{policy_id}/executions/1/tasks"),
        format!("{POLICIES}/{policy_id}/executions/1/tasks/1/log"),
        "/api/v2.0/projects/lib/webhook/lasttrigger".to_owned(),
        format!("/api/v1/system/webhook/policies/{policy_id}/executions"),
    ] {
        let none = api.request_as(Method::GET, &path, None, None).await;
        assert_eq!(none.status, 401, "{path}");
        assert_eq!(none.json()["errors"][0]["code"], "UNAUTHORIZED");
        let ingest = format!("Bearer {}", common::TOKEN);
        let wrong = api
            .request_as(Method::GET, &path, Some(&ingest), None)
            .await;
        assert_eq!(wrong.status, 401, "{path}");
    }
    let token = format!("Bearer {}", common::API_TOKEN);
    let ok = api
        .request_as(
            Method::GET,
            &format!("{POLICIES}/{policy_id}/executions"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!([]));
    assert_eq!(ok.header("x-total-count"), Some("0"));
}
