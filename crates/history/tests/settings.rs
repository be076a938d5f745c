//! The global switch and the generation counter.

mod common;

#[tokio::test]
async fn notification_switch_defaults_on_and_toggles() {
    let store = common::store("settings switch").await;
    let db = &store.db;
    assert!(db.notification_enabled().await.unwrap());
    let before = db.generation().await.unwrap();
    db.set_notification_enabled(false).await.unwrap();
    assert!(!db.notification_enabled().await.unwrap());
    let after_off = db.generation().await.unwrap();
    assert!(after_off > before);
    db.set_notification_enabled(true).await.unwrap();
    assert!(db.notification_enabled().await.unwrap());
    assert!(db.generation().await.unwrap() > after_off);
}
