//! The split store (Redis index over the embedded log) when Redis fails, end to end: the real
//! broker, a real `redis-server` that is killed and restarted empty, real MQTT clients.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{full_stream, msg_str, note_reply, seq, Device, RedisBroker};
use serde_json::{json, Value};

/// A client that resends the same clientMsgId until it gets `sent`, as the protocol asks; every
/// error it sees on the way must be `UNAVAILABLE`.
async fn send_until_acked(d: &mut Device, cmid: &str, failures: &mut u32) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let r = d
            .call(json!({"send": {"to": "u:bob", "clientMsgId": cmid, "text": cmid}}))
            .await;
        if let Some(sent) = r.get("sent") {
            return sent.clone();
        }
        assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
        *failures += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{cmid} was never acknowledged after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_redis_restart_mid_send_loop_loses_nothing_acked_and_seqs_stay_contiguous() {
    const N: usize = 60;
    let RedisBroker { broker, redis } = RedisBroker::start();
    let mut redis = Some(redis);
    let mut alice = Device::connect(&broker, "alice", "a1").await;

    let mut failures = 0;
    let mut acked = Vec::new();
    let mut restarter = None;
    for i in 0..N {
        if i == 20 {
            // Redis dies mid-loop and comes back empty 1.5 s later (no persistence: every
            // counter, unread set and dedup entry is gone).
            let mut redis = redis.take().expect("redis");
            redis.kill();
            restarter = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                redis.restart();
                redis
            }));
        }
        acked.push(send_until_acked(&mut alice, &format!("m{i}"), &mut failures).await);
    }
    let _redis = restarter
        .expect("restarted")
        .join()
        .expect("restart thread");
    assert!(
        failures > 0,
        "sends while Redis was down must have failed with UNAVAILABLE"
    );

    // The sender's seqs: 1..=N in order, msgids increasing.
    let sender_seqs: Vec<u64> = acked.iter().map(seq).collect();
    assert_eq!(sender_seqs, (1..=N as u64).collect::<Vec<_>>());
    let ids: Vec<u64> = acked
        .iter()
        .map(|s| s["msgId"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "msgids increase: {ids:?}"
    );

    // The recipient's stream: every acknowledged message exactly once, seqs 1..=N, no gaps.
    let mut bob = Device::connect(&broker, "bob", "b1").await;
    let (events, has_more) = bob.sync(0, 1000).await;
    assert!(!has_more);
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>(), "{events:?}");
    let got: Vec<u64> = events
        .iter()
        .map(|e| e["message"]["msgId"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids, "bob got each acknowledged message once, in order");
    let texts: BTreeSet<&str> = events
        .iter()
        .map(|e| e["message"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), N);

    // The unread index was rebuilt from the log: all N are unread for bob, none for alice.
    let r = bob.call(json!({"conversations": {}})).await;
    assert_eq!(
        r["conversations"]["conversations"][0]["id"], "u:alice",
        "{r}"
    );
    assert_eq!(
        r["conversations"]["conversations"][0]["unread"],
        N.to_string(),
        "{r}"
    );
    let r = alice.call(json!({"conversations": {}})).await;
    assert_eq!(
        r["conversations"]["conversations"][0].get("unread"),
        None,
        "{r}"
    );
}

/// A store that is down answers `UNAVAILABLE` and keeps the connection: the same client, on the
/// same connection, sends again once Redis is back.
#[tokio::test]
async fn redis_down_gives_unavailable_and_the_connection_stays_up() {
    let RedisBroker { broker, mut redis } = RedisBroker::start();
    let mut alice = Device::connect(&broker, "alice", "a1").await;
    alice.send("bob", "before", "before").await;
    redis.kill();
    let r = alice
        .call(json!({"send": {"to": "u:bob", "clientMsgId": "during", "text": "during"}}))
        .await;
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    let r = alice.call(json!({"conversations": {}})).await;
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    redis.restart();
    let mut failures = 0;
    let sent = send_until_acked(&mut alice, "during", &mut failures).await;
    assert_eq!(seq(&sent), 2, "{sent}");
}

/// kill -9 of the broker in the middle of a pipelined send loop, Redis untouched: seqs that were
/// allocated in Redis but never written are gap events at once after the restart (the log is the
/// node's own), and every acknowledged message is in both streams exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_of_the_broker_and_holes_become_gaps_at_once() {
    const TOTAL: usize = 400;
    const WINDOW: usize = 64;
    const KILL_AFTER: usize = 200;
    let RedisBroker { mut broker, redis } = RedisBroker::start();
    let mut alice = Device::connect(&broker, "alice", "a1").await;

    let mut published: Vec<String> = Vec::new();
    let mut req_cmid: HashMap<String, String> = HashMap::new();
    let mut acked: HashMap<String, Value> = HashMap::new();
    let mut errors: Vec<Value> = Vec::new();
    loop {
        while published.len() < TOTAL && published.len() - (acked.len() + errors.len()) < WINDOW {
            let cmid = format!("k{:04}", published.len());
            let id = alice
                .request(json!({"send": {"to": "u:bob", "clientMsgId": cmid, "text": cmid}}))
                .await;
            req_cmid.insert(id, cmid.clone());
            published.push(cmid);
        }
        let r = alice.recv().await;
        note_reply(&r.payload, &req_cmid, &mut acked, &mut errors);
        if acked.len() >= KILL_AFTER {
            broker.kill9();
            break;
        }
    }
    while let Some(r) = alice.try_recv(Duration::from_millis(300)).await {
        note_reply(&r.payload, &req_cmid, &mut acked, &mut errors);
    }
    assert!(
        errors.is_empty(),
        "sends failed before the crash: {errors:?}"
    );
    drop(alice);

    broker.restart();
    let started = Instant::now();
    let mut alice = Device::connect(&broker, "alice", "a1").await;
    let mut bob = Device::connect(&broker, "bob", "b1").await;
    let streams = [
        ("alice", full_stream(&mut alice).await),
        ("bob", full_stream(&mut bob).await),
    ];
    // The next send lands right after each stream's end: no hole is hidden at the end of a
    // stream (a sync that stopped before one would leave the next seq beyond it).
    let next = alice.send("bob", "after", "after").await;
    assert_eq!(
        seq(&next),
        streams[0].1.len() as u64 + 1,
        "alice's next seq"
    );
    let (tail, _) = bob.sync(streams[1].1.len() as u64, 10).await;
    assert_eq!(
        tail.len(),
        1,
        "bob's next event follows his stream: {tail:?}"
    );
    for (who, stream) in streams {
        let seqs: Vec<u64> = stream.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=stream.len() as u64).collect::<Vec<_>>(),
            "{who}'s stream is contiguous, gaps included"
        );
        let messages: Vec<&Value> = stream.iter().filter(|e| e.get("gap").is_none()).collect();
        let gaps = stream.len() - messages.len();
        eprintln!("{who}: {} messages, {gaps} gap events", messages.len());
        let cmids: Vec<&str> = messages.iter().map(|e| msg_str(e, "clientMsgId")).collect();
        let unique: HashSet<&&str> = cmids.iter().collect();
        assert_eq!(
            unique.len(),
            cmids.len(),
            "{who}: a message is stored twice"
        );
        let in_order: Vec<&str> = published
            .iter()
            .map(String::as_str)
            .filter(|c| unique.contains(c))
            .collect();
        assert_eq!(cmids, in_order, "{who}: messages in the order sent");
        for cmid in acked.keys() {
            assert!(
                unique.contains(&cmid.as_str()),
                "{who}: acknowledged {cmid} was lost"
            );
        }
        if who == "alice" {
            for e in &messages {
                if let Some(sent) = acked.get(msg_str(e, "clientMsgId")) {
                    assert_eq!(seq(e), seq(sent), "the seq its `sent` said");
                    assert_eq!(e["message"]["msgId"], sent["msgId"]);
                }
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the streams were complete right after the restart, without waiting for holes to settle"
    );
    drop(redis);
}

/// alice's devices online in Redis, sorted, read with redis-cli.
fn presence_in_redis(port: u16) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "HKEYS", "mqim:presence:5:alice"])
        .output()
        .expect("redis-cli (comes with redis-server)");
    let mut devices: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    devices.sort();
    devices
}

async fn wait_for_presence(port: u16, want: &[&str]) {
    for _ in 0..100 {
        if presence_in_redis(port) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "alice's devices in Redis: {:?}, want {want:?}",
        presence_in_redis(port)
    );
}

/// Devices connected to the broker are online in Redis (for other nodes), and gone when they
/// disconnect.
#[tokio::test]
async fn connected_devices_are_online_in_redis_until_they_disconnect() {
    let rb = RedisBroker::start();
    let port = rb.redis.port();
    let phone = Device::connect(&rb.broker, "alice", "phone").await;
    let laptop = Device::connect(&rb.broker, "alice", "laptop").await;
    wait_for_presence(port, &["laptop", "phone"]).await;
    phone.disconnect().await;
    wait_for_presence(port, &["laptop"]).await;
    laptop.disconnect().await;
    wait_for_presence(port, &[]).await;
}
