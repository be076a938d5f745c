//! No credential is stored: receivers that echo the request back (as some error pages do) have
//! every credential regrelay sent blanked out of the answer before its start is kept in the task
//! log, in every encoding regrelay itself sends (header value, Basic from the address's user info,
//! signature, custom headers, query tokens, a Slack path), and also where a secret straddles the
//! 512-byte cut. Dead letters carry none of them either. Real receivers, RabbitMQ and PostgreSQL.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{http_target, push, spec, Env, Options};
use regrelay_events::EventType;
use regrelay_history::executions::{ExecutionQuery, TaskStatus};
use regrelay_history::policy::TargetKind;
use regrelay_testkit::TestReceiver;

/// The task logs of a policy's executions, once there are `n` of them and all are finished.
async fn logs(env: &Env, policy_id: i64, n: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (executions, _) = env
            .db
            .list_executions(policy_id, &ExecutionQuery::default())
            .await
            .unwrap();
        if executions.len() == n && executions.iter().all(|e| e.status == TaskStatus::Error) {
            let mut all = String::new();
            for execution in executions {
                let (tasks, _) = env.db.list_tasks(execution.id, 1, 10).await.unwrap();
                for task in tasks {
                    all.push_str(&env.db.task_log(task.id).await.unwrap());
                    all.push('\n');
                }
            }
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "executions not finished: {executions:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn echoed_credentials_never_reach_history_or_dead_letters() {
    let env = Env::start("redaction", Options::default()).await;

    // 1. User info (percent-encoded; reqwest sends it as Basic), a query token, a signing secret
    //    and a custom header, all echoed back.
    let echo_all = TestReceiver::start().await;
    echo_all.set_default_status(400);
    echo_all.set_echo(
        "auth={header:authorization} sig={header:webhook-signature} key={header:x-api-key} \
         uri={uri} decoded=ci@corp:pa/ss-w0rd",
    );
    let mut all = http_target(
        echo_all
            .url("/in?token=qs-t0ken-9&x=1")
            .replace("http://", "http://ci%40corp:pa%2Fss-w0rd@"),
    );
    all.secret = Some("whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=".into());
    all.headers
        .insert("X-Api-Key".into(), "key-1234567890".into());

    // 2. An auth header whose 32-character token straddles the 512-byte cut (15 characters before
    //    it, as in the issue's repro).
    let straddle = TestReceiver::start().await;
    straddle.set_default_status(400);
    let token = "0123456789abcdefGHIJKLMNOPQRSTUV";
    let filler = "x".repeat(512 - 15 - "Bearer ".len());
    straddle.set_echo(&format!(
        "{filler}{{header:authorization}} and more text after it"
    ));
    let mut straddling = http_target(straddle.url("/straddle"));
    straddling.auth_header = Some(format!("Bearer {token}"));

    // 3. A short password: blanked where it stands alone, and its Basic form everywhere.
    let short = TestReceiver::start().await;
    short.set_default_status(400);
    short
        .set_echo(r#"{"authorization":"{header:authorization}","password":"abc","note":"abcdef"}"#);
    let short_password = http_target(short.url("/short").replace("http://", "http://u:abc@"));

    // 4. A Slack-style address: its path is the secret.
    let slack = TestReceiver::start().await;
    slack.set_default_status(400);
    slack.set_echo("no_service {uri}");
    let mut slack_target = http_target(slack.url("/services/T0001/B0001/XXXXSLACKSECRET"));
    slack_target.kind = TargetKind::Slack;

    let policy = env
        .policy(
            Some("lib"),
            spec(
                "echo",
                vec![all, straddling, short_password, slack_target],
                &[EventType::PushArtifact],
            ),
        )
        .await;
    env.publish(&[push("lib", "app", "v1")]).await;
    let log = logs(&env, policy.id, 4).await;

    // What was really sent, to be sure the receivers echoed it.
    let sent = echo_all.requests();
    let basic = sent[0].header("authorization").unwrap().to_owned();
    assert_eq!(
        basic,
        format!("Basic {}", STANDARD.encode("ci@corp:pa/ss-w0rd"))
    );
    let signature = sent[0].header("webhook-signature").unwrap().to_owned();
    let short_basic = short.requests()[0]
        .header("authorization")
        .unwrap()
        .to_owned();
    assert_eq!(short_basic, format!("Basic {}", STANDARD.encode("u:abc")));

    for secret in [
        basic.trim_start_matches("Basic "),
        signature.trim_start_matches("v1,"),
        "key-1234567890",
        "qs-t0ken-9",
        "pa%2Fss-w0rd",
        "pa/ss-w0rd",
        &token[..6],
        &token[token.len() - 6..],
        short_basic.trim_start_matches("Basic "),
        "\"abc\"",
        "XXXXSLACKSECRET",
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} is in the task log:\n{log}"
        );
    }
    // The answers were kept, blanked, not dropped.
    assert!(log.contains("auth=********"), "{log}");
    assert!(log.contains("\"note\":\"abcdef\""), "{log}");
    assert!(log.contains("xxxxxxxx"), "{log}");
    assert!(log.contains("no_service "), "{log}");

    let dead = env.dead_letters(4, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 4);
    let dead = serde_json::to_string(&dead).unwrap();
    for secret in [
        "qs-t0ken-9",
        "pa%2Fss-w0rd",
        "XXXXSLACKSECRET",
        token,
        "key-1234567890",
    ] {
        assert!(
            !dead.contains(secret),
            "{secret:?} is in a dead letter: {dead}"
        );
    }
}
