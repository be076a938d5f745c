//! Dead letters with real processes: a receiver that answers 500 gets a delivery dead-lettered;
//! `regrelay dlq` lists, shows and (once the receiver recovers) replays it with the same webhook-id;
//! the HTTP API lists and replays; `dlq purge` asks before it deletes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use regrelay_testkit::{amqp_url, unused_port, TestReceiver};
use serde_json::{json, Value};

use super::delivery::{Cluster, ADMIN};
use super::{Service, StdoutReading, BIN};

const WAIT: Duration = Duration::from_secs(20);

/// `regrelay dlq <args>` against the cluster's broker and prefix (no database), with `stdin`.
fn dlq(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    dlq_at(&amqp_url(), cluster.broker.prefix(), args, stdin)
}

fn dlq_at(amqp: &str, prefix: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("dlq")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REGRELAY_AMQP_URL", amqp)
        .env("REGRELAY_QUEUE_PREFIX", prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run regrelay dlq");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("regrelay dlq output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `dlq list --json`, parsed.
fn listed(cluster: &Cluster) -> Vec<Value> {
    let output = dlq(cluster, &["list", "--json"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice::<Vec<Value>>(&output.stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}): {}", stdout(&output)))
}

/// Waits until the dead-letter queue holds `n` messages.
async fn wait_dead_letters(cluster: &Cluster, n: u32) {
    let queue = cluster.broker.topology.dead_letter_queue();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = cluster.broker.depth(&queue).await;
        if depth == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} dead letters, found {depth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer that gives up after two attempts (Harbor's setting name).
async fn consumer(cluster: &Cluster) -> Service {
    let mut env = Cluster::env(&cluster.database);
    env.push(("REGRELAY_WEBHOOK_JOB_MAX_RETRY", "2".into()));
    let mut consumer = Service::start_with_output(
        cluster.broker.prefix(),
        &amqp_url(),
        &["--role", "consumer"],
        &env,
        StdoutReading::Drained,
    );
    consumer.wait_healthy().await;
    consumer
}

async fn admin(
    cluster: &Cluster,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = cluster
        .client
        .request(method, format!("{}{path}", cluster.api.base))
        .basic_auth(ADMIN.0, Some(ADMIN.1));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_dead_letter_is_listed_shown_and_replayed_to_a_recovered_receiver() {
    let cluster = Cluster::start("e2e-dlq").await;
    let receiver = TestReceiver::start().await;
    receiver.set_default_status(500);
    cluster.create_policy("lib", receiver.url("/hook")).await;
    let _consumer = consumer(&cluster).await;

    cluster.send_events(1).await;
    let attempts = receiver.wait_for(2, WAIT).await;
    assert_eq!(attempts.len(), 2);
    let webhook_id = attempts[0].header("webhook-id").unwrap().to_owned();
    wait_dead_letters(&cluster, 1).await;

    // list --json: one object with the id that show and replay take.
    let letters = listed(&cluster);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let id = letter["id"].as_str().unwrap().to_owned();
    assert_eq!(id, webhook_id, "a delivery's dead letter carries its id");
    assert_eq!(letter["reason"], "attempts_exhausted");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["last_status"], 500);
    assert_eq!(letter["project"], "lib");
    assert_eq!(letter["event_type"], "PUSH_ARTIFACT");
    assert_eq!(letter["replayable"], true);

    // The table for people.
    let table = dlq(&cluster, &["list", "--reason", "attempts_exhausted"], None);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains(&id) && text.contains("HTTP 500") && text.contains("1 dead letter(s)"),
        "{text}"
    );
    let none = dlq(
        &cluster,
        &["list", "--project", "elsewhere", "--json"],
        None,
    );
    assert_eq!(stdout(&none).trim(), "[]");

    let show = dlq(&cluster, &["show", &id], None);
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    assert!(
        text.contains("attempts_exhausted") && text.contains("gave up after 2 attempts"),
        "{text}"
    );
    assert!(text.contains(&receiver.url("/hook")), "{text}");
    let shown: Value =
        serde_json::from_slice(&dlq(&cluster, &["show", &id, "--json"], None).stdout)
            .expect("show --json is JSON");
    assert_eq!(shown["body"]["task"]["delivery_id"], id);

    // The receiver recovers; the replay reaches it with the same webhook-id.
    receiver.set_default_status(200);
    let replay = dlq(&cluster, &["replay", &id], None);
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert!(stdout(&replay).contains(&format!("replayed   {id}")));
    let requests = receiver.wait_for(3, WAIT).await;
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].header("webhook-id"), Some(webhook_id.as_str()));
    assert_eq!(requests[2].body, attempts[0].body, "the same event");
    wait_dead_letters(&cluster, 0).await;
    assert!(listed(&cluster).is_empty());
    // Nothing was delivered twice meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 3);

    // History, through Harbor's API: the original delivery's execution ended in Error, and the
    // replay is a new execution with trigger RETRY that succeeded.
    let mut statuses = cluster.execution_statuses("lib").await;
    for _ in 0..50 {
        if statuses.get("Success") == Some(&1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        statuses = cluster.execution_statuses("lib").await;
    }
    assert_eq!(statuses.get("Error"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("Success"), Some(&1), "{statuses:?}");
    let policies = admin(
        &cluster,
        reqwest::Method::GET,
        "/api/v2.0/projects/lib/webhook/policies",
        None,
    )
    .await
    .1;
    let policy_id = policies[0]["id"].as_i64().unwrap();
    let (status, replayed) = admin(
        &cluster,
        reqwest::Method::GET,
        &format!("/api/v2.0/projects/lib/webhook/policies/{policy_id}/executions?q=trigger=RETRY"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(replayed.as_array().map(Vec::len), Some(1), "{replayed}");
    assert_eq!(replayed[0]["status"], "Success");

    // A second replay of the same id finds nothing: non-zero exit, and the reason.
    let again = dlq(&cluster, &["replay", &id], None);
    assert!(!again.status.success());
    assert!(stdout(&again).contains(&format!("not found  {id}")));
    assert!(stderr(&again).contains("1 not found"), "{}", stderr(&again));
}

#[tokio::test]
async fn the_api_lists_and_replays_and_purge_asks_first() {
    let cluster = Cluster::start("e2e-dlq-api").await;
    let receiver = TestReceiver::start().await;
    receiver.set_default_status(500);
    cluster.create_policy("lib", receiver.url("/hook")).await;
    let _consumer = consumer(&cluster).await;
    cluster.send_events(2).await;
    wait_dead_letters(&cluster, 2).await;

    let (status, listed) = admin(
        &cluster,
        reqwest::Method::GET,
        "/api/v1/dead-letters?project=lib&reason=attempts_exhausted&newer_than=1h",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let letters = listed.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    let id = letters[0]["id"].as_str().unwrap().to_owned();
    let kept = letters[1]["id"].as_str().unwrap().to_owned();

    let (status, shown) = admin(
        &cluster,
        reqwest::Method::GET,
        &format!("/api/v1/dead-letters/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["reason"], "attempts_exhausted");
    let (status, _) = admin(
        &cluster,
        reqwest::Method::GET,
        &format!("/api/v1/dead-letters/{}", uuid::Uuid::new_v4()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, error) = admin(
        &cluster,
        reqwest::Method::GET,
        "/api/v1/dead-letters?older_than=soon",
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("soon"),
        "{error}"
    );
    let (status, _) = admin(
        &cluster,
        reqwest::Method::GET,
        "/api/v1/dead-letters/not-a-uuid",
        None,
    )
    .await;
    assert_eq!(status, 400);
    // One vocabulary: an unknown reason is refused with the known ones, in the API and the CLI.
    let (status, error) = admin(
        &cluster,
        reqwest::Method::GET,
        "/api/v1/dead-letters?reason=attempts_exausted",
        None,
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let message = error["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("attempts_exausted"), "{message}");
    assert!(message.contains("attempts_exhausted"), "{message}");
    let refused = dlq(&cluster, &["list", "--reason", "nope"], None);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    let refusal = stderr(&refused);
    assert!(refusal.contains("delivery_limit"), "{refusal}");
    // Administrators only.
    let anonymous = cluster
        .client
        .get(format!("{}/api/v1/dead-letters", cluster.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    receiver.set_default_status(200);
    let before = receiver.count();
    let (status, report) = admin(
        &cluster,
        reqwest::Method::POST,
        "/api/v1/dead-letters/replay",
        Some(json!({"ids": [id]})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({"replayed": [id], "not_found": [], "failed": []})
    );
    let requests = receiver.wait_for(before + 1, WAIT).await;
    assert_eq!(
        requests.last().unwrap().header("webhook-id"),
        Some(id.as_str())
    );
    wait_dead_letters(&cluster, 1).await;

    // purge without --yes asks; anything but y/yes keeps everything.
    let refused = dlq(&cluster, &["purge", "--project", "lib"], Some("no\n"));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Purge 1 dead letter(s) matching project=lib"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("nothing was purged"));
    wait_dead_letters(&cluster, 1).await;
    assert_eq!(listed_ids(&cluster), vec![kept.clone()]);

    let purged = dlq(&cluster, &["purge", "--yes"], None);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert_eq!(stdout(&purged).trim(), "Purged 1 dead letter(s).");
    wait_dead_letters(&cluster, 0).await;

    let metrics = reqwest::get(format!("{}/metrics", cluster.api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("regrelay_dead_letter_replays_total{outcome=\"replayed\"} 1"),
        "{metrics}"
    );
}

fn listed_ids(cluster: &Cluster) -> Vec<String> {
    listed(cluster)
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn dlq_names_an_unreachable_broker_without_its_password() {
    let port = unused_port();
    let output = dlq_at(
        &format!("amqp://guest:s3cret-pw@127.0.0.1:{port}/%2f"),
        "e2e-dlq-down",
        &["list"],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(stdout(&output).is_empty());

    let bad = dlq_at(&amqp_url(), "e2e-dlq-down", &["show", "nope"], None);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("invalid dead-letter id \"nope\""));
}
