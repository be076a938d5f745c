//! Policy credentials sealed at rest, through the policy API: the table holds none of them in plain
//! text, `GET` shows `********`, a `PUT` of `********` keeps them, a new value replaces them.

mod common;

use common::{DatabaseChoice, TestApi};
use reqwest::Method;
use serde_json::{json, Value};

const POLICIES: &str = "/api/v2.0/projects/lib/webhook/policies";
const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const AUTH: &str = "Basic YXBpLXBsYWluLWF1dGg=";
const SECRET: &str = "whsec_YXBpLXBsYWluLXNpZ25pbmc=";
const HEADER: &str = "api-plain-header-4242";

async fn raw_targets(api: &TestApi) -> String {
    let url = api.database_url().unwrap();
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query("SELECT targets::text FROM notification_policies", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn body(auth: &str, secret: &str, header: &str) -> Value {
    json!({
        "name": "sealed",
        "enabled": true,
        "event_types": ["PUSH_ARTIFACT"],
        "targets": [{
            "type": "http",
            "address": "https://ci.example.com/hook",
            "auth_header": auth,
            "secret": secret,
            "headers": {"X-Team": header},
        }],
    })
}

#[tokio::test]
async fn credentials_written_through_the_api_are_sealed_and_kept_by_redacted_puts() {
    let broker = regrelay_testkit::TestBroker::new("api-secrets").await;
    let api = TestApi::start(
        regrelay_testkit::amqp_url(),
        broker.topology.clone(),
        DatabaseChoice::Sealed("api-secrets", KEYS),
    )
    .await;
    let reply = api
        .admin(Method::POST, POLICIES, Some(body(AUTH, SECRET, HEADER)))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let id: i64 = reply
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let raw = raw_targets(&api).await;
    for plain in [AUTH, SECRET, HEADER] {
        assert!(!raw.contains(plain), "{plain} in {raw}");
    }
    assert!(raw.contains("enc:v1:k1:"), "{raw}");

    let path = format!("{POLICIES}/{id}");
    let got = api.admin(Method::GET, &path, None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let target = &got.json()["targets"][0];
    assert_eq!(target["auth_header"], "********");
    assert_eq!(target["secret"], "********");
    assert_eq!(target["headers"]["X-Team"], "********");
    assert!(!got.text.contains("enc:v1"), "{}", got.text);

    // PUT back as GET showed it: the credentials are kept (re-sealed), readable by the store.
    let put = api
        .admin(
            Method::PUT,
            &path,
            Some(body("********", "********", "********")),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let raw = raw_targets(&api).await;
    for plain in [AUTH, SECRET, HEADER, "********"] {
        assert!(!raw.contains(plain), "{plain} in {raw}");
    }
    let stored = api.db.enabled_policies().await.unwrap();
    let target = &stored[0].targets[0];
    assert_eq!(target.auth_header.as_deref(), Some(AUTH));
    assert_eq!(target.secret.as_deref(), Some(SECRET));
    assert_eq!(target.headers["X-Team"], HEADER);

    // A new value replaces the old one.
    let put = api
        .admin(
            Method::PUT,
            &path,
            Some(body("Bearer replaced-auth", "********", "********")),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert!(!raw_targets(&api).await.contains("replaced-auth"));
    let stored = api.db.enabled_policies().await.unwrap();
    assert_eq!(
        stored[0].targets[0].auth_header.as_deref(),
        Some("Bearer replaced-auth")
    );
    assert_eq!(stored[0].targets[0].secret.as_deref(), Some(SECRET));
}

#[tokio::test]
async fn a_redacted_put_keeps_a_value_the_api_cannot_decrypt() {
    const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let broker = regrelay_testkit::TestBroker::new("api-secrets-unreadable").await;
    let api = TestApi::start(
        regrelay_testkit::amqp_url(),
        broker.topology.clone(),
        DatabaseChoice::Sealed("api-secrets-unreadable", K2),
    )
    .await;
    // Written under k1, which this API does not have.
    let k1 = regrelay_history::Database::connect(api.database_url().unwrap(), 2)
        .unwrap()
        .with_secrets(regrelay_history::SecretsKeyring::parse(KEYS).unwrap());
    let project = k1.ensure_project("lib").await.unwrap();
    let mut target = regrelay_history::policy::Target {
        kind: regrelay_history::policy::TargetKind::Http,
        address: "https://ci.example.com/hook".into(),
        auth_header: Some(AUTH.into()),
        skip_cert_verify: false,
        payload_format: Default::default(),
        secret: Some(SECRET.into()),
        headers: Default::default(),
        options: Default::default(),
    };
    target.headers.insert("X-Team".into(), HEADER.into());
    let spec = regrelay_history::policy::PolicySpec {
        name: "sealed".into(),
        description: String::new(),
        targets: vec![target],
        event_types: vec![regrelay_events::EventType::PushArtifact],
        filters: Default::default(),
        creator: "admin".into(),
        enabled: true,
    };
    let created = k1.create_policy(Some(project.id), &spec).await.unwrap();

    let path = format!("{POLICIES}/{}", created.id);
    let got = api.admin(Method::GET, &path, None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["targets"][0]["auth_header"], "********");
    assert!(!got.text.contains("enc:v1"), "{}", got.text);
    let put = api
        .admin(
            Method::PUT,
            &path,
            Some(body("********", "********", "********")),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    // Kept at the sealed level: k1 still opens every value.
    let back = k1
        .get_policy(Some(project.id), created.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.targets[0].auth_header.as_deref(), Some(AUTH));
    assert_eq!(back.targets[0].secret.as_deref(), Some(SECRET));
    assert_eq!(back.targets[0].headers["X-Team"], HEADER);
}
