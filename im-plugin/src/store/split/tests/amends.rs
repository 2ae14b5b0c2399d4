//! Recall and edit on the split store through Redis data loss, with a real `redis-server`: a
//! recalled message stays out of the unread counts when the index is rebuilt from the log, and
//! an amend allocated seqs that the log already holds (Redis came back from an older snapshot)
//! is retried above them, overwriting nothing; and a recall's index update waits behind its
//! message's while that one waits for Redis.

use super::failures::whole_stream;
use super::*;
use crate::store::conformance::one_to_one;
use crate::store::extras::{Amend, AmendKind, AmendOutcome, ExtrasStore};

fn message(from: &str, to: &str, cmid: &str, msg_id: u64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: cmid.into(),
        msg_id,
        ts: crate::now_ms(),
        text: Some(format!("text {msg_id}")),
        body: None,
        kind: None,
    }
}

fn recall(by: &str, peer: &str, msg_id: u64) -> Amend {
    one_to_one(by, peer, msg_id, AmendKind::Recall)
}

async fn send(store: &SplitStore, m: NewMessage) {
    let what = m.client_msg_id.clone();
    for _ in 0..100 {
        match store.append_message(m.clone()).await {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{what} was never accepted");
}

/// Retries until the store answers (Redis may be reconnecting).
async fn amend_until_answered(store: &SplitStore, a: Amend) -> AmendOutcome {
    for _ in 0..100 {
        match store.amend(a.clone()).await {
            Ok(outcome) => return outcome,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the amend was never answered");
}

async fn unread(store: &SplitStore, user: &str, conversation: &str) -> u64 {
    let page = store.conversations(user, 10).await.expect("conversations");
    page.conversations
        .iter()
        .find(|c| c.id == conversation)
        .map_or(0, |c| c.unread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_message_stays_out_of_unread_when_redis_is_rebuilt() {
    let f = fixture().await;
    send(&f.store, message("alice", "bob", "c1", 10)).await;
    send(&f.store, message("alice", "bob", "c2", 11)).await;
    let out = amend_until_answered(&f.store, recall("alice", "bob", 10)).await;
    assert!(matches!(out, AmendOutcome::Done(_)), "{out:?}");
    assert_eq!(unread(&f.store, "bob", "u:alice").await, 1);

    assert_eq!(f.redis.command(&["FLUSHALL"]), "+OK");
    // The next send finds both users' keys gone and rebuilds them from the log.
    send(&f.store, message("alice", "bob", "c3", 12)).await;
    assert_eq!(
        unread(&f.store, "bob", "u:alice").await,
        2,
        "after the rebuild: the two messages left, not the recalled one"
    );
}

/// Redis comes back from an older snapshot (every user stale: rebuilt before the amend is
/// allocated), then counters are lowered behind the node's back (what the log's conflict check
/// is for): each amend lands above every event, no message is overwritten, and a seq a retry
/// left unused reads as a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amends_after_redis_forgets_seqs_overwrite_nothing() {
    let mut redis = RedisServer::start_with_snapshots();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(dir.path()).expect("open log"));
    let cfg = RedisConfig {
        url: redis.url(),
        key_prefix: "amends".into(),
        timeout_ms: 1000,
    };
    let index = RedisIndex::connect(&cfg, 3600).await.expect("connect");
    let store = SplitStore::new(index, log, SplitOptions::default());
    send(&store, message("alice", "bob", "c1", 10)).await;
    redis.snapshot();
    send(&store, message("alice", "bob", "c2", 11)).await;
    send(&store, message("bob", "alice", "c3", 12)).await;
    redis.restart();
    let edit = |text: &str| Amend {
        kind: AmendKind::Edit {
            text: Some(text.into()),
            body: None,
        },
        ..recall("alice", "bob", 10)
    };
    let out = amend_until_answered(&store, edit("fixed")).await;
    let AmendOutcome::Done(events) = out else {
        panic!("the edit was not done: {out:?}")
    };
    let at: Vec<(&str, u64)> = events.iter().map(|(o, e)| (o.as_str(), e.seq)).collect();
    assert_eq!(at, [("alice", 4), ("bob", 4)], "above every message");

    // Both counters back at 1, still stamped with this Redis: the next allocation names seq 2,
    // which holds c2; the log refuses it, the users are rebuilt and the edit goes above.
    for user in ["5:alice", "3:bob"] {
        let key = format!("amends:seq:{user}");
        assert_eq!(redis.command(&["HSET", &key, "n", "1"]), ":0");
    }
    let out = amend_until_answered(&store, edit("fixed again")).await;
    let AmendOutcome::Done(events) = out else {
        panic!("the second edit was not done: {out:?}")
    };
    for (owner, e) in &events {
        assert!(
            e.seq > 4,
            "{owner}: the edit is above every event, at {}",
            e.seq
        );
    }
    for user in ["alice", "bob"] {
        let stream = whole_stream(&store, user).await;
        let seqs: Vec<u64> = stream.iter().map(|e| e.seq).collect();
        let last = seqs.last().copied().unwrap_or_default();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{user}: contiguous");
        let texts: Vec<Option<&str>> = stream
            .iter()
            .filter_map(|e| match &e.body {
                Some(event::Body::Message(m)) => Some(m.text.as_deref()),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            [Some("fixed again"), Some("text 11"), Some("text 12")],
            "{user}: every message is there, the first one edited"
        );
        // After the messages: the two edits, and gaps where a retry left a seq unused.
        let edits = stream[3..]
            .iter()
            .filter(|e| matches!(e.body, Some(event::Body::Edited(_))))
            .count();
        assert_eq!(edits, 2, "{user} has each edit once");
        assert!(
            stream[3..].iter().all(|e| matches!(
                e.body,
                Some(event::Body::Edited(_)) | Some(event::Body::Gap(_))
            )),
            "{user}: nothing else after the messages"
        );
    }
}

/// The index updates of one msgid land in call order, also when the first failed and waits for
/// Redis in the background: a recall's update (which takes the message out of the unread sets)
/// waits behind its message's (which puts it in), so the recalled message is not unread again
/// once Redis is back. An update of another msgid does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalls_index_update_never_lands_before_its_messages() {
    use crate::store::split::pipeline::{index_durable, IndexUpdate};
    use std::sync::atomic::AtomicBool;

    let f = fixture().await;
    let landed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let redis_down = Arc::new(AtomicBool::new(true));
    let update = |name: &'static str, fails_while_down: bool| -> IndexUpdate {
        let (landed, down) = (landed.clone(), redis_down.clone());
        Arc::new(move |_| {
            let (landed, down) = (landed.clone(), down.clone());
            Box::pin(async move {
                if fails_while_down && down.load(Ordering::SeqCst) {
                    return Err(crate::store::StoreError::new("Redis is down"));
                }
                landed.lock().push(name);
                Ok(None)
            })
        })
    };
    index_durable(&f.store.shared, 7, update("message", true)).await;
    index_durable(&f.store.shared, 7, update("recall", false)).await;
    index_durable(&f.store.shared, 8, update("another message", false)).await;
    assert_eq!(*landed.lock(), ["another message"]);

    redis_down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while landed.lock().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", landed.lock());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*landed.lock(), ["another message", "message", "recall"]);
    assert!(
        f.store.shared.unindexed.lock().is_empty(),
        "nothing left waiting"
    );
}
