//! `regrelay_queue_messages` against the real RabbitMQ: the gauge reports what the queue holds.

mod common;

use std::time::Duration;

use common::{Env, Options};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;

#[tokio::test]
async fn queue_depth_gauges_report_ready_messages_and_survive_a_stopped_consumer() {
    let mut env = Env::start("queue_depth", Options::default()).await;
    let channel = env.broker.channel();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let dead_letter = env.broker.topology.dead_letter_queue();
    for n in 0..5 {
        channel
            .basic_publish(
                "".into(),
                dead_letter.as_str().into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{n}}}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let series = r#"regrelay_queue_messages{queue="dead_letter",state="ready"}"#;
    assert_eq!(
        env.metric_when(series, 5.0, Duration::from_secs(10)).await,
        5.0
    );
    // Nothing waits on the work queues, and the consumer's stages hold one consumer each.
    assert_eq!(
        env.metric(r#"regrelay_queue_messages{queue="events",state="ready"}"#),
        0.0
    );
    assert_eq!(
        env.metric_when(
            r#"regrelay_queue_consumers{queue="deliveries"}"#,
            1.0,
            Duration::from_secs(10)
        )
        .await,
        1.0
    );
    // Retry buckets are declared on first use and only those this process declared are read: a
    // bucket nobody used exports no series.
    assert!(!env.metric_text().contains(r#"queue="retry_100ms""#));
    // Stopping the consumer stops the loop without a panic; the gauges keep their last value.
    env.stop().await;
    assert_eq!(env.metric(series), 5.0);
}
