//! `amqps://` against the real broker through a TLS-terminating proxy (certificates made in the
//! test): the right CA connects, publishes and consumes; a wrong CA, a host name the certificate
//! does not carry and plaintext are all refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use regrelay_events::RegistryEvent;
use regrelay_producer::{
    Broker, BrokerSettings, BrokerTls, EventMessage, EventPublisher, EventSource, ProducerMetrics,
};
use regrelay_testkit::{TestBroker, TestCa, TlsProxy};

/// The error and its causes, lowercased.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.to_lowercase()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn amqps_verifies_the_broker_certificate_and_its_host_name() {
    let broker = TestBroker::new("broker-tls").await;
    broker.declare().await;
    let ca = TestCa::new("regrelay test CA");
    let wrong_ca = TestCa::new("some other CA");
    let proxy = TlsProxy::start("127.0.0.1:5672".parse().unwrap(), &ca.issue(&["localhost"])).await;
    let dir = std::env::temp_dir().join(format!("regrelay-tls-{}", broker.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
    let wrong_ca_file = write(&dir, "wrong-ca.pem", &wrong_ca.cert_pem);
    let port = proxy.addr().port();
    let registry = prometheus::Registry::new();
    let metrics = ProducerMetrics::register(&registry).unwrap();
    let connect = |url: String, ca_file: Option<&PathBuf>| {
        Arc::new(Broker::new(
            BrokerSettings {
                url,
                connection_name: "regrelay-test-tls".into(),
                role: "publish",
                publish_channels: 1,
                connect_timeout: Duration::from_secs(5),
                reconnect_min_delay: Duration::from_millis(10),
                reconnect_max_delay: Duration::from_millis(50),
                tls: BrokerTls {
                    ca_file: ca_file.cloned(),
                    ..BrokerTls::default()
                },
            },
            broker.topology.clone(),
            metrics.clone(),
        ))
    };

    // The right CA and the certificate's name: publish and consume over TLS.
    let good = connect(
        format!("amqps://guest:guest@localhost:{port}/%2f"),
        Some(&ca_file),
    );
    good.check()
        .await
        .expect("amqps with the right CA connects");
    let event = RegistryEvent::from_json(
        r#"{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"t","event_data":{"resources":[{"digest":"sha256:1","tag":"v1","resource_url":"r/lib/app:v1"}],"repository":{"name":"app","namespace":"lib","repo_full_name":"lib/app","repo_type":"private"}}}"#,
    )
    .unwrap();
    let message = EventMessage::new(event, EventSource::Harbor, "tls-request");
    EventPublisher::new(good.clone(), Duration::from_secs(5))
        .publish(std::slice::from_ref(&message))
        .await
        .expect("published over TLS");
    let channel = good.open_channel().await.unwrap();
    let mut got = None;
    for _ in 0..50 {
        got = channel
            .basic_get(
                broker.topology.events_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = got.expect("consumed over TLS");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        message.id.to_string()
    );
    let sessions = proxy.sessions();
    assert!(sessions >= 1);
    good.close().await;

    // A CA that did not sign the broker's certificate.
    let error = connect(
        format!("amqps://guest:guest@localhost:{port}/%2f"),
        Some(&wrong_ca_file),
    )
    .check()
    .await
    .expect_err("a wrong CA is refused");
    assert!(chain(&error).contains("certificate"), "{}", chain(&error));

    // The right CA, but a name the certificate does not carry.
    let error = connect(
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f"),
        Some(&ca_file),
    )
    .check()
    .await
    .expect_err("the host name is verified");
    assert!(chain(&error).contains("certificate"), "{}", chain(&error));

    // Plaintext AMQP to the TLS port gets nowhere.
    connect(format!("amqp://guest:guest@localhost:{port}/%2f"), None)
        .check()
        .await
        .expect_err("plaintext is refused");
    assert_eq!(
        proxy.sessions(),
        sessions,
        "no refused client got a session"
    );
    assert!(proxy.refused() >= 3, "refused {}", proxy.refused());
    let _ = std::fs::remove_dir_all(&dir);
}
