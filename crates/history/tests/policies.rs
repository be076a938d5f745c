//! Webhook policies on the real PostgreSQL: CRUD, lists, scopes, conflicts and the generation.

mod common;

use std::time::Duration;

use common::{http_target, spec};
use regrelay_events::EventType;
use regrelay_history::policies::{NameMatch, PolicyQuery, PolicySort};
use regrelay_history::policy::{Filters, PayloadFormat, PolicyError, TargetKind};
use regrelay_history::StoreError;

fn names(policies: &[regrelay_history::policy::Policy]) -> Vec<&str> {
    policies.iter().map(|p| p.name.as_str()).collect()
}

#[tokio::test]
async fn create_get_update_delete() {
    let store = common::store("policy crud").await;
    let db = &store.db;
    let project = db.ensure_project("library").await.unwrap();

    let mut created_spec = spec("first");
    let mut target = http_target("https://example.com/a");
    target.auth_header = Some("Bearer t0ken".into());
    target.secret = Some("whsec_c2VjcmV0".into());
    target.payload_format = PayloadFormat::CloudEvents;
    target.headers.insert("X-Team".into(), "ops".into());
    created_spec.targets = vec![
        target.clone(),
        regrelay_history::policy::Target {
            kind: TargetKind::Slack,
            ..http_target("https://hooks.slack.com/services/T/B/X")
        },
    ];
    created_spec.event_types = vec![EventType::PushArtifact, EventType::DeleteArtifact];
    created_spec.filters = Filters {
        repositories: vec!["/app*".into()],
        tags: vec!["v*".into()],
    };
    let created = db
        .create_policy(Some(project.id), &created_spec)
        .await
        .unwrap();
    assert!(created.id > 0);
    assert_eq!(created.name, "first");
    assert_eq!(created.description, "first description");
    assert_eq!(created.project, Some(project.clone()));
    assert_eq!(created.targets, created_spec.targets);
    assert_eq!(created.event_types, created_spec.event_types);
    assert_eq!(created.filters, created_spec.filters);
    assert_eq!(created.creator, "admin");
    assert!(created.enabled);
    assert_eq!(created.creation_time, created.update_time);

    let fetched = db
        .get_policy(Some(project.id), created.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.targets, created.targets);
    assert_eq!(fetched.creation_time, created.creation_time);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut replacement = spec("renamed");
    replacement.creator = "someone-else".into();
    replacement.enabled = false;
    replacement.event_types = vec![EventType::PullArtifact];
    let updated = db
        .update_policy(Some(project.id), created.id, &replacement)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.id, created.id);
    assert_eq!(updated.name, "renamed");
    assert!(!updated.enabled);
    assert_eq!(updated.event_types, vec![EventType::PullArtifact]);
    assert_eq!(updated.targets, replacement.targets);
    assert_eq!(updated.filters, Filters::default());
    assert_eq!(updated.creator, "admin", "the creator is kept");
    assert_eq!(updated.creation_time, created.creation_time);
    assert!(updated.update_time > created.update_time);

    assert!(db
        .delete_policy(Some(project.id), created.id)
        .await
        .unwrap());
    assert!(db
        .get_policy(Some(project.id), created.id)
        .await
        .unwrap()
        .is_none());
    assert!(!db
        .delete_policy(Some(project.id), created.id)
        .await
        .unwrap());
    assert!(db
        .update_policy(Some(project.id), created.id, &replacement)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_validation_message() {
    let store = common::store("policy invalid").await;
    let mut bad = spec("bad");
    bad.event_types.clear();
    let error = store.db.create_policy(None, &bad).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Invalid(PolicyError::EmptyEventTypes)),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "empty event type");

    let good = store.db.create_policy(None, &spec("good")).await.unwrap();
    let mut bad = spec("good");
    bad.targets[0].address = "ftp://x".into();
    let error = store
        .db
        .update_policy(None, good.id, &bad)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "invalid scheme: ftp");

    let error = store
        .db
        .create_policy(Some(424_242), &spec("orphan"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::UnknownProject(424_242)),
        "{error:?}"
    );
}

#[tokio::test]
async fn names_are_unique_per_scope() {
    let store = common::store("policy conflict").await;
    let db = &store.db;
    let a = db.ensure_project("a").await.unwrap();
    let b = db.ensure_project("b").await.unwrap();
    db.create_policy(Some(a.id), &spec("hook")).await.unwrap();
    let generation = db.generation().await.unwrap();

    let error = db
        .create_policy(Some(a.id), &spec("hook"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    assert_eq!(error.to_string(), "notification policy hook already exists");
    assert_eq!(
        db.generation().await.unwrap(),
        generation,
        "a refused write bumps nothing"
    );

    // The same name in another project, and system-wide, is fine; twice system-wide is not.
    db.create_policy(Some(b.id), &spec("hook")).await.unwrap();
    db.create_policy(None, &spec("hook")).await.unwrap();
    let error = db.create_policy(None, &spec("hook")).await.unwrap_err();
    assert_eq!(error.to_string(), "notification policy hook already exists");

    // Renaming onto a taken name conflicts too.
    let other = db.create_policy(Some(a.id), &spec("other")).await.unwrap();
    let error = db
        .update_policy(Some(a.id), other.id, &spec("hook"))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "notification policy hook already exists");
    // Keeping one's own name is not a conflict.
    db.update_policy(Some(a.id), other.id, &spec("other"))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scopes_are_isolated() {
    let store = common::store("policy scopes").await;
    let db = &store.db;
    let a = db.ensure_project("a").await.unwrap();
    let b = db.ensure_project("b").await.unwrap();
    let of_a = db.create_policy(Some(a.id), &spec("of-a")).await.unwrap();
    let system = db.create_policy(None, &spec("system")).await.unwrap();

    assert!(db.get_policy(Some(b.id), of_a.id).await.unwrap().is_none());
    assert!(db.get_policy(None, of_a.id).await.unwrap().is_none());
    assert!(db
        .get_policy(Some(a.id), system.id)
        .await
        .unwrap()
        .is_none());
    assert!(db.get_policy(None, system.id).await.unwrap().is_some());
    assert!(db
        .update_policy(Some(b.id), of_a.id, &spec("x"))
        .await
        .unwrap()
        .is_none());
    assert!(!db.delete_policy(Some(b.id), of_a.id).await.unwrap());
    assert!(!db.delete_policy(None, of_a.id).await.unwrap());
    assert!(db.get_policy(Some(a.id), of_a.id).await.unwrap().is_some());

    let all = PolicyQuery::default();
    let (listed, total) = db.list_policies(Some(a.id), &all).await.unwrap();
    assert_eq!((names(&listed), total), (vec!["of-a"], 1));
    let (listed, total) = db.list_policies(Some(b.id), &all).await.unwrap();
    assert_eq!((listed.len(), total), (0, 0));
    let (listed, total) = db.list_policies(None, &all).await.unwrap();
    assert_eq!((names(&listed), total), (vec!["system"], 1));
    assert_eq!(listed[0].project, None);
}

#[tokio::test]
async fn lists_page_filter_and_sort() {
    let store = common::store("policy lists").await;
    let db = &store.db;
    let project = db.ensure_project("library").await.unwrap();
    let scope = Some(project.id);
    // Created in this order: newest first is the reverse.
    for (name, enabled) in [
        ("alpha", true),
        ("Bravo_1", true),
        ("charlie", false),
        ("delta%", true),
        ("echo", true),
    ] {
        let mut s = spec(name);
        s.enabled = enabled;
        db.create_policy(scope, &s).await.unwrap();
    }
    let list = |query: PolicyQuery| async move { db.list_policies(scope, &query).await.unwrap() };

    let (page, total) = list(PolicyQuery {
        page: 1,
        page_size: 2,
        ..PolicyQuery::default()
    })
    .await;
    assert_eq!((names(&page), total), (vec!["echo", "delta%"], 5));
    let (page, total) = list(PolicyQuery {
        page: 3,
        page_size: 2,
        ..PolicyQuery::default()
    })
    .await;
    assert_eq!((names(&page), total), (vec!["alpha"], 5));
    let (page, total) = list(PolicyQuery {
        page: 4,
        page_size: 2,
        ..PolicyQuery::default()
    })
    .await;
    assert_eq!(
        (page.len(), total),
        (0, 5),
        "past the end: empty page, true total"
    );
    let (page, _) = list(PolicyQuery {
        page: 0,
        page_size: 2,
        ..PolicyQuery::default()
    })
    .await;
    assert_eq!(names(&page), vec!["echo", "delta%"], "page 0 reads as 1");

    let sorted = |sort| PolicyQuery {
        sort,
        ..PolicyQuery::default()
    };
    let (page, _) = list(sorted(PolicySort::CreationTimeAsc)).await;
    assert_eq!(
        names(&page),
        vec!["alpha", "Bravo_1", "charlie", "delta%", "echo"]
    );
    let (page, _) = list(sorted(PolicySort::NameAsc)).await;
    // The database's collation decides where "Bravo_1" goes; descending must be its reverse.
    let by_db = names(&page);
    let (desc, _) = list(sorted(PolicySort::NameDesc)).await;
    let mut reversed = names(&desc);
    reversed.reverse();
    assert_eq!(by_db, reversed);
    assert_eq!(by_db.len(), 5);

    let named = |name: NameMatch| PolicyQuery {
        name: Some(name),
        ..PolicyQuery::default()
    };
    let (page, total) = list(named(NameMatch::Exact("charlie".into()))).await;
    assert_eq!((names(&page), total), (vec!["charlie"], 1));
    let (page, _) = list(named(NameMatch::Exact("CHARLIE".into()))).await;
    assert!(page.is_empty(), "exact is case-sensitive");
    let (page, total) = list(named(NameMatch::Fuzzy("RAV".into()))).await;
    assert_eq!((names(&page), total), (vec!["Bravo_1"], 1));
    // `_` and `%` are literal in a fuzzy match.
    let (page, _) = list(named(NameMatch::Fuzzy("_".into()))).await;
    assert_eq!(names(&page), vec!["Bravo_1"]);
    let (page, _) = list(named(NameMatch::Fuzzy("%".into()))).await;
    assert_eq!(names(&page), vec!["delta%"]);
    let (page, total) = list(named(NameMatch::Fuzzy("a".into()))).await;
    assert_eq!(
        (names(&page), total),
        (vec!["delta%", "charlie", "Bravo_1", "alpha"], 4)
    );

    let (page, total) = list(PolicyQuery {
        enabled: Some(false),
        ..PolicyQuery::default()
    })
    .await;
    assert_eq!((names(&page), total), (vec!["charlie"], 1));
    let (page, total) = list(PolicyQuery {
        enabled: Some(true),
        name: Some(NameMatch::Fuzzy("a".into())),
        page: 1,
        page_size: 1,
        ..PolicyQuery::default()
    })
    .await;
    assert_eq!((names(&page), total), (vec!["delta%"], 3));
}

#[tokio::test]
async fn every_write_moves_the_generation() {
    let store = common::store("policy generation").await;
    let db = &store.db;
    let project = db.ensure_project("library").await.unwrap();
    let mut last = db.generation().await.unwrap();
    let mut moved = |now: i64, what: &str| {
        assert!(
            now > last,
            "{what}: generation {now} did not move past {last}"
        );
        last = now;
    };

    let policy = db
        .create_policy(Some(project.id), &spec("p"))
        .await
        .unwrap();
    moved(db.generation().await.unwrap(), "create");
    db.update_policy(Some(project.id), policy.id, &spec("p2"))
        .await
        .unwrap();
    moved(db.generation().await.unwrap(), "update");
    db.delete_policy(Some(project.id), policy.id).await.unwrap();
    moved(db.generation().await.unwrap(), "delete");
    db.set_notification_enabled(false).await.unwrap();
    moved(db.generation().await.unwrap(), "settings");

    // Reads, project creation and writes that change nothing leave it alone.
    let unchanged = db.generation().await.unwrap();
    db.list_policies(None, &PolicyQuery::default())
        .await
        .unwrap();
    db.enabled_policies().await.unwrap();
    db.ensure_project("new-project").await.unwrap();
    assert!(!db.delete_policy(None, 9_999).await.unwrap());
    assert!(db
        .update_policy(None, 9_999, &spec("x"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(db.generation().await.unwrap(), unchanged);
}

#[tokio::test]
async fn enabled_policies_cover_every_scope() {
    let store = common::store("policy enabled").await;
    let db = &store.db;
    let a = db.ensure_project("a").await.unwrap();
    let b = db.ensure_project("b").await.unwrap();
    let of_a = db.create_policy(Some(a.id), &spec("of-a")).await.unwrap();
    let mut off = spec("off");
    off.enabled = false;
    db.create_policy(Some(b.id), &off).await.unwrap();
    let of_b = db.create_policy(Some(b.id), &spec("of-b")).await.unwrap();
    let system = db.create_policy(None, &spec("system")).await.unwrap();

    let enabled = db.enabled_policies().await.unwrap();
    let summary: Vec<(i64, Option<&str>)> = enabled
        .iter()
        .map(|p| (p.id, p.project.as_ref().map(|p| p.name.as_str())))
        .collect();
    assert_eq!(
        summary,
        vec![
            (of_a.id, Some("a")),
            (of_b.id, Some("b")),
            (system.id, None)
        ]
    );
    assert!(enabled.iter().all(|p| p.enabled));
}
