//! Group sends through crashes and Redis failures, end to end with the real broker and real
//! clients: kill -9 in the middle of a pipelined group-send loop (small and large groups, on
//! the embedded store and on `redis+embedded`), and a Redis that restarts from an older
//! snapshot in the middle of a group-send loop. Afterwards every acknowledged message is in every
//! member's stream (or the group's log) exactly once, at the seqs its `sent` named, and the
//! seqs are contiguous.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::groups::*;
use common::{call_until, full_stream, note_reply, seq, Broker, Device, RedisBroker};
use mqim_im_plugin::testing::RedisServer;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_small_group_send_loop_on_the_embedded_store() {
    kill_9_mid_small_group_send_loop_keeps_every_acked_message_once_in_every_stream(
        &mut Broker::start(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_small_group_send_loop_on_redis_embedded() {
    let mut rb = RedisBroker::start();
    kill_9_mid_small_group_send_loop_keeps_every_acked_message_once_in_every_stream(&mut rb.broker)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_large_group_send_loop_on_the_embedded_store() {
    kill_9_mid_large_group_send_loop_keeps_every_acked_message_once_in_the_group_log(
        &mut Broker::start(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_large_group_send_loop_on_redis_embedded() {
    let mut rb = RedisBroker::start();
    kill_9_mid_large_group_send_loop_keeps_every_acked_message_once_in_the_group_log(&mut rb.broker)
        .await
}

/// The whole log of `group` as a member pages it with `groupSync`.
async fn group_log(d: &mut Device, group: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let r = d
            .call(json!({"groupSync": {"group": group, "afterGroupSeq": after.to_string(), "limit": 100}}))
            .await;
        let page = r["groupSync"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(last) = page.last() {
            after = num(&last["groupSeq"]);
        }
        entries.extend(page);
        if r["groupSync"]["hasMore"] != true {
            return entries;
        }
    }
}

/// Redis comes back from an RDB snapshot older than its memory (its counters behind the log)
/// twice in the middle of a group-send loop, a small and a large group, with one-to-one
/// traffic of the same users in between; senders resend until acknowledged, as clients do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_from_an_older_snapshot_mid_group_send_loop_loses_and_repeats_nothing() {
    let mut redis = RedisServer::start_with_snapshots();
    let b = Broker::start_with(&[
        ("MQIM_STORE_BACKEND", "redis+embedded"),
        ("MQIM_REDIS_URL", &redis.url()),
    ]);
    let users = ["alice", "bob", "carol"];
    let mut devices = Vec::new();
    for u in users {
        devices.push(Device::connect(&b, u, &format!("{u}-phone")).await);
    }
    let small = create(&mut devices[0], "Small", &["bob", "carol"], false).await;
    let large = create(&mut devices[0], "Large", &["bob", "carol"], true).await;
    // clientMsgId -> the `sent` reply.
    let mut acked: HashMap<String, Value> = HashMap::new();
    for phase in ["before", "after", "restored", "again", "last"] {
        for k in 0..8 {
            for (i, d) in devices.iter_mut().enumerate() {
                for g in [&small, &large] {
                    let cmid = format!("{phase}-{g}-{i}-{k}");
                    let op = json!({"send": {"to": g, "clientMsgId": cmid, "text": cmid}});
                    acked.insert(cmid, call_until(d, op, "sent").await);
                }
            }
            let cmid = format!("{phase}-dm-{k}");
            let op = json!({"send": {"to": "u:bob", "clientMsgId": cmid, "text": cmid}});
            call_until(&mut devices[2], op, "sent").await;
        }
        // Snapshot, restart from it, snapshot, restart from that, and send on.
        match phase {
            "before" | "restored" => redis.snapshot(),
            "after" | "again" => redis.restart(),
            _ => {}
        }
    }
    assert_eq!(acked.len(), 5 * 8 * 3 * 2);

    for (i, d) in devices.iter_mut().enumerate() {
        let me = users[i];
        let stream = full_stream(d).await;
        let seqs: Vec<u64> = stream.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=stream.len() as u64).collect::<Vec<_>>(),
            "{me}'s seqs are contiguous"
        );
        let mut small_copies: HashMap<String, Vec<u64>> = HashMap::new();
        for e in &stream {
            if e["message"]["conversation"] == small.as_str() {
                let text = e["message"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                small_copies.entry(text).or_default().push(seq(e));
            }
        }
        for (cmid, sent) in &acked {
            if sent["conversation"] != small.as_str() {
                continue;
            }
            let at = small_copies.get(cmid).cloned().unwrap_or_default();
            assert_eq!(
                at.len(),
                1,
                "{me} has small-group message {cmid} {} times",
                at.len()
            );
            if cmid.split('-').nth(2) == Some(&i.to_string()) {
                assert_eq!(
                    at[0],
                    seq(sent),
                    "{me}'s own {cmid} is at the seq `sent` named"
                );
            }
        }
    }
    let mut reader = Device::connect(&b, "bob", "bob-tab").await;
    for g in [&small, &large] {
        let entries = group_log(&mut reader, g).await;
        let gs: Vec<u64> = entries.iter().map(|e| num(&e["groupSeq"])).collect();
        assert_eq!(
            gs,
            (1..=entries.len() as u64).collect::<Vec<_>>(),
            "{g}'s groupSeqs are contiguous"
        );
        for (cmid, sent) in acked
            .iter()
            .filter(|(_, s)| s["conversation"] == g.as_str())
        {
            let found: Vec<&Value> = entries
                .iter()
                .filter(|e| e["message"]["text"] == cmid.as_str())
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{cmid} is in {g}'s log {} times",
                found.len()
            );
            assert_eq!(found[0]["groupSeq"], sent["groupSeq"], "{cmid}");
        }
    }
}

/// Sends `total` messages into `group` pipelined and kills the broker -9 after `kill_after`
/// acknowledgements; returns the acknowledged `sent` replies by clientMsgId.
async fn send_loop_killed(
    b: &mut Broker,
    d: &mut Device,
    group: &str,
    total: usize,
    kill_after: usize,
) -> HashMap<String, Value> {
    const WINDOW: usize = 32;
    let mut published = 0;
    let mut req_cmid = HashMap::new();
    let mut acked = HashMap::new();
    let mut errors = Vec::new();
    loop {
        while published < total && published - (acked.len() + errors.len()) < WINDOW {
            let cmid = format!("k{published:04}");
            let id = d
                .request(json!({"send": {"to": group, "clientMsgId": cmid, "text": cmid}}))
                .await;
            req_cmid.insert(id, cmid);
            published += 1;
        }
        let r = d.recv().await;
        note_reply(&r.payload, &req_cmid, &mut acked, &mut errors);
        if acked.len() >= kill_after {
            b.kill9();
            break;
        }
    }
    while let Some(r) = d.try_recv(Duration::from_millis(300)).await {
        note_reply(&r.payload, &req_cmid, &mut acked, &mut errors);
    }
    assert!(errors.is_empty(), "sends failed: {errors:?}");
    acked
}

async fn kill_9_mid_small_group_send_loop_keeps_every_acked_message_once_in_every_stream(
    b: &mut Broker,
) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let g = create(&mut alice, "Crash", &["bob", "carol"], false).await;
    let acked = send_loop_killed(b, &mut alice, &g, 300, 150).await;
    drop(alice);
    b.restart();

    let mut streams = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut d = Device::connect(b, user, &format!("{user}-after")).await;
        let stream = full_stream(&mut d).await;
        let seqs: Vec<u64> = stream.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=stream.len() as u64).collect::<Vec<_>>(),
            "{user}'s seqs"
        );
        // On the split store a seq allocated for a write the crash cut off is a gap
        // placeholder (`{seq, gap: {}}`, no groupSeq); every other event is a copy of the
        // group's log, in its order.
        let group_seqs: Vec<u64> = stream
            .iter()
            .filter(|e| e.get("gap").is_none())
            .map(|e| num(&e["groupSeq"]))
            .collect();
        assert!(
            group_seqs.windows(2).all(|w| w[0] < w[1]) && group_seqs.first() == Some(&1),
            "{user}'s copies are the group's log in order: {group_seqs:?}"
        );
        streams.push(stream);
    }
    let texts_of = |stream: &[Value]| -> Vec<String> {
        stream
            .iter()
            .filter_map(|e| e["message"]["text"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        streams
            .windows(2)
            .all(|w| texts_of(&w[0]) == texts_of(&w[1])),
        "every member has the same messages"
    );
    let texts: Vec<&str> = streams[1]
        .iter()
        .filter_map(|e| e["message"]["text"].as_str())
        .collect();
    for (cmid, sent) in &acked {
        let n = texts.iter().filter(|t| *t == cmid).count();
        assert_eq!(n, 1, "acked {cmid} ({sent}) is in bob's stream {n} times");
    }
    eprintln!("{} acked, {} in every stream", acked.len(), texts.len());
}

async fn kill_9_mid_large_group_send_loop_keeps_every_acked_message_once_in_the_group_log(
    b: &mut Broker,
) {
    let mut alice = Device::connect(b, "alice", "ap").await;
    let g = create(&mut alice, "Crash", &["bob"], true).await;
    let acked = send_loop_killed(b, &mut alice, &g, 300, 150).await;
    drop(alice);
    b.restart();

    let mut bob = Device::connect(b, "bob", "bp").await;
    let entries = group_log(&mut bob, &g).await;
    let gs: Vec<u64> = entries.iter().map(|e| num(&e["groupSeq"])).collect();

    assert_eq!(
        gs,
        (1..=entries.len() as u64).collect::<Vec<_>>(),
        "contiguous groupSeqs"
    );
    // A write the crash cut off is a gap (split store), at its group seq all the same.
    for (cmid, sent) in &acked {
        let found: Vec<&Value> = entries
            .iter()
            .filter(|e| e["message"]["text"] == cmid.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "acked {cmid} in the log {} times",
            found.len()
        );
        assert_eq!(found[0]["groupSeq"], sent["groupSeq"]);
    }
    let c = conversation(&mut bob, &g).await;
    let messages = entries
        .iter()
        .filter(|e| e.get("message").is_some())
        .count();
    assert_eq!(
        num(&c["unread"]),
        messages as u64,
        "every message is unread for bob: {c}"
    );
}
