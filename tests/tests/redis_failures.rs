//! Redis failures an operator meets, end to end on `redis+embedded`: the real broker, a real
//! `redis-server` the test starts (here with an RDB file it restores from), real MQTT clients.
//! What a user checks: every acknowledged message is in both streams exactly once at the seq its
//! `sent` named, and a misconfigured second node is refused with a clear error instead of
//! silently sharing the first one's counters.

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{call_until, full_stream, mqim_bin, msg_id, seq, Broker, Device};
use mqim_im_plugin::testing::RedisServer;
use serde_json::json;

fn broker_on(redis: &RedisServer) -> Broker {
    Broker::start_with(&[
        ("MQIM_STORE_BACKEND", "redis+embedded"),
        ("MQIM_REDIS_URL", &redis.url()),
    ])
}

/// Resends the same clientMsgId until `sent` comes back (the protocol's answer to UNAVAILABLE).
async fn send_until_acked(d: &mut Device, to: &str, cmid: &str) -> serde_json::Value {
    let op = json!({"send": {"to": format!("u:{to}"), "clientMsgId": cmid, "text": cmid}});
    call_until(d, op, "sent").await
}

/// The most common Redis failure in production: `save` on, Redis crashes and comes back from an
/// RDB file older than its memory was, with its counters behind the log. Nobody talks to Redis
/// while it is down. Every acknowledged message must stay where `sent` said.
#[tokio::test]
async fn acked_messages_survive_a_redis_restored_from_an_older_snapshot() {
    let mut redis = RedisServer::start_with_snapshots();
    let broker = broker_on(&redis);
    let users = ["alice", "bob", "carol", "dave"];
    let mut devices = Vec::new();
    for u in users {
        devices.push(Device::connect(&broker, u, &format!("{u}-phone")).await);
    }
    // (sender, msgId) -> the sender's seq, for every `sent`.
    let mut acked: HashMap<(String, u64), u64> = HashMap::new();
    round(&mut devices, &users, "before", &mut acked).await;
    redis.snapshot();
    round(&mut devices, &users, "after", &mut acked).await;
    redis.restart();
    round(&mut devices, &users, "restored", &mut acked).await;
    assert_eq!(acked.len(), 120);

    for (i, d) in devices.iter_mut().enumerate() {
        let me = users[i];
        let peer_before = users[(i + users.len() - 1) % users.len()];
        let events = full_stream(d).await;
        let seqs: Vec<u64> = events.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{me}'s seqs are contiguous"
        );
        let mut copies: HashMap<u64, Vec<u64>> = HashMap::new();
        for e in &events {
            if e.get("message").is_some() {
                copies
                    .entry(msg_id(&e["message"]["msgId"]))
                    .or_default()
                    .push(seq(e));
            }
        }
        for ((from, id), sender_seq) in &acked {
            if from == me {
                assert_eq!(
                    copies.get(id),
                    Some(&vec![*sender_seq]),
                    "{me}'s own message {id} once, at the seq its `sent` named"
                );
            } else if from == peer_before {
                assert_eq!(
                    copies.get(id).map(Vec::len),
                    Some(1),
                    "{me} got {from}'s message {id} exactly once"
                );
            }
        }
    }
}

/// Ten messages from every user to the next one.
async fn round(
    devices: &mut [Device],
    users: &[&str],
    tag: &str,
    acked: &mut HashMap<(String, u64), u64>,
) {
    for k in 0..10 {
        for (i, d) in devices.iter_mut().enumerate() {
            let to = users[(i + 1) % users.len()];
            let sent = send_until_acked(d, to, &format!("{tag}-{i}-{k}")).await;
            acked.insert((users[i].to_string(), msg_id(&sent["msgId"])), seq(&sent));
        }
    }
}

/// Two `redis+embedded` brokers pointed at one Redis (an easy mistake: it looks like a cluster):
/// the second refuses to start and says why; the first keeps serving.
#[tokio::test]
async fn a_second_broker_on_the_same_redis_refuses_to_start() {
    let redis = RedisServer::start();
    let first = broker_on(&redis);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut second = Command::new(mqim_bin())
        .arg("serve")
        .env("MQIM_DATA_DIR", dir.path())
        .env("MQIM_MQTT_LISTEN", "127.0.0.1:0")
        .env("MQIM_WS_LISTEN", "off")
        .env("MQIM_ADMIN_LISTEN", "off")
        .env("MQIM_STORE_BACKEND", "redis+embedded")
        .env("MQIM_REDIS_URL", redis.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second mqim");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second broker kept running next to the first"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("node id 0 is held by another live node"),
        "the refusal says why: {stderr}"
    );
    // The first one is untouched.
    let mut alice = Device::connect(&first, "alice", "a1").await;
    let sent = alice.send("bob", "still-here", "hi").await;
    assert_eq!(seq(&sent), 1, "{sent}");
}
