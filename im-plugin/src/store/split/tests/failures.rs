//! Redis failures against the split store, each as an operator meets it, with a real
//! `redis-server`: a restart from an older RDB snapshot with no request during the outage,
//! FLUSHALL while log commits are slow, a `read` caught by a stall longer than the Redis timeout,
//! two nodes pointed at one Redis, a long rebuild next to other users' traffic; and a randomized
//! run of all of them with node restarts in between.
//!
//! Every test checks what a client would: each acknowledged message is in both streams exactly
//! once at the seqs it was acknowledged with, streams are contiguous (explicit gaps allowed),
//! what was handed out live is what `sync` returns for the same seq, unread counts agree with
//! the log, and a read's receipts exist once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;

use mqim_schemas::v1::event;
use rand::{Rng as _, SeedableRng as _};

use super::*;
use crate::store::split::{LogClaim, NodeClaims};
use crate::store::{ReadOutcome, SentRecord};

static NEXT_MSG_ID: AtomicU64 = AtomicU64::new(1 << 62);

fn next_msg(from: &str, to: &str, cmid: &str) -> NewMessage {
    let id = NEXT_MSG_ID.fetch_add(1, Ordering::Relaxed);
    msg(from, to, cmid, id)
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    /// msg_id -> (from, to, the sender's seq, the recipient's seq when the reply carried it).
    acked: BTreeMap<u64, (String, String, u64, Option<u64>)>,
    /// (user, seq) -> the event handed out live for it (send replies, read receipts).
    live: HashMap<(String, u64), Event>,
    users: BTreeSet<String>,
}

impl Ledger {
    fn record_send(&mut self, m: &NewMessage, outcome: &SendOutcome) {
        self.users.insert(m.from.clone());
        self.users.insert(m.to.clone());
        match outcome {
            SendOutcome::Fresh(a) => {
                let recipient = a.recipient_event.as_ref().map(|e| e.seq);
                self.acked.insert(
                    a.sent.msg_id,
                    (m.from.clone(), m.to.clone(), a.sent.seq, recipient),
                );
                self.live
                    .insert((m.from.clone(), a.sender_event.seq), a.sender_event.clone());
                if let Some(e) = &a.recipient_event {
                    self.live.insert((m.to.clone(), e.seq), e.clone());
                }
            }
            SendOutcome::Duplicate(original) => self.record_duplicate(m, original),
        }
    }

    fn record_duplicate(&mut self, m: &NewMessage, original: &SentRecord) {
        self.acked
            .entry(original.msg_id)
            .or_insert_with(|| (m.from.clone(), m.to.clone(), original.seq, None));
    }

    fn record_read(&mut self, user: &str, outcome: &ReadOutcome) {
        if let Some((own, (peer, theirs))) = &outcome.receipts {
            self.live.insert((user.to_string(), own.seq), own.clone());
            self.live.insert((peer.clone(), theirs.seq), theirs.clone());
        }
    }
}

/// Sends as a client does: resends the same clientMsgId until it gets an answer.
async fn send_until_acked(store: &SplitStore, m: NewMessage, ledger: &mut Ledger) {
    for _ in 0..600 {
        match store.append_message(m.clone()).await {
            Ok(outcome) => return ledger.record_send(&m, &outcome),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!(
        "{} -> {} {} was never acknowledged",
        m.from, m.to, m.client_msg_id
    );
}

/// Reads as a client does: retries until it gets an answer.
async fn read_until_done(
    store: &SplitStore,
    user: &str,
    conversation: &str,
    up_to: u64,
    ledger: &mut Ledger,
) -> ReadOutcome {
    for _ in 0..600 {
        match store.mark_read(user, conversation, up_to).await {
            Ok(outcome) => {
                ledger.record_read(user, &outcome);
                return outcome;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{user} could not read {conversation}");
}

/// The whole stream of `user`, as a device syncing from 0 gets it (waiting out young holes).
pub(super) async fn whole_stream(store: &SplitStore, user: &str) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for _ in 0..2000 {
        let after = events.last().map_or(0, |e| e.seq);
        match store.read_stream(user, after, 500).await {
            Ok(page) => {
                let done = !page.has_more;
                events.extend(page.events);
                if done {
                    return events;
                }
                if events.last().map_or(0, |e| e.seq) == after {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the stream of {user} never became readable to its end");
}

/// Checks every promise the split store makes against what the clients were told.
async fn verify(store: &SplitStore, ledger: &Ledger) {
    let mut streams: HashMap<String, Vec<Event>> = HashMap::new();
    for user in &ledger.users {
        let events = whole_stream(store, user).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "{user}'s stream is contiguous (gaps explicit)");
        let mut copies: HashMap<u64, usize> = HashMap::new();
        for e in &events {
            if let Some(event::Body::Message(m)) = &e.body {
                *copies.entry(m.msg_id).or_default() += 1;
            }
        }
        for (msg_id, n) in &copies {
            assert_eq!(*n, 1, "{user}'s stream holds message {msg_id} {n} times");
        }
        streams.insert(user.clone(), events);
    }
    let message_at = |user: &str, seq: u64| -> Option<u64> {
        match &streams[user].get(seq as usize - 1)?.body {
            Some(event::Body::Message(m)) => Some(m.msg_id),
            _ => None,
        }
    };
    for (msg_id, (from, to, sender_seq, recipient_seq)) in &ledger.acked {
        assert_eq!(
            message_at(from, *sender_seq),
            Some(*msg_id),
            "{from} seq {sender_seq}: acked message {msg_id} is not there"
        );
        let in_recipient = streams[to]
            .iter()
            .any(|e| matches!(&e.body, Some(event::Body::Message(m)) if m.msg_id == *msg_id));
        assert!(in_recipient, "{to} never got acked message {msg_id}");
        if let Some(seq) = recipient_seq {
            assert_eq!(
                message_at(to, *seq),
                Some(*msg_id),
                "{to} seq {seq}: acked message {msg_id} is not there"
            );
        }
    }
    for ((user, seq), live) in &ledger.live {
        let synced = streams[user].get(*seq as usize - 1);
        assert_eq!(
            synced,
            Some(live),
            "{user} seq {seq}: sync disagrees with what was delivered live"
        );
    }
    for user in &ledger.users {
        verify_unread(store, user, &streams[user]).await;
    }
}

/// Unread per conversation = the peer's messages above the user's own latest receipt, in the log.
async fn verify_unread(store: &SplitStore, user: &str, stream: &[Event]) {
    let mut pointer: HashMap<String, u64> = HashMap::new();
    for e in stream {
        if let Some(event::Body::Read(r)) = &e.body {
            if r.by == user {
                let p = pointer.entry(r.conversation.clone()).or_default();
                *p = (*p).max(r.msg_id);
            }
        }
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in stream {
        if let Some(event::Body::Message(m)) = &e.body {
            if m.from != user && m.msg_id > pointer.get(&m.conversation).copied().unwrap_or(0) {
                *want.entry(m.conversation.clone()).or_default() += 1;
            }
        }
    }
    let page = loop {
        match store.conversations(user, 10_000).await {
            Ok(page) => break page,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let got: BTreeMap<String, u64> = page
        .conversations
        .iter()
        .filter(|c| c.unread > 0)
        .map(|c| (c.id.clone(), c.unread))
        .collect();
    assert_eq!(got, want, "unread counts of {user}");
}

async fn split_on(redis: &RedisServer, log: Arc<dyn MessageLog>) -> SplitStore {
    SplitStore::new(index_on(redis).await, log, SplitOptions::default())
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}")).collect()
}

/// A round of messages: every user to the next one, `per_user` each.
async fn exchange(store: &SplitStore, who: &[String], per_user: usize, tag: &str, l: &mut Ledger) {
    for k in 0..per_user {
        for (i, from) in who.iter().enumerate() {
            let to = &who[(i + 1) % who.len()];
            let m = next_msg(from, to, &format!("{tag}-{from}-{k}"));
            send_until_acked(store, m, l).await;
        }
    }
}

/// Redis restarts from an RDB snapshot older than what it had in memory, and nothing reaches it
/// while it is down: the counters it comes back with are behind the log. No seq may be reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_reuses_no_seq() {
    let mut redis = RedisServer::start_with_snapshots();
    let dir = TempDir::new().unwrap();
    let log = Arc::new(LsmStore::open(dir.path()).unwrap());
    let store = split_on(&redis, log).await;
    let who = users(8);
    let mut ledger = Ledger::default();
    exchange(&store, &who, 20, "before", &mut ledger).await;
    redis.snapshot();
    exchange(&store, &who, 20, "after", &mut ledger).await;
    // Down and back from the snapshot, with no request in between.
    redis.restart();
    exchange(&store, &who, 10, "restored", &mut ledger).await;
    assert_eq!(ledger.acked.len(), 400);
    verify(&store, &ledger).await;
}

/// FLUSHALL in the middle of a send loop while every log write takes 5 ms to land: the seqs
/// allocated but still queued for the log must not be handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_while_commits_are_slow_reuses_no_seq() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let log = FaultyLog::new(Arc::new(LsmStore::open(dir.path()).unwrap()));
    log.one_writer.store(true, Ordering::SeqCst);
    log.write_delay_ms.store(5, Ordering::SeqCst);
    let store = Arc::new(split_on(&redis, log.clone()).await);
    let who = users(8);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for (i, from) in who.iter().enumerate() {
        let (store, stop) = (store.clone(), stop.clone());
        let (from, to) = (from.clone(), who[(i + 1) % who.len()].clone());
        senders.push(tokio::spawn(async move {
            let mut ledger = Ledger::default();
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                let m = next_msg(&from, &to, &format!("{from}-m{k}"));
                send_until_acked(&store, m, &mut ledger).await;
                k += 1;
            }
            ledger
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let mut ledger = Ledger::default();
    for s in senders {
        let part = s.await.unwrap();
        ledger.acked.extend(part.acked);
        ledger.live.extend(part.live);
        ledger.users.extend(part.users);
    }
    assert!(ledger.acked.len() > 50, "only {} sends", ledger.acked.len());
    log.write_delay_ms.store(0, Ordering::SeqCst);
    verify(&store, &ledger).await;
}

/// A `read` meets a Redis stall longer than the Redis timeout: it fails, Redis applies it after
/// the stall, and the client's retry must still produce the receipts, once, in both streams;
/// after Redis later loses everything, the conversation is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_retried_after_a_redis_stall_produces_its_receipts() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let log = Arc::new(LsmStore::open(dir.path()).unwrap());
    let store = split_on(&redis, log).await;
    let mut ledger = Ledger::default();
    for k in 0..6 {
        send_until_acked(
            &store,
            next_msg("alice", "bob", &format!("m{k}")),
            &mut ledger,
        )
        .await;
    }
    let last = *ledger.acked.keys().last().unwrap();
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "2500", "ALL"]), "+OK");
    let stalled = store.mark_read("bob", "u:alice", last).await;
    assert!(
        stalled.is_err(),
        "the read outlived the Redis timeout: {stalled:?}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retried = read_until_done(&store, "bob", "u:alice", last, &mut ledger).await;
    assert_eq!(retried.unread, 0);
    let (own, (peer, theirs)) = retried
        .receipts
        .expect("the retried read produces the receipts the first attempt would have");
    assert_eq!(peer, "alice");
    assert!(matches!(own.body, Some(event::Body::Read(_))));
    assert!(matches!(theirs.body, Some(event::Body::Read(_))));
    // Reading again changes nothing and produces nothing.
    let again = read_until_done(&store, "bob", "u:alice", last, &mut ledger).await;
    assert!(again.receipts.is_none(), "{again:?}");
    verify(&store, &ledger).await;
    for user in ["alice", "bob"] {
        let receipts = whole_stream(&store, user)
            .await
            .into_iter()
            .filter(|e| matches!(e.body, Some(event::Body::Read(_))))
            .count();
        assert_eq!(receipts, 1, "{user} has the receipt once");
    }
    redis.restart();
    verify(&store, &ledger).await;
}

fn claims(identity: &str, log: LogClaim) -> Option<NodeClaims> {
    Some(NodeClaims {
        identity: identity.to_string(),
        log,
    })
}

async fn open_node(
    redis: &RedisServer,
    node_id: u16,
    claims: Option<NodeClaims>,
) -> StoreResult<SplitStore> {
    let cfg = RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    };
    let index = RedisIndex::connect(&cfg, 3600).await?;
    let dir = TempDir::new().unwrap();
    let log = Arc::new(LsmStore::open(dir.path()).unwrap());
    // The dir may go: these stores only claim.
    std::mem::forget(dir);
    let opts = SplitOptions {
        node_id,
        claims,
        ..SplitOptions::default()
    };
    SplitStore::open(index, log, opts).await
}

/// Two nodes pointed at one Redis: a second node with the same node id, or a second node with a
/// log of its own under the same key prefix, refuses to start and says why; the same node
/// (same identity) restarting takes its claims back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_redis_refuses_to_start() {
    let redis = RedisServer::start();
    let first = open_node(&redis, 0, claims("node-a", LogClaim::Exclusive))
        .await
        .expect("the first node starts");
    let same_id = open_node(&redis, 0, claims("node-b", LogClaim::Shared)).await;
    let e = same_id
        .err()
        .expect("a second node with node id 0 is refused");
    assert!(e.0.contains("node id 0"), "{e}");
    let own_log = open_node(&redis, 1, claims("node-b", LogClaim::Exclusive)).await;
    let e = own_log
        .err()
        .expect("a second node with its own log is refused");
    assert!(e.0.contains("key prefix"), "{e}");
    let shared = open_node(&redis, 2, claims("node-c", LogClaim::Shared)).await;
    assert!(
        shared.is_err(),
        "a shared-log node next to an embedded one is refused"
    );
    drop(first);
    let restarted = open_node(&redis, 0, claims("node-a", LogClaim::Exclusive)).await;
    assert!(restarted.is_ok(), "the same node restarting starts at once");
}

/// A user whose rebuild takes long (here: held until released) delays only their own requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rebuild_delays_only_its_own_user() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let log = FaultyLog::new(Arc::new(LsmStore::open(dir.path()).unwrap()));
    let store = Arc::new(split_on(&redis, log.clone()).await);
    let mut ledger = Ledger::default();
    send_until_acked(&store, next_msg("big", "friend", "b0"), &mut ledger).await;
    send_until_acked(&store, next_msg("alice", "carol", "a0"), &mut ledger).await;
    *log.hold_reads_of.lock() = Some("big".into());
    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");
    let slow = {
        let store = store.clone();
        let m = next_msg("big", "friend", "b1");
        tokio::spawn(async move { (store.append_message(m.clone()).await, m) })
    };
    while log.held.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // big is being rebuilt; alice and carol are not held up by it.
    for k in 1..5 {
        let m = next_msg("alice", "carol", &format!("a{k}"));
        let outcome =
            tokio::time::timeout(Duration::from_secs(20), store.append_message(m.clone()))
                .await
                .expect("alice's send does not wait for big's rebuild")
                .expect("alice's send");
        ledger.record_send(&m, &outcome);
    }
    assert!(!slow.is_finished(), "big's send waits for big's rebuild");
    *log.hold_reads_of.lock() = None;
    log.released.notify_waiters();
    let (outcome, m) = slow.await.unwrap();
    let outcome = outcome.expect("big's send after the rebuild");
    match &outcome {
        SendOutcome::Fresh(a) => assert_eq!(a.sent.seq, 2, "big's seqs continue"),
        other => panic!("{other:?}"),
    }
    ledger.record_send(&m, &outcome);
    verify(&store, &ledger).await;
}

/// Random interleavings of sends (and resends), reads, FLUSHALL, Redis restarts (empty and from
/// an old snapshot) and node restarts (the store dropped mid-flight and reopened on the same data
/// dir), for `MQIM_CHAOS_SECS` (default 12) seconds; the seed is printed and can be replayed
/// with `MQIM_CHAOS_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_redis_failures_lose_no_acknowledged_message() {
    let secs: u64 = std::env::var("MQIM_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("MQIM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (MQIM_CHAOS_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut redis = RedisServer::start_with_snapshots();
    let dir = TempDir::new().unwrap();
    let open = |redis: &RedisServer| {
        let url = redis.url();
        let path = dir.path().to_path_buf();
        async move {
            let cfg = RedisConfig {
                url,
                key_prefix: "chaos".into(),
                timeout_ms: 1000,
            };
            let index = RedisIndex::connect(&cfg, 3600).await.expect("connect");
            // Tasks of the stopped node may hold the log for a moment longer.
            let mut log = LsmStore::open(&path);
            for _ in 0..100 {
                if log.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                log = LsmStore::open(&path);
            }
            let log = Arc::new(log.expect("open log"));
            SplitStore::new(index, log, SplitOptions::default())
        }
    };
    let mut store = open(&redis).await;
    let who = users(5);
    let mut ledger = Ledger::default();
    let mut pending: Vec<NewMessage> = Vec::new();
    let mut events = BTreeMap::<&str, usize>::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        let roll = rng.random_range(0..100);
        let from = &who[rng.random_range(0..who.len())];
        let to = &who[rng.random_range(0..who.len())];
        match roll {
            0..=59 => {
                let m = next_msg(from, to, &format!("c{k}"));
                // Sometimes the reply is "lost": the client resends later.
                if rng.random_bool(0.1) {
                    // Enqueued at the call; its answer is never read.
                    drop(store.append_message(m.clone()));
                    pending.push(m);
                } else {
                    send_until_acked(&store, m, &mut ledger).await;
                }
            }
            60..=79 => {
                if from != to {
                    let up_to = NEXT_MSG_ID.load(Ordering::Relaxed);
                    let up_to = rng.random_range((1 << 62)..up_to.max((1 << 62) + 1));
                    read_until_done(&store, to, &format!("u:{from}"), up_to, &mut ledger).await;
                }
            }
            80..=84 => {
                for m in pending.drain(..) {
                    send_until_acked(&store, m, &mut ledger).await;
                }
            }
            85..=87 => {
                redis.snapshot();
                *events.entry("snapshot").or_default() += 1;
            }
            88..=90 => {
                redis.command(&["FLUSHALL"]);
                *events.entry("flushall").or_default() += 1;
            }
            91..=94 => {
                redis.restart();
                *events.entry("redis restart").or_default() += 1;
            }
            _ => {
                // The node stops with whatever is in flight, and comes back on its data dir.
                drop(store);
                tokio::time::sleep(Duration::from_millis(50)).await;
                store = open(&redis).await;
                *events.entry("node restart").or_default() += 1;
            }
        }
    }
    for m in pending.drain(..) {
        send_until_acked(&store, m, &mut ledger).await;
    }
    eprintln!(
        "chaos: {} acked messages, {} steps, {events:?}",
        ledger.acked.len(),
        k
    );
    verify(&store, &ledger).await;
}
