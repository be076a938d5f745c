//! Test deliveries against real receivers on 127.0.0.1 and the real PostgreSQL: a saved policy's
//! targets get a sample event now, the answer says what each target made of it, and the attempt is
//! in the policy's history with trigger MANUAL; an unsaved policy can be tested before saving.

mod common;

use common::{setup, TestApi};
use regrelay_testkit::TestReceiver;
use reqwest::Method;
use serde_json::{json, Value};

const POLICIES: &str = "/api/v2.0/projects/lib/webhook/policies";

async fn create(api: &TestApi, body: Value) -> i64 {
    let reply = api.admin(Method::POST, POLICIES, Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply
        .header("location")
        .and_then(|l| l.rsplit('/').next())
        .and_then(|id| id.parse().ok())
        .expect("Location names the policy")
}

#[tokio::test]
async fn a_saved_policy_is_tested_on_every_target_and_recorded_as_manual() {
    let (_broker, api) = setup("test-delivery-saved").await;
    let good = TestReceiver::start().await;
    let bad = TestReceiver::start().await;
    bad.set_default_status(503);
    // A receiver that echoes what it got must not get the credential into our answer.
    bad.set_answer_body("upstream down; you sent Bearer receiver-secret-42");
    let id = create(
        &api,
        json!({
            "name": "ci",
            "event_types": ["PUSH_ARTIFACT"],
            "targets": [
                {"type": "http", "address": good.url("/hook"), "payload_format": "CloudEvents",
                 "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                {"type": "http", "address": bad.url("/hook"), "auth_header": "Bearer receiver-secret-42"}
            ],
            "enabled": false
        }),
    )
    .await;

    let reply = api
        .admin(
            Method::POST,
            &format!("{POLICIES}/{id}/test"),
            Some(json!({"event_type": "PULL_ARTIFACT"})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["event_type"], "PULL_ARTIFACT");
    assert_eq!(body["success"], false, "one target failed: {body}");
    let targets = body["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["success"], true);
    assert_eq!(targets[0]["status_code"], 200);
    assert_eq!(targets[1]["success"], false);
    assert_eq!(targets[1]["status_code"], 503);
    assert_eq!(targets[1]["outcome"], "would_retry");
    let response = targets[1]["response"].as_str().unwrap();
    assert!(
        !response.contains("receiver-secret-42") && response.contains("********"),
        "{response}"
    );
    assert!(!reply.text.contains("receiver-secret-42"), "{}", reply.text);

    // The receivers got a real, signed CloudEvent of the asked-for type, in the policy's project.
    let got = good.wait_for(1, std::time::Duration::from_secs(5)).await;
    let event = got[0].json();
    assert_eq!(event["type"], "harbor.artifact.pulled");
    assert_eq!(
        event["source"],
        format!("/projects/{}/webhook/policies/{id}", project_id(&api).await)
    );
    assert!(got[0].header("webhook-signature").is_some());
    assert_eq!(
        got[0].header("webhook-id"),
        targets[0]["delivery_id"].as_str()
    );
    let plain = bad.wait_for(1, std::time::Duration::from_secs(5)).await;
    assert_eq!(
        plain[0].json()["event_data"]["repository"]["namespace"],
        "lib"
    );
    assert_eq!(
        plain[0].header("authorization"),
        Some("Bearer receiver-secret-42")
    );

    // Both attempts are in the policy's history as MANUAL executions.
    let executions = api
        .admin(Method::GET, &format!("{POLICIES}/{id}/executions"), None)
        .await;
    assert_eq!(executions.status, 200, "{}", executions.text);
    let list = executions.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let mut statuses: Vec<&str> = list
        .iter()
        .map(|e| {
            assert_eq!(e["trigger"], "MANUAL");
            assert_eq!(e["extra_attrs"]["event_type"], "PULL_ARTIFACT");
            e["status"].as_str().unwrap()
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["Error", "Success"]);
    assert!(!executions.text.contains("receiver-secret-42"));
}

async fn project_id(api: &TestApi) -> i64 {
    let reply = api.admin(Method::GET, POLICIES, None).await;
    reply.json()[0]["project_id"].as_i64().unwrap()
}

#[tokio::test]
async fn an_unsaved_policy_can_be_tested_before_it_is_saved() {
    let (_broker, api) = setup("test-delivery-unsaved").await;
    let receiver = TestReceiver::start().await;
    let reply = api
        .admin(
            Method::POST,
            &format!("{POLICIES}/test"),
            Some(json!({
                "targets": [{"type": "http", "address": receiver.url("/check")}]
            })),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["success"], true);
    assert_eq!(reply.json()["event_type"], "PUSH_ARTIFACT");
    let got = receiver
        .wait_for(1, std::time::Duration::from_secs(5))
        .await;
    assert_eq!(got[0].json()["type"], "PUSH_ARTIFACT");
    assert_eq!(got[0].path, "/check");
    // Nothing was saved.
    let list = api.admin(Method::GET, POLICIES, None).await;
    assert_eq!(list.json(), json!([]));
}

#[tokio::test]
async fn a_bad_test_request_gets_a_clear_error() {
    let (_broker, api) = setup("test-delivery-bad").await;
    let receiver = TestReceiver::start().await;
    let id = create(
        &api,
        json!({"name": "x", "event_types": ["PUSH_ARTIFACT"],
               "targets": [{"type": "http", "address": receiver.url("/")}]}),
    )
    .await;
    let unknown_type = api
        .admin(
            Method::POST,
            &format!("{POLICIES}/{id}/test"),
            Some(json!({"event_type": "NOPE"})),
        )
        .await;
    assert_eq!(unknown_type.status, 400);
    assert_eq!(unknown_type.message(), "unsupported event type NOPE");

    let missing = api
        .admin(Method::POST, &format!("{POLICIES}/{}/test", id + 100), None)
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text);

    let bad_target = api
        .admin(
            Method::POST,
            &format!("{POLICIES}/test"),
            Some(json!({"targets": [{"type": "http", "address": "ftp://x"}]})),
        )
        .await;
    assert_eq!(bad_target.status, 400);
    assert_eq!(bad_target.message(), "invalid scheme: ftp");

    let anonymous = api
        .request_as(Method::POST, &format!("{POLICIES}/{id}/test"), None, None)
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        receiver.count(),
        0,
        "no failed request reached the receiver"
    );
}

/// A receiver that holds every request for a while and records how many it held at once.
struct CountingReceiver {
    base: String,
    max_in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingReceiver {
    async fn start(hold: std::time::Duration) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (now, max) = (in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move || {
            let (now, max) = (now.clone(), max.clone());
            async move {
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                now.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            max_in_flight,
        }
    }
}

#[tokio::test]
async fn a_test_delivery_to_many_targets_calls_a_bounded_number_at_once_in_target_order() {
    let (_broker, api) = setup("test-delivery-bounded").await;
    // Long enough that unbounded calls would all overlap.
    let receiver = CountingReceiver::start(std::time::Duration::from_millis(200)).await;
    let addresses: Vec<String> = (0..32).map(|i| format!("{}/t{i}", receiver.base)).collect();
    let targets: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"type": "http", "address": a}))
        .collect();
    let reply = api
        .admin(
            Method::POST,
            "/api/v1/system/webhook/policies/test",
            Some(json!({"targets": targets})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["success"], true, "{body}");
    let got: Vec<&str> = body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"]["address"].as_str().unwrap())
        .collect();
    assert_eq!(got, addresses, "results come in target order");
    let max = receiver
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        max <= regrelay_consumer::test_delivery::TEST_DELIVERY_CONCURRENCY,
        "{max} targets were called at once"
    );
    assert!(max > 1, "targets are still called concurrently: {max}");
}
