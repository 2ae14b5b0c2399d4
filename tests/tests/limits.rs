//! Abuse limits: per-user send rate (shared by the other requests that change something: group
//! changes, recall, edit, block, settings) and per-address connection rate.

mod common;

use std::time::Duration;

use common::{token, Broker, Device, Proto};
use serde_json::json;

/// Sends `n` requests at once and returns how many were answered and how many rate limited
/// (any other error fails the test).
async fn burst(
    d: &mut Device,
    n: usize,
    request: impl Fn(usize) -> serde_json::Value,
) -> (usize, usize) {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(d.request(request(i)).await);
    }
    let (mut answered, mut limited) = (0, 0);
    for id in &ids {
        let r = d.reply(id).await;
        if r.get("error").is_none() {
            answered += 1;
        } else {
            assert_eq!(r["error"]["code"], "RATE_LIMITED", "{r}");
            limited += 1;
        }
    }
    (answered, limited)
}

#[tokio::test]
async fn a_user_sending_too_fast_gets_rate_limited_and_nothing_extra_is_stored() {
    let b = Broker::start_with(&[("MQIM_MAX_SENDS_PER_SEC", "2"), ("MQIM_SEND_BURST", "5")]);
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut spammer = Device::connect(&b, "spammer", "sp").await;
    let (ok, limited) = burst(
        &mut spammer,
        30,
        |i| json!({"send": {"to": "u:bob", "clientMsgId": format!("s{i}"), "text": "x"}}),
    )
    .await;
    assert!(limited > 0, "30 sends at once exceed 2/s with bursts of 5");
    assert!(ok > 0);
    let (events, _) = bob.sync(0, 100).await;
    assert_eq!(events.len(), ok, "only accepted sends are stored");
    // Others are not affected, and the spammer's connection still works.
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "fine", "hello").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = spammer
        .call(json!({"send": {"to": "u:bob", "clientMsgId": "later", "text": "x"}}))
        .await;
    assert!(r.get("sent").is_some(), "the limit recovers: {r}");
}

#[tokio::test]
async fn edits_blocks_and_settings_too_fast_are_rate_limited_like_sending() {
    let b = Broker::start_with(&[("MQIM_MAX_SENDS_PER_SEC", "2"), ("MQIM_SEND_BURST", "5")]);
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut spammer = Device::connect(&b, "spammer", "sp").await;
    let msg_id = spammer.send("bob", "m1", "original").await["msgId"].clone();
    tokio::time::sleep(Duration::from_millis(2600)).await;

    // Each edit appends an event to bob's stream: they cost what sends cost.
    let (edits, limited) = burst(
        &mut spammer,
        30,
        |i| json!({"edit": {"conversation": "u:bob", "msgId": msg_id, "text": format!("v{i}")}}),
    )
    .await;
    assert!(limited > 0 && edits > 0, "edits {edits}, limited {limited}");
    let (events, _) = bob.sync(0, 100).await;
    assert_eq!(
        events.len(),
        1 + edits,
        "the message and the accepted edits only"
    );

    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (_, limited) = burst(&mut spammer, 30, |i| match i % 2 {
        0 => json!({"block": {"user": "bob"}}),
        _ => json!({"unblock": {"user": "bob"}}),
    })
    .await;
    assert!(limited > 0, "30 block changes at once exceed the budget");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (_, limited) = burst(
        &mut spammer,
        30,
        |i| json!({"settings": {"presenceVisible": i % 2 == 0}}),
    )
    .await;
    assert!(limited > 0, "30 setting changes at once exceed the budget");
}

#[tokio::test]
async fn creating_groups_too_fast_is_rate_limited_like_sending() {
    let b = Broker::start_with(&[("MQIM_MAX_SENDS_PER_SEC", "2"), ("MQIM_SEND_BURST", "5")]);
    let mut spammer = Device::connect(&b, "spammer", "sp").await;
    let (ok, limited) = burst(
        &mut spammer,
        30,
        |i| json!({"groupCreate": {"name": format!("g{i}"), "members": ["bob"]}}),
    )
    .await;
    assert!(limited > 0 && ok > 0, "ok {ok}, limited {limited}");
    // Only the accepted ones exist: bob is in exactly that many groups.
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let r = bob.call(json!({"conversations": {"limit": 100}})).await;
    let groups = r["conversations"]["conversations"]
        .as_array()
        .map_or(0, |l| l.len());
    assert_eq!(groups, ok, "{r}");
}

#[tokio::test]
async fn an_address_opening_connections_too_fast_is_refused() {
    let b = Broker::start_with(&[("MQIM_MAX_CONNECTS_PER_IP", "2")]);
    let mut refused = 0;
    let mut kept = Vec::new();
    for i in 0..12 {
        match Device::connect_raw(
            &b,
            "alice",
            &format!("d{i}"),
            &token("alice", 60),
            Proto::V4,
        )
        .await
        {
            Ok(d) => kept.push(d),
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused > 0,
        "12 connects at once exceed 2/s with bursts of 4"
    );
    assert!(!kept.is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Device::connect_raw(&b, "alice", "later", &token("alice", 60), Proto::V4)
        .await
        .expect("the limit recovers");
}
