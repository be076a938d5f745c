//! The consumer against the real RabbitMQ, PostgreSQL and HTTP receivers on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{event, http_target, push, spec, Env, Options};
use regrelay_events::EventType;
use regrelay_history::policy::{Filters, PayloadFormat, TargetKind};
use regrelay_testkit::{unused_port, TestReceiver};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn receiver_answering_500_500_200_gets_three_attempts_then_success() {
    let env = Env::start("retry-then-ok", Options::default()).await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[500, 500, 200]);
    env.policy(
        Some("lib"),
        spec(
            "hook",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;

    let sent = push("lib", "app", "v1");
    env.publish(std::slice::from_ref(&sent)).await;

    let requests = receiver.wait_for(3, WAIT).await;
    assert_eq!(requests.len(), 3, "three attempts");
    // Every attempt is the same delivery: the same webhook id... (unsigned targets still get an id)
    // and the same Default body, byte for byte.
    for request in &requests {
        assert_eq!(request.body, sent.as_bytes());
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert!(request
            .header("user-agent")
            .unwrap()
            .starts_with("regrelay/"));
    }
    // No fourth attempt after the success.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count(), 3);
    assert_eq!(
        env.metric("regrelay_deliveries_total{outcome=\"retried\",target_type=\"http\"}"),
        2.0
    );
    assert_eq!(
        env.metric("regrelay_deliveries_total{outcome=\"delivered\",target_type=\"http\"}"),
        1.0
    );
    assert_eq!(
        env.metric("regrelay_delivery_retries_scheduled_total{reason=\"status_5xx\"}"),
        2.0
    );
    assert!(env
        .dead_letters(1, Duration::from_millis(200))
        .await
        .is_empty());
}

#[tokio::test]
async fn client_error_is_dead_lettered_at_once_with_the_reason() {
    let env = Env::start("client-error", Options::default()).await;
    let receiver = TestReceiver::start().await;
    receiver.set_default_status(404);
    let mut target = http_target(receiver.url("/hook?token=s3cret"));
    target.auth_header = Some("Bearer very-secret".into());
    let policy = env
        .policy(
            Some("lib"),
            spec("gone", vec![target], &[EventType::PushArtifact]),
        )
        .await;
    env.publish(&[push("lib", "app", "v1")]).await;

    let dead = env.dead_letters(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead["reason"], "client_error");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["last_status"], 404);
    assert_eq!(dead["policy"]["id"], policy.id);
    assert_eq!(dead["event_type"], "PUSH_ARTIFACT");
    assert_eq!(dead["project"], "lib");
    let text = dead.to_string();
    assert!(
        !text.contains("s3cret") && !text.contains("very-secret"),
        "secrets leak: {text}"
    );
    assert_eq!(receiver.count(), 1, "a 404 is not retried");
    assert_eq!(
        env.metric("regrelay_dead_letters_total{reason=\"client_error\"}"),
        1.0
    );
}

#[tokio::test]
async fn attempts_run_out_into_the_dead_letter_queue() {
    let env = Env::start(
        "exhausted",
        Options {
            max_attempts: 2,
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    receiver.set_default_status(503);
    env.policy(
        None,
        spec(
            "system",
            vec![http_target(receiver.url("/"))],
            &[EventType::DeleteArtifact],
        ),
    )
    .await;
    env.publish(&[event("DELETE_ARTIFACT", "any-project", "app", "v1")])
        .await;

    let dead = env.dead_letters(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "attempts_exhausted");
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["last_status"], 503);
    assert_eq!(
        dead[0]["policy"]["project"],
        serde_json::Value::Null,
        "system-wide"
    );
    assert_eq!(receiver.count(), 2);
}

#[tokio::test]
async fn matching_respects_project_event_type_filters_and_system_policies() {
    let env = Env::start("matching", Options::default()).await;
    let lib = TestReceiver::start().await;
    let filtered = TestReceiver::start().await;
    let system = TestReceiver::start().await;
    env.policy(
        Some("lib"),
        spec(
            "lib-push",
            vec![http_target(lib.url("/"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    let mut only_release = spec(
        "release",
        vec![http_target(filtered.url("/"))],
        &[EventType::PushArtifact],
    );
    only_release.filters = Filters {
        repositories: vec!["team/**".into()],
        tags: vec!["v1.?".into()],
    };
    env.policy(Some("lib"), only_release).await;
    env.policy(
        None,
        spec(
            "all-deletes",
            vec![http_target(system.url("/"))],
            &[EventType::DeleteArtifact],
        ),
    )
    .await;
    let mut disabled = spec(
        "disabled",
        vec![http_target(system.url("/disabled"))],
        &[EventType::PushArtifact],
    );
    disabled.enabled = false;
    env.policy(Some("lib"), disabled).await;

    env.publish(&[
        push("lib", "app", "latest"),                 // lib-push
        push("lib", "team/api", "v1.2"),              // lib-push + release
        push("lib", "team/api", "v2.0"),              // lib-push (tag filter fails)
        push("other", "team/api", "v1.2"),            // nothing: another project
        event("PULL_ARTIFACT", "lib", "app", "v1"),   // nothing: event type
        event("DELETE_ARTIFACT", "other", "x", "v1"), // all-deletes
        event("DELETE_ARTIFACT", "lib", "x", "v1"),   // all-deletes
    ])
    .await;

    lib.wait_for(3, WAIT).await;
    filtered.wait_for(1, WAIT).await;
    system.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tags = |r: &TestReceiver| -> Vec<String> {
        let mut tags: Vec<String> = r
            .requests()
            .iter()
            .map(|q| {
                q.json()["event_data"]["resources"][0]["tag"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        tags.sort();
        tags
    };
    assert_eq!(tags(&lib), ["latest", "v1.2", "v2.0"]);
    assert_eq!(tags(&filtered), ["v1.2"]);
    let projects: HashSet<String> = system
        .requests()
        .iter()
        .map(|q| {
            q.json()["event_data"]["repository"]["namespace"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        projects,
        HashSet::from(["lib".to_owned(), "other".to_owned()])
    );
    assert!(
        system.requests().iter().all(|q| q.path == "/"),
        "the disabled policy got nothing"
    );
    assert!(env.metric("regrelay_events_matched_total{result=\"unmatched\"}") >= 2.0);
}

#[tokio::test]
async fn cloudevents_signing_auth_and_custom_headers_arrive_as_configured() {
    let env = Env::start("formats", Options::default()).await;
    let receiver = TestReceiver::start().await;
    receiver.script(&[500, 200]);
    let mut target = http_target(receiver.url("/ce"));
    target.payload_format = PayloadFormat::CloudEvents;
    target.auth_header = Some("Token abc123".into());
    target.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
    target.headers.insert("X-Team".into(), "registry".into());
    let mut slack = http_target(receiver.url("/slack"));
    slack.kind = TargetKind::Slack;
    let policy = env
        .policy(
            Some("lib"),
            spec("ce", vec![target, slack], &[EventType::PushArtifact]),
        )
        .await;
    let project_id = policy.project.as_ref().unwrap().id;
    env.publish(&[push("lib", "app", "v1")]).await;

    let requests = receiver.wait_for(3, WAIT).await;
    let ce: Vec<_> = requests.iter().filter(|r| r.path == "/ce").collect();
    assert_eq!(ce.len(), 2, "CloudEvents target: one failure, one success");
    for request in &ce {
        assert_eq!(
            request.header("content-type"),
            Some("application/cloudevents+json")
        );
        assert_eq!(request.header("authorization"), Some("Token abc123"));
        assert_eq!(request.header("x-team"), Some("registry"));
        let body = request.json();
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["type"], "harbor.artifact.pushed");
        assert_eq!(
            body["source"],
            format!("/projects/{project_id}/webhook/policies/{}", policy.id)
        );
        assert_eq!(body["data"]["repository"]["namespace"], "lib");
        // The CloudEvents id is the webhook id, and both are stable across the retry.
        assert_eq!(body["id"].as_str(), request.header("webhook-id"));
        assert!(request
            .header("webhook-signature")
            .unwrap()
            .starts_with("v1,"));
    }
    assert_eq!(ce[0].header("webhook-id"), ce[1].header("webhook-id"));
    // The signature verifies with the Standard Webhooks scheme.
    let key = regrelay_consumer::signing::SigningKey::from_secret(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    let request = ce[1];
    let expected = regrelay_consumer::signing::sign(
        &key,
        request.header("webhook-id").unwrap(),
        request
            .header("webhook-timestamp")
            .unwrap()
            .parse()
            .unwrap(),
        &request.body,
    );
    assert_eq!(request.header("webhook-signature"), Some(expected.as_str()));

    let slack: Vec<_> = requests.iter().filter(|r| r.path == "/slack").collect();
    assert_eq!(slack.len(), 1);
    assert_eq!(slack[0].json()["blocks"].as_array().unwrap().len(), 6);
    assert_eq!(slack[0].header("authorization"), None);
}

/// One dead target (never answers) and one healthy target in one policy: the healthy receiver gets
/// every event while the dead one's attempts are still timing out.
#[tokio::test]
async fn a_dead_target_does_not_hold_up_a_healthy_one() {
    let env = Env::start(
        "dead-and-healthy",
        Options {
            http_timeout: Duration::from_secs(3),
            per_target_concurrency: 2,
            max_waiting_per_target: 2,
            delivery_prefetch: 16,
            max_attempts: 5,
            ..Options::default()
        },
    )
    .await;
    let healthy = TestReceiver::start().await;
    let dead = TestReceiver::start().await;
    // Accepts connections and never answers within the timeout.
    dead.set_delay(Duration::from_secs(30));
    env.policy(
        Some("lib"),
        spec(
            "both",
            vec![http_target(dead.url("/")), http_target(healthy.url("/"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    let events: Vec<String> = (0..40)
        .map(|i| push("lib", "app", &format!("v{i}")))
        .collect();
    env.publish(&events).await;

    let got = healthy.wait_for(40, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 40, "every event reached the healthy receiver");
    // The dead target has answered nothing yet: its attempts were all still hanging.
    assert_eq!(dead.count(), 0);
    assert!(
        env.metric("regrelay_delivery_deferrals_total") >= 1.0,
        "saturated target tasks were deferred"
    );
}

#[tokio::test]
async fn an_unreachable_target_is_retried_then_dead_lettered() {
    let env = Env::start(
        "unreachable",
        Options {
            max_attempts: 2,
            ..Options::default()
        },
    )
    .await;
    let address = format!("http://127.0.0.1:{}/", unused_port());
    env.policy(
        Some("lib"),
        spec(
            "refused",
            vec![http_target(address)],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    env.publish(&[push("lib", "app", "v1")]).await;
    let dead = env.dead_letters(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "attempts_exhausted");
    assert!(
        dead[0]["last_error"].as_str().unwrap().contains("connect"),
        "{}",
        dead[0]
    );
    assert!(env.metric("regrelay_delivery_retries_scheduled_total{reason=\"connect\"}") >= 1.0);
}

#[tokio::test]
async fn the_global_switch_pauses_and_resumes_without_losing_events() {
    let env = Env::start("switch", Options::default()).await;
    let receiver = TestReceiver::start().await;
    env.policy(
        Some("lib"),
        spec(
            "hook",
            vec![http_target(receiver.url("/"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;

    // A target known to be fast, so the matching stage would attempt it directly if it may.
    env.publish(&[push("lib", "app", "warm-up")]).await;
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1);

    env.db.set_notification_enabled(false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.publish(&[push("lib", "app", "v1"), push("lib", "app", "v2")])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.count(),
        1,
        "nothing is delivered while notifications are off"
    );
    assert_eq!(env.metric("regrelay_notifications_enabled"), 0.0);

    env.db.set_notification_enabled(true).await.unwrap();
    assert_eq!(
        receiver.wait_for(3, WAIT).await.len(),
        3,
        "what waited is delivered"
    );
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_do_not_stop_the_consumer() {
    let env = Env::start("poison", Options::default()).await;
    let receiver = TestReceiver::start().await;
    env.policy(
        Some("lib"),
        spec(
            "hook",
            vec![http_target(receiver.url("/"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    // Garbage on both input queues.
    for queue in [
        env.broker.topology.events_queue(),
        env.broker.topology.deliveries_queue(),
    ] {
        env.broker
            .channel()
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                b"not a message",
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    env.publish(&[push("lib", "app", "v1")]).await;
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1);
    let dead = env.dead_letters(2, WAIT).await;
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d["reason"] == "poison"));
    assert!(dead
        .iter()
        .all(|d| d["original"]["body"] == "not a message"));
}

#[tokio::test]
async fn policy_changes_reach_a_running_consumer() {
    let env = Env::start("policy-change", Options::default()).await;
    let receiver = TestReceiver::start().await;
    env.publish(&[push("lib", "app", "before")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "late",
                vec![http_target(receiver.url("/"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    env.publish(&[push("lib", "app", "after")]).await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["event_data"]["resources"][0]["tag"], "after");

    let project_id = policy.project.as_ref().map(|p| p.id);
    assert!(env.db.delete_policy(project_id, policy.id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.publish(&[push("lib", "app", "deleted")]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 1, "a deleted policy triggers nothing");
}

#[tokio::test]
async fn a_fast_target_gets_its_first_attempts_from_the_matching_stage() {
    let env = Env::start(
        "direct",
        Options {
            // More slots than events in flight: no direct attempt waits for a slot, so none is
            // queued for that reason.
            per_target_concurrency: 32,
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    let policy = env
        .policy(
            Some("lib"),
            spec(
                "hook",
                vec![http_target(receiver.url("/hook"))],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    let direct = "regrelay_delivery_tasks_created_total{path=\"direct\"}";
    let queued = "regrelay_delivery_tasks_created_total{path=\"queued\"}";

    // A target not heard from yet is queued for the delivery stage.
    env.publish(&[push("lib", "app", "warm-up")]).await;
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(env.metric_when(queued, 1.0, WAIT).await, 1.0);
    assert_eq!(env.metric(direct), 0.0);

    // Once it has answered quickly, the matching stage makes the first attempts itself.
    let events: Vec<String> = (0..20)
        .map(|i| push("lib", "app", &format!("v{i}")))
        .collect();
    env.publish(&events).await;
    let received = receiver.wait_for(21, WAIT).await;
    assert_eq!(received.len(), 21);
    let bodies: HashSet<&[u8]> = received.iter().map(|r| r.body.as_slice()).collect();
    for sent in &events {
        assert!(bodies.contains(sent.as_bytes()), "every event arrives");
    }
    assert_eq!((env.metric(direct), env.metric(queued)), (20.0, 1.0));

    // A direct attempt that fails is retried through the broker, like any other.
    receiver.script(&[500, 200]);
    env.publish(&[push("lib", "app", "fails-once")]).await;
    assert_eq!(receiver.wait_for(23, WAIT).await.len(), 23);
    assert_eq!(env.metric(direct), 21.0);
    let retried = "regrelay_deliveries_total{outcome=\"retried\",target_type=\"http\"}";
    assert_eq!(env.metric_when(retried, 1.0, WAIT).await, 1.0);

    // History: one execution per event, each ending in Success; the retried one ran twice.
    let deadline = tokio::time::Instant::now() + WAIT;
    let executions = loop {
        let (executions, total) = env
            .db
            .list_executions(
                policy.id,
                &regrelay_history::executions::ExecutionQuery {
                    page_size: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let done = executions
            .iter()
            .filter(|e| e.status == regrelay_history::executions::TaskStatus::Success)
            .count();
        if total == 22 && done == 22 {
            break executions;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {total} executions succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut run_counts = Vec::new();
    for execution in &executions {
        let (tasks, _) = env.db.list_tasks(execution.id, 1, 10).await.unwrap();
        run_counts.push(tasks[0].run_count);
    }
    run_counts.sort_unstable();
    assert_eq!(run_counts.iter().filter(|&&n| n == 1).count(), 21);
    assert_eq!(run_counts.last(), Some(&2));
}

#[tokio::test]
async fn a_message_put_back_by_another_consumer_is_counted_as_redelivered_and_delivered_once() {
    let mut env = Env::start(
        "redelivered",
        Options {
            start_consumer: false,
            ..Options::default()
        },
    )
    .await;
    let receiver = TestReceiver::start().await;
    env.policy(
        Some("lib"),
        spec(
            "hook",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;
    env.publish(&[push("lib", "app", "v1"), push("lib", "app", "v2")])
        .await;
    // A consumer that dies holding the first event: the broker puts it back marked redelivered.
    assert!(
        env.broker
            .put_back(&env.broker.topology.events_queue(), WAIT)
            .await,
        "the event reached its queue"
    );

    env.run_consumer();
    let requests = receiver.wait_for(2, WAIT).await;
    assert_eq!(requests.len(), 2, "both events delivered");
    assert_eq!(
        env.metric_when(
            "regrelay_messages_redelivered_total{stage=\"matching\"}",
            1.0,
            WAIT
        )
        .await,
        1.0,
        "the put-back event, and only it"
    );
    assert_eq!(
        env.metric("regrelay_messages_redelivered_total{stage=\"delivery\"}"),
        0.0
    );
    // Delivered once each: a redelivery that was never attempted is not a duplicate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.requests().len(), 2);
}

/// Acks travel in `multiple` frames (`ack_window`), and a stop in the middle of a stream sends
/// every ack its handlers settled before the channel closes: each event is either delivered and
/// gone from the queue, or back on the queue and not delivered, never both, never neither.
#[tokio::test]
async fn acks_share_frames_and_a_stop_leaves_no_delivered_event_on_the_queue() {
    let mut env = Env::start(
        "ack-window",
        Options {
            matching_prefetch: 64,
            ..Options::default()
        },
    )
    .await;
    let events_queue = env.broker.topology.events_queue();
    let receiver = TestReceiver::start().await;
    env.policy(
        Some("lib"),
        spec(
            "hook",
            vec![http_target(receiver.url("/hook"))],
            &[EventType::PushArtifact],
        ),
    )
    .await;

    let first: Vec<String> = (0..300)
        .map(|i| push("lib", "app", &format!("a{i}")))
        .collect();
    env.publish(&first).await;
    assert_eq!(receiver.wait_for(300, WAIT).await.len(), 300);
    let acked = env
        .metric_when(
            "regrelay_messages_acked_total{stage=\"matching\"}",
            300.0,
            WAIT,
        )
        .await;
    assert_eq!(acked, 300.0, "every event acked once");
    let frames = env.metric("regrelay_ack_frames_total{stage=\"matching\"}");
    assert!(
        (1.0..300.0).contains(&frames),
        "300 acks went in {frames} frames: some shared one"
    );
    assert_eq!(env.broker.depth(&events_queue).await, 0);

    let second: Vec<String> = (0..2000)
        .map(|i| push("lib", "app", &format!("b{i}")))
        .collect();
    env.publish(&second).await;
    receiver.wait_for(300 + 200, WAIT).await;
    env.stop().await;
    let delivered: HashSet<Vec<u8>> = receiver
        .requests()
        .into_iter()
        .map(|request| request.body)
        .filter(|body| {
            second
                .iter()
                .any(|event| event.as_bytes() == body.as_slice())
        })
        .collect();
    assert!(delivered.len() < 2000, "stopped mid-stream");
    // The broker puts a closed channel's unacked messages back asynchronously: wait for the
    // count to settle. An ack lost at the stop leaves a delivered event on the queue too (the
    // sum stays above 2000); an ack sent for an event not delivered loses it (below).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut left = env.broker.depth(&events_queue).await as usize;
    while delivered.len() + left != 2000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = env.broker.depth(&events_queue).await as usize;
    }
    assert_eq!(
        delivered.len() + left,
        2000,
        "{} delivered, {left} back on the queue",
        delivered.len()
    );
    assert_eq!(
        receiver.count(),
        300 + delivered.len(),
        "nothing delivered twice"
    );
    assert_eq!(
        env.metric("regrelay_ack_failures_total{stage=\"matching\"}"),
        0.0
    );
}
