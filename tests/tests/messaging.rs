//! One-to-one messaging through the real broker: msgids, per-user seqs, live delivery,
//! multi-device sync, resend dedup and error replies.

mod common;

use std::time::Duration;

use common::{seq, Broker, Device, Proto};
use serde_json::json;

#[tokio::test]
async fn send_gets_sent_reply_and_receiver_gets_event_with_seq() {
    let b = Broker::start();
    let mut bob = Device::connect(&b, "bob", "bob-phone").await;
    let mut alice = Device::connect(&b, "alice", "alice-phone").await;
    let sent = alice.send("bob", "c1", "hello bob").await;
    assert_eq!(sent["conversation"], "u:bob");
    assert_eq!(seq(&sent), 1);
    let msg_id: u64 = sent["msgId"].as_str().unwrap().parse().unwrap();
    assert!(msg_id > 0);

    let ev = bob.event().await;
    assert_eq!(seq(&ev), 1);
    let m = &ev["message"];
    assert_eq!(m["from"], "alice");
    assert_eq!(m["conversation"], "u:alice");
    assert_eq!(m["text"], "hello bob");
    assert_eq!(m["clientMsgId"], "c1");
    assert_eq!(m["msgId"], sent["msgId"]);
    assert_eq!(m["ts"], sent["ts"]);
}

#[tokio::test]
async fn msgids_increase_and_seqs_are_contiguous_per_user() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "a1").await;
    let mut carol = Device::connect(&b, "carol", "c1").await;
    let mut last_id = 0u64;
    for i in 0..10 {
        let s = alice.send("bob", &format!("m{i}"), "x").await;
        assert_eq!(seq(&s), i + 1);
        let id: u64 = s["msgId"].as_str().unwrap().parse().unwrap();
        assert!(id > last_id);
        last_id = id;
    }
    // Carol's message to bob is bob's 11th event but carol's first.
    assert_eq!(seq(&carol.send("bob", "x", "hi").await), 1);
    let mut bob = Device::connect(&b, "bob", "b1").await;
    let (events, more) = bob.sync(0, 100).await;
    assert!(!more);
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    assert_eq!(events[10]["message"]["from"], "carol");
}

#[tokio::test]
async fn every_device_of_both_users_gets_the_message_except_the_sending_one() {
    let b = Broker::start();
    let mut alice_phone = Device::connect(&b, "alice", "phone").await;
    let mut alice_laptop = Device::connect(&b, "alice", "laptop").await;
    let mut bob_phone = Device::connect(&b, "bob", "phone").await;
    let mut bob_tablet = Device::connect_with(&b, "bob", "tablet", Proto::V5).await;

    let sent = alice_phone.send("bob", "c1", "to all of bob").await;
    for bob in [&mut bob_phone, &mut bob_tablet] {
        let ev = bob.event().await;
        assert_eq!(ev["message"]["msgId"], sent["msgId"]);
        assert_eq!(ev["message"]["conversation"], "u:alice");
    }
    // Alice's other device gets her copy, in her own stream.
    let copy = alice_laptop.event().await;
    assert_eq!(seq(&copy), seq(&sent));
    assert_eq!(copy["message"]["conversation"], "u:bob");
    assert_eq!(copy["message"]["msgId"], sent["msgId"]);
    // The sending device has the reply and gets no echo.
    alice_phone.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn resend_with_same_client_msg_id_is_not_delivered_twice() {
    let b = Broker::start();
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let first = alice.send("bob", "same-id", "once").await;
    let again = alice.send("bob", "same-id", "once").await;
    assert_eq!(first, again, "a resend returns the original result");
    assert_eq!(seq(&bob.event().await), 1);
    bob.expect_silence(Duration::from_millis(500)).await;
    // Also after reconnecting.
    alice.disconnect().await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    assert_eq!(alice.send("bob", "same-id", "once").await, first);
    let (events, _) = bob.sync(0, 10).await;
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn offline_receiver_gets_everything_with_sync_and_gaps_are_exact() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    for i in 0..25 {
        alice.send("dave", &format!("c{i}"), &format!("m{i}")).await;
    }
    // Dave never connected before: his stream waited for him.
    let mut dave = Device::connect(&b, "dave", "dp").await;
    let (page1, more) = dave.sync(0, 10).await;
    assert!(more);
    assert_eq!(
        page1.iter().map(seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    // A device that holds 1..=10 and saw 14 asks for what is after its last contiguous seq.
    let (gap, _) = dave.sync(10, 3).await;
    assert_eq!(gap.iter().map(seq).collect::<Vec<_>>(), vec![11, 12, 13]);
    assert_eq!(gap[0]["message"]["text"], "m10");
    let (rest, more) = dave.sync(13, 100).await;
    assert!(!more);
    assert_eq!(rest.len(), 12);
    let (none, more) = dave.sync(25, 100).await;
    assert!(none.is_empty() && !more);
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_errors_and_the_connection_survives() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let up = "im/alice/ap/up/json";
    let error_code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or("").to_string();

    alice.publish_raw(up, "{not json").await;
    let r = alice.recv().await;
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(error_code(&v["reply"]), "BAD_REQUEST");

    let r = alice.call(json!({"frobnicate": {}})).await;
    assert_eq!(error_code(&r), "UNKNOWN_OP");
    let r = alice
        .call(json!({"send": {"to": "u:bob", "text": "no client id"}}))
        .await;
    assert_eq!(error_code(&r), "INVALID_ARGUMENT");
    let r = alice
        .call(json!({"send": {"to": 42, "clientMsgId": "x"}}))
        .await;
    assert_eq!(error_code(&r), "INVALID_ARGUMENT");
    let r = alice
        .call(json!({"send": {"to": "bob", "clientMsgId": "x", "text": "t"}}))
        .await;
    assert_eq!(error_code(&r), "INVALID_ARGUMENT");
    let big = "x".repeat(65 * 1024);
    let r = alice
        .call(json!({"send": {"to": "u:bob", "clientMsgId": "big", "text": big}}))
        .await;
    assert_eq!(error_code(&r), "TOO_LARGE");
    let r = alice
        .call(json!({"sync": {"afterSeq": "0", "limit": 5000}}))
        .await;
    assert_eq!(error_code(&r), "INVALID_ARGUMENT");

    // Nothing was stored, nothing reached bob, and both connections still work.
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(seq(&alice.send("bob", "ok", "still here").await), 1);
    assert_eq!(seq(&bob.event().await), 1);
}

#[tokio::test]
async fn protobuf_downlink_and_uplink_carry_the_same_messages() {
    use mqim_schemas::v1::{downlink, event, request, Downlink, Request, SendRequest};
    use prost::Message as _;
    let b = Broker::start();
    let mut bob = Device::connect(&b, "bob", "bp").await;
    bob.subscribe("im/bob/bp/down/pb").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.subscribe("im/alice/ap/down/pb").await;
    let req = Request {
        id: "pb1".into(),
        op: Some(request::Op::Send(SendRequest {
            to: "u:bob".into(),
            client_msg_id: "pb-c1".into(),
            text: Some("over protobuf".into()),
            body: Some(bytes::Bytes::from_static(&[0, 159, 146, 150])),
            r#type: None,
            ..SendRequest::default()
        })),
    };
    alice
        .publish_raw("im/alice/ap/up/pb", req.encode_to_vec())
        .await;
    // Bob is subscribed to both formats: one JSON event and one protobuf event.
    let mut got_pb = None;
    let mut got_json = None;
    while got_pb.is_none() || got_json.is_none() {
        let r = bob.recv().await;
        if r.topic.ends_with("/pb") {
            got_pb = Some(Downlink::decode(r.payload).unwrap());
        } else {
            got_json = Some(serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap());
        }
    }
    let Some(downlink::Kind::Event(ev)) = got_pb.unwrap().kind else {
        panic!("not an event")
    };
    let Some(event::Body::Message(m)) = ev.body else {
        panic!("not a message")
    };
    assert_eq!(m.text.as_deref(), Some("over protobuf"));
    assert_eq!(m.body.as_deref(), Some(&[0u8, 159, 146, 150][..]));
    let j = got_json.unwrap();
    assert_eq!(j["event"]["message"]["msgId"], m.msg_id.to_string());
    assert_eq!(j["event"]["message"]["body"], "AJ+Slg==");
}

#[tokio::test]
async fn a_packet_over_the_maximum_size_closes_only_that_connection() {
    let b = Broker::start_with(&[("MQIM_MAX_PACKET_SIZE", "131072")]);
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut mallory = Device::connect(&b, "mallory", "mp").await;
    mallory
        .publish_raw("im/mallory/mp/up/json", vec![b'x'; 200 * 1024])
        .await;
    assert!(mallory.closed_by_server(Duration::from_secs(5)).await);
    // Everyone else carries on.
    alice.send("bob", "after", "still fine").await;
    assert_eq!(bob.event().await["message"]["text"], "still fine");
}

#[tokio::test]
async fn live_events_arrive_in_seq_order_while_many_senders_pipeline() {
    let b = Broker::start();
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut senders = Vec::new();
    for s in 0..4 {
        senders.push(Device::connect(&b, &format!("s{s}"), "d").await);
    }
    // Every sender fires 100 requests without waiting for replies, all at once.
    for i in 0..100 {
        for (s, d) in senders.iter_mut().enumerate() {
            d.request(
                json!({"send": {"to": "u:bob", "clientMsgId": format!("{s}-{i}"), "text": "x"}}),
            )
            .await;
        }
    }
    let mut last_per_sender = [None::<u64>; 4];
    for expected in 1..=400u64 {
        let ev = bob.event().await;
        assert_eq!(seq(&ev), expected, "events out of seq order");
        let cmid = ev["message"]["clientMsgId"].as_str().unwrap().to_string();
        let (s, i) = cmid.split_once('-').unwrap();
        let (s, i): (usize, u64) = (s.parse().unwrap(), i.parse().unwrap());
        assert!(
            last_per_sender[s].is_none_or(|last| i > last),
            "sender {s} reordered"
        );
        last_per_sender[s] = Some(i);
    }
}
