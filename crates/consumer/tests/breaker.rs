//! The circuit breaker against the real RabbitMQ and PostgreSQL: a receiver that keeps failing
//! stops getting attempts (only probes), another target of the same policy is not slowed, the
//! waiting deliveries are neither attempts nor lost, and a successful probe lets them flow again.

mod common;

use std::time::Duration;

use common::{http_target, push, spec, Env, Options};
use regrelay_events::EventType;
use regrelay_history::target_health::{HealthQuery, HealthState};
use regrelay_testkit::TestReceiver;

const WAIT: Duration = Duration::from_secs(20);

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failing_target_opens_its_circuit_gets_probes_only_and_closes_on_success() {
    let env = Env::start(
        "breaker",
        Options {
            breaker_failures: 3,
            max_attempts: 1000,
            ..Options::default()
        },
    )
    .await;
    let failing = TestReceiver::start().await;
    failing.set_default_status(503);
    let healthy = TestReceiver::start().await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "breaker",
                vec![
                    http_target(failing.url("/down")),
                    http_target(healthy.url("/up")),
                ],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    let events: Vec<String> = (0..5)
        .map(|i| push("lib", "app", &format!("v{i}")))
        .collect();
    env.publish(&events).await;

    // The healthy target gets every delivery at once, whatever the other one does.
    assert_eq!(healthy.wait_for(5, WAIT).await.len(), 5);

    // Three consecutive failures open the failing target's circuit, for every consumer.
    until("the circuit opens", async || {
        env.metric("regrelay_targets_open") == 1.0
    })
    .await;
    let open = env
        .db
        .target_health(&HealthQuery {
            state: Some(HealthState::Open),
            page: 1,
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].policy_id, policy.id);
    assert!(open[0].consecutive_failures >= 3);
    assert!(open[0]
        .last_failure
        .as_deref()
        .unwrap()
        .contains("HTTP 503"));

    // While it is open, only probes reach it: the first 300 ms after opening, then 600 ms,
    // 1.2 s, ... (the retry schedule alone would send about 5 deliveries every 250 ms).
    let before = failing.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = failing.count() - before;
    assert!(
        during <= 4,
        "{during} requests in 2 s while the circuit was open"
    );
    assert!(env.metric("regrelay_breaker_deferrals_total{target_type=\"http\"}") > 0.0);

    // The receiver is back: the next probe succeeds, the circuit closes, and every waiting
    // delivery arrives (nothing was lost or dead-lettered while they waited).
    failing.set_default_status(200);
    until("the circuit closes", async || {
        env.metric("regrelay_targets_open") == 0.0
    })
    .await;
    until("every delivery arrives", async || {
        let delivered: std::collections::HashSet<String> = failing
            .requests()
            .iter()
            .filter(|_| true)
            .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
            .collect();
        env.metric("regrelay_deliveries_total{outcome=\"delivered\",target_type=\"http\"}") >= 10.0
            && delivered.len() == 5
    })
    .await;
    assert_eq!(
        env.metric("regrelay_dead_letters_total{reason=\"attempts_exhausted\"}"),
        0.0
    );
    let health = env
        .db
        .target_health(&HealthQuery {
            policy_id: Some(policy.id),
            page: 1,
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    assert_eq!(health.len(), 2);
    assert!(
        health.iter().all(|h| h.state == HealthState::Healthy),
        "{health:?}"
    );
}

#[tokio::test]
async fn a_circuit_open_too_long_disables_its_target_dead_letters_its_deliveries_and_says_so() {
    let env = Env::start(
        "auto-disable",
        Options {
            breaker_failures: 2,
            max_attempts: 1000,
            auto_disable_after: Some(Duration::from_secs(2)),
            ..Options::default()
        },
    )
    .await;
    let failing = TestReceiver::start().await;
    failing.set_default_status(503);
    let operators = TestReceiver::start().await;
    // An operator's system-wide policy routes regrelay's own event to its chat (here: HTTP).
    env.policy(
        None,
        spec(
            "ops",
            vec![http_target(operators.url("/ops"))],
            &[EventType::RegrelayTargetDisabled],
        ),
    )
    .await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "doomed",
                vec![http_target(failing.url("/down"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    env.publish(&[push("lib", "app", "v1"), push("lib", "app", "v2")])
        .await;

    // Disabled: the operators hear of it, with the target named (redacted) and why.
    let heard = operators.wait_for(1, WAIT).await;
    assert_eq!(heard.len(), 1);
    let event = heard[0].json();
    assert_eq!(event["type"], "REGRELAY_TARGET_DISABLED");
    assert_eq!(event["event_data"]["repository"]["namespace"], "lib");
    assert_eq!(event["event_data"]["target"]["policy_name"], "doomed");
    assert_eq!(event["event_data"]["target"]["disabled_after"], "2s");
    assert!(event["event_data"]["target"]["last_failure"]
        .as_str()
        .unwrap()
        .contains("HTTP 503"));

    // The policy shows the target disabled; both waiting deliveries are dead-lettered as
    // target_disabled (replayable), and a new event makes no delivery to it.
    let stored = env
        .db
        .get_policy(policy.project.as_ref().map(|p| p.id), policy.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.targets[0].options.disabled);
    let letters = env.dead_letters(2, WAIT).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(|l| l["reason"] == "target_disabled"),
        "{letters:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = failing.count();
    env.publish(&[push("lib", "app", "v3")]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(failing.count(), before, "a disabled target got a delivery");

    // A PUT without `disabled` enables it again: the next event is delivered.
    failing.set_default_status(200);
    let spec = regrelay_history::policy::PolicySpec {
        name: stored.name.clone(),
        description: stored.description.clone(),
        targets: vec![http_target(failing.url("/down"))],
        event_types: stored.event_types.clone(),
        filters: stored.filters.clone(),
        creator: stored.creator.clone(),
        enabled: true,
    };
    env.db
        .update_policy(stored.project.as_ref().map(|p| p.id), stored.id, &spec)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.publish(&[push("lib", "app", "v4")]).await;
    until("the enabled target gets the next event", async || {
        failing
            .requests()
            .iter()
            .any(|r| r.json()["event_data"]["resources"][0]["tag"] == "v4")
    })
    .await;
}
