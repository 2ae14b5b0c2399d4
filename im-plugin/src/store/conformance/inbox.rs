//! The [`super::super::InboxStore`] cases of the conformance suite: unread counts, reads,
//! conversations, history.

use super::*;

// ---------------------------------------------------------------------------------------------
// Inbox cases

/// Msgids near 2^62 that differ by one: an index keyed by IEEE doubles would merge them.
const BIG_ID: u64 = 1 << 62;

pub async fn inbox_unread_counts_only_the_recipient(store: Arc<dyn Store>) {
    for i in 0..3 {
        fresh(
            &*store,
            message("alice", "bob", &format!("c{i}"), BIG_ID + i, TS0 + i as i64),
        )
        .await;
    }
    fresh(
        &*store,
        message("alice", "alice", "note", BIG_ID + 10, TS0 + 10),
    )
    .await;
    let bob = conversation_of(&*store, "bob", "u:alice").await;
    assert_eq!(bob.unread, 3, "bob has three unread from alice");
    assert_eq!(bob.last.as_ref().map(|m| m.msg_id), Some(BIG_ID + 2));
    assert_eq!(
        bob.last.as_ref().map(|m| m.conversation.as_str()),
        Some("u:alice")
    );
    assert_eq!(bob.updated_at, TS0 + 2);
    let alice = conversation_of(&*store, "alice", "u:bob").await;
    assert_eq!(alice.unread, 0, "a user's own messages are never unread");
    assert_eq!(
        alice.last.as_ref().map(|m| m.conversation.as_str()),
        Some("u:bob")
    );
    let own = conversation_of(&*store, "alice", "u:alice").await;
    assert_eq!(own.unread, 0, "a note to self is never unread");
}

pub async fn inbox_read_removes_up_to_msgid_and_is_idempotent(store: Arc<dyn Store>) {
    for i in 1..=3 {
        fresh(
            &*store,
            message("alice", "bob", &format!("c{i}"), BIG_ID + i, TS0 + i as i64),
        )
        .await;
    }
    let bob_seq = store.last_seq("bob").await.expect("last_seq");
    let alice_seq = store.last_seq("alice").await.expect("last_seq");

    let r = store
        .mark_read("bob", "u:alice", BIG_ID + 2)
        .await
        .expect("read");
    assert_eq!(r.unread, 1, "read up to the second of three leaves one");
    let (own, (peer, theirs)) = r.receipts.expect("something was unread: receipts appended");
    assert_eq!(
        own.seq,
        bob_seq + 1,
        "the reader's receipt is the next event of the reader"
    );
    assert_eq!(peer, "alice");
    assert_eq!(
        theirs.seq,
        alice_seq + 1,
        "the peer's receipt is the next event of the peer"
    );
    match (&own.body, &theirs.body) {
        (Some(event::Body::Read(a)), Some(event::Body::Read(b))) => {
            assert_eq!(
                (a.conversation.as_str(), a.by.as_str(), a.msg_id),
                ("u:alice", "bob", BIG_ID + 2)
            );
            assert_eq!(
                (b.conversation.as_str(), b.by.as_str(), b.msg_id),
                ("u:bob", "bob", BIG_ID + 2)
            );
        }
        other => panic!("receipts are read events: {other:?}"),
    }
    let stored = store
        .read_stream("alice", alice_seq, 10)
        .await
        .expect("read");
    assert_eq!(
        stored.events,
        vec![theirs.clone()],
        "the peer's receipt is in the peer's stream"
    );
    assert_eq!(conversation_of(&*store, "bob", "u:alice").await.unread, 1);

    for old in [BIG_ID + 2, BIG_ID + 1] {
        let again = store.mark_read("bob", "u:alice", old).await.expect("read");
        assert_eq!(
            again.unread, 1,
            "reading an old msgid again changes nothing"
        );
        assert!(again.receipts.is_none(), "and appends no receipt");
    }
    assert_eq!(
        store.last_seq("alice").await.expect("last_seq"),
        alice_seq + 1
    );

    let r = store
        .mark_read("bob", "u:alice", BIG_ID + 3)
        .await
        .expect("read");
    assert_eq!(r.unread, 0);
    assert!(r.receipts.is_some());
    let r = store
        .mark_read("bob", "u:alice", u64::MAX)
        .await
        .expect("read");
    assert_eq!(r.unread, 0, "never below zero");
    assert!(r.receipts.is_none(), "nothing was unread");
    // Reading a conversation that does not exist is harmless.
    let r = store
        .mark_read("bob", "u:nobody", BIG_ID)
        .await
        .expect("read");
    assert_eq!((r.unread, r.receipts.is_none()), (0, true));
}

pub async fn inbox_conversations_newest_first_with_paging(store: Arc<dyn Store>) {
    for (i, peer) in ["alice", "carol", "dave"].iter().enumerate() {
        fresh(
            &*store,
            message(peer, "bob", "m", BIG_ID + i as u64, TS0 + i as i64),
        )
        .await;
    }
    let ids = |page: &crate::store::ConversationPage| -> Vec<String> {
        page.conversations.iter().map(|c| c.id.clone()).collect()
    };
    let page = store.conversations("bob", 2).await.expect("conversations");
    assert_eq!(ids(&page), ["u:dave", "u:carol"]);
    assert!(page.has_more);
    let page = store.conversations("bob", 3).await.expect("conversations");
    assert_eq!(ids(&page), ["u:dave", "u:carol", "u:alice"]);
    assert!(!page.has_more, "exactly three conversations");
    // New activity moves a conversation to the top, once.
    fresh(
        &*store,
        message("bob", "alice", "reply", BIG_ID + 10, TS0 + 10),
    )
    .await;
    let page = store.conversations("bob", 10).await.expect("conversations");
    assert_eq!(ids(&page), ["u:alice", "u:dave", "u:carol"]);
    assert_eq!(
        page.conversations[0].unread, 1,
        "alice's message is still unread for bob"
    );
    assert_eq!(
        page.conversations[0].last.as_ref().map(|m| m.from.as_str()),
        Some("bob")
    );
    assert!(store
        .conversations("nobody", 10)
        .await
        .expect("conversations")
        .conversations
        .is_empty());
}

pub async fn inbox_history_pages_backwards_without_gaps_or_repeats(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..25u64 {
        let (from, to) = if i % 3 == 0 {
            ("bob", "alice")
        } else {
            ("alice", "bob")
        };
        fresh(
            &*store,
            message(from, to, &format!("h{i}"), BIG_ID + i, TS0 + i as i64),
        )
        .await;
        ids.push(BIG_ID + i);
    }
    fresh(
        &*store,
        message("carol", "bob", "other", BIG_ID + 100, TS0 + 100),
    )
    .await;
    for (user, conversation) in [("bob", "u:alice"), ("alice", "u:bob")] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .history(user, conversation, before, 10)
                .await
                .expect("history");
            for m in &page.messages {
                assert_eq!(m.conversation, conversation, "as {user} sees it");
            }
            seen.extend(page.messages.iter().map(|m| m.msg_id));
            before = page.messages.last().map(|m| m.msg_id);
            if !page.has_more {
                break;
            }
        }
        let mut expected = ids.clone();
        expected.reverse();
        assert_eq!(
            seen, expected,
            "{user}: newest first, each once, nothing else"
        );
    }
    let page = store
        .history("bob", "u:alice", Some(BIG_ID + 1), 10)
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
        [BIG_ID]
    );
    assert!(!page.has_more);
}
