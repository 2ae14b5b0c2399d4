//! Group chat through the real broker with real clients (MQTT 3.1.1, 5.0 and WebSocket):
//! small groups (write diffusion: every member's stream), large groups (read diffusion: the
//! group's log, `groupSync`, live events without a stream seq), membership changes, mentions,
//! unread counts, history from the join on, what non-members cannot get; on the embedded store
//! and on `redis+embedded`. Crashes and Redis failures mid group-send: `groups_crash.rs`.

mod common;

use std::time::Duration;

use common::groups::*;
use common::{full_stream, on_both_stores, seq, Broker, Device, Proto};
use serde_json::{json, Value};

on_both_stores!(
    a_small_group_over_three_mqtt_stacks_gets_each_message_once_in_group_seq_order,
    a_non_member_gets_nothing_by_any_request_and_nothing_is_stored,
    a_removed_member_gets_nothing_more_and_an_added_member_nothing_from_before,
    group_unread_goes_0_3_0_across_two_devices_and_the_sender_gets_the_receipt,
    mentions_reach_the_mentioned_and_show_until_read_in_small_and_large_groups,
    a_large_group_is_read_by_group_sync_with_unread_from_positions,
    a_retried_group_create_with_its_client_msg_id_creates_one_group
);

async fn a_small_group_over_three_mqtt_stacks_gets_each_message_once_in_group_seq_order(
    b: &Broker,
) {
    let mut alice = Device::connect(b, "alice", "alice-phone").await;
    let mut alice_tab = Device::connect(b, "alice", "alice-tab").await;
    let mut bob = Device::connect_with(b, "bob", "bob-phone", Proto::V5).await;
    let mut carol = Device::connect_with(b, "carol", "carol-web", Proto::Ws).await;
    let mut dave = Device::connect(b, "dave", "dave-phone").await;

    let g = create(&mut alice, "Climbing", &["bob", "carol", "dave"], false).await;
    for d in [&mut alice, &mut alice_tab, &mut bob, &mut carol, &mut dave] {
        let ev = next_change(d).await;
        assert_eq!(ev["group"]["change"], "created", "{ev}");
        assert_eq!(ev["group"]["group"], g.as_str());
        assert_eq!(
            ev["groupSeq"], "1",
            "the creation is the group's first entry: {ev}"
        );
        assert_eq!(seq(&ev), 1, "and {}'s first event", d.user);
    }

    let mut sent = Vec::new();
    for i in 0..5 {
        let s = gsend(&mut alice, &g, &format!("c{i}"), &format!("hello {i}")).await;
        assert_eq!(s["conversation"], g.as_str());
        assert_eq!(num(&s["groupSeq"]), i + 2, "{s}");
        assert_eq!(num(&s["seq"]), i + 2, "the sender's own stream copy: {s}");
        sent.push(s);
    }
    for d in [&mut alice_tab, &mut bob, &mut carol, &mut dave] {
        for (i, s) in sent.iter().enumerate() {
            let ev = next_message(d, &g).await;
            assert_eq!(ev["message"]["msgId"], s["msgId"], "{} #{i}", d.user);
            assert_eq!(ev["message"]["from"], "alice");
            assert_eq!(ev["message"]["text"], format!("hello {i}"));
            assert_eq!(ev["message"]["groupSeq"], s["groupSeq"]);
            assert_eq!(seq(&ev), i as u64 + 2, "{}'s stream is contiguous", d.user);
        }
        d.expect_silence(Duration::from_millis(200)).await;
    }
    // The sending device got replies, not copies of its own messages.
    alice.expect_silence(Duration::from_millis(200)).await;

    // A resend of the same clientMsgId is the original, and nobody gets it twice.
    let again = gsend(&mut alice, &g, "c4", "hello 4").await;
    assert_eq!(again, sent[4]);
    bob.expect_silence(Duration::from_millis(300)).await;

    // Every member's sync holds the same entries; a WebSocket member's too.
    let stream = full_stream(&mut carol).await;
    let group_seqs: Vec<u64> = stream.iter().map(|e| num(&e["groupSeq"])).collect();
    assert_eq!(group_seqs, vec![1, 2, 3, 4, 5, 6]);

    let info = bob.call(json!({"groupInfo": {"group": g}})).await;
    assert_eq!(info["groupInfo"]["group"]["memberCount"], "4", "{info}");
    assert_eq!(info["groupInfo"]["role"], "member");
    let members = bob
        .call(json!({"groupMembers": {"group": g, "limit": 3}}))
        .await;
    let page: Vec<&str> = members["groupMembers"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(page, ["alice", "bob", "carol"], "{members}");
    assert_eq!(members["groupMembers"]["hasMore"], true);
    let rest = bob
        .call(json!({"groupMembers": {"group": g, "after": "carol"}}))
        .await;
    assert_eq!(rest["groupMembers"]["members"][0]["user"], "dave");
    assert_eq!(rest["groupMembers"]["members"][0]["role"], "member");
}

async fn a_non_member_gets_nothing_by_any_request_and_nothing_is_stored(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let mut bob = Device::connect(b, "bob", "bp").await;
    let mut eve = Device::connect(b, "eve", "ep").await;
    let g = create(&mut alice, "Secret", &["bob"], false).await;
    gsend(&mut alice, &g, "s1", "the plan").await;

    for op in [
        json!({"send": {"to": g, "clientMsgId": "e1", "text": "let me in"}}),
        json!({"groupInfo": {"group": g}}),
        json!({"groupMembers": {"group": g}}),
        json!({"groupSync": {"group": g, "afterGroupSeq": "0"}}),
        json!({"history": {"conversation": g}}),
        json!({"read": {"conversation": g, "msgId": "1"}}),
        json!({"groupAdd": {"group": g, "members": ["eve"]}}),
        json!({"groupRemove": {"group": g, "members": ["bob"]}}),
        json!({"groupUpdate": {"group": g, "name": "mine"}}),
        json!({"groupDisband": {"group": g}}),
    ] {
        let r = eve.call(op.clone()).await;
        assert_eq!(error_code(&r), "PERMISSION_DENIED", "{op} -> {r}");
    }
    // A group that does not exist is NOT_FOUND; a malformed id INVALID_ARGUMENT.
    let r = eve.call(json!({"groupInfo": {"group": "g:12345"}})).await;
    assert_eq!(error_code(&r), "NOT_FOUND", "{r}");
    let r = eve.call(json!({"groupInfo": {"group": "g:../x"}})).await;
    assert_eq!(error_code(&r), "INVALID_ARGUMENT", "{r}");
    // No wildcard or foreign downlink reaches group traffic (the IM tree is exact-topic only).
    let refused = eve.subscribe("im/+/+/down/json").await;
    assert!(
        refused.contains("Failure"),
        "a wildcard over the IM tree was granted: {refused}"
    );

    // Nothing of eve's reached the group, and eve's own stream holds nothing of it.
    let (bob_events, _) = bob.sync(0, 100).await;
    assert!(
        bob_events.iter().all(|e| e["message"]["from"] != "eve"),
        "{bob_events:?}"
    );
    let (eve_events, _) = eve.sync(0, 100).await;
    assert!(eve_events.is_empty(), "{eve_events:?}");
}

async fn a_removed_member_gets_nothing_more_and_an_added_member_nothing_from_before(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let mut carol = Device::connect(b, "carol", "cp").await;
    let mut dave = Device::connect(b, "dave", "dp").await;
    let g = create(&mut alice, "Team", &["bob", "carol"], false).await;
    next_change(&mut carol).await;
    gsend(&mut alice, &g, "m1", "before").await;
    next_message(&mut carol, &g).await;

    let r = alice
        .call(json!({"groupRemove": {"group": g, "members": ["carol"]}}))
        .await;
    assert_eq!(r["groupRemove"]["group"]["memberCount"], "2", "{r}");
    let ev = next_change(&mut carol).await;
    assert_eq!(ev["group"]["change"], "removed");
    assert_eq!(ev["group"]["members"], json!(["carol"]));
    assert_eq!(ev["group"]["by"], "alice");

    let r = alice
        .call(json!({"groupAdd": {"group": g, "members": ["dave"]}}))
        .await;
    assert_eq!(r["groupAdd"]["group"]["memberCount"], "3", "{r}");
    let ev = next_change(&mut dave).await;
    assert_eq!(ev["group"]["change"], "added");
    assert_eq!(seq(&ev), 1, "dave's stream starts at his join: {ev}");
    let after = gsend(&mut alice, &g, "m2", "after").await;

    let ev = next_message(&mut dave, &g).await;
    assert_eq!(ev["message"]["text"], "after");
    carol.expect_silence(Duration::from_millis(300)).await;
    for op in [
        json!({"history": {"conversation": g}}),
        json!({"send": {"to": g, "clientMsgId": "c9", "text": "still here?"}}),
        json!({"groupSync": {"group": g, "afterGroupSeq": "0"}}),
    ] {
        let r = carol.call(op.clone()).await;
        assert_eq!(error_code(&r), "PERMISSION_DENIED", "{op} -> {r}");
    }
    // Dave's history and sync hold nothing from before he joined.
    let h = dave.call(json!({"history": {"conversation": g}})).await;
    let texts: Vec<&str> = h["history"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["after"], "{h}");
    let (events, _) = dave.sync(0, 100).await;
    assert_eq!(
        events.len(),
        2,
        "his add and the message after it: {events:?}"
    );
    assert_eq!(events[1]["message"]["msgId"], after["msgId"]);
    let log = dave
        .call(json!({"groupSync": {"group": g, "afterGroupSeq": "0"}}))
        .await;
    let entries = log["groupSync"]["events"].as_array().unwrap();
    assert_eq!(entries[0]["group"]["change"], "added", "{log}");
    assert!(entries.iter().all(|e| e.get("seq").is_none()), "{log}");
}

async fn group_unread_goes_0_3_0_across_two_devices_and_the_sender_gets_the_receipt(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let mut phone = Device::connect(b, "bob", "phone").await;
    let mut laptop = Device::connect(b, "bob", "laptop").await;
    let g = create(&mut alice, "Trio", &["bob", "carol"], false).await;
    next_change(&mut phone).await;
    next_change(&mut laptop).await;
    next_change(&mut alice).await;
    assert_eq!(conversation(&mut phone, &g).await.get("unread"), None);

    let mut last = Value::Null;
    for i in 0..3 {
        last = gsend(&mut alice, &g, &format!("u{i}"), &format!("m{i}")).await;
    }
    for d in [&mut phone, &mut laptop] {
        for _ in 0..3 {
            next_message(d, &g).await;
        }
        let c = conversation(d, &g).await;
        assert_eq!(c["unread"], "3", "{c}");
        assert_eq!(c["last"]["text"], "m2");
    }
    assert_eq!(
        conversation(&mut alice, &g).await.get("unread"),
        None,
        "own messages are never unread"
    );

    let r = phone
        .call(json!({"read": {"conversation": g, "msgId": last["msgId"]}}))
        .await;
    assert_eq!(r["read"]["conversation"], g.as_str(), "{r}");
    assert_eq!(r["read"].get("unread"), None, "{r}");
    for d in [&mut phone, &mut laptop] {
        let ev = d.event().await;
        assert_eq!(ev["read"]["conversation"], g.as_str(), "{ev}");
        assert_eq!(ev["read"]["by"], "bob");
        assert_eq!(conversation(d, &g).await.get("unread"), None);
    }
    // The sender of the message read gets the receipt: "read by bob".
    let receipt = alice.event().await;
    assert_eq!(receipt["read"]["conversation"], g.as_str(), "{receipt}");
    assert_eq!(receipt["read"]["by"], "bob");
    assert_eq!(receipt["read"]["msgId"], last["msgId"]);
}

async fn mentions_reach_the_mentioned_and_show_until_read_in_small_and_large_groups(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let mut bob = Device::connect(b, "bob", "bp").await;
    let mut carol = Device::connect(b, "carol", "cp").await;
    for large in [false, true] {
        let g = create(&mut alice, "Mentions", &["bob", "carol"], large).await;
        let r = alice
            .call(json!({"send": {"to": g, "clientMsgId": format!("men-{large}"), "text": "@bob look", "mentions": ["bob", "mallory"]}}))
            .await;
        let sent = &r["sent"];
        assert!(sent.is_object(), "{r}");
        let bob_copy = next_message(&mut bob, &g).await;
        assert_eq!(
            bob_copy["message"]["mentions"],
            json!(["bob"]),
            "only members: {bob_copy}"
        );
        assert!(
            seq(&bob_copy) > 0,
            "a mention is in the member's own stream, also in a large group: {bob_copy}"
        );
        let carol_copy = next_message(&mut carol, &g).await;
        assert_eq!(
            carol_copy.get("seq").is_some(),
            !large,
            "a large group's live event has no stream seq: {carol_copy}"
        );
        let c = conversation(&mut bob, &g).await;
        assert_eq!(c["mentioned"], true, "large={large}: {c}");
        assert_eq!(conversation(&mut carol, &g).await.get("mentioned"), None);
        bob.call(json!({"read": {"conversation": g, "msgId": sent["msgId"]}}))
            .await;
        assert_eq!(conversation(&mut bob, &g).await.get("mentioned"), None);
        // Only the owner and admins mention everyone.
        let r = carol
            .call(json!({"send": {"to": g, "clientMsgId": format!("all-{large}"), "text": "@all", "mentionAll": true}}))
            .await;
        assert_eq!(error_code(&r), "PERMISSION_DENIED", "{r}");
        // Drain the rest of this round's traffic.
        while bob.try_recv(Duration::from_millis(300)).await.is_some() {}
        while carol.try_recv(Duration::from_millis(100)).await.is_some() {}
        while alice.try_recv(Duration::from_millis(100)).await.is_some() {}
    }
}

async fn a_large_group_is_read_by_group_sync_with_unread_from_positions(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let mut bob = Device::connect_with(b, "bob", "bp", Proto::V5).await;
    let mut carol = Device::connect_with(b, "carol", "cw", Proto::Ws).await;
    let g = create(&mut alice, "Announcements", &["bob", "carol"], true).await;
    let info = bob.call(json!({"groupInfo": {"group": g}})).await;
    assert_eq!(info["groupInfo"]["group"]["large"], true, "{info}");

    let mut sent = Vec::new();
    for i in 0..3 {
        let s = gsend(&mut alice, &g, &format!("l{i}"), &format!("news {i}")).await;
        assert_eq!(s.get("seq"), None, "no stream copy in a large group: {s}");
        assert_eq!(num(&s["groupSeq"]), i + 2);
        sent.push(s);
    }
    // Online members get live events carrying groupSeq and no seq.
    for d in [&mut bob, &mut carol] {
        for s in &sent {
            let ev = next_message(d, &g).await;
            assert_eq!(ev.get("seq"), None, "{ev}");
            assert_eq!(ev["groupSeq"], s["groupSeq"]);
            assert_eq!(ev["message"]["msgId"], s["msgId"]);
        }
    }
    // Nothing went into the members' streams (they heard of the creation live); the creator's
    // holds the creation notice only.
    let (events, _) = bob.sync(0, 100).await;
    assert!(events.is_empty(), "{events:?}");
    let (events, _) = alice.sync(0, 100).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["group"]["change"], "created");

    let log = bob
        .call(json!({"groupSync": {"group": g, "afterGroupSeq": "1", "limit": 2}}))
        .await;
    let entries = log["groupSync"]["events"].as_array().unwrap();
    let gs: Vec<u64> = entries.iter().map(|e| num(&e["groupSeq"])).collect();
    assert_eq!(gs, [2, 3], "{log}");
    assert_eq!(log["groupSync"]["hasMore"], true);

    let c = conversation(&mut bob, &g).await;
    assert_eq!(c["unread"], "3", "{c}");
    assert_eq!(c["lastGroupSeq"], "4");
    assert_eq!(c["last"]["text"], "news 2");
    assert_eq!(conversation(&mut alice, &g).await.get("unread"), None);

    let r = bob
        .call(json!({"read": {"conversation": g, "msgId": sent[1]["msgId"]}}))
        .await;
    assert_eq!(r["read"]["unread"], "1", "{r}");
    // Sending moves the sender's position to their message: nothing before it is unread.
    gsend(&mut bob, &g, "b1", "thanks").await;
    assert_eq!(conversation(&mut bob, &g).await.get("unread"), None);
    assert_eq!(conversation(&mut carol, &g).await["unread"], "4");

    // History of a large group comes from its log.
    let h = carol
        .call(json!({"history": {"conversation": g, "limit": 2}}))
        .await;
    let texts: Vec<&str> = h["history"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["thanks", "news 2"], "{h}");
    // Members do not add members to a large group; admins do.
    let r = carol
        .call(json!({"groupAdd": {"group": g, "members": ["dave"]}}))
        .await;
    assert_eq!(error_code(&r), "PERMISSION_DENIED", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_admin_and_member_rights_transfer_and_disband() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut carol = Device::connect(&b, "carol", "cp").await;
    let g = create(&mut alice, "Club", &["bob", "carol"], false).await;

    let r = bob
        .call(json!({"groupUpdate": {"group": g, "name": "Bob's"}}))
        .await;
    assert_eq!(error_code(&r), "PERMISSION_DENIED", "{r}");
    let r = alice
        .call(json!({"groupRole": {"group": g, "member": "bob", "role": "admin"}}))
        .await;
    assert!(r["groupRole"].is_object(), "{r}");
    let r = bob
        .call(json!({"groupUpdate": {"group": g, "name": "Bob's"}}))
        .await;
    assert_eq!(r["groupUpdate"]["group"]["name"], "Bob's", "{r}");
    let r = bob.call(json!({"groupDisband": {"group": g}})).await;
    assert_eq!(error_code(&r), "PERMISSION_DENIED", "{r}");
    let r = alice.call(json!({"groupLeave": {"group": g}})).await;
    assert_eq!(
        error_code(&r),
        "FAILED_PRECONDITION",
        "the owner transfers first: {r}"
    );

    let r = alice
        .call(json!({"groupTransfer": {"group": g, "to": "carol"}}))
        .await;
    assert_eq!(r["groupTransfer"]["group"]["owner"], "carol", "{r}");
    let info = alice.call(json!({"groupInfo": {"group": g}})).await;
    assert_eq!(info["groupInfo"]["role"], "admin", "{info}");
    let r = alice.call(json!({"groupLeave": {"group": g}})).await;
    assert_eq!(r["groupLeave"], json!({}), "{r}");

    // Every change is an entry of the group's log, in order, visible to members.
    let log = carol
        .call(json!({"groupSync": {"group": g, "afterGroupSeq": "0"}}))
        .await;
    let changes: Vec<&str> = log["groupSync"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["group"]["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        ["created", "role", "updated", "transferred", "left"],
        "{log}"
    );

    let r = carol.call(json!({"groupDisband": {"group": g}})).await;
    assert_eq!(r["groupDisband"], json!({}), "{r}");
    let ev = loop {
        let ev = next_change(&mut bob).await;
        if ev["group"]["change"] == "disbanded" {
            break ev;
        }
    };
    assert_eq!(ev["group"]["by"], "carol");
    let r = bob
        .call(json!({"send": {"to": g, "clientMsgId": "late", "text": "anyone?"}}))
        .await;
    assert_eq!(error_code(&r), "PERMISSION_DENIED", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_go_through_the_word_filter() {
    let words = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(words.path(), "badword\n").unwrap();
    let path = words.path().to_str().unwrap().to_string();
    let b = Broker::start_with(&[
        ("MQIM_MODERATION_WORDS_FILE", &path),
        ("MQIM_MODERATION_ACTION", "reject"),
    ]);
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let g = create(&mut alice, "Filtered", &["bob"], false).await;
    next_change(&mut bob).await;
    let r = alice
        .call(json!({"send": {"to": g, "clientMsgId": "w1", "text": "a Ｂａｄword here"}}))
        .await;
    assert_eq!(error_code(&r), "CONTENT_REJECTED", "{r}");
    bob.expect_silence(Duration::from_millis(300)).await;
    gsend(&mut alice, &g, "w2", "a fine word").await;
    assert_eq!(
        next_message(&mut bob, &g).await["message"]["text"],
        "a fine word"
    );
}

/// A client that lost the answer to `groupCreate` retries it with the same clientMsgId: it gets
/// the group the first call created, and nobody hears of a second group.
async fn a_retried_group_create_with_its_client_msg_id_creates_one_group(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let mut bob = Device::connect(b, "bob", "bp").await;
    let op =
        json!({"groupCreate": {"name": "Once", "members": ["bob"], "clientMsgId": "create-1"}});
    let first = alice.call(op.clone()).await;
    let again = alice.call(op).await;
    let id = &first["groupCreate"]["group"]["id"];
    assert!(id.is_string(), "{first}");
    assert_eq!(
        again["groupCreate"]["group"], first["groupCreate"]["group"],
        "the retry answers with the first group"
    );
    let created = next_change(&mut bob).await;
    assert_eq!(created["group"]["group"], *id);
    assert_eq!(created["group"]["clientMsgId"], "create-1", "{created}");
    bob.expect_silence(Duration::from_millis(300)).await;
    let (events, _) = alice.sync(0, 100).await;
    assert_eq!(
        events.len(),
        1,
        "one creation in the creator's stream: {events:?}"
    );
    // Another clientMsgId (or none) is another group; so is the same one from another user.
    let other = create(&mut alice, "Twice", &["bob"], false).await;
    assert_ne!(other, id.as_str().unwrap());
    let r = bob
        .call(json!({"groupCreate": {"name": "Mine", "members": ["alice"], "clientMsgId": "create-1"}}))
        .await;
    assert_ne!(r["groupCreate"]["group"]["id"], *id, "{r}");
    assert_eq!(r["groupCreate"]["group"]["owner"], "bob");
    // The group the retry did not create is not there.
    let listed = alice.call(json!({"conversations": {}})).await;
    let groups = listed["conversations"]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"].as_str().is_some_and(|i| i.starts_with("g:")))
        .count();
    assert_eq!(groups, 3, "Once, Twice and bob's: {listed}");
}

/// A large group's live copy needs no acknowledgement (a member who misses one pages it in with
/// `groupSync`, by `groupSeq`): it reaches a device subscribed at QoS 1 as a QoS 0 publish, while
/// an event of the device's own stream (a one-to-one message) stays QoS 1. Read off the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_groups_live_copy_is_sent_at_qos_0_and_stream_events_at_qos_1() {
    use common::raw::{subscribe_packet, ConnectOpts, Raw};
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let g = create(&mut alice, "Town", &["bob"], true).await;
    let password = common::token("bob", 3600);
    let (mut bob, ack) = Raw::connect(
        &b,
        &ConnectOpts {
            level: 4,
            client_id: "braw",
            clean: true,
            keep_alive: 30,
            creds: Some(("bob", &password)),
            ..ConnectOpts::default()
        },
    )
    .await;
    assert_eq!(ack, [0, 0], "connected");
    bob.send(&subscribe_packet(false, 1, "im/bob/braw/down/json", 1))
        .await;
    let (kind, body) = bob.expect().await;
    assert_eq!((kind, body.last()), (0x90, Some(&1)), "granted QoS 1");

    gsend(&mut alice, &g, "l-1", "to the town").await;
    alice.send("bob", "d-1", "just you").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (first, body) = bob.expect().await;
        if first >> 4 != 3 {
            continue; // not a PUBLISH
        }
        let qos = (first >> 1) & 0x03;
        let text = String::from_utf8_lossy(&body).to_string();
        if qos == 1 {
            // Acknowledge it: the packet id follows the topic.
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let pkid = [body[2 + topic_len], body[3 + topic_len]];
            bob.send(&[0x40, 2, pkid[0], pkid[1]]).await;
        }
        seen.push((qos, text));
    }
    let qos_of = |needle: &str| {
        seen.iter()
            .find(|(_, t)| t.contains(needle))
            .map(|(q, _)| *q)
            .unwrap_or_else(|| panic!("no publish with {needle}: {seen:?}"))
    };
    assert_eq!(qos_of("to the town"), 0, "the large group's live copy");
    assert_eq!(qos_of("just you"), 1, "bob's own stream event");
}
