//! Conversation extras end to end: recall, edit, typing, presence (+ watch, hidden presence),
//! blocking; recall, edit and blocking on the embedded store and on `redis+embedded` alike. The real broker binary, real rumqttc clients (3.1.1 and 5.0), `mosquitto_sub` as a
//! second client stack, a real `redis-server` for the `redis+embedded` shape, and `kill -9` of
//! the broker for what must survive it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{full_stream, on_both_stores, seq, token, unread, Broker, Device, Proto};
use serde_json::{json, Value};

/// The msgId of a `sent` reply, as the client got it (a decimal string).
fn mid(sent: &Value) -> String {
    sent["msgId"].as_str().expect("msgId").to_string()
}

/// The next event of a kind (`recalled`, `edited`, `typing`, `presence`, `message`), skipping
/// others; fails after 10 s.
async fn event_of(d: &mut Device, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{} got no {kind} event", d.id);
        let e = d.event().await;
        if e.get(kind).is_some() {
            return e;
        }
    }
}

async fn history(d: &mut Device, conversation: &str) -> Vec<Value> {
    let r = d
        .call(json!({"history": {"conversation": conversation}}))
        .await;
    assert!(r["history"].is_object(), "history failed: {r}");
    r["history"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn code(r: &Value) -> &str {
    r["error"]["code"].as_str().unwrap_or("(no error)")
}

async fn create_group(d: &mut Device, members: &[&str]) -> String {
    let r = d
        .call(json!({"groupCreate": {"name": "climbing", "members": members}}))
        .await;
    r["groupCreate"]["group"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("groupCreate failed: {r}"))
        .to_string()
}

on_both_stores!(
    a_recalled_unread_message_disappears_for_both_and_unread_drops_on_both_reader_devices,
    recall_and_edit_survive_a_kill_9_and_the_recalled_text_is_gone_from_history_and_sync,
    in_a_group_the_owner_recalls_any_message_and_the_sender_edits_for_every_member,
    a_blocked_sender_is_refused_and_nothing_is_stored_across_reconnects_and_a_restart,
    in_a_large_group_a_recall_goes_live_reaches_the_mentioned_and_leaves_unread,
    last_seen_survives_a_kill_9,
);

mod with_a_one_second_recall_window {
    use super::*;
    on_both_stores!(
        [("MQIM_RECALL_WINDOW_SECS", "1")];
        recall_is_refused_outside_the_window_for_others_messages_and_unknown_ids
    );
}

async fn a_recalled_unread_message_disappears_for_both_and_unread_drops_on_both_reader_devices(
    b: &mut Broker,
) {
    let mut alice = Device::connect(b, "alice", "a1").await;
    let mut phone = Device::connect(b, "bob", "phone").await;
    let mut laptop = Device::connect_with(b, "bob", "laptop", Proto::V5).await;
    let first = alice.send("bob", "c1", "the password is hunter2").await;
    alice.send("bob", "c2", "ignore that").await;
    for d in [&mut phone, &mut laptop] {
        event_of(d, "message").await;
        event_of(d, "message").await;
        assert_eq!(unread(d, "u:alice").await, 2);
    }

    let r = alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": mid(&first)}}))
        .await;
    assert!(r.get("recall").is_some(), "recall failed: {r}");
    for d in [&mut phone, &mut laptop] {
        let e = event_of(d, "recalled").await;
        assert_eq!(e["recalled"]["conversation"], "u:alice");
        assert_eq!(e["recalled"]["msgId"], first["msgId"]);
        assert_eq!(e["recalled"]["by"], "alice");
        assert_eq!(seq(&e), 3, "the next seq of bob's stream: {e}");
        assert_eq!(unread(d, "u:alice").await, 1, "{}", d.id);
    }
    // Gone from both sides' history and from sync, the message itself stays as recalled.
    for (d, peer) in [(&mut phone, "u:alice"), (&mut alice, "u:bob")] {
        let h = history(d, peer).await;
        let m = h.iter().find(|m| m["msgId"] == first["msgId"]).unwrap();
        assert_eq!(m["recalled"], true, "{m}");
        assert!(m.get("text").is_none(), "{m}");
        let stream = full_stream(d).await;
        assert!(!format!("{stream:?}").contains("hunter2"), "{stream:?}");
    }
    // A second recall is a no-op: no new event.
    let again = alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": mid(&first)}}))
        .await;
    assert!(again.get("recall").is_some(), "{again}");
    phone.expect_silence(Duration::from_millis(300)).await;
}

async fn recall_is_refused_outside_the_window_for_others_messages_and_unknown_ids(b: &mut Broker) {
    let mut alice = Device::connect(b, "alice", "a1").await;
    let mut bob = Device::connect(b, "bob", "b1").await;
    let sent = alice.send("bob", "c1", "hi").await;
    event_of(&mut bob, "message").await;

    let by_bob = bob
        .call(json!({"recall": {"conversation": "u:alice", "msgId": mid(&sent)}}))
        .await;
    assert_eq!(code(&by_bob), "PERMISSION_DENIED", "{by_bob}");
    let unknown = alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": "12345"}}))
        .await;
    assert_eq!(code(&unknown), "NOT_FOUND", "{unknown}");
    let bad = alice
        .call(json!({"recall": {"conversation": "bob", "msgId": mid(&sent)}}))
        .await;
    assert_eq!(code(&bad), "INVALID_ARGUMENT", "{bad}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": mid(&sent)}}))
        .await;
    assert_eq!(code(&late), "PERMISSION_DENIED", "{late}");
    // Nothing changed: the text is still there, no event reached bob.
    assert_eq!(history(&mut bob, "u:alice").await[0]["text"], "hi");
    bob.expect_silence(Duration::from_millis(300)).await;
}

async fn recall_and_edit_survive_a_kill_9_and_the_recalled_text_is_gone_from_history_and_sync(
    b: &mut Broker,
) {
    let mut alice = Device::connect(b, "alice", "a1").await;
    let mut bob = Device::connect(b, "bob", "b1").await;
    let secret = alice.send("bob", "c1", "secret plan").await;
    let typo = alice.send("bob", "c2", "see you at 7").await;
    let r = alice
        .call(
            json!({"edit": {"conversation": "u:bob", "msgId": mid(&typo), "text": "see you at 8"}}),
        )
        .await;
    let edited_at = r["edit"]["editedAt"].clone();
    assert!(edited_at.is_string(), "edit failed: {r}");
    // The same edit again (a retry) changes nothing and answers the same editedAt.
    let again = alice
        .call(
            json!({"edit": {"conversation": "u:bob", "msgId": mid(&typo), "text": "see you at 8"}}),
        )
        .await;
    assert_eq!(again["edit"]["editedAt"], edited_at, "{again}");
    let r = alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": mid(&secret)}}))
        .await;
    assert!(r.get("recall").is_some(), "recall failed: {r}");
    let e = event_of(&mut bob, "edited").await;
    assert_eq!(e["edited"]["text"], "see you at 8");
    event_of(&mut bob, "recalled").await;

    b.kill9();
    b.restart();
    let mut bob = Device::connect(b, "bob", "b2").await;
    let h = history(&mut bob, "u:alice").await;
    assert_eq!(h[0]["text"], "see you at 8", "{h:?}");
    assert_eq!(h[0]["editedAt"], edited_at);
    assert_eq!(h[1]["recalled"], true);
    assert!(h[1].get("text").is_none(), "{:?}", h[1]);
    let stream = full_stream(&mut bob).await;
    let kinds: Vec<&str> = stream
        .iter()
        .map(|e| {
            ["message", "edited", "recalled"]
                .into_iter()
                .find(|k| e.get(*k).is_some())
                .unwrap_or("other")
        })
        .collect();
    assert_eq!(kinds, ["message", "message", "edited", "recalled"]);
    assert!(!format!("{stream:?}").contains("secret plan"));
    assert!(!format!("{stream:?}").contains("at 7"));
    // Seqs stay contiguous after the restart: the next message is seq 5.
    alice = Device::connect(b, "alice", "a2").await;
    alice.send("bob", "c3", "ok").await;
    assert_eq!(seq(&event_of(&mut bob, "message").await), 5);
}

async fn in_a_group_the_owner_recalls_any_message_and_the_sender_edits_for_every_member(
    b: &mut Broker,
) {
    let mut alice = Device::connect(b, "alice", "a1").await;
    let mut bob = Device::connect(b, "bob", "b1").await;
    let mut carol = Device::connect(b, "carol", "c1").await;
    let g = create_group(&mut alice, &["bob", "carol"]).await;
    let send =
        |text: &str, cmid: &str| json!({"send": {"to": g, "clientMsgId": cmid, "text": text}});
    let rude = bob.call(send("rude words", "b-1")).await["sent"].clone();
    let fine = bob.call(send("hello al", "b-2")).await["sent"].clone();
    assert!(rude.is_object() && fine.is_object());
    assert_eq!(unread(&mut carol, &g).await, 2);

    // Carol may neither recall nor edit bob's message.
    let r = carol
        .call(json!({"recall": {"conversation": g, "msgId": mid(&rude)}}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED", "{r}");
    let r = carol
        .call(json!({"edit": {"conversation": g, "msgId": mid(&fine), "text": "x"}}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED", "{r}");

    // The owner recalls it; every member's stream gets the event, carol's unread drops.
    let r = alice
        .call(json!({"recall": {"conversation": g, "msgId": mid(&rude)}}))
        .await;
    assert!(r.get("recall").is_some(), "{r}");
    for d in [&mut bob, &mut carol] {
        let e = event_of(d, "recalled").await;
        assert_eq!(e["recalled"]["by"], "alice");
        assert_eq!(e["recalled"]["conversation"], g.as_str());
        assert!(e["groupSeq"].is_string(), "{e}");
    }
    assert_eq!(unread(&mut carol, &g).await, 1);

    let r = bob
        .call(json!({"edit": {"conversation": g, "msgId": mid(&fine), "text": "hello all"}}))
        .await;
    assert!(r.get("edit").is_some(), "{r}");
    let e = event_of(&mut carol, "edited").await;
    assert_eq!(e["edited"]["text"], "hello all");
    let h = history(&mut carol, &g).await;
    assert_eq!(h[0]["text"], "hello all");
    assert_eq!(h[1]["recalled"], true);
    assert!(!format!("{:?}", full_stream(&mut carol).await).contains("rude"));
    // The group's log says so too.
    let r = carol
        .call(json!({"groupSync": {"group": g, "afterGroupSeq": "0"}}))
        .await;
    let log = format!("{}", r["groupSync"]);
    assert!(
        log.contains("recalled") && log.contains("edited") && !log.contains("rude"),
        "{log}"
    );
}

#[tokio::test]
async fn typing_reaches_the_peer_live_once_per_burst_and_never_appears_in_sync() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "a1").await;
    let mut bob = Device::connect(&b, "bob", "b1").await;
    for _ in 0..5 {
        let r = alice
            .call(json!({"typing": {"conversation": "u:bob", "state": "start"}}))
            .await;
        assert!(r.get("typing").is_some(), "{r}");
    }
    let e = event_of(&mut bob, "typing").await;
    assert_eq!(
        e["typing"],
        json!({"conversation": "u:alice", "user": "alice", "state": "start"})
    );
    assert!(e.get("seq").is_none(), "typing has no seq: {e}");
    alice
        .call(json!({"typing": {"conversation": "u:bob", "state": "stop"}}))
        .await;
    assert_eq!(
        event_of(&mut bob, "typing").await["typing"]["state"],
        "stop"
    );
    // The four extra starts were coalesced away.
    bob.expect_silence(Duration::from_millis(300)).await;

    let r = alice
        .call(json!({"typing": {"conversation": "u:bob", "state": "dancing"}}))
        .await;
    assert_eq!(code(&r), "INVALID_ARGUMENT", "{r}");
    assert!(full_stream(&mut bob).await.is_empty());
    assert!(full_stream(&mut alice).await.is_empty());

    // A small group's other members see it as typing in the group.
    let mut carol = Device::connect(&b, "carol", "c1").await;
    let g = create_group(&mut alice, &["carol"]).await;
    event_of(&mut carol, "group").await;
    alice
        .call(json!({"typing": {"conversation": g, "state": "start"}}))
        .await;
    let e = event_of(&mut carol, "typing").await;
    assert_eq!(e["typing"]["conversation"], g.as_str());
    let r = bob
        .call(json!({"typing": {"conversation": g, "state": "start"}}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED", "not a member: {r}");
}

/// Bob blocks mallory on `b`; mallory's sends are refused, and so on after reconnects.
async fn blocking_holds(b: &Broker, round: &str) {
    let mut bob = Device::connect(b, "bob", &format!("bob-{round}")).await;
    let mut mallory = Device::connect(b, "mallory", &format!("mal-{round}")).await;
    let r = mallory
        .call(json!({"send": {"to": "u:bob", "clientMsgId": format!("m-{round}"), "text": "hey"}}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED", "{round}: {r}");
    mallory
        .call(json!({"typing": {"conversation": "u:bob", "state": "start"}}))
        .await;
    bob.expect_silence(Duration::from_millis(300)).await;
    let r = bob.call(json!({"blocked": {}})).await;
    assert_eq!(r["blocked"]["users"], json!(["mallory"]), "{round}: {r}");
    // Nothing of the refused send was stored in bob's stream.
    let stream = full_stream(&mut bob).await;
    assert!(
        !format!("{stream:?}").contains("String(\"hey\")"),
        "{round}: {stream:?}"
    );
    mallory.disconnect().await;
    bob.disconnect().await;
}

async fn a_blocked_sender_is_refused_and_nothing_is_stored_across_reconnects_and_a_restart(
    b: &mut Broker,
) {
    let mut bob = Device::connect(b, "bob", "b1").await;
    let mut mallory = Device::connect(b, "mallory", "m1").await;
    mallory.send("bob", "m-0", "first contact").await;
    event_of(&mut bob, "message").await;
    let r = bob.call(json!({"block": {"user": "mallory"}})).await;
    assert!(r.get("block").is_some(), "{r}");
    let r = bob.call(json!({"block": {"user": "bob"}})).await;
    assert_eq!(code(&r), "INVALID_ARGUMENT", "{r}");
    // Bob still writes to mallory; only mallory is stopped.
    bob.send("mallory", "b-0", "go away").await;
    bob.disconnect().await;
    mallory.disconnect().await;

    blocking_holds(b, "reconnect").await;
    b.kill9();
    b.restart();
    blocking_holds(b, "restart").await;

    let mut bob = Device::connect(b, "bob", "b9").await;
    let r = bob.call(json!({"unblock": {"user": "mallory"}})).await;
    assert!(r.get("unblock").is_some(), "{r}");
    let mut mallory = Device::connect(b, "mallory", "m9").await;
    mallory.send("bob", "m-9", "sorry").await;
    assert_eq!(
        event_of(&mut bob, "message").await["message"]["text"],
        "sorry"
    );
}

/// Presence between alice and bob on `b`, a stranger refused, hidden presence respected, and a
/// watch that hears bob go offline once (debounced).
async fn presence_works(b: &Broker) {
    let mut alice = Device::connect(b, "alice", "pa").await;
    let bob = Device::connect(b, "bob", "pb").await;
    alice.send("bob", "p-1", "hi").await;
    let r = alice
        .call(json!({"presence": {"users": ["bob", "stranger"]}}))
        .await;
    let users = r["presence"]["users"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(users.len(), 2, "{r}");
    let bob_entry = users.iter().find(|u| u["user"] == "bob").unwrap();
    assert_eq!(bob_entry["online"], true, "{r}");
    let stranger = users.iter().find(|u| u["user"] == "stranger").unwrap();
    assert_eq!(stranger["error"]["code"], "PERMISSION_DENIED", "{r}");
    assert!(stranger.get("online").is_none());
    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let r = alice.call(json!({"presence": {"users": too_many}})).await;
    assert_eq!(code(&r), "INVALID_ARGUMENT", "{r}");

    let r = alice
        .call(json!({"presenceWatch": {"users": ["bob", "stranger"]}}))
        .await;
    assert_eq!(r["presenceWatch"]["users"][0]["online"], true, "{r}");
    bob.disconnect().await;
    let e = event_of(&mut alice, "presence").await;
    assert_eq!(e["presence"]["user"], "bob");
    assert!(e["presence"].get("online").is_none(), "offline: {e}");
    assert!(e["presence"]["lastSeen"].is_string(), "{e}");
    // A flap shorter than the debounce (back and gone again) announces nothing.
    let flap = Device::connect(b, "bob", "pb").await;
    flap.disconnect().await;
    alice.expect_silence(Duration::from_millis(1500)).await;

    // Bob hides his presence: alice sees him offline while he is online.
    let mut bob = Device::connect(b, "bob", "pb").await;
    let r = bob
        .call(json!({"settings": {"presenceVisible": false}}))
        .await;
    assert!(r["settings"].get("presenceVisible").is_none(), "{r}");
    let r = alice.call(json!({"presence": {"users": ["bob"]}})).await;
    assert!(r["presence"]["users"][0].get("online").is_none(), "{r}");
    let r = alice.call(json!({"presenceWatch": {"users": []}})).await;
    assert!(r.get("presenceWatch").is_some(), "{r}");
    // Presence never reaches a stream.
    assert!(!format!("{:?}", full_stream(&mut bob).await).contains("presence"));
}

mod with_a_one_second_presence_debounce {
    use super::*;
    on_both_stores!(
        [("MQIM_PRESENCE_DEBOUNCE_MS", "1000")];
        presence_is_for_contacts_only_watches_are_debounced_and_hidden_presence_is_respected
    );
}

async fn presence_is_for_contacts_only_watches_are_debounced_and_hidden_presence_is_respected(
    b: &mut Broker,
) {
    presence_works(b).await;
    // Typing goes live on every store shape, and never into a stream.
    let mut alice = Device::connect(b, "alice", "ta").await;
    let mut carol = Device::connect(b, "carol", "tc").await;
    alice
        .call(json!({"typing": {"conversation": "u:carol", "state": "start"}}))
        .await;
    assert_eq!(
        event_of(&mut carol, "typing").await["typing"]["user"],
        "alice"
    );
    assert!(full_stream(&mut carol).await.is_empty());
}

/// `lastSeen` is kept by the store: after a `kill -9` and a restart, bob's last disconnect time
/// is still what alice sees.
async fn last_seen_survives_a_kill_9(b: &mut Broker) {
    let mut alice = Device::connect(b, "alice", "a1").await;
    let bob = Device::connect(b, "bob", "b1").await;
    alice.send("bob", "c1", "hi").await;
    bob.disconnect().await;
    let presence_of_bob = |r: Value| r["presence"]["users"][0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let bob = presence_of_bob(alice.call(json!({"presence": {"users": ["bob"]}})).await);
        if bob.get("online").is_none() {
            break bob["lastSeen"].clone();
        }
        assert!(Instant::now() < deadline, "bob still online: {bob}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(seen.is_string(), "offline bob has a lastSeen: {seen}");
    // The store write follows the disconnect by a commit (milliseconds).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    b.kill9();
    b.restart();
    let mut alice = Device::connect(b, "alice", "a2").await;
    let bob = presence_of_bob(alice.call(json!({"presence": {"users": ["bob"]}})).await);
    assert_eq!(bob["lastSeen"], seen, "after the restart: {bob}");
}

/// `mosquitto_sub` as bob's device (a second MQTT client stack) sees a typing event and a
/// recall as JSON lines on its downlink.
#[tokio::test]
async fn a_mosquitto_sub_device_sees_typing_and_a_recall() {
    let b = Broker::start();
    let mut child = match Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.mqtt_port.to_string()])
        .args(["-i", "mq", "-u", "bob", "-P", &token("bob", 3600)])
        .args(["-q", "1", "-t", "im/bob/mq/down/json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("mosquitto_sub (package mosquitto-clients) is needed: {e}"),
    };
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut alice = Device::connect(&b, "alice", "a1").await;
    // Wait until bob's device is subscribed: alice's typing reaches it only then.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut next = |want: &str| loop {
        assert!(Instant::now() < deadline, "no {want} line: {seen:?}");
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(100)) {
            seen.push(l.clone());
            if l.contains(want) {
                return l;
            }
        }
    };
    let mut typed = None;
    for _ in 0..40 {
        alice
            .call(json!({"typing": {"conversation": "u:bob", "state": "start"}}))
            .await;
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(250)) {
            typed = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let typed: Value = serde_json::from_str(&typed.expect("no typing line")).unwrap();
    assert_eq!(typed["event"]["typing"]["user"], "alice");
    let sent = alice.send("bob", "c1", "oops").await;
    next("oops");
    alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": mid(&sent)}}))
        .await;
    let line: Value = serde_json::from_str(&next("recalled")).unwrap();
    assert_eq!(line["event"]["recalled"]["msgId"], sent["msgId"]);
    let _ = child.kill();
    let _ = child.wait();
}

async fn in_a_large_group_a_recall_goes_live_reaches_the_mentioned_and_leaves_unread(
    b: &mut Broker,
) {
    let mut alice = Device::connect(b, "alice", "a1").await;
    let mut bob = Device::connect(b, "bob", "b1").await;
    let mut carol = Device::connect(b, "carol", "c1").await;
    let r = alice
        .call(json!({"groupCreate": {"name": "town", "members": ["bob", "carol"], "large": true}}))
        .await;
    let g = r["groupCreate"]["group"]["id"]
        .as_str()
        .expect("group")
        .to_string();
    let sent = alice
        .call(json!({"send": {"to": g, "clientMsgId": "l-1", "text": "wrong room", "mentions": ["carol"]}}))
        .await["sent"]
        .clone();
    alice
        .call(json!({"send": {"to": g, "clientMsgId": "l-2", "text": "hello town"}}))
        .await;
    assert!(event_of(&mut bob, "message").await.get("seq").is_none());
    assert_eq!(unread(&mut bob, &g).await, 2);
    // Carol's mention is a copy in her own stream.
    assert!(event_of(&mut carol, "message").await.get("seq").is_some());
    let r = alice
        .call(json!({"recall": {"conversation": g, "msgId": mid(&sent)}}))
        .await;
    assert!(r.get("recall").is_some(), "{r}");
    let e = event_of(&mut bob, "recalled").await;
    assert!(
        e.get("seq").is_none() && e["groupSeq"].is_string(),
        "live, no stream seq: {e}"
    );
    assert_eq!(
        unread(&mut bob, &g).await,
        1,
        "the recalled message is not unread"
    );
    let e = event_of(&mut carol, "recalled").await;
    assert!(
        e.get("seq").is_some(),
        "carol's copy is recalled in her stream: {e}"
    );
    let stream = format!("{:?}", full_stream(&mut carol).await);
    assert!(!stream.contains("wrong room"), "{stream}");
    let r = carol.call(json!({"conversations": {}})).await;
    let town = r["conversations"]["conversations"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == g.as_str()))
        .cloned()
        .unwrap_or_default();
    assert!(
        town.get("mentioned").is_none(),
        "the mention is gone: {town}"
    );
    let r = bob
        .call(json!({"groupSync": {"group": g, "afterGroupSeq": "0"}}))
        .await;
    let log = format!("{}", r["groupSync"]);
    assert!(
        log.contains("recalled") && !log.contains("wrong room"),
        "{log}"
    );
    let h = history(&mut bob, &g).await;
    assert_eq!(h[1]["msgId"], sent["msgId"], "{h:?}");
    assert_eq!(h[1]["recalled"], true, "{h:?}");
    // Typing is not shown in a large group.
    let r = bob
        .call(json!({"typing": {"conversation": g, "state": "start"}}))
        .await;
    assert_eq!(code(&r), "FAILED_PRECONDITION", "{r}");
}
