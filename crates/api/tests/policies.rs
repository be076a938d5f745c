//! Harbor's webhook policy API and the global switch, against the real PostgreSQL (and RabbitMQ for
//! the process's broker handle). Shapes, status codes and messages are Harbor's.

mod common;

use common::{setup, TestApi, ADMIN_PASSWORD, ADMIN_USER, API_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const POLICIES: &str = "/api/v2.0/projects/lib/webhook/policies";

fn policy(name: &str, address: &str) -> Value {
    json!({
        "name": name,
        "description": "pushes to CI",
        "event_types": ["PUSH_ARTIFACT", "DELETE_ARTIFACT"],
        "targets": [{
            "type": "http",
            "address": address,
            "auth_header": "Bearer receiver-secret",
            "skip_cert_verify": false,
            "payload_format": "CloudEvents",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "headers": {"X-Team": "team-token-123"}
        }],
        "enabled": true
    })
}

/// Creates a policy in `lib` and returns its id, read from the `Location` header.
async fn create(api: &TestApi, body: Value) -> i64 {
    let reply = api.admin(Method::POST, POLICIES, Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let location = reply
        .header("location")
        .expect("Location header")
        .to_owned();
    location
        .strip_prefix(&format!("{POLICIES}/"))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("Location {location} does not name the new policy"))
}

#[tokio::test]
async fn the_policy_api_needs_the_administrator() {
    let (_broker, api) = setup("policy-auth").await;
    let none = api.request_as(Method::GET, POLICIES, None, None).await;
    assert_eq!(none.status, 401, "{}", none.text);
    assert_eq!(none.json()["errors"][0]["code"], "UNAUTHORIZED");

    use base64::Engine;
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:not-the-password"))
    );
    assert_eq!(
        api.request_as(Method::GET, POLICIES, Some(&wrong), None)
            .await
            .status,
        401
    );
    let bad_token = api
        .request_as(Method::GET, POLICIES, Some("Bearer nope"), None)
        .await;
    assert_eq!(bad_token.status, 401);

    let right = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"))
    );
    assert_eq!(
        api.request_as(Method::GET, POLICIES, Some(&right), None)
            .await
            .status,
        200
    );
    let token = format!("Bearer {API_TOKEN}");
    assert_eq!(
        api.request_as(Method::GET, POLICIES, Some(&token), None)
            .await
            .status,
        200
    );
    // The ingest token is not an administrator's.
    let ingest = format!("Bearer {}", common::TOKEN);
    assert_eq!(
        api.request_as(Method::GET, POLICIES, Some(&ingest), None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn create_get_update_delete_with_harbor_shapes_and_no_secrets_out() {
    let (_broker, api) = setup("policy-crud").await;
    let reply = api
        .admin(
            Method::POST,
            POLICIES,
            Some(policy("ci", "https://ci.example.com/hook")),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(
        reply.text.is_empty(),
        "201 has an empty body: {}",
        reply.text
    );
    let id: i64 = reply
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let got = api
        .admin(Method::GET, &format!("{POLICIES}/{id}"), None)
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let body = got.json();
    assert_eq!(body["id"], id);
    assert_eq!(body["name"], "ci");
    assert_eq!(body["description"], "pushes to CI");
    assert_eq!(
        body["event_types"],
        json!(["PUSH_ARTIFACT", "DELETE_ARTIFACT"])
    );
    assert_eq!(body["enabled"], true);
    assert_eq!(body["creator"], ADMIN_USER);
    assert!(body["project_id"].as_i64().unwrap() > 0);
    for key in ["creation_time", "update_time"] {
        let text = body[key].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{key}: {text}"
        );
    }
    let target = &body["targets"][0];
    assert_eq!(target["type"], "http");
    assert_eq!(target["address"], "https://ci.example.com/hook");
    assert_eq!(target["payload_format"], "CloudEvents");
    assert_eq!(target["skip_cert_verify"], false);
    // Credentials never come back.
    for secret in [
        "receiver-secret",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "team-token-123",
    ] {
        assert!(!got.text.contains(secret), "{secret} leaked: {}", got.text);
    }
    assert_eq!(target["auth_header"], "********");
    assert_eq!(target["secret"], "********");
    assert_eq!(target["headers"]["X-Team"], "********");

    // The same policy by numeric project id, and by name when the header forces the name reading.
    let project_id = body["project_id"].as_i64().unwrap();
    let by_id = api
        .admin(
            Method::GET,
            &format!("/api/v2.0/projects/{project_id}/webhook/policies/{id}"),
            None,
        )
        .await;
    assert_eq!(by_id.status, 200);
    // Another project does not see it.
    create_elsewhere(&api).await;
    let wrong = api
        .admin(
            Method::GET,
            &format!("/api/v2.0/projects/other/webhook/policies/{id}"),
            None,
        )
        .await;
    assert_eq!(wrong.status, 404, "{}", wrong.text);
    assert_eq!(wrong.json()["errors"][0]["code"], "NOT_FOUND");

    // A Harbor client GETs, edits and PUTs the policy back: redacted placeholders keep the stored
    // credentials; the edit lands.
    let mut edited = body.clone();
    edited["description"] = json!("edited");
    edited["enabled"] = json!(false);
    let put = api
        .admin(Method::PUT, &format!("{POLICIES}/{id}"), Some(edited))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let stored = api
        .db
        .get_policy(Some(project_id), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.description, "edited");
    assert!(!stored.enabled);
    assert_eq!(
        stored.targets[0].auth_header.as_deref(),
        Some("Bearer receiver-secret")
    );
    assert_eq!(
        stored.targets[0].secret.as_deref(),
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    assert_eq!(stored.targets[0].headers["X-Team"], "team-token-123");

    let deleted = api
        .admin(Method::DELETE, &format!("{POLICIES}/{id}"), None)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(
        api.admin(Method::GET, &format!("{POLICIES}/{id}"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        api.admin(Method::DELETE, &format!("{POLICIES}/{id}"), None)
            .await
            .status,
        404
    );
}

async fn create_elsewhere(api: &TestApi) {
    let reply = api
        .admin(
            Method::POST,
            "/api/v2.0/projects/other/webhook/policies",
            Some(policy("ci", "https://other.example.com/hook")),
        )
        .await;
    // The same name in another project is fine.
    assert_eq!(reply.status, 201, "{}", reply.text);
}

#[tokio::test]
async fn validation_uses_harbors_messages() {
    let (_broker, api) = setup("policy-validation").await;
    let base = policy("v", "https://ci.example.com/hook");
    let with = |path: &[&str], value: Value| {
        let mut body = base.clone();
        let mut cursor = &mut body;
        for key in &path[..path.len() - 1] {
            cursor = match key.parse::<usize>() {
                Ok(i) => &mut cursor[i],
                Err(_) => &mut cursor[*key],
            };
        }
        cursor[path[path.len() - 1]] = value;
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(&["event_types"], json!([])), "empty event type"),
        (
            with(&["event_types"], json!(["PUSH_ARTIFACT", "EXPLODE"])),
            "unsupported event type EXPLODE",
        ),
        (
            with(&["targets"], json!([])),
            "empty notification target with policy v",
        ),
        (
            with(
                &["targets", "0", "address"],
                json!("ftp://ci.example.com/x"),
            ),
            "invalid scheme: ftp",
        ),
        (
            with(&["targets", "0", "type"], json!("email")),
            "unsupported target type",
        ),
        (
            with(&["targets", "0", "payload_format"], json!("Xml")),
            "unsupported payload format type: Xml",
        ),
        (
            json!({"name": "s", "event_types": ["PUSH_ARTIFACT"], "targets": [{"type": "slack", "address": "https://hooks.slack.com/x", "payload_format": "CloudEvents"}]}),
            "set payload format is not allowed for slack",
        ),
    ];
    for (body, message) in cases {
        let reply = api.admin(Method::POST, POLICIES, Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{body} → {}", reply.text);
        assert_eq!(reply.json()["errors"][0]["code"], "BAD_REQUEST");
        assert_eq!(reply.message(), message, "for {body}");
    }
    let malformed = api
        .request_as(
            Method::POST,
            POLICIES,
            Some(&format!("Bearer {API_TOKEN}")),
            None,
        )
        .await;
    assert!(
        malformed.status == 400 || malformed.status == 415,
        "{}",
        malformed.text
    );
    // Nothing was created by any of them.
    let list = api.admin(Method::GET, POLICIES, None).await;
    assert_eq!(list.header("x-total-count"), Some("0"));

    create(&api, base.clone()).await;
    let duplicate = api.admin(Method::POST, POLICIES, Some(base)).await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.text);
    assert_eq!(duplicate.json()["errors"][0]["code"], "CONFLICT");
}

#[tokio::test]
async fn lists_are_paged_newest_first_with_harbors_headers() {
    let (_broker, api) = setup("policy-list").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create(
                &api,
                policy(&format!("hook-{i}"), "https://ci.example.com/hook"),
            )
            .await,
        );
    }
    let page = api
        .admin(Method::GET, &format!("{POLICIES}?page=2&page_size=2"), None)
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.header("x-total-count"), Some("5"));
    let names: Vec<String> = page
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["hook-2", "hook-1"], "newest first");
    assert_eq!(
        page.header("link"),
        Some(
            format!(
                "<{POLICIES}?page=1&page_size=2>; rel=\"prev\" , <{POLICIES}?page=3&page_size=2>; rel=\"next\""
            )
            .as_str()
        )
    );

    let fuzzy = api
        .admin(Method::GET, &format!("{POLICIES}?q=name%3D~ook-3"), None)
        .await;
    assert_eq!(fuzzy.header("x-total-count"), Some("1"), "{}", fuzzy.text);
    assert_eq!(fuzzy.json()[0]["name"], "hook-3");
    let sorted = api
        .admin(
            Method::GET,
            &format!("{POLICIES}?sort=name&page_size=1"),
            None,
        )
        .await;
    assert_eq!(sorted.json()[0]["name"], "hook-0");

    let too_big = api
        .admin(Method::GET, &format!("{POLICIES}?page_size=101"), None)
        .await;
    assert_eq!(too_big.status, 400);
    let unknown_project = api
        .admin(
            Method::GET,
            "/api/v2.0/projects/nobody/webhook/policies",
            None,
        )
        .await;
    assert_eq!(unknown_project.status, 200);
    assert_eq!(unknown_project.json(), json!([]));
}

#[tokio::test]
async fn supported_events_and_system_wide_policies() {
    let (_broker, api) = setup("policy-system").await;
    let events = api
        .admin(Method::GET, "/api/v2.0/projects/lib/webhook/events", None)
        .await;
    assert_eq!(events.status, 200);
    assert_eq!(
        events.json(),
        json!({
            "event_type": ["PUSH_ARTIFACT", "PULL_ARTIFACT", "DELETE_ARTIFACT", "QUOTA_EXCEED", "QUOTA_WARNING",
                           "SCANNING_FAILED", "SCANNING_STOPPED", "SCANNING_COMPLETED", "REPLICATION", "TAG_RETENTION"],
            "notify_type": ["http", "slack"],
            "payload_formats": [{"notify_type": "http", "formats": ["Default", "CloudEvents"]}]
        })
    );

    let system = "/api/v1/system/webhook/policies";
    let reply = api
        .admin(
            Method::POST,
            system,
            Some(policy("everywhere", "https://audit.example.com/")),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let listed = api.admin(Method::GET, system, None).await;
    assert_eq!(listed.header("x-total-count"), Some("1"));
    assert_eq!(listed.json()[0]["system_wide"], true);
    assert_eq!(listed.json()[0]["project_id"], 0);
    // A system-wide policy does not show up in a project's list.
    let project = api.admin(Method::GET, POLICIES, None).await;
    assert_eq!(project.json(), json!([]));
}

#[tokio::test]
async fn the_global_switch_is_harbors_notification_enable() {
    let (_broker, api) = setup("configurations").await;
    let path = "/api/v2.0/configurations";
    let got = api.admin(Method::GET, path, None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["notification_enable"]["value"], true);
    let generation = api.db.generation().await.unwrap();

    let put = api
        .admin(
            Method::PUT,
            path,
            Some(json!({"notification_enable": false})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(
        api.admin(Method::GET, path, None).await.json()["notification_enable"]["value"],
        false
    );
    assert!(
        api.db.generation().await.unwrap() > generation,
        "consumers are told"
    );

    let bad = api
        .admin(
            Method::PUT,
            path,
            Some(json!({"notification_enable": "no"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    let unknown = api
        .admin(Method::PUT, path, Some(json!({"auth_mode": "ldap"})))
        .await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.message().contains("auth_mode"), "{}", unknown.text);
}

/// Addresses come back redacted (user info, query values, a Slack path): a deliberate difference
/// from Harbor, which returns them in full. A client that PUTs back what GET gave it keeps the stored
/// addresses, and deliveries still carry the credentials.
#[tokio::test]
async fn addresses_are_returned_redacted_and_a_put_of_the_redacted_form_keeps_them() {
    let (_broker, api) = setup("policy-address-redaction").await;
    let receiver = regrelay_testkit::TestReceiver::start().await;
    let http_address = receiver
        .url("/in?token=qs-s3cret-token&team=ci")
        .replace("http://", "http://ci-user:url-pa55word@");
    let slack_address = "https://hooks.slack.com/services/T0001/B0001/XXXXSLACKSECRET";
    let body = json!({
        "name": "redacted-addresses",
        "event_types": ["PUSH_ARTIFACT"],
        "targets": [
            {"type": "http", "address": http_address, "auth_header": "", "payload_format": "Default"},
            {"type": "slack", "address": slack_address},
        ],
        "enabled": true
    });
    let id = create(&api, body).await;
    let path = format!("{POLICIES}/{id}");

    let got = api.admin(Method::GET, &path, None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let redacted_http = receiver
        .url("/in?token=********&team=********")
        .replace("http://", "http://********@");
    assert_eq!(got.json()["targets"][0]["address"], redacted_http.as_str());
    assert_eq!(
        got.json()["targets"][1]["address"],
        "https://hooks.slack.com/services/********"
    );
    let listed = api.admin(Method::GET, POLICIES, None).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    for secret in [
        "url-pa55word",
        "ci-user",
        "qs-s3cret-token",
        "XXXXSLACKSECRET",
        "T0001",
    ] {
        assert!(!got.text.contains(secret), "{secret} in {}", got.text);
        assert!(!listed.text.contains(secret), "{secret} in {}", listed.text);
    }

    // PUT the GET body back unchanged: the stored addresses stay as they were.
    let put = api.admin(Method::PUT, &path, Some(got.json())).await;
    assert_eq!(put.status, 200, "{}", put.text);
    let project = api.db.find_project_by_name("lib").await.unwrap().unwrap();
    let stored = api
        .db
        .get_policy(Some(project.id), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.targets[0].address, http_address);
    assert_eq!(stored.targets[1].address, slack_address);

    // A test delivery still reaches the receiver with the credentials.
    let test = api
        .admin(Method::POST, &format!("{path}/test"), Some(json!({})))
        .await;
    assert!(test.status < 300, "{} {}", test.status, test.text);
    let requests = receiver
        .wait_for(1, std::time::Duration::from_secs(5))
        .await;
    let request = requests.first().expect("the test delivery arrived");
    use base64::Engine;
    assert_eq!(
        request.header("authorization"),
        Some(
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("ci-user:url-pa55word")
            )
            .as_str()
        )
    );

    // Changing the address works as before; a placeholder that matches no stored address is refused.
    let mut changed = got.json();
    changed["targets"][0]["address"] = json!(receiver.url("/other"));
    changed["targets"][1]["address"] = json!("https://hooks.slack.com/services/********");
    let put = api.admin(Method::PUT, &path, Some(changed.clone())).await;
    assert_eq!(put.status, 200, "{}", put.text);
    let stored = api
        .db
        .get_policy(Some(project.id), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.targets[0].address, receiver.url("/other"));
    assert_eq!(stored.targets[1].address, slack_address);
    changed["targets"][0]["address"] = json!("https://********@elsewhere.example/in");
    let put = api.admin(Method::PUT, &path, Some(changed)).await;
    assert_eq!(put.status, 400, "{}", put.text);
    assert!(
        put.message().contains("redacted placeholder"),
        "{}",
        put.text
    );
}
