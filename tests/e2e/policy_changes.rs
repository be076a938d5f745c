//! A policy write is seen by the very next event, across processes: the write goes to one api
//! process, the event to another, and either of two consumers matches it. The consumers' periodic
//! refresh is set to a minute, so only the generation stamp can make them see the write in time.

use std::time::Duration;

use regrelay_testkit::{amqp_url, TestReceiver};
use serde_json::{json, Value};

use super::delivery::{Cluster, ADMIN};
use super::{Service, TOKEN};

fn slow_refresh(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let mut env = Cluster::env(&cluster.database);
    env.retain(|(key, _)| *key != "REGRELAY_POLICY_REFRESH_INTERVAL");
    env.push(("REGRELAY_POLICY_REFRESH_INTERVAL", "60s".into()));
    env
}

async fn start(cluster: &Cluster, role: &str) -> Service {
    let mut service = Service::start_with(
        cluster.broker.prefix(),
        &amqp_url(),
        &["--role", role],
        &slow_refresh(cluster),
    );
    service.wait_healthy().await;
    service
}

fn push(project: &str, tag: &str) -> Value {
    json!({"type": "PUSH_ARTIFACT", "occur_at": 1_700_000_000, "operator": "e2e",
        "event_data": {"resources": [{"digest": "sha256:1", "tag": tag, "resource_url": format!("r/{project}/app")}],
        "repository": {"name": "app", "namespace": project, "repo_full_name": format!("{project}/app"), "repo_type": "private"}}})
}

async fn ingest(client: &reqwest::Client, api: &Service, event: Value) {
    let response = client
        .post(format!("{}/api/v1/events", api.base))
        .bearer_auth(TOKEN)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Creates a policy in `project` that sends pushes to `address`; returns its URL.
async fn create(client: &reqwest::Client, api: &Service, project: &str, address: String) -> String {
    let response = client
        .post(format!(
            "{}/api/v2.0/projects/{project}/webhook/policies",
            api.base
        ))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({
            "name": "stamp", "event_types": ["PUSH_ARTIFACT"], "enabled": true,
            "targets": [{"type": "http", "address": address, "payload_format": "Default"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    format!("{}{location}", api.base)
}

async fn unmatched(consumers: &[&Service]) -> f64 {
    let mut sum = 0.0;
    for consumer in consumers {
        sum += consumer
            .metric("regrelay_events_matched_total{result=\"unmatched\"}")
            .await;
    }
    sum
}

/// Waits until the consumers together count `expected` unmatched events.
async fn wait_unmatched(consumers: &[&Service], expected: f64) {
    for _ in 0..100 {
        if unmatched(consumers).await >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "consumers counted {} unmatched events, expected {expected}",
        unmatched(consumers).await
    );
}

#[tokio::test]
async fn a_policy_write_applies_to_the_next_event_across_processes() {
    let cluster = Cluster::start("e2e-policy-stamp").await;
    // The write goes to `cluster.api`, every event to `ingest_api`.
    let ingest_api = start(&cluster, "api").await;
    let first = start(&cluster, "consumer").await;
    let second = start(&cluster, "consumer").await;
    let consumers = [&first, &second];
    let receiver = TestReceiver::start().await;
    let client = &cluster.client;

    // Create, then ingest at once, 50 times: every event is delivered.
    let mut policies = Vec::new();
    for i in 0..50 {
        let project = format!("stamp{i}");
        let url = create(
            client,
            &cluster.api,
            &project,
            receiver.url(&format!("/hook/{i}")),
        )
        .await;
        ingest(client, &ingest_api, push(&project, "created")).await;
        policies.push(url);
    }
    let requests = receiver.wait_for(50, Duration::from_secs(30)).await;
    let mut paths: Vec<String> = requests.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths.len(),
        50,
        "every event created right after its policy is delivered; got {paths:?}"
    );
    assert_eq!(unmatched(&consumers).await, 0.0);

    // Disable, then ingest at once: nothing is delivered.
    let mut policy: Value = client
        .get(&policies[0])
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    policy["enabled"] = json!(false);
    let response = client
        .put(&policies[0])
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    ingest(client, &ingest_api, push("stamp0", "disabled")).await;
    wait_unmatched(&consumers, 1.0).await;

    // Delete, then ingest at once: nothing is delivered.
    let response = client
        .delete(&policies[1])
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    ingest(client, &ingest_api, push("stamp1", "deleted")).await;
    wait_unmatched(&consumers, 2.0).await;

    // The global switch off, then an event for a policy that is still enabled: not delivered
    // while the switch is off (the delivery stage pauses, no direct attempt is made).
    let count_before = receiver.count();
    let tags: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| {
            r.json()["event_data"]["resources"][0]["tag"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        !tags.iter().any(|t| t == "disabled" || t == "deleted"),
        "an event after a disable or delete was delivered: {tags:?}"
    );
    let response = client
        .put(format!("{}/api/v2.0/configurations", cluster.api.base))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"notification_enable": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    ingest(client, &ingest_api, push("stamp2", "switched-off")).await;
    // Matched (the policy is enabled) and queued, but held: the consumers count a match and no
    // delivery happens until the switch is back on.
    for _ in 0..100 {
        let mut matched = 0.0;
        for consumer in consumers {
            matched += consumer
                .metric("regrelay_events_matched_total{result=\"matched\"}")
                .await;
        }
        if matched >= 51.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count(),
        count_before,
        "delivered while notifications were off"
    );
    let response = client
        .put(format!("{}/api/v2.0/configurations", cluster.api.base))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"notification_enable": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Switched back on: the held event goes out with the next event's catch-up at the latest.
    ingest(client, &ingest_api, push("stamp3", "switched-on")).await;
    receiver
        .wait_for(count_before + 2, Duration::from_secs(30))
        .await;
}
