//! Unread counts, conversations, read receipts and history through the real broker, on both
//! store shapes: the embedded default and the Redis index over the embedded log (a real
//! `redis-server` per test, on a free port).

mod common;

use std::time::Duration;

use common::{seq, unread, Broker, Device, RedisBroker};
use serde_json::{json, Value};

async fn unread_goes_0_3_0_across_two_devices_and_the_peer_gets_a_receipt(b: Broker) {
    let mut phone = Device::connect(&b, "bob", "phone").await;
    let mut laptop = Device::connect(&b, "bob", "laptop").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    assert_eq!(unread(&mut phone, "u:alice").await, 0);

    let mut last = Value::Null;
    for i in 0..3 {
        last = alice.send("bob", &format!("c{i}"), &format!("m{i}")).await;
        phone.event().await;
        laptop.event().await;
    }
    assert_eq!(unread(&mut phone, "u:alice").await, 3);
    assert_eq!(unread(&mut laptop, "u:alice").await, 3);
    assert_eq!(
        unread(&mut alice, "u:bob").await,
        0,
        "own messages are never unread"
    );

    // The phone reads everything up to the last message.
    let r = phone
        .call(json!({"read": {"conversation": "u:alice", "msgId": last["msgId"]}}))
        .await;
    assert!(r["read"].is_object(), "{r}");
    assert_eq!(
        r["read"].get("unread"),
        None,
        "0 is omitted in proto3 JSON: {r}"
    );
    assert_eq!(r["read"]["conversation"], "u:alice");

    // Both of bob's devices get the read event in bob's stream, so their counts converge.
    for d in [&mut phone, &mut laptop] {
        let ev = d.event().await;
        assert_eq!(seq(&ev), 4, "the read is bob's 4th event");
        assert_eq!(ev["read"]["conversation"], "u:alice");
        assert_eq!(ev["read"]["by"], "bob");
        assert_eq!(ev["read"]["msgId"], last["msgId"]);
    }
    assert_eq!(unread(&mut laptop, "u:alice").await, 0);

    // Alice gets the receipt in her stream.
    let receipt = alice.event().await;
    assert_eq!(
        seq(&receipt),
        4,
        "alice's 3 sent messages, then the receipt"
    );
    assert_eq!(receipt["read"]["conversation"], "u:bob");
    assert_eq!(receipt["read"]["by"], "bob");

    // Reading again changes nothing and sends nothing.
    let r = laptop
        .call(json!({"read": {"conversation": "u:alice", "msgId": last["msgId"]}}))
        .await;
    assert!(
        r["read"].is_object() && r["read"].get("unread").is_none(),
        "{r}"
    );
    alice.expect_silence(Duration::from_millis(400)).await;

    // A reconnect does not bring unread back.
    phone.disconnect().await;
    let mut phone = Device::connect(&b, "bob", "phone").await;
    assert_eq!(unread(&mut phone, "u:alice").await, 0);
    assert_eq!(unread(&mut alice, "u:bob").await, 0);
}

async fn conversations_list_newest_activity_first_with_the_last_message(b: Broker) {
    let mut bob = Device::connect(&b, "bob", "bp").await;
    for peer in ["alice", "carol", "dave"] {
        let mut d = Device::connect(&b, peer, "d").await;
        d.send("bob", "1", &format!("hi from {peer}")).await;
        bob.event().await;
    }
    let r = bob.call(json!({"conversations": {"limit": 2}})).await;
    let c = &r["conversations"];
    let ids: Vec<&str> = c["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u:dave", "u:carol"]);
    assert_eq!(c["hasMore"], true);
    let first = &c["conversations"][0];
    assert_eq!(first["unread"], "1");
    assert_eq!(first["last"]["text"], "hi from dave");
    assert_eq!(first["last"]["conversation"], "u:dave");
    let r = bob.call(json!({"conversations": {"limit": 0}})).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT");
}

async fn history_pages_backwards_without_gaps_or_repeats(b: Broker) {
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut sent = Vec::new();
    for i in 0..45 {
        let s = if i % 4 == 0 {
            bob.send("alice", &format!("b{i}"), &format!("{i}")).await
        } else {
            alice.send("bob", &format!("a{i}"), &format!("{i}")).await
        };
        sent.push(s["msgId"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut q = json!({"conversation": "u:bob", "limit": 20});
        if let Some(b) = &before {
            q["beforeMsgId"] = json!(b);
        }
        let r = alice.call(json!({"history": q})).await;
        let h = &r["history"];
        let msgs = h["messages"].as_array().cloned().unwrap_or_default();
        for m in &msgs {
            assert_eq!(m["conversation"], "u:bob");
            seen.push(m["msgId"].as_str().unwrap().to_string());
        }
        before = msgs
            .last()
            .map(|m| m["msgId"].as_str().unwrap().to_string());
        if h["hasMore"] != true {
            break;
        }
    }
    sent.reverse();
    assert_eq!(seen, sent, "every message once, newest first");
    let r = alice
        .call(json!({"history": {"conversation": "bob"}}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT");
}

/// Each scenario once per store shape.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Broker::start()).await;
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                let rb = super::RedisBroker::start();
                super::$name(rb.broker).await;
            })*
        }
    };
}

on_both_stores!(
    unread_goes_0_3_0_across_two_devices_and_the_peer_gets_a_receipt,
    conversations_list_newest_activity_first_with_the_last_message,
    history_pages_backwards_without_gaps_or_repeats,
);
