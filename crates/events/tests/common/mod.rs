//! Fixture loading shared by the integration tests.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::PathBuf;

use regrelay_events::EventType;

/// A file under `tests/fixtures/`, as text.
pub fn fixture(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The Default example for a type: `harbor/<TYPE>.default.json`.
pub fn default_fixture(event_type: EventType) -> String {
    fixture(&format!("harbor/{event_type}.default.json"))
}

/// The cleaned CloudEvents example for a current type: `harbor/<TYPE>.cloudevents.json`.
pub fn cloudevents_fixture(event_type: EventType) -> String {
    fixture(&format!("harbor/{event_type}.cloudevents.json"))
}

/// Every type with a Default fixture: the ten current ones and UPLOAD_CHART.
pub fn types_with_default_fixture() -> Vec<EventType> {
    let mut types = EventType::CURRENT.to_vec();
    types.push(EventType::UploadChart);
    types
}
