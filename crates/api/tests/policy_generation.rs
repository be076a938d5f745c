//! The policy generation ingest stamps: never older than a write answered before the request,
//! and shared between concurrent requests instead of one read each.

use std::sync::Arc;

use prometheus::{Encoder, Registry, TextEncoder};
use regrelay_api::policy_generation::PolicyGenerationStamp;
use regrelay_history::Database;
use regrelay_testkit::TestDatabase;

fn series(registry: &Registry, name: &str) -> f64 {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .unwrap();
    String::from_utf8(buffer)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_stamp_is_never_older_than_a_write_answered_before_and_reads_are_shared() {
    let database = TestDatabase::create("generation-stamp").await;
    let db = Database::connect(&database.url, 8).unwrap();
    db.migrate().await.unwrap();
    let registry = Registry::new();
    let stamp = Arc::new(PolicyGenerationStamp::new(db.clone(), &registry).unwrap());

    for round in 0..20 {
        // A write, answered: every request after it must see at least its generation.
        db.set_notification_enabled(round % 2 == 0).await.unwrap();
        let written = db.generation().await.unwrap();
        let requests: Vec<_> = (0..25)
            .map(|_| {
                let stamp = stamp.clone();
                tokio::spawn(async move { stamp.current().await })
            })
            .collect();
        for request in requests {
            let stamped = request.await.unwrap().expect("the store is readable");
            assert!(
                stamped >= written,
                "round {round}: stamped {stamped} < written {written}"
            );
        }
    }
    let read = series(
        &registry,
        "regrelay_policy_generation_reads_total{result=\"ok\"}",
    );
    let shared = series(
        &registry,
        "regrelay_policy_generation_reads_total{result=\"shared\"}",
    );
    assert_eq!(read + shared, 500.0);
    assert!(
        shared > 0.0,
        "concurrent requests share reads ({read} read, {shared} shared)"
    );
}
