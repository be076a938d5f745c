//! Projects: named by the events' namespace, with a stable id, race-safe to create.

mod common;

use regrelay_history::StoreError;

#[tokio::test]
async fn ensure_project_is_stable() {
    let store = common::store("projects stable").await;
    let db = &store.db;
    let library = db.ensure_project("library").await.unwrap();
    assert_eq!(library.name, "library");
    assert_eq!(db.ensure_project("library").await.unwrap(), library);
    let other = db.ensure_project("other").await.unwrap();
    assert_ne!(other.id, library.id);
    assert_eq!(
        db.find_project_by_id(library.id).await.unwrap(),
        Some(library.clone())
    );
    assert_eq!(
        db.find_project_by_name("library").await.unwrap(),
        Some(library)
    );
    assert_eq!(db.find_project_by_name("missing").await.unwrap(), None);
    assert_eq!(db.find_project_by_id(999_999).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ensure_yields_one_project() {
    let store = common::store("projects race").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let db = store.db.clone();
        tasks.push(tokio::spawn(async move { db.ensure_project("racy").await }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn project_names_are_checked() {
    let store = common::store("projects names").await;
    for bad in ["", "a\nb"] {
        let error = store.db.ensure_project(bad).await.unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidProjectName { .. }),
            "{error:?}"
        );
    }
    let long = "x".repeat(256);
    assert!(store.db.ensure_project(&long).await.is_err());
}
