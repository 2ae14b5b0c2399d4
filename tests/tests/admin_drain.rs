//! Draining a node (`POST /api/v1/drain`) with real brokers and real clients: MQTT 5 clients
//! read DISCONNECT 0x9C with the Server Reference and can connect there, 3.1.1 clients are
//! closed, new connections are refused, every send acknowledged before the close is stored, and
//! the process exits by itself (or stays up drained when told to).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::admin::Api;
use common::raw::{ConnectOpts, Raw};
use common::{full_stream, token, Broker, Device, Proto, WAIT};
use serde_json::{json, Value};

fn v5_opts<'a>(id: &'a str, user: &'a str, t: &'a str) -> ConnectOpts<'a> {
    ConnectOpts {
        level: 5,
        client_id: id,
        clean: true,
        keep_alive: 30,
        creds: Some((user, t)),
        ..ConnectOpts::default()
    }
}

/// The Server Reference property (0x1C) of a 5.0 DISCONNECT body, if any.
fn server_reference(body: &[u8]) -> Option<String> {
    // reason code, property length (one byte here), then properties.
    let props = body.get(2..)?;
    let i = props.iter().position(|b| *b == 0x1c)?;
    let len = usize::from(u16::from_be_bytes([props[i + 1], props[i + 2]]));
    Some(String::from_utf8_lossy(&props[i + 3..i + 3 + len]).into_owned())
}

#[tokio::test]
async fn drain_redirects_mqtt5_clients_closes_the_others_and_loses_nothing_acknowledged() {
    let mut a = Broker::start();
    let other = Broker::start();
    let api = Api::new(&a).await;
    let t = token("erin", 3600);
    let (mut erin, ack) = Raw::connect(&a, &v5_opts("tablet", "erin", &t)).await;
    assert_eq!(ack[1], 0);
    let mut alice = Device::connect(&a, "alice", "phone").await;
    let _bob = Device::connect_with(&a, "bob", "laptop", Proto::V5).await;

    // Sends in flight while the drain starts: the first is answered, so the rest are on their
    // way or being handled.
    let mut acked = HashSet::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            alice
                .request(
                    json!({"send": {"to": "u:bob", "clientMsgId": format!("m{i}"), "text": "x"}}),
                )
                .await,
        );
    }
    let first = alice.reply(&ids[0]).await;
    acked.insert(first["sent"]["msgId"].as_str().unwrap().to_string());
    let redirect = format!("127.0.0.1:{}", other.mqtt_port);
    let (s, v) = api
        .post("/api/v1/drain", json!({"redirect": redirect, "rate": 50}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["connections"], 3);
    let (s, v) = api.with_token(None).get("/api/v1/readyz").await;
    assert_eq!((s, v["status"].as_str()), (503, Some("draining")));
    let (s, v) = api.post("/api/v1/drain", json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("CONFLICT")));
    assert!(
        Device::connect_raw(&a, "carol", "phone", &token("carol", 60), Proto::V4)
            .await
            .is_err(),
        "a draining node accepted a new connection"
    );

    // The 5.0 client is sent to the other node, and gets in there.
    let got = erin.until_closed().await;
    let (kind, body) = got.last().expect("a DISCONNECT before the close");
    assert_eq!(
        (*kind, body[0]),
        (0xe0, 0x9c),
        "use another server: {got:02x?}"
    );
    assert_eq!(server_reference(body).as_deref(), Some(redirect.as_str()));
    let (_there, ack) = Raw::connect(&other, &v5_opts("tablet", "erin", &t)).await;
    assert_eq!(ack[1], 0);

    // The 3.1.1 client is closed after its sends in progress were answered.
    while let Some(r) = alice.try_recv(WAIT).await {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        if let Some(id) = v["reply"]["sent"]["msgId"].as_str() {
            acked.insert(id.to_string());
        }
    }

    // Nobody left: the process exits by itself, cleanly.
    assert_eq!(a.wait_exit(Duration::from_secs(20)), Some(true));

    // Every acknowledged message is stored.
    a.restart();
    let mut bob = Device::connect(&a, "bob", "laptop").await;
    let stored: HashSet<String> = full_stream(&mut bob)
        .await
        .iter()
        .filter_map(|e| e["message"]["msgId"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
}

#[tokio::test]
async fn a_drain_without_redirect_says_shutting_down_and_can_leave_the_node_up() {
    let mut a = Broker::start_with(&[("MQIM_EXIT_AFTER_DRAIN", "false")]);
    let api = Api::new(&a).await;
    let t = token("erin", 3600);
    let (mut erin, _) = Raw::connect(&a, &v5_opts("tablet", "erin", &t)).await;
    for bad in [
        json!({"redirect": "nope"}),
        json!({"rate": 0}),
        json!({"rat": 1}),
    ] {
        let (s, v) = api.post("/api/v1/drain", bad.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{bad}"
        );
    }
    let (s, v) = api.post_raw("/api/v1/drain", "").await;
    assert_eq!(
        (s, v["exit_when_done"].as_bool()),
        (202, Some(false)),
        "{v}"
    );
    let got = erin.until_closed().await;
    assert_eq!(
        got.last(),
        Some(&(0xe0, vec![0x8b])),
        "server shutting down: {got:02x?}"
    );
    // Still up, drained: the API answers, readyz says why it is not ready.
    assert_eq!(a.wait_exit(Duration::from_secs(2)), None);
    let (s, v) = api.get("/api/v1/stats").await;
    assert_eq!((s, v["draining"].as_bool()), (200, Some(true)));
    assert_eq!(v["connections_total"], 0);
    assert_eq!(api.with_token(None).get("/api/v1/readyz").await.0, 503);
}
