//! The split store (Redis index over the embedded log) when Redis fails, end to end: the real
//! broker, a real `redis-server` that is killed and restarted empty, real MQTT clients.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{seq, Device, RedisBroker};
use serde_json::json;

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
