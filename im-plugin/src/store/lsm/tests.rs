//! The LSM store's tests: the conformance suite, reopen and crash (kill -9 mid batch) recovery,
//! key encodings, group commit.

use mqim_schemas::v1::event;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::store::conformance;

fn open_fresh() -> (TempDir, Arc<LsmStore>) {
    let dir = TempDir::new().expect("temp dir");
    let store = LsmStore::open(dir.path()).expect("open store");
    (dir, Arc::new(store))
}

/// One test per conformance case, so a failure names its case and cases run in parallel.
macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (_dir, store) = open_fresh();
            conformance::$case(store).await;
        }
    )*};
}

conformance::for_each_case!(conformance_tests);
conformance::for_each_amend_case!(conformance_tests);

/// The whole suite through `run_all`, as another crate would run it, each case in a directory
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes() {
    let root = TempDir::new().expect("temp dir");
    let base = root.path().to_path_buf();
    conformance::run_all(|name| {
        let dir = base.join(name);
        async move {
            let store: Arc<dyn MessageStore> = Arc::new(LsmStore::open(&dir).expect("open store"));
            store
        }
    })
    .await;
}

fn msg(from: &str, to: &str, client_msg_id: &str, msg_id: u64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        msg_id,
        ts: 1_700_000_000_000 + msg_id as i64,
        text: Some(format!("#{msg_id}")),
        body: None,
        kind: None,
    }
}

async fn sent(store: &LsmStore, m: NewMessage) -> SentRecord {
    match store.append_message(m).await.expect("append") {
        SendOutcome::Fresh(a) => a.sent,
        SendOutcome::Duplicate(s) => panic!("unexpected duplicate {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let (first, bob_stream, alice_stream) = {
        let store = LsmStore::open(dir.path()).expect("open");
        let first = sent(&store, msg("alice", "bob", "c1", 10)).await;
        sent(&store, msg("bob", "alice", "c1", 11)).await;
        sent(&store, msg("alice", "alice", "note", 12)).await;
        sent(&store, msg("alice", "bob", "c2", 9)).await;
        assert_eq!(
            store
                .advance_cursor("bob", "phone", 1)
                .await
                .expect("cursor"),
            1
        );
        let bob = store.read_stream("bob", 0, 100).await.expect("read");
        let alice = store.read_stream("alice", 0, 100).await.expect("read");
        (first, bob, alice)
        // Dropped here: the writer drains, the database is closed and unlocked.
    };
    assert!(
        dir.path().join("lsm").is_dir(),
        "the store lives in dir/lsm"
    );

    let store = LsmStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.read_stream("bob", 0, 100).await.expect("read"),
        bob_stream
    );
    assert_eq!(
        store.read_stream("alice", 0, 100).await.expect("read"),
        alice_stream
    );
    assert_eq!(store.last_seq("alice").await.expect("last"), 4);
    assert_eq!(store.last_seq("bob").await.expect("last"), 3);
    assert_eq!(store.max_msg_id().await.expect("max"), 12);
    assert_eq!(
        store
            .advance_cursor("bob", "phone", 0)
            .await
            .expect("cursor"),
        1,
        "cursor lost"
    );
    match store.append_message(msg("alice", "bob", "c1", 99)).await {
        Ok(SendOutcome::Duplicate(s)) => assert_eq!(s, first, "dedup entry changed"),
        other => panic!("dedup lost across reopen: {other:?}"),
    }
    let next = sent(&store, msg("bob", "alice", "c3", 13)).await;
    assert_eq!(next.seq, 4, "bob's seqs continue");
    let page = store.read_stream("alice", 4, 100).await.expect("read");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].seq, 5, "alice's seqs continue");
}

#[tokio::test]
async fn a_second_open_of_an_open_store_fails_cleanly() {
    let (dir, _store) = open_fresh();
    assert!(LsmStore::open(dir.path()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let (_dir, store) = open_fresh();
    // Every call enqueues at once (the trait's ordering contract); only then are they awaited.
    let pending: Vec<_> = (0..256u64)
        .map(|i| store.append_message(msg(&format!("s{}", i % 8), "r", &format!("c{i}"), i + 1)))
        .collect();
    for (i, answer) in pending.into_iter().enumerate() {
        match answer.await {
            Ok(SendOutcome::Fresh(a)) => {
                assert_eq!(a.recipient_event.map(|e| e.seq), Some(i as u64 + 1));
            }
            other => panic!("append {i}: {other:?}"),
        }
    }
    let stats = store.writer_stats();
    assert_eq!(stats.requests, 256);
    // All 256 were queued before the first answer was awaited, far faster than 256 syncs, so
    // commits must have carried several of them each.
    assert!(stats.batches < stats.requests, "no batching: {stats:?}");
    assert_eq!(store.last_seq("r").await.expect("last"), 256);
}

/// Length prefixes keep components apart: a user whose id extends another's has a stream of
/// its own, and (sender, clientMsgId) pairs that concatenate alike are different messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_unambiguous() {
    let (_dir, store) = open_fresh();
    sent(&store, msg("a", "ab", "bc", 1)).await;
    sent(&store, msg("ab", "a", "c", 2)).await;
    sent(&store, msg("a\u{1}", "a", "x", 3)).await;
    assert_eq!(store.last_seq("a").await.expect("last"), 3);
    assert_eq!(store.last_seq("ab").await.expect("last"), 2);
    assert_eq!(store.last_seq("a\u{1}").await.expect("last"), 1);
    let a = store.read_stream("a", 0, 100).await.expect("read");
    assert_eq!(
        a.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(!a.has_more);
    let ab = store.read_stream("ab", 0, 100).await.expect("read");
    assert_eq!(ab.events.len(), 2);
    // Cursors of ("a", "bc") and ("ab", "c") are different rows.
    assert_eq!(store.advance_cursor("a", "bc", 3).await.expect("c"), 3);
    assert_eq!(store.advance_cursor("ab", "c", 1).await.expect("c"), 1);
    assert_eq!(store.advance_cursor("a", "bc", 0).await.expect("c"), 3);
}

/// A request the store refuses fails alone: the others of its batch are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_does_not_fail_its_batch() {
    let (_dir, store) = open_fresh();
    let huge = "x".repeat(MAX_KEY_LEN + 1);
    let before = store.append_message(msg("alice", "bob", "c1", 1));
    let refused = store.append_message(msg("alice", "bob", &huge, 2));
    let after = store.append_message(msg("alice", "bob", "c3", 3));
    assert!(refused.await.is_err(), "an oversized key was accepted");
    let seqs: Vec<u64> = [before.await, after.await]
        .into_iter()
        .map(|r| match r {
            Ok(SendOutcome::Fresh(a)) => a.sent.seq,
            other => panic!("a valid append of the batch failed: {other:?}"),
        })
        .collect();
    assert_eq!(seqs, [1, 2], "the refused append consumed a seq");
    assert_eq!(store.last_seq("bob").await.expect("last"), 2);
}

/// A purge queued between appends applies between them: the append before it is purged (its
/// ts is old), the resend after it is a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_applies_in_queue_order() {
    let (_dir, store) = open_fresh();
    let original = store.append_message(msg("alice", "bob", "c1", 1));
    let purge = store.purge_dedup(i64::MAX);
    tokio::pin!(purge);
    // The first poll enqueues the purge's first chunk behind the original.
    assert!(futures::poll!(&mut purge).is_pending());
    let resend = store.append_message(msg("alice", "bob", "c1", 2));
    let original = original.await.expect("append");
    assert_eq!(purge.await.expect("purge"), 1);
    match (original, resend.await.expect("append")) {
        (SendOutcome::Fresh(a), SendOutcome::Fresh(b)) => {
            assert_eq!((a.sent.seq, b.sent.seq), (1, 2));
        }
        other => panic!("expected two fresh appends, got {other:?}"),
    }
}

#[test]
fn dedup_values_and_by_time_keys_round_trip() {
    let sent = SentRecord {
        group_seq: 0,
        msg_id: u64::MAX,
        seq: 7,
        conversation: "u:bob".into(),
        ts: -5,
    };
    assert_eq!(
        decode_dedup(&encode_dedup(&sent, i64::MIN)).expect("decode"),
        (sent, i64::MIN)
    );
    assert!(decode_dedup(&[0; 31]).is_err());
    let key = by_time_key(-1, "a/b", "c\0d");
    let (ts, from, cmid) = decode_by_time_key(&key).expect("decode");
    assert_eq!((ts, from, cmid), (-1, &b"a/b"[..], &b"c\0d"[..]));
    assert!(decode_by_time_key(&key[..10]).is_err());
    // Byte order is time order, across zero too.
    let times = [i64::MIN, -2, -1, 0, 1, i64::MAX];
    for pair in times.windows(2) {
        assert!(ordered_ts(pair[0]) < ordered_ts(pair[1]), "{pair:?}");
    }
}

// -----------------------------------------------------------------------------------------
// kill -9

/// Set only in the child process of [`survives_kill_9_mid_batch`].
const CRASH_DIR_ENV: &str = "MQIM_LSM_CRASH_CHILD_DIR";
const CRASH_SENDERS: u64 = 32;
const CRASH_RECIPIENTS: u64 = 4;

/// The child of [`survives_kill_9_mid_batch`]: appends as fast as it can and prints one line
/// per acknowledged append, until it is killed (or, as a bound, after 60 s). Does nothing in
/// an ordinary test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(LsmStore::open(Path::new(&dir)).expect("open in child"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<_> = (0..CRASH_SENDERS)
            .map(|s| {
                let store = store.clone();
                tokio::spawn(async move {
                    let from = format!("s{s}");
                    let to = format!("r{}", s % CRASH_RECIPIENTS);
                    // A sender's stream holds only its own sends: k-th send has seq k + 1.
                    let mut k = store.last_seq(&from).await.expect("last seq");
                    while Instant::now() < deadline {
                        let m = NewMessage {
                            text: Some(format!("{from} #{k} {}", "x".repeat(200))),
                            ..crash_msg(&from, &to, s, k)
                        };
                        match store.append_message(m).await {
                            Ok(SendOutcome::Fresh(a)) => {
                                println!("ACK {from} {k} {}", a.sent.seq)
                            }
                            other => panic!("child append failed: {other:?}"),
                        }
                        k += 1;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("sender task");
        }
    });
}

fn crash_msg(from: &str, to: &str, s: u64, k: u64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: format!("{from}-{k}"),
        msg_id: ((s + 1) << 32) | k,
        ts: 1_700_000_000_000 + k as i64,
        text: None,
        body: None,
        kind: Some("text".into()),
    }
}

/// kill -9 of a process in the middle of appending: every acknowledged append is there after
/// recovery, and every message is either wholly there (both streams, dedup entry, max msg_id)
/// or not at all. A process crash, not a power cut: what the child wrote but had not synced
/// is still in the page cache, so this checks fjall's journal recovery (torn trailing batches
/// included: a batch is larger than the journal's 8 KiB write buffer), not the disk.
#[test]
fn survives_kill_9_mid_batch() {
    let dir = TempDir::new().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Highest acknowledged k per sender, over all rounds.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "store::lsm::tests::crash_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("child stdout");
        let target = 500 + round * 377;
        let mut count = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            let Some(ack) = line.strip_prefix("ACK ") else {
                continue;
            };
            let fields: Vec<&str> = ack.split(' ').collect();
            let [from, k, seq] = fields[..] else {
                panic!("bad ack line {line:?}");
            };
            let k: u64 = k.parse().expect("k");
            assert_eq!(seq.parse::<u64>().expect("seq"), k + 1, "{line}");
            let best = acked.entry(from.to_owned()).or_default();
            *best = (*best).max(k + 1);
            count += 1;
            if count >= target {
                break;
            }
        }
        child.kill().expect("kill -9 the child");
        child.wait().expect("reap the child");
        assert!(
            count >= target,
            "round {round}: the child stopped after {count} acks"
        );
        rt.block_on(verify_after_crash(dir.path(), &acked));
    }
}

async fn verify_after_crash(dir: &Path, acked: &BTreeMap<String, u64>) {
    let store = LsmStore::open(dir).expect("reopen after kill -9");
    let mut by_recipient: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut max_id = 0;
    for s in 0..CRASH_SENDERS {
        let from = format!("s{s}");
        let to = format!("r{}", s % CRASH_RECIPIENTS);
        let n = store.last_seq(&from).await.expect("last seq");
        let stream = read_all(&store, &from).await;
        assert_eq!(
            stream.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "{from}'s stream is not 1..=last_seq"
        );
        for (k, event) in stream.iter().enumerate() {
            let Some(event::Body::Message(m)) = &event.body else {
                panic!("{from}: event {} has no message", event.seq);
            };
            assert_eq!(m.client_msg_id, format!("{from}-{k}"), "{from}'s order");
            max_id = max_id.max(m.msg_id);
            by_recipient
                .entry(to.clone())
                .or_default()
                .insert((from.clone(), m.client_msg_id.clone()));
        }
        let acked_n = acked.get(&from).copied().unwrap_or(0);
        assert!(n >= acked_n, "{from}: {acked_n} acknowledged, {n} stored");
        if n > 0 {
            // The last stored message has its dedup entry...
            let k = n - 1;
            match store.append_message(crash_msg(&from, &to, s, k)).await {
                Ok(SendOutcome::Duplicate(sent)) => assert_eq!(sent.seq, n),
                other => panic!("{from}-{k}: dedup entry lost: {other:?}"),
            }
        }
        // ...and the first unstored one has none (nor a seq claimed in its name).
        match store.append_message(crash_msg(&from, &to, s, n)).await {
            Ok(SendOutcome::Fresh(a)) => {
                assert_eq!(a.sent.seq, n + 1, "{from}: seq after recovery");
                max_id = max_id.max(a.sent.msg_id);
                by_recipient
                    .entry(to.clone())
                    .or_default()
                    .insert((from.clone(), a.sent_cmid()));
            }
            other => panic!("{from}-{n}: a message that is not stored deduplicates: {other:?}"),
        }
    }
    for (to, want) in &by_recipient {
        let n = store.last_seq(to).await.expect("last seq");
        let stream = read_all(&store, to).await;
        assert_eq!(
            stream.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "{to}'s stream is not 1..=last_seq"
        );
        let got: BTreeSet<(String, String)> = stream
            .iter()
            .filter_map(|e| match &e.body {
                Some(event::Body::Message(m)) => Some((m.from.clone(), m.client_msg_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), stream.len(), "{to}: a message stored twice");
        assert_eq!(&got, want, "{to}'s copies differ from the senders' streams");
    }
    assert_eq!(store.max_msg_id().await.expect("max"), max_id, "max msg_id");
}

trait SentCmid {
    fn sent_cmid(&self) -> String;
}

impl SentCmid for Appended {
    fn sent_cmid(&self) -> String {
        match &self.sender_event.body {
            Some(event::Body::Message(m)) => m.client_msg_id.clone(),
            _ => String::new(),
        }
    }
}

async fn read_all(store: &LsmStore, user: &str) -> Vec<Event> {
    let mut all: Vec<Event> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.seq);
        let page = store.read_stream(user, after, 1000).await.expect("read");
        all.extend(page.events);
        if !page.has_more {
            return all;
        }
    }
}
