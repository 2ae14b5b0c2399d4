//! Durability across crashes and restarts: what the broker acknowledged is kept exactly once,
//! seqs stay contiguous, resend dedup outlives the process, and SIGTERM is a clean stop.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{full_stream, msg_id, msg_str, note_reply, seq, Broker, Device};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_mid_send_loop_exactly_once_with_contiguous_seqs() {
    const TOTAL: usize = 500;
    const WINDOW: usize = 64;
    const KILL_AFTER: usize = 300;

    let mut b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "alice-phone").await;

    // Pipelined send loop: keep WINDOW requests outstanding, count `sent` replies as they come,
    // and kill -9 the broker once KILL_AFTER of them arrived while the rest are still in flight.
    let mut published: Vec<String> = Vec::new();
    let mut req_cmid: HashMap<String, String> = HashMap::new();
    let mut acked: HashMap<String, Value> = HashMap::new();
    let mut errors: Vec<Value> = Vec::new();
    let outstanding_at_kill = loop {
        while published.len() < TOTAL && published.len() - (acked.len() + errors.len()) < WINDOW {
            let cmid = format!("k{:04}", published.len());
            let id = alice
                .request(json!({"send": {"to": "u:bob", "clientMsgId": cmid, "text": format!("text of {cmid}")}}))
                .await;
            req_cmid.insert(id, cmid.clone());
            published.push(cmid);
        }
        let r = alice.recv().await;
        note_reply(&r.payload, &req_cmid, &mut acked, &mut errors);
        if acked.len() >= KILL_AFTER {
            let outstanding = published.len() - acked.len() - errors.len();
            b.kill9();
            break outstanding;
        }
    };
    assert!(
        errors.is_empty(),
        "sends failed before the crash: {errors:?}"
    );
    assert!(
        outstanding_at_kill > 0,
        "the kill must happen while sends are in flight"
    );
    // Replies that reached the client before the socket died count as acknowledged too.
    while let Some(r) = alice.try_recv(Duration::from_millis(300)).await {
        note_reply(&r.payload, &req_cmid, &mut acked, &mut errors);
    }
    assert!(errors.is_empty(), "sends failed: {errors:?}");
    drop(alice);
    eprintln!(
        "killed with {outstanding_at_kill} sends outstanding; {} of {} sends acknowledged",
        acked.len(),
        published.len()
    );

    b.restart();
    let mut alice = Device::connect(&b, "alice", "alice-phone").await;
    let mut bob = Device::connect(&b, "bob", "bob-phone").await;
    let alice_stream = full_stream(&mut alice).await;
    let bob_stream = full_stream(&mut bob).await;
    let n = alice_stream.len();
    eprintln!("after restart: {n} messages in the streams");

    // Both streams: seqs exactly 1..=N, same N, same messages in the same order.
    let seqs = |s: &[Value]| s.iter().map(seq).collect::<Vec<_>>();
    let expected: Vec<u64> = (1..=n as u64).collect();
    assert_eq!(
        seqs(&alice_stream),
        expected,
        "alice's seqs have gaps or duplicates"
    );
    assert_eq!(
        seqs(&bob_stream),
        expected,
        "bob's seqs have gaps or duplicates"
    );
    assert!(
        n >= acked.len() && n <= published.len(),
        "stream holds {n} messages; {} were acknowledged and {} sent",
        acked.len(),
        published.len()
    );
    let mut last_id = 0;
    for (i, (a, bb)) in alice_stream.iter().zip(&bob_stream).enumerate() {
        assert_eq!(
            msg_str(a, "msgId"),
            msg_str(bb, "msgId"),
            "position {}",
            i + 1
        );
        assert_eq!(msg_str(a, "clientMsgId"), msg_str(bb, "clientMsgId"));
        assert_eq!(msg_str(a, "from"), "alice");
        assert_eq!(msg_str(bb, "from"), "alice");
        assert_eq!(msg_str(a, "conversation"), "u:bob");
        assert_eq!(msg_str(bb, "conversation"), "u:alice");
        let id = msg_id(&a["message"]["msgId"]);
        assert!(id > last_id, "msgIds not increasing at position {}", i + 1);
        last_id = id;
        // Sends from one device are committed in the order sent: the stream is a prefix of them.
        assert_eq!(
            msg_str(a, "clientMsgId"),
            published[i],
            "position {}",
            i + 1
        );
        assert_eq!(msg_str(bb, "text"), format!("text of {}", published[i]));
    }
    let unique: HashSet<&str> = alice_stream
        .iter()
        .map(|e| msg_str(e, "clientMsgId"))
        .collect();
    assert_eq!(unique.len(), n, "a clientMsgId is stored twice");

    // Every acknowledged message is there once, with the msgId and seq its `sent` reply said.
    let position: HashMap<&str, &Value> = alice_stream
        .iter()
        .map(|e| (msg_str(e, "clientMsgId"), e))
        .collect();
    for (cmid, sent) in &acked {
        let ev = position
            .get(cmid.as_str())
            .unwrap_or_else(|| panic!("acknowledged {cmid} ({sent}) was lost"));
        assert_eq!(ev["message"]["msgId"], sent["msgId"], "{cmid}");
        assert_eq!(
            seq(ev),
            seq(sent),
            "{cmid}: sent seq differs from its stream position"
        );
        assert_eq!(sent["conversation"], "u:bob");
    }

    // A send after the restart continues at N+1 in both streams.
    let after = alice.send("bob", "after-restart", "still counting").await;
    assert_eq!(seq(&after), n as u64 + 1);
    assert!(
        msg_id(&after["msgId"]) > last_id,
        "msgIds went backwards after the restart"
    );
    let ev = bob.event().await;
    assert_eq!(seq(&ev), n as u64 + 1);
    assert_eq!(ev["message"]["msgId"], after["msgId"]);

    // The client now resends everything it has no reply for: what was stored is answered with
    // its stored result, the rest is stored once. In the end every message is there exactly once.
    for (i, cmid) in published.iter().enumerate() {
        if acked.contains_key(cmid) {
            continue;
        }
        let sent = alice.send("bob", cmid, &format!("text of {cmid}")).await;
        if i < n {
            assert_eq!(
                sent["msgId"], alice_stream[i]["message"]["msgId"],
                "resend of {cmid}"
            );
            assert_eq!(seq(&sent), i as u64 + 1, "resend of {cmid}");
        } else {
            assert!(
                seq(&sent) > n as u64 + 1,
                "resend of unstored {cmid} got {sent}"
            );
        }
    }
    let alice_final = full_stream(&mut alice).await;
    let bob_final = full_stream(&mut bob).await;
    let total = published.len() + 1;
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(seqs(&alice_final), expected);
    assert_eq!(seqs(&bob_final), expected);
    let cmids: HashSet<&str> = bob_final
        .iter()
        .map(|e| msg_str(e, "clientMsgId"))
        .collect();
    assert_eq!(
        cmids.len(),
        total,
        "a message is stored twice after resending"
    );
    assert!(published.iter().all(|c| cmids.contains(c.as_str())));
}

#[tokio::test]
async fn resend_dedup_survives_a_broker_restart() {
    let mut b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let first = alice.send("bob", "X", "only once please").await;
    assert_eq!(seq(&first), 1);
    drop(alice);

    b.restart();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let again = alice.send("bob", "X", "only once please").await;
    assert_eq!(
        again, first,
        "a resend after restart must return the original result"
    );

    let mut bob = Device::connect(&b, "bob", "bp").await;
    let (events, more) = bob.sync(0, 100).await;
    assert!(!more);
    assert_eq!(events.len(), 1, "bob's stream: {events:?}");
    assert_eq!(events[0]["message"]["msgId"], first["msgId"]);
    assert_eq!(events[0]["message"]["clientMsgId"], "X");
    // The deduplicated resend consumed no seq.
    assert_eq!(seq(&alice.send("bob", "Y", "next").await), 2);
    assert_eq!(seq(&bob.event().await), 2);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_data_is_kept() {
    let mut b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            alice
                .send("bob", &format!("c{i}"), &format!("before sigterm {i}"))
                .await,
        );
        assert_eq!(seq(&bob.event().await), i + 1);
    }

    // Connected clients must not hold the shutdown up until the grace period runs out.
    let t = Instant::now();
    assert!(
        b.terminate(),
        "SIGTERM did not lead to a clean exit (status 0)"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with two idle clients",
        t.elapsed()
    );
    drop((alice, bob));

    b.restart();
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let (events, more) = bob.sync(0, 100).await;
    assert!(!more);
    assert_eq!(events.len(), 3, "bob's stream after restart: {events:?}");
    for (i, (ev, s)) in events.iter().zip(&sent).enumerate() {
        assert_eq!(seq(ev), i as u64 + 1);
        assert_eq!(ev["message"]["msgId"], s["msgId"]);
        assert_eq!(ev["message"]["text"], format!("before sigterm {i}"));
    }
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let (mine, _) = alice.sync(0, 100).await;
    assert_eq!(mine.len(), 3);
    assert_eq!(seq(&alice.send("bob", "c3", "after restart").await), 4);
    assert_eq!(seq(&bob.event().await), 4);
}
