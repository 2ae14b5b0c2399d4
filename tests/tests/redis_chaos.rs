//! Random interleavings of Redis and broker failures on `redis+embedded`, end to end: sends (some
//! whose broker is killed with `kill -9` before the reply, resent after the restart), reads,
//! `FLUSHALL`, Redis restarts from an old RDB snapshot, and `kill -9` of the broker, for
//! `MQIM_CHAOS_SECS` seconds (default 20). The seed is printed; `MQIM_CHAOS_SEED` replays it.
//! At the end every acknowledged message is in both streams exactly once at the seq `sent` named,
//! streams are contiguous (explicit gaps allowed), and unread counts agree with the streams.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{call_until, full_stream, msg_id, seq, Broker, Device};
use mqim_im_plugin::testing::RedisServer;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];

async fn connect_all(broker: &Broker) -> Vec<Device> {
    let mut devices = Vec::new();
    for u in USERS {
        devices.push(Device::connect(broker, u, &format!("{u}-d")).await);
    }
    devices
}

async fn send_until_acked(d: &mut Device, to: &str, cmid: &str) -> Value {
    let op = json!({"send": {"to": format!("u:{to}"), "clientMsgId": cmid, "text": cmid}});
    call_until(d, op, "sent").await
}

async fn read_until_done(d: &mut Device, conversation: &str, up_to: u64) {
    let op = json!({"read": {"conversation": conversation, "msgId": up_to.to_string()}});
    call_until(d, op, "read").await;
}

#[tokio::test]
async fn random_redis_and_broker_failures_lose_no_acknowledged_message() {
    let secs: u64 = std::env::var("MQIM_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("MQIM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (MQIM_CHAOS_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut redis = RedisServer::start_with_snapshots();
    let mut broker = Broker::start_with(&[
        ("MQIM_STORE_BACKEND", "redis+embedded"),
        ("MQIM_REDIS_URL", &redis.url()),
    ]);
    let mut devices = connect_all(&broker).await;
    // (sender, msgId) -> (sender's seq, recipient).
    let mut acked: HashMap<(String, u64), (u64, &str)> = HashMap::new();
    // Sends whose reply was lost to a kill -9: (sender index, recipient, clientMsgId).
    let mut unanswered: Vec<(usize, &str, String)> = Vec::new();
    let mut highest_msg_id = 0u64;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        let from = rng.random_range(0..USERS.len());
        let to = USERS[rng.random_range(0..USERS.len())];
        let step = match rng.random_range(0..100) {
            0..=64 => {
                let sent = send_until_acked(&mut devices[from], to, &format!("c{k}")).await;
                let id = msg_id(&sent["msgId"]);
                highest_msg_id = highest_msg_id.max(id);
                acked.insert((USERS[from].to_string(), id), (seq(&sent), to));
                "send"
            }
            65..=79 if highest_msg_id > 0 => {
                let peer = USERS[from];
                let reader = USERS.iter().position(|u| *u == to).unwrap_or(0);
                if peer != to {
                    read_until_done(&mut devices[reader], &format!("u:{peer}"), highest_msg_id)
                        .await;
                }
                "read"
            }
            80..=84 => {
                redis.snapshot();
                "snapshot"
            }
            85..=87 => {
                assert_eq!(redis.command(&["FLUSHALL"]), "+OK");
                "flushall"
            }
            88..=92 => {
                redis.restart();
                "redis restart (from the last snapshot)"
            }
            _ => {
                // A send in flight when the broker dies: its client never hears back.
                let cmid = format!("c{k}-inflight");
                let op =
                    json!({"send": {"to": format!("u:{to}"), "clientMsgId": cmid, "text": "x"}});
                devices[from].request(op).await;
                broker.kill9();
                broker.restart();
                devices = connect_all(&broker).await;
                unanswered.push((from, to, cmid));
                "broker kill -9"
            }
        };
        *counts.entry(step).or_default() += 1;
    }
    // The clients whose replies were lost resend, as the protocol asks.
    for (from, to, cmid) in unanswered {
        let sent = send_until_acked(&mut devices[from], to, &cmid).await;
        acked.insert(
            (USERS[from].to_string(), msg_id(&sent["msgId"])),
            (seq(&sent), to),
        );
    }
    eprintln!("chaos: {} acked, {k} steps: {counts:?}", acked.len());

    for (i, d) in devices.iter_mut().enumerate() {
        let me = USERS[i];
        let events = full_stream(d).await;
        let seqs: Vec<u64> = events.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{me}'s stream is contiguous"
        );
        let mut at: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut read_upto: HashMap<String, u64> = HashMap::new();
        let mut unread: BTreeMap<String, u64> = BTreeMap::new();
        for e in &events {
            if let Some(m) = e.get("message") {
                at.entry(msg_id(&m["msgId"])).or_default().push(seq(e));
            }
            if let Some(r) = e.get("read") {
                if r["by"] == me {
                    let c = r["conversation"].as_str().unwrap().to_string();
                    let p = read_upto.entry(c).or_default();
                    *p = (*p).max(msg_id(&r["msgId"]));
                }
            }
        }
        for e in &events {
            if let Some(m) = e.get("message") {
                let c = m["conversation"].as_str().unwrap().to_string();
                if m["from"] != me && msg_id(&m["msgId"]) > read_upto.get(&c).copied().unwrap_or(0)
                {
                    *unread.entry(c).or_default() += 1;
                }
            }
        }
        for (id, seqs) in &at {
            assert_eq!(seqs.len(), 1, "{me} holds message {id} at {seqs:?}");
        }
        for ((from, id), (sender_seq, to)) in &acked {
            if from == me {
                assert_eq!(
                    at.get(id),
                    Some(&vec![*sender_seq]),
                    "{me}'s acked message {id} at the seq `sent` named"
                );
            } else if *to == me {
                assert!(
                    at.contains_key(id),
                    "{me} never got {from}'s acked message {id}"
                );
            }
        }
        let r = call_until(d, json!({"conversations": {"limit": 100}}), "conversations").await;
        let got: BTreeMap<String, u64> = r["conversations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let n: u64 = c["unread"].as_str()?.parse().ok()?;
                Some((c["id"].as_str()?.to_string(), n))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(got, unread, "{me}'s unread counts agree with the stream");
    }
}
