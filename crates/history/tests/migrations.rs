//! Migrations on the real PostgreSQL: idempotent, and safe when several processes start at once.

mod common;

use regrelay_history::Database;
use regrelay_testkit::TestDatabase;

async fn recorded(db_url: &str) -> Vec<(i32, String)> {
    let (client, connection) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT version, name FROM regrelay_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let database = TestDatabase::create("migrate twice").await;
    let db = Database::connect(&database.url, 2).unwrap();
    db.migrate().await.unwrap();
    let first = recorded(&database.url).await;
    assert_eq!(
        first,
        vec![
            (1, "policies".to_owned()),
            (2, "history".to_owned()),
            (3, "targets".to_owned())
        ]
    );
    db.migrate().await.unwrap();
    assert_eq!(recorded(&database.url).await, first);
    // The schema is usable and the singleton rows exist.
    assert_eq!(db.generation().await.unwrap(), 0);
    assert!(db.notification_enabled().await.unwrap());
    db.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_apply_once() {
    let database = TestDatabase::create("migrate concurrently").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        // Separate pools, as separate processes would have.
        let db = Database::connect(&database.url, 1).unwrap();
        tasks.push(tokio::spawn(async move { db.migrate().await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        recorded(&database.url).await,
        vec![
            (1, "policies".to_owned()),
            (2, "history".to_owned()),
            (3, "targets".to_owned())
        ]
    );
    let db = Database::connect(&database.url, 1).unwrap();
    assert_eq!(db.generation().await.unwrap(), 0);
}

#[tokio::test]
async fn an_unreachable_database_is_a_pool_error() {
    let url = format!(
        "postgres://postgres:sekret@127.0.0.1:{}/none",
        regrelay_testkit::unused_port()
    );
    let db = Database::connect(&url, 1).unwrap();
    let error = db.check().await.unwrap_err();
    assert!(
        matches!(error, regrelay_history::StoreError::Pool(_)),
        "{error:?}"
    );
    assert!(error.is_unavailable());
    assert!(!format!("{error} {error:?}").contains("sekret"));
    assert!(db.migrate().await.is_err());
}
