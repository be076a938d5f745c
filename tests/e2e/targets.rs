//! The chat and template target types end to end: policies written through the policy API, events
//! ingested by one `regrelay serve` process and delivered by others to the vendor fakes of
//! `regrelay-testkit` (which check paths, tokens, signatures, MarkdownV2 and lengths as the
//! vendors do). Covers what the library tests of `regrelay-targets` cannot: the API's shape and
//! redaction, the consumer's seam, vendor outcomes reaching dead letters and history, credentials
//! kept out of both, and the rate limit shared by two consumer processes.

use std::time::Duration;

use regrelay_events::samples::sample_event;
use regrelay_events::EventType;
use regrelay_testkit::vendors::{self, telegram, FakeVendor, Script};
use serde_json::{json, Value};

use super::delivery::{Cluster, ADMIN};
use super::TOKEN;

const WAIT: Duration = Duration::from_secs(20);
const BOT_TOKEN: &str = "123456:AAE_e2e-secret-token";
const HOSTILE_REPO: &str = "a_b*c[d](e)~f";
const HOSTILE_TAG: &str = "1.0-rc.1+build!";

impl Cluster {
    /// Creates a policy in `project` with `targets` for `event_types`; returns its id, or the
    /// API's status and body when it refuses.
    async fn try_policy(
        &self,
        project: &str,
        targets: Value,
        event_types: &[&str],
    ) -> Result<i64, (u16, Value)> {
        let response = self
            .client
            .post(format!(
                "{}/api/v2.0/projects/{project}/webhook/policies",
                self.api.base
            ))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&json!({"name": "chat", "event_types": event_types, "enabled": true, "targets": targets}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status != 201 {
            return Err((status, response.json().await.unwrap_or(Value::Null)));
        }
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        Ok(location.rsplit('/').next().unwrap().parse().unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.api.base))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    async fn ingest(&self, events: &[Value]) {
        let response = self
            .client
            .post(format!("{}/api/v1/events", self.api.base))
            .bearer_auth(TOKEN)
            .json(events)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }

    /// Waits for `n` dead letters; returns their bodies (read through the API).
    async fn dead_letters(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = self.get("/api/v1/dead-letters").await;
            let letters = list["dead_letters"]
                .as_array()
                .or_else(|| list.as_array())
                .cloned()
                .unwrap_or_default();
            if letters.len() >= n || tokio::time::Instant::now() >= deadline {
                assert_eq!(letters.len(), n, "dead letters: {list}");
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sample(event_type: EventType, project: &str) -> Value {
    let event = sample_event(event_type, project, 1_800_000_000).unwrap();
    serde_json::from_str(event.raw_json()).unwrap()
}

fn hostile_push(project: &str) -> Value {
    json!({"type": "PUSH_ARTIFACT", "occur_at": 1_800_000_000, "operator": "robot$a_b*c",
        "event_data": {"resources": [{"digest": "sha256:`x`", "tag": HOSTILE_TAG,
            "resource_url": format!("h/{project}/{HOSTILE_REPO}:{HOSTILE_TAG}")}],
        "repository": {"name": HOSTILE_REPO, "namespace": project,
            "repo_full_name": format!("{project}/{HOSTILE_REPO}"), "repo_type": "private"}}})
}

async fn wait_accepted(fake: &FakeVendor, n: usize) -> Vec<vendors::Received> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let accepted = fake.accepted();
        if accepted.len() >= n || tokio::time::Instant::now() >= deadline {
            return accepted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_chat_type_is_written_through_the_api_and_delivered_to_its_vendor() {
    let cluster = Cluster::start("chat-types").await;
    let _consumer = cluster.consumer().await;
    let telegram = telegram::start(BOT_TOKEN).await;
    let ding =
        vendors::dingtalk::start("ding-token-0123456789", Some("SECdingsecret0123456789")).await;
    let feishu = vendors::feishu::start(
        "0f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff",
        Some("feishu-secret"),
    )
    .await;
    let wecom = vendors::wecom::start("693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa").await;
    let discord =
        vendors::discord::start("112233445566778899", "discord-webhook-token-abcdef").await;
    let teams = vendors::teams::start().await;
    let template = regrelay_testkit::TestReceiver::start().await;

    let targets = json!([
        {"type": "telegram", "address": telegram.base_url(), "bot_token": BOT_TOKEN,
            "chat_id": -1001234567890i64, "message_thread_id": 7},
        {"type": "dingtalk", "address": ding.url("/robot/send?access_token=ding-token-0123456789"),
            "secret": "SECdingsecret0123456789"},
        {"type": "feishu", "address": feishu.url("/open-apis/bot/v2/hook/0f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff"),
            "secret": "feishu-secret"},
        {"type": "wecom", "address": wecom.url("/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa")},
        {"type": "discord", "address": discord.url("/api/webhooks/112233445566778899/discord-webhook-token-abcdef")},
        {"type": "teams", "address": teams.url("/workflows/abc/triggers/manual/paths/invoke?sig=teams-sig-0123456789")},
        {"type": "template", "address": template.url("/in"), "method": "PUT",
            "content_type": "application/vnd.team+json", "auth_header": "Bearer template-secret",
            "template": "{\"text\": {{ (\"pushed \" ~ repository.repo_full_name) | json }}, \"policy\": {{ policy.name | json }}}"}
    ]);
    let id = cluster
        .try_policy(
            "team-a",
            targets,
            &["PUSH_ARTIFACT", "SCANNING_COMPLETED", "QUOTA_EXCEED"],
        )
        .await
        .unwrap();

    // Read back: the types and their settings, credentials as placeholders.
    let policy = cluster
        .get(&format!("/api/v2.0/projects/team-a/webhook/policies/{id}"))
        .await;
    let text = policy.to_string();
    for secret in [
        BOT_TOKEN,
        "SECdingsecret0123456789",
        "feishu-secret",
        "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa",
        "discord-webhook-token-abcdef",
        "0f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff",
        "teams-sig-0123456789",
        "template-secret",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let targets = policy["targets"].as_array().unwrap();
    let types: Vec<&str> = targets
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["telegram", "dingtalk", "feishu", "wecom", "discord", "teams", "template"]
    );
    assert_eq!(targets[0]["bot_token"], "********");
    assert_eq!(targets[0]["chat_id"], "-1001234567890");
    assert_eq!(targets[0]["message_thread_id"], 7);
    assert_eq!(targets[1]["secret"], "********");
    assert_eq!(targets[6]["method"], "PUT");

    // A PUT of what GET returned keeps every credential: the next deliveries still get through.
    let mut update = policy.clone();
    update["description"] = json!("kept");
    let response = cluster
        .client
        .put(format!(
            "{}/api/v2.0/projects/team-a/webhook/policies/{id}",
            cluster.api.base
        ))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    cluster
        .ingest(&[
            hostile_push("team-a"),
            sample(EventType::ScanningCompleted, "team-a"),
            sample(EventType::QuotaExceed, "team-a"),
        ])
        .await;
    for (name, fake) in [
        ("telegram", &telegram),
        ("dingtalk", &ding),
        ("feishu", &feishu),
        ("wecom", &wecom),
        ("discord", &discord),
        ("teams", &teams),
    ] {
        let accepted = wait_accepted(fake, 3).await;
        let refused: Vec<String> = fake
            .received()
            .iter()
            .filter(|r| !r.accepted)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        assert_eq!(accepted.len(), 3, "{name}: refused {refused:?}");
    }
    // Telegram: the topic, MarkdownV2, no link previews; the hostile names came through as
    // plain text (the fake's parser is strict: an unescaped special character is refused).
    let messages = telegram.accepted();
    let push = messages
        .iter()
        .map(|m| m.json())
        .find(|m| m["text"].as_str().unwrap().contains("pushed"))
        .expect("the push message");
    assert_eq!(push["message_thread_id"], 7);
    assert_eq!(push["chat_id"], -1001234567890i64);
    assert_eq!(push["parse_mode"], "MarkdownV2");
    let plain = telegram::parse_markdown_v2(push["text"].as_str().unwrap()).unwrap();
    assert!(plain.contains(HOSTILE_REPO), "{plain}");
    assert!(plain.contains(HOSTILE_TAG), "{plain}");

    // The templated webhook: its method, content type, auth header and rendered body.
    let hooks = template.wait_for(3, WAIT).await;
    assert_eq!(hooks.len(), 3);
    let hook = hooks
        .iter()
        .find(|r| {
            r.json()["text"]
                .as_str()
                .is_some_and(|t| t.contains(HOSTILE_REPO))
        })
        .expect("the push body");
    assert_eq!(hook.method, "PUT");
    assert_eq!(
        hook.header("content-type"),
        Some("application/vnd.team+json")
    );
    assert_eq!(hook.header("authorization"), Some("Bearer template-secret"));
    assert_eq!(hook.json()["policy"], "chat");

    // History names each type, and holds no credential.
    let deadline = tokio::time::Instant::now() + WAIT;
    let executions = loop {
        let executions = cluster
            .get(&format!(
                "/api/v2.0/projects/team-a/webhook/policies/{id}/executions?page_size=100"
            ))
            .await;
        let done = executions
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] == "Success")
            .count();
        if done >= 21 || tokio::time::Instant::now() >= deadline {
            break executions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut vendor_types: Vec<String> = executions
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "Success")
        .map(|e| e["vendor_type"].as_str().unwrap().to_owned())
        .collect();
    vendor_types.sort();
    vendor_types.dedup();
    assert_eq!(
        vendor_types,
        ["DINGTALK", "DISCORD", "FEISHU", "TEAMS", "TELEGRAM", "TEMPLATE", "WECOM"],
        "{executions}"
    );
    let mut stored = executions.to_string();
    for execution in executions.as_array().unwrap() {
        let tasks = cluster
            .get(&format!(
                "/api/v2.0/projects/team-a/webhook/policies/{id}/executions/{}/tasks",
                execution["id"]
            ))
            .await;
        stored.push_str(&tasks.to_string());
        for task in tasks.as_array().unwrap() {
            let response = cluster
                .client
                .get(format!(
                    "{}/api/v2.0/projects/team-a/webhook/policies/{id}/executions/{}/tasks/{}/log",
                    cluster.api.base, execution["id"], task["id"]
                ))
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .send()
                .await
                .unwrap();
            stored.push_str(&response.text().await.unwrap());
        }
    }
    // Receiver health names each target by its type and redacted address, all healthy.
    let health = cluster
        .get(&format!("/api/v1/targets/health?policy={id}&page_size=20"))
        .await;
    let health = health.as_array().unwrap();
    assert_eq!(health.len(), 7, "{health:?}");
    assert!(health
        .iter()
        .all(|h| h["state"] == "healthy" && h["successes"] == 3));
    let mut health_types: Vec<&str> = health
        .iter()
        .map(|h| h["target_type"].as_str().unwrap())
        .collect();
    health_types.sort();
    assert_eq!(
        health_types,
        ["dingtalk", "discord", "feishu", "teams", "telegram", "template", "wecom"]
    );
    stored.push_str(&serde_json::to_string(health).unwrap());
    for secret in [
        BOT_TOKEN,
        "AAE_e2e-secret-token",
        "ding-token-0123456789",
        "SECdingsecret0123456789",
        "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa",
        "discord-webhook-token-abcdef",
        "teams-sig-0123456789",
        "template-secret",
    ] {
        assert!(!stored.contains(secret), "{secret} in history");
    }
}

#[tokio::test]
async fn invalid_chat_targets_are_refused_with_clear_messages() {
    let cluster = Cluster::start("chat-invalid").await;
    let cases = [
        (
            json!([{"type": "telegram", "chat_id": "-100"}]),
            "bot_token is required for telegram targets",
        ),
        (
            json!([{"type": "telegram", "bot_token": BOT_TOKEN}]),
            "chat_id is required for telegram targets",
        ),
        (
            json!([{"type": "wecom", "address": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "bot_token": BOT_TOKEN}]),
            "set bot_token is not allowed for wecom",
        ),
        (
            json!([{"type": "template", "address": "https://hooks.example.com/x", "template": "{{ x "}]),
            "template does not compile",
        ),
        (
            json!([{"type": "http", "address": "https://hooks.example.com/x", "chat_id": "-100"}]),
            "set chat_id is not allowed for http",
        ),
        (
            json!([{"type": "slack", "address": "https://hooks.slack.com/services/T/B/X", "rate_limit": "lots"}]),
            "invalid rate_limit",
        ),
        (
            json!([{"type": "carrier-pigeon", "address": "https://x.example/"}]),
            "unsupported target type",
        ),
    ];
    for (targets, want) in cases {
        let (status, body) = cluster
            .try_policy("lib", targets.clone(), &["PUSH_ARTIFACT"])
            .await
            .unwrap_err();
        assert_eq!(status, 400, "{targets}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(want), "{targets}: {message}");
        assert_eq!(body["errors"][0]["code"], "BAD_REQUEST");
        assert!(!body.to_string().contains("AAE_e2e"), "{body}");
    }
}

#[tokio::test]
async fn vendor_answers_decide_retry_or_dead_letter_and_render_errors_dead_letter() {
    let cluster = Cluster::start("chat-outcomes").await;
    let _consumer = cluster.consumer().await;
    // A chat that became a supergroup; a 429 with retry_after; a template that fails at render.
    let mut migrated = telegram::Config {
        token: BOT_TOKEN.into(),
        ..Default::default()
    };
    migrated.migrated.insert("-1001".into(), -1009999);
    let old_group = telegram::start_with(migrated).await;
    let busy = telegram::start(BOT_TOKEN).await;
    busy.script([Script::RateLimited {
        retry_after_secs: 1.0,
    }]);
    let ding = vendors::dingtalk::start("ding-token-0123456789", Some("SECright-secret-000")).await;

    cluster
        .try_policy(
            "lib",
            json!([
                {"type": "telegram", "address": old_group.base_url(), "bot_token": BOT_TOKEN, "chat_id": "-1001"},
                {"type": "telegram", "address": busy.base_url(), "bot_token": BOT_TOKEN, "chat_id": "@builds"},
                {"type": "telegram", "address": busy.base_url(), "bot_token": BOT_TOKEN, "chat_id": "-1002",
                    "template": "{{ event.no_such_field }}"},
                {"type": "dingtalk", "address": ding.url("/robot/send?access_token=ding-token-0123456789"),
                    "secret": "SECwrong-secret-000"},
            ]),
            &["PUSH_ARTIFACT"],
        )
        .await
        .unwrap();
    cluster
        .ingest(&[sample(EventType::PushArtifact, "lib")])
        .await;

    // The 429 was retried after Telegram's retry_after, then delivered.
    let delivered = wait_accepted(&busy, 1).await;
    assert_eq!(delivered.len(), 1);
    let received = busy.received();
    assert_eq!(received[0].status, 429);
    assert!(
        delivered[0].at.duration_since(received[0].at) >= Duration::from_millis(900),
        "retried before Telegram's retry_after"
    );

    let letters = cluster.dead_letters(3).await;
    let reason_of = |reason: &str| {
        letters
            .iter()
            .find(|l| l["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} dead letter in {letters:?}"))
            .clone()
    };
    let migrated = reason_of("chat_migrated");
    let detail = migrated["detail"].as_str().unwrap();
    assert!(detail.contains("-1009999"), "{detail}");
    let unrenderable = reason_of("unrenderable");
    assert!(
        unrenderable["detail"]
            .as_str()
            .unwrap()
            .contains("no_such_field"),
        "{unrenderable}"
    );
    let signature = reason_of("bad_signature");
    assert!(
        signature["detail"].as_str().unwrap().contains("310000"),
        "{signature}"
    );
    let all = serde_json::to_string(&letters).unwrap();
    for secret in [BOT_TOKEN, "SECwrong-secret-000", "ding-token-0123456789"] {
        assert!(!all.contains(secret), "{secret} in a dead letter");
    }
    // The render error is not the vendor's business: nothing was sent for it.
    assert!(busy
        .received()
        .iter()
        .all(|r| r.json()["chat_id"] != "-1002" && r.json()["chat_id"] != -1002));
}

#[tokio::test]
async fn two_consumer_processes_share_one_rate_limit() {
    let cluster = Cluster::start("chat-rate").await;
    let _first = cluster.consumer().await;
    let _second = cluster.consumer().await;
    let group = telegram::start(BOT_TOKEN).await;
    cluster
        .try_policy(
            "lib",
            json!([{"type": "telegram", "address": group.base_url(), "bot_token": BOT_TOKEN,
                "chat_id": "-1005", "rate_limit": "5/s"}]),
            &["PUSH_ARTIFACT"],
        )
        .await
        .unwrap();
    const EVENTS: usize = 25;
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            let mut event = sample(EventType::PushArtifact, "lib");
            event["event_data"]["resources"][0]["tag"] = json!(format!("t{i}"));
            event
        })
        .collect();
    cluster.ingest(&events).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while group.accepted().len() < EVENTS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = group.accepted();
    assert_eq!(accepted.len(), EVENTS, "every message arrives");
    // Both processes delivered (the limit is shared, not one process doing all the work) ...
    // A delivery is counted after its history step, so the last count may trail the chat's
    // last accepted message by a moment.
    const DELIVERED: &str =
        "regrelay_deliveries_total{outcome=\"delivered\",target_type=\"telegram\"}";
    let (mut a, mut b) = (0.0, 0.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        (a, b) = (
            _first.metric(DELIVERED).await,
            _second.metric(DELIVERED).await,
        );
        if a + b >= EVENTS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a + b, EVENTS as f64);
    assert!(a > 0.0 && b > 0.0, "one consumer did everything: {a} / {b}");
    // ... and the chat never got more than 5 in any second.
    let most = group.max_accepted_within(Duration::from_secs(1));
    let offsets: Vec<u128> = accepted
        .iter()
        .map(|r| r.at.duration_since(accepted[0].at).as_millis())
        .collect();
    assert!(most <= 5, "{most} messages within one second: {offsets:?}");
    let span = accepted.last().unwrap().at.duration_since(accepted[0].at);
    assert!(span >= Duration::from_secs(4), "25 at 5/s took {span:?}");
    // The waits were not attempts: nothing was retried.
    let retried = _first
        .metric("regrelay_deliveries_total{outcome=\"retried\",target_type=\"telegram\"}")
        .await
        + _second
            .metric("regrelay_deliveries_total{outcome=\"retried\",target_type=\"telegram\"}")
            .await;
    assert_eq!(retried, 0.0);
    let limited = _first
        .metric("regrelay_rate_limited_total{target_type=\"telegram\"}")
        .await
        + _second
            .metric("regrelay_rate_limited_total{target_type=\"telegram\"}")
            .await;
    assert!(limited > 0.0);
}
