//! Every chat type's requests against the vendor fakes of `regrelay-testkit`: every event type
//! renders and is accepted, hostile names cannot break Telegram's MarkdownV2, long messages are
//! shortened instead of refused, signatures check, and each fake's failures read as the
//! outcome rules say.

use std::time::Duration;

use chrono::Utc;
use regrelay_events::samples::sample_event;
use regrelay_events::{EventType, RegistryEvent};
use regrelay_targets::{
    Answer, DeadLetterReason, DeliveryContext, Outcome, Request, RetryReason, Target, TargetKind,
    TargetSettings,
};
use regrelay_testkit::vendors::{self, telegram::parse_markdown_v2, FakeVendor, Script};

const BOT_TOKEN: &str = "123456:AAE_fake-token";
const HOSTILE_REPO: &str = "a_b*c[d](e)~f";
const HOSTILE_TAG: &str = "1.0-rc.1+build!";

fn context(kind: TargetKind) -> DeliveryContext {
    DeliveryContext {
        policy_id: 1,
        policy_name: "ci".into(),
        project_id: Some(1),
        delivery_id: "0b0e8f9e-0000-4000-8000-000000000001".into(),
        event_id: "0b0e8f9e-0000-4000-8000-000000000002".into(),
        target_type: kind.as_str().into(),
    }
}

/// Every event type's sample, plus events with hostile names, a huge scan and a huge retention.
fn events() -> Vec<RegistryEvent> {
    let mut events: Vec<RegistryEvent> = EventType::ALL
        .into_iter()
        .map(|t| sample_event(t, "team-a", 1_800_000_000).unwrap())
        .collect();
    for t in [
        EventType::PushArtifact,
        EventType::ScanningCompleted,
        EventType::QuotaExceed,
    ] {
        let raw = format!(
            r#"{{"type":"{t}","occur_at":1,"operator":"robot$a_b*c+[x]","event_data":{{"resources":[{{"digest":"sha256:`x`\\y","tag":"{HOSTILE_TAG}","resource_url":"h/{HOSTILE_REPO}:{HOSTILE_TAG}","scan_overview":{{"m":{{"scan_status":"Success","severity":"Critical","duration":3,"summary":{{"total":3,"fixable":1,"summary":{{"Critical":1,"{HOSTILE_REPO}":2}}}}}}}}}}],"repository":{{"name":"{HOSTILE_REPO}","namespace":"p-1.0!","repo_full_name":"p-1.0!/{HOSTILE_REPO}"}},"custom_attributes":{{"Details":"> # *not* a heading\n- nor a list <at id=all></at> @everyone"}}}}}}"#
        );
        events.push(RegistryEvent::from_json(&raw).unwrap());
    }
    // Long enough to be over every vendor's limit: 200 resources with long tags.
    let resources: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"digest":"sha256:{i:064}","tag":"v{i}-{}","resource_url":"h/p/r:{i}"}}"#,
                "x".repeat(100)
            )
        })
        .collect();
    let raw = format!(
        r#"{{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"ci","event_data":{{"resources":[{}],"repository":{{"namespace":"p","repo_full_name":"p/r","name":"r"}}}}}}"#,
        resources.join(",")
    );
    events.push(RegistryEvent::from_json(&raw).unwrap());
    let deleted: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"type":"image","status":"SUCCESS","name_tag":"r:{i}"}}"#))
        .collect();
    let raw = format!(
        r#"{{"type":"TAG_RETENTION","occur_at":1,"operator":"MANUAL","event_data":{{"retention":{{"total":500,"retained":0,"project_name":"p","result":"SUCCESS","deleted_artifact":[{}]}}}}}}"#,
        deleted.join(",")
    );
    events.push(RegistryEvent::from_json(&raw).unwrap());
    events
}

/// A fake of `kind` and a target pointed at it, with `template` when given.
async fn fake_and_target(
    kind: TargetKind,
    secret: Option<&str>,
    template: Option<&str>,
) -> (FakeVendor, Target) {
    let mut settings = TargetSettings {
        template: template.map(str::to_owned),
        ..Default::default()
    };
    let fake = match kind {
        TargetKind::Telegram => {
            let fake = vendors::telegram::start(BOT_TOKEN).await;
            settings.address = Some(fake.base_url());
            settings.bot_token = Some(BOT_TOKEN.into());
            settings.chat_id = Some("-1001234567890".into());
            settings.message_thread_id = Some(42);
            fake
        }
        TargetKind::Teams => {
            let fake = vendors::teams::start().await;
            settings.address =
                Some(fake.url("/workflows/abc/triggers/manual/paths/invoke?sig=SIGSECRET1234"));
            fake
        }
        TargetKind::Discord => {
            let fake = vendors::discord::start("1234567890", "discord-token-0123456789").await;
            settings.address = Some(fake.url("/api/webhooks/1234567890/discord-token-0123456789"));
            fake
        }
        TargetKind::DingTalk => {
            let fake = vendors::dingtalk::start("ding-token", secret).await;
            settings.address = Some(fake.url("/robot/send?access_token=ding-token"));
            settings.secret = secret.map(str::to_owned);
            fake
        }
        TargetKind::Feishu => {
            let fake = vendors::feishu::start("0f1e2d3c-hook-id-4b5a", secret).await;
            settings.address = Some(fake.url("/open-apis/bot/v2/hook/0f1e2d3c-hook-id-4b5a"));
            settings.secret = secret.map(str::to_owned);
            fake
        }
        TargetKind::WeCom => {
            let fake = vendors::wecom::start("wecom-key-123").await;
            settings.address = Some(fake.url("/cgi-bin/webhook/send?key=wecom-key-123"));
            fake
        }
        TargetKind::Template => unreachable!("not a chat type"),
    };
    let target = Target::new(kind, settings).unwrap();
    (fake, target)
}

/// Sends `request` and reads the answer as the target's rules do.
async fn send(client: &reqwest::Client, target: &Target, request: &Request) -> Outcome {
    let response = client
        .request(request.method.clone(), request.url.as_str())
        .headers(request.headers.clone())
        .body(request.body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    target.outcome(
        request,
        &Answer {
            status,
            headers: &headers,
            body: &body,
        },
    )
}

#[tokio::test]
async fn every_event_renders_for_every_chat_type_and_is_accepted() {
    let client = reqwest::Client::new();
    let events = events();
    for kind in TargetKind::CHAT {
        let secret =
            matches!(kind, TargetKind::DingTalk | TargetKind::Feishu).then_some("SECabc123");
        let (fake, target) = fake_and_target(kind, secret, None).await;
        for event in &events {
            let request = target.prepare(event, &context(kind), Utc::now()).unwrap();
            let outcome = send(&client, &target, &request).await;
            assert_eq!(
                outcome,
                Outcome::Delivered,
                "{kind} {} ({} bytes)",
                event.event_type(),
                request.body.len()
            );
            if kind == TargetKind::Telegram {
                let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
                let text = body["text"].as_str().unwrap();
                parse_markdown_v2(text).unwrap_or_else(|e| panic!("{e}: {text}"));
                assert_eq!(body["parse_mode"], "MarkdownV2");
                assert_eq!(body["chat_id"], -1001234567890i64);
                assert_eq!(body["message_thread_id"], 42);
                assert_eq!(body["link_preview_options"]["is_disabled"], true);
            }
        }
        assert_eq!(fake.accepted().len(), events.len(), "{kind}");
    }
}

#[tokio::test]
async fn hostile_names_show_as_written() {
    let (_fake, target) = fake_and_target(TargetKind::Telegram, None, None).await;
    let event = &events()[EventType::ALL.len()];
    let request = target
        .prepare(event, &context(TargetKind::Telegram), Utc::now())
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let plain = parse_markdown_v2(body["text"].as_str().unwrap()).unwrap();
    assert!(
        plain.contains(&format!("Repository: p-1.0!/{HOSTILE_REPO}")),
        "{plain}"
    );
    assert!(plain.contains(&format!("Tag: {HOSTILE_TAG}")), "{plain}");
    assert!(plain.contains("Digest: sha256:`x`\\y"), "{plain}");
    assert!(plain.contains("Operator: robot$a_b*c+[x]"), "{plain}");
}

#[tokio::test]
async fn long_messages_are_shortened_with_a_marker() {
    let client = reqwest::Client::new();
    let events = events();
    let huge = &events[events.len() - 2];
    for kind in TargetKind::CHAT {
        let (fake, target) = fake_and_target(kind, None, None).await;
        let request = target.prepare(huge, &context(kind), Utc::now()).unwrap();
        assert_eq!(
            send(&client, &target, &request).await,
            Outcome::Delivered,
            "{kind}"
        );
        let body = String::from_utf8(request.body.clone()).unwrap();
        assert!(body.contains("not shown"), "{kind}: {body}");
        assert_eq!(fake.accepted().len(), 1);

        // A custom template's output over the limit is cut too.
        let long = "{% for i in range(3000) %}line {{ i }}\n{% endfor %}";
        let (_fake, target) = fake_and_target(kind, None, Some(long)).await;
        let request = target.prepare(huge, &context(kind), Utc::now()).unwrap();
        assert_eq!(
            send(&client, &target, &request).await,
            Outcome::Delivered,
            "{kind} custom"
        );
        assert!(
            String::from_utf8_lossy(&request.body).contains("truncated"),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn custom_templates_for_every_chat_type() {
    let client = reqwest::Client::new();
    let event = sample_event(EventType::PushArtifact, "team-a", 1_800_000_000).unwrap();
    for (kind, template, want) in [
        (
            TargetKind::Telegram,
            "*Новый образ* в {{ repository.repo_full_name | telegram }} от {{ operator | telegram }}",
            r"*Новый образ* в team\-a/alpine от regrelay\-test\-delivery",
        ),
        (TargetKind::Teams, "**{{ type | teams }}** {{ project | teams }}", r"**PUSH\_ARTIFACT** team-a"),
        (TargetKind::Discord, "{{ message.headline | discord }}", "📦 Artifact pushed"),
        (TargetKind::DingTalk, "### 推送 {{ repository.name | dingtalk }}", "### 推送 alpine"),
        (TargetKind::Feishu, "**推送** {{ repository.name | feishu }}", "**推送** alpine"),
        (TargetKind::WeCom, "推送 {{ repository.name | wecom }} {{ time }}", "推送 alpine 2027-01-15T08:00:00Z"),
    ] {
        let (fake, target) = fake_and_target(kind, None, Some(template)).await;
        let request = target.prepare(&event, &context(kind), Utc::now()).unwrap();
        assert_eq!(send(&client, &target, &request).await, Outcome::Delivered, "{kind}");
        let body = fake.accepted()[0].json();
        let pointer = match kind {
            TargetKind::Telegram => "/text",
            TargetKind::Teams => "/attachments/0/content/body/0/text",
            TargetKind::Discord => "/content",
            TargetKind::DingTalk => "/markdown/text",
            TargetKind::Feishu => "/card/elements/0/text/content",
            _ => "/markdown/content",
        };
        assert_eq!(body.pointer(pointer).and_then(|t| t.as_str()), Some(want), "{kind}: {body}");
    }
}

#[tokio::test]
async fn a_render_error_is_reported_not_sent() {
    let (fake, target) =
        fake_and_target(TargetKind::Telegram, None, Some("{{ no_such_variable }}")).await;
    let event = sample_event(EventType::PushArtifact, "team-a", 1).unwrap();
    let err = target
        .prepare(&event, &context(TargetKind::Telegram), Utc::now())
        .unwrap_err();
    assert!(err.to_string().contains("undefined"), "{err}");
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn scripted_failures_read_as_the_outcome_rules_say() {
    let client = reqwest::Client::new();
    let event = sample_event(EventType::PushArtifact, "team-a", 1).unwrap();
    for kind in TargetKind::CHAT {
        let (fake, target) = fake_and_target(kind, None, None).await;
        fake.script([
            Script::RateLimited {
                retry_after_secs: 3.0,
            },
            Script::ServerError,
        ]);
        let request = target.prepare(&event, &context(kind), Utc::now()).unwrap();
        let rate_limited = send(&client, &target, &request).await;
        let Outcome::Retry { reason, after, .. } = &rate_limited else {
            panic!("{kind}: {rate_limited:?}");
        };
        assert_eq!(*reason, RetryReason::RateLimited, "{kind}");
        let want_after = match kind {
            TargetKind::Telegram | TargetKind::Teams | TargetKind::Discord => {
                Duration::from_secs(3)
            }
            TargetKind::DingTalk => Duration::from_secs(600),
            _ => Duration::from_secs(60),
        };
        assert_eq!(*after, Some(want_after), "{kind}");
        let server = send(&client, &target, &request).await;
        assert!(
            matches!(
                server,
                Outcome::Retry {
                    reason: RetryReason::ServerError,
                    ..
                }
            ),
            "{kind}: {server:?}"
        );
        assert_eq!(
            send(&client, &target, &request).await,
            Outcome::Delivered,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_dead_letters_without_the_credential() {
    let client = reqwest::Client::new();
    let event = sample_event(EventType::PushArtifact, "team-a", 1).unwrap();

    // Telegram: a bot token the server does not know.
    let fake = vendors::telegram::start("999:other").await;
    let target = Target::new(
        TargetKind::Telegram,
        TargetSettings {
            address: Some(fake.base_url()),
            bot_token: Some(BOT_TOKEN.into()),
            chat_id: Some("@my_channel".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let request = target
        .prepare(&event, &context(TargetKind::Telegram), Utc::now())
        .unwrap();
    assert!(
        !request.redacted_url().contains("AAE_fake"),
        "{}",
        request.redacted_url()
    );
    let outcome = send(&client, &target, &request).await;
    assert_eq!(
        outcome,
        Outcome::DeadLetter {
            reason: DeadLetterReason::Unauthorized,
            vendor_message: Some("Unauthorized".into())
        }
    );

    // DingTalk and Feishu signed with the wrong secret.
    for kind in [TargetKind::DingTalk, TargetKind::Feishu] {
        let (_fake, good) = fake_and_target(kind, Some("SECright"), None).await;
        let mut settings = good.settings().clone();
        settings.secret = Some("SECwrong".into());
        let target = Target::new(kind, settings).unwrap();
        let request = target.prepare(&event, &context(kind), Utc::now()).unwrap();
        let outcome = send(&client, &target, &request).await;
        let Outcome::DeadLetter {
            reason,
            vendor_message,
        } = &outcome
        else {
            panic!("{kind}: {outcome:?}");
        };
        assert_eq!(*reason, DeadLetterReason::BadSignature, "{kind}");
        assert!(
            vendor_message.as_deref().unwrap().contains("sign"),
            "{kind}"
        );
        // A timestamp over an hour old is refused as well, even rightly signed.
        let stale = good
            .prepare(
                &event,
                &context(kind),
                Utc::now() - chrono::Duration::hours(2),
            )
            .unwrap();
        let outcome = send(&client, &good, &stale).await;
        assert_eq!(
            outcome.reason(),
            Some("bad_signature"),
            "{kind}: {outcome:?}"
        );
    }

    // WeCom with a wrong key, Discord with a wrong token.
    let fake = vendors::wecom::start("right-key").await;
    let target = Target::new(
        TargetKind::WeCom,
        TargetSettings {
            address: Some(fake.url("/cgi-bin/webhook/send?key=wrong-key-1234")),
            ..Default::default()
        },
    )
    .unwrap();
    let request = target
        .prepare(&event, &context(TargetKind::WeCom), Utc::now())
        .unwrap();
    let outcome = send(&client, &target, &request).await;
    assert_eq!(outcome.reason(), Some("unauthorized"));
    let fake = vendors::discord::start("1", "right-token").await;
    let target = Target::new(
        TargetKind::Discord,
        TargetSettings {
            address: Some(fake.url("/api/webhooks/1/wrong-token-0123456789")),
            ..Default::default()
        },
    )
    .unwrap();
    let request = target
        .prepare(&event, &context(TargetKind::Discord), Utc::now())
        .unwrap();
    let outcome = send(&client, &target, &request).await;
    assert_eq!(outcome.reason(), Some("unauthorized"));
    assert!(!outcome.vendor_message().unwrap().contains("wrong-token"));
}

#[tokio::test]
async fn a_migrated_telegram_group_names_the_new_chat_id() {
    let client = reqwest::Client::new();
    let fake = vendors::telegram::start_with(vendors::telegram::Config {
        token: BOT_TOKEN.into(),
        migrated: [("-4001".to_owned(), -1009876543210)].into(),
    })
    .await;
    let target = Target::new(
        TargetKind::Telegram,
        TargetSettings {
            address: Some(fake.base_url()),
            bot_token: Some(BOT_TOKEN.into()),
            chat_id: Some("-4001".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let event = sample_event(EventType::PushArtifact, "team-a", 1).unwrap();
    let request = target
        .prepare(&event, &context(TargetKind::Telegram), Utc::now())
        .unwrap();
    let outcome = send(&client, &target, &request).await;
    assert_eq!(outcome.reason(), Some("chat_migrated"));
    assert!(outcome.vendor_message().unwrap().contains("-1009876543210"));
}

#[tokio::test]
async fn malformed_markdown_from_a_template_is_a_parse_error() {
    let client = reqwest::Client::new();
    let (_fake, target) = fake_and_target(TargetKind::Telegram, None, Some("v1.0 is out!")).await;
    let event = sample_event(EventType::PushArtifact, "team-a", 1).unwrap();
    let request = target
        .prepare(&event, &context(TargetKind::Telegram), Utc::now())
        .unwrap();
    let outcome = send(&client, &target, &request).await;
    assert_eq!(outcome.reason(), Some("parse_error"), "{outcome:?}");
    assert!(outcome
        .vendor_message()
        .unwrap()
        .contains("can't parse entities"));
}

#[tokio::test]
async fn teams_fake_refuses_a_body_without_attachments() {
    let client = reqwest::Client::new();
    let fake = vendors::teams::start().await;
    let response = client
        .post(fake.url("/flow"))
        .json(&serde_json::json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("'Null'"));
}

#[tokio::test]
async fn the_fakes_count_per_minute() {
    let client = reqwest::Client::new();
    let (fake, target) = fake_and_target(TargetKind::WeCom, None, None).await;
    let event = sample_event(EventType::PushArtifact, "team-a", 1).unwrap();
    for _ in 0..5 {
        let request = target
            .prepare(&event, &context(TargetKind::WeCom), Utc::now())
            .unwrap();
        send(&client, &target, &request).await;
    }
    assert_eq!(fake.max_accepted_within(Duration::from_secs(60)), 5);
    assert_eq!(fake.max_accepted_within(Duration::from_nanos(1)), 1);
}
