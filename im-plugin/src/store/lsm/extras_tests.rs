//! Tests of the LSM store's extras (`extras.rs`) beyond the conformance suite's `amend_*` cases
//! (which run against this store too): amends, blocks and settings surviving a reopen, and what
//! an amend costs.

use tempfile::TempDir;

use super::*;
use crate::store::conformance::one_to_one;
use crate::store::extras::{AmendKind, AmendOutcome, ExtrasLog, ExtrasStore};

const T0: i64 = 1_700_000_000_000;

fn msg(from: &str, to: &str, cmid: &str, msg_id: u64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: cmid.into(),
        msg_id,
        ts: T0 + msg_id as i64,
        text: Some(format!("secret {msg_id}")),
        body: None,
        kind: Some("text".into()),
    }
}

async fn unread(store: &LsmStore, user: &str, conversation: &str) -> u64 {
    let page = store.conversations(user, 10).await.expect("conversations");
    page.conversations
        .iter()
        .find(|c| c.id == conversation)
        .map_or(0, |c| c.unread)
}

/// An edit and a recall are in the journal when they are answered: after a reopen history has
/// the edited content and the recalled message without its content, and the unread count of
/// the recall stays corrected. (What an amend does is the conformance suite's `amend_*` cases.)
#[tokio::test]
async fn edits_and_recalls_survive_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    {
        let store = LsmStore::open(dir.path()).expect("open");
        for (cmid, id) in [("c1", 10), ("c2", 11)] {
            store
                .append_message(msg("alice", "bob", cmid, id))
                .await
                .unwrap();
        }
        let edit = AmendKind::Edit {
            text: Some("fixed".into()),
            body: None,
        };
        for a in [
            one_to_one("alice", "bob", 10, edit),
            one_to_one("alice", "bob", 11, AmendKind::Recall),
        ] {
            let out = store.amend(a).await.unwrap();
            assert!(matches!(out, AmendOutcome::Done(_)), "{out:?}");
        }
    }
    let store = LsmStore::open(dir.path()).expect("reopen");
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let h = store.history(user, peer, None, 10).await.unwrap();
        let texts: Vec<(u64, Option<&str>, bool, i64)> = h
            .messages
            .iter()
            .map(|m| (m.msg_id, m.text.as_deref(), m.recalled, m.edited_at))
            .collect();
        assert_eq!(
            texts,
            [
                (11, None, true, 0),
                (10, Some("fixed"), false, T0 + 100_000)
            ]
        );
        assert_eq!(store.last_seq(user).await.unwrap(), 4);
        let stream = store.read_stream(user, 0, 10).await.unwrap();
        assert!(!format!("{:?}", stream.events).contains("secret 11"));
    }
    assert_eq!(unread(&store, "bob", "u:alice").await, 1);
}

#[tokio::test]
async fn blocks_hidden_presence_and_last_seen_survive_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    {
        let store = LsmStore::open(dir.path()).expect("open");
        store.set_block("bob", "mallory", true).await.unwrap();
        store.set_block("bob", "eve", true).await.unwrap();
        store.set_block("bob", "eve", false).await.unwrap();
        store.set_block("carol", "mallory", true).await.unwrap();
        store.set_presence_visible("carol", false).await.unwrap();
        store.set_presence_visible("dave", false).await.unwrap();
        store.set_presence_visible("dave", true).await.unwrap();
        store.set_last_seen("carol", T0).await.unwrap();
        store.set_last_seen("carol", T0 + 5).await.unwrap();
    }
    let store = LsmStore::open(dir.path()).expect("reopen");
    let state = store.extras_log().unwrap().load_extras().await.unwrap();
    let blocks: Vec<(&str, Vec<&str>)> = state
        .blocks
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        blocks,
        vec![("bob", vec!["mallory"]), ("carol", vec!["mallory"])]
    );
    assert_eq!(state.hidden.into_iter().collect::<Vec<_>>(), vec!["carol"]);
    let log = store.extras_log().unwrap();
    assert_eq!(log.last_seen("carol").await.unwrap(), T0 + 5);
    assert_eq!(log.last_seen("dave").await.unwrap(), 0, "never seen");
}

/// What an amend costs: each runs alone in its commit (it reads committed rows), so amends queued
/// together are not folded into one journal sync as sends are. Prints the rate; run with
/// `cargo test -p mqim-im-plugin amend_commit_rate -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn amend_commit_rate() {
    const N: u64 = 200;
    let dir = TempDir::new().expect("temp dir");
    let store = LsmStore::open(dir.path()).expect("open");
    let started = std::time::Instant::now();
    let sends: Vec<_> = (1..=N)
        .map(|i| store.append_message(msg("alice", "bob", &format!("c{i}"), i)))
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    let send_time = started.elapsed();
    let started = std::time::Instant::now();
    let amends: Vec<_> = (1..=N)
        .map(|i| store.amend(one_to_one("alice", "bob", i, AmendKind::Recall)))
        .collect();
    for a in amends {
        assert!(matches!(a.await.unwrap(), AmendOutcome::Done(_)));
    }
    let amend_time = started.elapsed();
    let stats = store.writer_stats();
    println!(
        "{N} sends queued together: {send_time:?}; {N} recalls queued together: {amend_time:?}; \
         commits in all: {}",
        stats.batches
    );
}
