//! Credentials sealed at rest, on the real PostgreSQL: the raw table holds no plain-text credential,
//! the store reads them back, keys rotate, rows from before the key and unreadable values.

mod common;

use common::{http_target, spec};
use regrelay_history::policy::{PolicyError, PolicySpec};
use regrelay_history::{Database, SecretsKeyring, StoreError};

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

const AUTH: &str = "Bearer plain-auth-token-4711";
const SECRET: &str = "whsec_cGxhaW4tc2lnbmluZy1zZWNyZXQ=";
const HEADER: &str = "plain-header-value-0815";
const PLAIN: [&str; 3] = [AUTH, SECRET, HEADER];

fn keyed(url: &str, keys: Option<&str>) -> Database {
    let db = Database::connect(url, 2).unwrap();
    match keys {
        Some(keys) => db.with_secrets(SecretsKeyring::parse(keys).unwrap()),
        None => db,
    }
}

fn credentialed(name: &str) -> PolicySpec {
    let mut spec = spec(name);
    let mut target = http_target("https://example.com/hook");
    target.auth_header = Some(AUTH.into());
    target.secret = Some(SECRET.into());
    target.headers.insert("X-Api-Key".into(), HEADER.into());
    spec.targets = vec![target, http_target("https://example.com/other")];
    spec
}

/// Every policy row's targets as PostgreSQL holds them, read with a connection of its own.
async fn raw_targets(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT targets::text FROM notification_policies ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_plaintext(raw: &str) {
    for plain in PLAIN {
        assert!(!raw.contains(plain), "{plain} in {raw}");
    }
}

fn assert_credentials(policy: &regrelay_history::policy::Policy) {
    let target = &policy.targets[0];
    assert_eq!(target.auth_header.as_deref(), Some(AUTH));
    assert_eq!(target.secret.as_deref(), Some(SECRET));
    assert_eq!(
        target.headers.get("X-Api-Key").map(String::as_str),
        Some(HEADER)
    );
    assert_eq!(target.unreadable_credential(), None);
}

#[tokio::test]
async fn stored_credentials_are_sealed_and_read_back() {
    let store = common::store("secrets sealed").await;
    let db = keyed(&store.database.url, Some(K1));
    let project = db.ensure_project("library").await.unwrap();

    let created = db
        .create_policy(Some(project.id), &credentialed("sealed"))
        .await
        .unwrap();
    assert_credentials(&created);
    let raw = raw_targets(&store.database.url).await;
    assert_no_plaintext(&raw);
    assert!(raw.contains("enc:v1:k1:"), "{raw}");
    // Addresses and the other fields stay readable.
    assert!(raw.contains("https://example.com/hook"), "{raw}");

    let fetched = db
        .get_policy(Some(project.id), created.id)
        .await
        .unwrap()
        .unwrap();
    assert_credentials(&fetched);
    assert_credentials(&db.enabled_policies().await.unwrap()[0]);
    let (listed, _) = db
        .list_policies(Some(project.id), &Default::default())
        .await
        .unwrap();
    assert_credentials(&listed[0]);

    // An update seals again (a new nonce): still no plain text, still readable.
    let before = raw_targets(&store.database.url).await;
    let updated = db
        .update_policy(Some(project.id), created.id, &credentialed("sealed"))
        .await
        .unwrap()
        .unwrap();
    assert_credentials(&updated);
    let after = raw_targets(&store.database.url).await;
    assert_no_plaintext(&after);
    assert_ne!(before, after);

    // The same database read without the key: the values stay sealed and the target is unusable,
    // but the policy loads.
    let keyless = keyed(&store.database.url, None);
    let policies = keyless.enabled_policies().await.unwrap();
    assert_eq!(
        policies[0].targets[0].unreadable_credential(),
        Some("auth_header")
    );
    assert_eq!(policies[0].targets[1].unreadable_credential(), None);
}

#[tokio::test]
async fn keys_rotate_with_reencrypt() {
    let store = common::store("secrets rotation").await;
    let url = &store.database.url;

    // A row from before any key: plain text.
    let keyless = keyed(url, None);
    let old = keyless
        .create_policy(None, &credentialed("before the key"))
        .await
        .unwrap();
    assert!(raw_targets(url).await.contains(AUTH));
    // Written with k1.
    let k1 = keyed(url, Some(K1));
    assert_credentials(&k1.get_policy(None, old.id).await.unwrap().unwrap());
    let sealed = k1
        .create_policy(None, &credentialed("with k1"))
        .await
        .unwrap();

    // k2 configured first, k1 still there: both rows read.
    let both = keyed(url, Some(&format!("{K2},{K1}")));
    for id in [old.id, sealed.id] {
        assert_credentials(&both.get_policy(None, id).await.unwrap().unwrap());
    }
    let generation = both.generation().await.unwrap();
    let report = both.reencrypt_policies().await.unwrap();
    assert_eq!((report.rows_seen, report.rows_changed), (2, 2));
    assert!(report.unreadable.is_empty());
    assert_eq!(both.generation().await.unwrap(), generation + 1);
    let raw = raw_targets(url).await;
    assert_no_plaintext(&raw);
    assert!(!raw.contains("enc:v1:k1:"), "{raw}");
    // Run again: nothing left to do, no generation bump.
    let again = both.reencrypt_policies().await.unwrap();
    assert_eq!((again.rows_seen, again.rows_changed), (2, 0));
    assert_eq!(both.generation().await.unwrap(), generation + 1);

    // k1 removed: everything still reads.
    let k2 = keyed(url, Some(K2));
    for id in [old.id, sealed.id] {
        assert_credentials(&k2.get_policy(None, id).await.unwrap().unwrap());
    }

    // Without a key there is nothing to reencrypt with.
    assert!(matches!(
        keyless.reencrypt_policies().await,
        Err(StoreError::Config(_))
    ));
}

#[tokio::test]
async fn unreadable_values_survive_a_write_that_keeps_them() {
    let store = common::store("secrets unreadable").await;
    let url = &store.database.url;
    let k1 = keyed(url, Some(K1));
    let created = k1
        .create_policy(None, &credentialed("k1 only"))
        .await
        .unwrap();

    // Configured with k2 alone, k1 forgotten: the policy loads, its first target is unusable.
    let k2 = keyed(url, Some(K2));
    let loaded = k2.get_policy(None, created.id).await.unwrap().unwrap();
    assert_eq!(
        loaded.targets[0].unreadable_credential(),
        Some("auth_header")
    );
    // `--reencrypt` reports what it could not open and leaves it.
    let report = k2.reencrypt_policies().await.unwrap();
    assert_eq!(report.rows_changed, 0);
    let fields: Vec<_> = report.unreadable.iter().map(|u| u.field.as_str()).collect();
    assert_eq!(fields, ["auth_header", "secret", "header/X-Api-Key"]);

    // A write that keeps the loaded (sealed) values, as the API's `********` does: stored unchanged,
    // so k1 opens them again later.
    let mut kept = credentialed("k1 only, renamed");
    kept.targets = loaded.targets.clone();
    k2.update_policy(None, created.id, &kept)
        .await
        .unwrap()
        .unwrap();
    assert_credentials(&k1.get_policy(None, created.id).await.unwrap().unwrap());

    // The same sealed text planted in another policy is refused.
    assert!(matches!(
        k2.create_policy(None, &kept).await,
        Err(StoreError::Invalid(PolicyError::SealedLookingValue(
            "auth_header"
        )))
    ));
}
