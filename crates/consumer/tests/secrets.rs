//! Credentials sealed at rest that the consumer cannot open: deliveries to that target are
//! dead-lettered (`bad_secret`), nothing is sent with the ciphertext, other targets still deliver.

mod common;

use std::time::Duration;

use common::{http_target, push, spec, Env, Options};
use regrelay_events::EventType;
use regrelay_history::SecretsKeyring;
use regrelay_testkit::TestReceiver;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_credential_sealed_with_a_key_the_consumer_lacks_is_dead_lettered() {
    let env = Env::start("unreadable-secret", Options::default()).await;
    let locked = TestReceiver::start().await;
    let open = TestReceiver::start().await;
    let mut sealed = http_target(locked.url("/locked"));
    sealed.auth_header = Some("Bearer sealed-token-31337".into());
    // Written by an API that has a key the consumer (its own keyless store) does not.
    let keyring = SecretsKeyring::parse("k9:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let writer = env.db.clone().with_secrets(keyring);
    let project = writer.ensure_project("lib").await.unwrap();
    let policy = writer
        .create_policy(
            Some(project.id),
            &spec(
                "sealed",
                vec![sealed, http_target(open.url("/open"))],
                &[EventType::PushArtifact],
            ),
        )
        .await
        .unwrap();
    // The consumer's cache refreshes every 100 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.publish(&[push("lib", "app", "v1")]).await;

    let dead = env.dead_letters(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "bad_secret");
    assert_eq!(dead[0]["policy"]["id"], policy.id);
    let text = dead[0].to_string();
    assert!(!text.contains("sealed-token-31337"), "{text}");
    assert!(!text.contains("enc:v1"), "{text}");
    assert_eq!(
        locked.count(),
        0,
        "nothing is sent with a sealed credential"
    );
    assert_eq!(
        env.metric_when(
            "regrelay_dead_letters_total{reason=\"bad_secret\"}",
            1.0,
            WAIT
        )
        .await,
        1.0
    );
    // The policy's other target is unaffected.
    let deadline = tokio::time::Instant::now() + WAIT;
    while open.count() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.count(), 1);
}
