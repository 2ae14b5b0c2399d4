//! Tests of the LSM store's extras (`extras.rs`): recall and edit rewrite every copy and append
//! an event at the next seq of each stream, recall fixes unread counts, the store's checks
//! (sender, window, already recalled), and blocks and settings surviving a reopen.

use mqim_schemas::v1::event;
use tempfile::TempDir;

use super::*;
use crate::store::extras::{Amend, AmendKind, AmendOutcome, AmendTarget, ExtrasLog, ExtrasStore};

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

/// `by`'s amend of `msg_id` in their one-to-one conversation with `peer`.
fn one_to_one(by: &str, peer: &str, msg_id: u64, kind: AmendKind) -> Amend {
    Amend {
        by: by.into(),
        msg_id,
        kind,
        home: AmendTarget {
            owner: by.into(),
            conversation: Conversation::with_user(peer),
        },
        others: vec![AmendTarget {
            owner: peer.into(),
            conversation: Conversation::with_user(by),
        }],
        group_log: false,
        privileged: false,
        not_before_ms: T0,
        ts: T0 + 1000,
    }
}

fn message_of(e: &Event) -> &mqim_schemas::v1::Message {
    match &e.body {
        Some(event::Body::Message(m)) => m,
        other => panic!("not a message: {other:?}"),
    }
}

async fn unread(store: &LsmStore, user: &str, conversation: &str) -> u64 {
    let page = store.conversations(user, 10).await.expect("conversations");
    page.conversations
        .iter()
        .find(|c| c.id == conversation)
        .map_or(0, |c| c.unread)
}

#[tokio::test]
async fn recall_removes_the_content_everywhere_appends_events_and_fixes_unread() {
    let dir = TempDir::new().expect("temp dir");
    let store = LsmStore::open(dir.path()).expect("open");
    store
        .append_message(msg("alice", "bob", "c1", 10))
        .await
        .unwrap();
    store
        .append_message(msg("alice", "bob", "c2", 11))
        .await
        .unwrap();
    assert_eq!(unread(&store, "bob", "u:alice").await, 2);

    let out = store
        .amend(one_to_one("alice", "bob", 10, AmendKind::Recall))
        .await
        .unwrap();
    let AmendOutcome::Done(events) = out else {
        panic!("not done: {out:?}")
    };
    // The next seq of both streams: alice had 2 events, bob 2.
    let seqs: Vec<(&str, u64)> = events.iter().map(|(o, e)| (o.as_str(), e.seq)).collect();
    assert_eq!(seqs, vec![("alice", 3), ("bob", 3)]);
    match &events[1].1.body {
        Some(event::Body::Recalled(r)) => {
            assert_eq!(
                (r.conversation.as_str(), r.msg_id, r.by.as_str()),
                ("u:alice", 10, "alice")
            )
        }
        other => panic!("not a recall: {other:?}"),
    }
    assert_eq!(unread(&store, "bob", "u:alice").await, 1);
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let h = store.history(user, peer, None, 10).await.unwrap();
        let recalled = h.messages.iter().find(|m| m.msg_id == 10).unwrap();
        assert!(recalled.recalled);
        assert_eq!(
            (recalled.text.as_ref(), recalled.r#type.as_ref()),
            (None, None)
        );
        let stream = store.read_stream(user, 0, 10).await.unwrap();
        assert!(message_of(&stream.events[0]).recalled);
        assert!(!format!("{:?}", stream.events).contains("secret 10"));
    }

    // Again: nothing changes, no event.
    let again = store
        .amend(one_to_one("alice", "bob", 10, AmendKind::Recall))
        .await
        .unwrap();
    assert_eq!(again, AmendOutcome::Unchanged { edited_at: 0 });
    assert_eq!(store.last_seq("bob").await.unwrap(), 3);
    // Reading past it later counts only the message that is left.
    let read = store.mark_read("bob", "u:alice", 11).await.unwrap();
    assert_eq!(read.unread, 0);
}

#[tokio::test]
async fn the_store_refuses_other_senders_old_messages_and_editing_a_recalled_one() {
    let dir = TempDir::new().expect("temp dir");
    let store = LsmStore::open(dir.path()).expect("open");
    store
        .append_message(msg("alice", "bob", "c1", 10))
        .await
        .unwrap();
    let bob_recalls = one_to_one("bob", "alice", 10, AmendKind::Recall);
    assert_eq!(
        store.amend(bob_recalls).await.unwrap(),
        AmendOutcome::NotYours
    );
    let late = Amend {
        not_before_ms: T0 + 11,
        ..one_to_one("alice", "bob", 10, AmendKind::Recall)
    };
    assert_eq!(store.amend(late).await.unwrap(), AmendOutcome::TooOld);
    let missing = one_to_one("alice", "bob", 99, AmendKind::Recall);
    assert_eq!(store.amend(missing).await.unwrap(), AmendOutcome::NotFound);
    // Nothing was written by the refusals.
    assert_eq!(store.last_seq("alice").await.unwrap(), 1);

    store
        .amend(one_to_one("alice", "bob", 10, AmendKind::Recall))
        .await
        .unwrap();
    let edit = AmendKind::Edit {
        text: Some("new".into()),
        body: None,
    };
    let refused = store.amend(one_to_one("alice", "bob", 10, edit)).await;
    assert_eq!(refused.unwrap(), AmendOutcome::Recalled);
}

#[tokio::test]
async fn edit_replaces_the_content_in_both_streams_and_survives_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    {
        let store = LsmStore::open(dir.path()).expect("open");
        store
            .append_message(msg("alice", "bob", "c1", 10))
            .await
            .unwrap();
        let edit = AmendKind::Edit {
            text: Some("fixed".into()),
            body: None,
        };
        let out = store
            .amend(one_to_one("alice", "bob", 10, edit.clone()))
            .await
            .unwrap();
        let AmendOutcome::Done(events) = out else {
            panic!("{out:?}")
        };
        match &events[1].1.body {
            Some(event::Body::Edited(e)) => {
                assert_eq!((e.text.as_deref(), e.edited_at), (Some("fixed"), T0 + 1000))
            }
            other => panic!("not an edit: {other:?}"),
        }
        // The same content again is no new event.
        let again = store.amend(one_to_one("alice", "bob", 10, edit)).await;
        assert_eq!(
            again.unwrap(),
            AmendOutcome::Unchanged {
                edited_at: T0 + 1000
            }
        );
    }
    let store = LsmStore::open(dir.path()).expect("reopen");
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let h = store.history(user, peer, None, 10).await.unwrap();
        assert_eq!(h.messages[0].text.as_deref(), Some("fixed"));
        assert_eq!(h.messages[0].edited_at, T0 + 1000);
        assert_eq!(store.last_seq(user).await.unwrap(), 2);
    }
    // Editing does not make a message unread again, or read.
    assert_eq!(unread(&store, "bob", "u:alice").await, 1);
}

#[tokio::test]
async fn blocks_and_hidden_presence_survive_a_reopen() {
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
