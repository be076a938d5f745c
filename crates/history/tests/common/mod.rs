//! Shared setup: a fresh, migrated database per test on the real PostgreSQL.

#![allow(dead_code)]

use std::collections::BTreeMap;

use regrelay_events::EventType;
use regrelay_history::policy::{Filters, PayloadFormat, PolicySpec, Target, TargetKind};
use regrelay_history::Database;
use regrelay_testkit::TestDatabase;

/// A migrated database; `_database` is dropped (and the database with it) when the test ends.
pub struct Store {
    pub db: Database,
    pub database: TestDatabase,
}

pub async fn store(name: &str) -> Store {
    let database = TestDatabase::create(name).await;
    let db = Database::connect(&database.url, 4).unwrap();
    db.migrate().await.unwrap();
    Store { db, database }
}

pub fn http_target(address: &str) -> Target {
    Target {
        kind: TargetKind::Http,
        address: address.to_owned(),
        auth_header: None,
        skip_cert_verify: false,
        payload_format: PayloadFormat::Default,
        secret: None,
        headers: BTreeMap::new(),
        options: Default::default(),
    }
}

pub fn spec(name: &str) -> PolicySpec {
    PolicySpec {
        name: name.to_owned(),
        description: format!("{name} description"),
        targets: vec![http_target("https://example.com/hook")],
        event_types: vec![EventType::PushArtifact],
        filters: Filters::default(),
        creator: "admin".to_owned(),
        enabled: true,
    }
}
