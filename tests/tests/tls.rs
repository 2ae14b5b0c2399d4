//! MQTT over TLS, configured from the environment with a certificate the test generates.

mod common;

use std::time::Duration;

use common::{token, Broker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

#[tokio::test]
async fn im_messages_flow_over_tls_with_a_configured_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let b = Broker::start_with(&[
        ("MQIM_TLS_LISTEN", "127.0.0.1:0"),
        ("MQIM_TLS_CERT_FILE", cert_path.to_str().unwrap()),
        ("MQIM_TLS_KEY_FILE", key_path.to_str().unwrap()),
    ]);
    let port = b.tls_port.expect("the broker reports its TLS port");

    let connect = |user: &str, id: &str| {
        let mut o = MqttOptions::new(id, "localhost", port);
        o.set_credentials(user, token(user, 600));
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: cert.cert.pem().into_bytes(),
            alpn: None,
            client_auth: None,
        }));
        AsyncClient::new(o, 100)
    };
    let (bob, mut bob_loop) = connect("bob", "bob-tls");
    bob.subscribe("im/bob/bob-tls/down/json", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (alice, mut alice_loop) = connect("alice", "alice-tls");
    // Wait for bob's SUBACK before sending.
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), bob_loop.poll())
            .await
            .expect("bob connects over TLS")
            .expect("TLS connection works");
        if matches!(ev, Event::Incoming(Packet::SubAck(_))) {
            break;
        }
    }
    alice
        .publish(
            "im/alice/alice-tls/up/json",
            QoS::AtLeastOnce,
            false,
            r#"{"id":"1","send":{"to":"u:bob","clientMsgId":"t1","text":"encrypted"}}"#,
        )
        .await
        .unwrap();
    tokio::spawn(async move { while alice_loop.poll().await.is_ok() {} });
    let got = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), bob_loop.poll())
            .await
            .expect("event arrives")
            .unwrap();
        if let Event::Incoming(Packet::Publish(p)) = ev {
            break p;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(v["event"]["message"]["text"], "encrypted");
}
