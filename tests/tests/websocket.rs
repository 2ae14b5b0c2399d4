//! MQTT over WebSocket (`/mqtt`): browsers' path into the same IM service as TCP clients.

mod common;

use std::time::Duration;

use common::{seq, token, Broker, Device, Proto, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test]
async fn two_websocket_devices_exchange_messages() {
    let b = Broker::start();
    let mut alice = Device::connect_with(&b, "alice", "alice-browser", Proto::Ws).await;
    let mut bob = Device::connect_with(&b, "bob", "bob-browser", Proto::Ws).await;

    let sent = alice.send("bob", "w1", "hello over websocket").await;
    assert_eq!(seq(&sent), 1);
    let ev = bob.event().await;
    assert_eq!(ev["message"]["msgId"], sent["msgId"]);
    assert_eq!(ev["message"]["from"], "alice");
    assert_eq!(ev["message"]["text"], "hello over websocket");

    // A large message spans many WebSocket reads and must arrive intact.
    let big: String = (0..60_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let answer = bob.send("alice", "w2", &big).await;
    let ev = alice.event().await;
    assert_eq!(ev["message"]["msgId"], answer["msgId"]);
    assert_eq!(ev["message"]["conversation"], "u:bob");
    assert_eq!(
        ev["message"]["text"].as_str().map(str::len),
        Some(big.len())
    );
    assert_eq!(ev["message"]["text"], big.as_str());

    // Requests other than send work over WebSocket too.
    let (events, more) = bob.sync(0, 10).await;
    assert!(!more);
    assert_eq!(events.iter().map(seq).collect::<Vec<_>>(), vec![1, 2]);
}

#[tokio::test]
async fn websocket_and_tcp_v5_devices_talk_to_each_other() {
    let b = Broker::start();
    let mut alice = Device::connect_with(&b, "alice", "alice-browser", Proto::Ws).await;
    let mut bob = Device::connect_with(&b, "bob", "bob-desktop", Proto::V5).await;

    let sent = alice.send("bob", "m1", "from the browser").await;
    let ev = bob.event().await;
    assert_eq!(ev["message"]["msgId"], sent["msgId"]);
    assert_eq!(ev["message"]["text"], "from the browser");

    let back = bob.send("alice", "m2", "from the desktop").await;
    let ev = alice.event().await;
    assert_eq!(ev["message"]["msgId"], back["msgId"]);
    assert_eq!(ev["message"]["from"], "bob");
    assert_eq!(
        seq(&ev),
        2,
        "alice's stream: her own message, then bob's answer"
    );
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.expect_silence(Duration::from_millis(300)).await;
}

/// Sends a WebSocket upgrade request for `path` and returns the response head.
async fn upgrade(b: &Broker, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", b.ws_port)).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        b.ws_port
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no HTTP response")
            .unwrap();
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An MQTT connect over WebSocket to `path` with valid credentials.
async fn mqtt_over_ws(b: &Broker, path: &str) -> Result<(), String> {
    let url = format!("ws://127.0.0.1:{}{path}", b.ws_port);
    let mut o = rumqttc::MqttOptions::new("ws-probe", url, b.ws_port);
    o.set_transport(rumqttc::Transport::Ws);
    o.set_credentials("alice", token("alice", 600));
    let (_client, mut el) = rumqttc::AsyncClient::new(o, 10);
    match timeout(WAIT, el.poll()).await {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
            if a.code == rumqttc::ConnectReturnCode::Success {
                Ok(())
            } else {
                Err(format!("refused: {a:?}"))
            }
        }
        Ok(Ok(other)) => Err(format!("unexpected first event {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test]
async fn websocket_connect_to_a_path_other_than_mqtt_fails() {
    let b = Broker::start();
    // The right path works, and agrees on the `mqtt` subprotocol browsers ask for.
    let ok = upgrade(&b, "/mqtt").await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{ok}"
    );
    mqtt_over_ws(&b, "/mqtt").await.expect("MQTT over /mqtt");

    for path in ["/", "/other", "/mqtt/x", "/MQTT"] {
        let head = upgrade(&b, path).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
        let r = mqtt_over_ws(&b, path).await;
        assert!(r.is_err(), "MQTT over {path} was accepted");
    }
}
