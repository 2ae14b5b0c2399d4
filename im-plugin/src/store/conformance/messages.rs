//! The [`MessageStore`] cases of the conformance suite: seqs, dedup, order, paging, cursors,
//! purge, content.

use super::*;

// ---------------------------------------------------------------------------------------------
// Cases

/// Seqs start at 1 and are contiguous per user, across sends in both directions; both streams get
/// the message, each with the conversation as its owner sees it; the events `append_message`
/// returns are exactly the stored ones.
pub async fn seqs_start_at_one_and_are_contiguous(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    assert_eq!(
        last_seq(store, "alice").await,
        0,
        "an unknown user's last seq"
    );
    assert!(
        read_all(store, "alice").await.is_empty(),
        "an unknown user's stream"
    );

    let pairs = [
        ("alice", "bob"),
        ("bob", "alice"),
        ("alice", "carol"),
        ("carol", "bob"),
        ("bob", "alice"),
    ];
    let mut expected: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for i in 0..30u64 {
        let (from, to) = pairs[(i % 5) as usize];
        let msg = message(from, to, &format!("c{i}"), 100 + i, TS0 + i as i64);
        let appended = fresh(store, msg).await;

        let want_sender_seq = expected.get(from).map_or(0, Vec::len) as u64 + 1;
        let want_recipient_seq = expected.get(to).map_or(0, Vec::len) as u64 + 1;
        assert_eq!(
            appended.sent,
            SentRecord {
                group_seq: 0,
                msg_id: 100 + i,
                seq: want_sender_seq,
                conversation: format!("u:{to}"),
                ts: TS0 + i as i64,
            },
            "sent record of message {i} ({from} -> {to})"
        );
        assert_eq!(
            appended.sender_event.seq, want_sender_seq,
            "sender event seq"
        );
        let sender_copy = body(&appended.sender_event);
        assert_eq!(sender_copy.conversation, format!("u:{to}"), "sender's view");
        assert_eq!(sender_copy.from, from);
        assert_eq!(sender_copy.msg_id, 100 + i);
        let recipient_event = appended
            .recipient_event
            .unwrap_or_else(|| panic!("message {i} ({from} -> {to}) has no recipient event"));
        assert_eq!(
            recipient_event.seq, want_recipient_seq,
            "recipient event seq"
        );
        let recipient_copy = body(&recipient_event);
        assert_eq!(
            recipient_copy.conversation,
            format!("u:{from}"),
            "recipient's view"
        );
        assert_eq!(recipient_copy.from, from);
        assert_eq!(recipient_copy.msg_id, 100 + i);

        expected
            .entry(from)
            .or_default()
            .push(appended.sender_event);
        expected.entry(to).or_default().push(recipient_event);
    }

    for (user, want) in &expected {
        let stored = read_all(store, user).await;
        assert_eq!(seqs(&stored), one_to(want.len() as u64), "seqs of {user}");
        assert_eq!(
            &stored, want,
            "stream of {user} differs from what was appended"
        );
        assert_eq!(
            last_seq(store, user).await,
            want.len() as u64,
            "last seq of {user}"
        );
    }
}

/// A resend of (from, clientMsgId) returns the original result and writes nothing, even when the
/// resend's other fields differ; the same clientMsgId from another sender is another message.
pub async fn resend_returns_original_and_appends_nothing(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    fresh(store, message("alice", "bob", "c0", 10, TS0)).await;
    let original = fresh(store, message("alice", "bob", "c1", 11, TS0 + 1)).await;
    fresh(store, message("bob", "alice", "b0", 12, TS0 + 2)).await;
    let before = (last_seq(store, "alice").await, last_seq(store, "bob").await);
    assert_eq!(before, (3, 3));

    let mut resend = message("alice", "bob", "c1", 99, TS0 + 50);
    resend.text = Some("edited".into());
    assert_eq!(
        duplicate(store, resend).await,
        original.sent,
        "resend result"
    );
    // Even a resend naming another recipient is the same message, not a new one to carol.
    let redirected = message("alice", "carol", "c1", 100, TS0 + 60);
    assert_eq!(
        duplicate(store, redirected).await,
        original.sent,
        "redirected resend"
    );

    let after = (last_seq(store, "alice").await, last_seq(store, "bob").await);
    assert_eq!(after, before, "a duplicate appended something");
    assert_eq!(
        last_seq(store, "carol").await,
        0,
        "a duplicate reached carol"
    );
    let bob = read_all(store, "bob").await;
    assert_eq!(seqs(&bob), one_to(3));
    assert_eq!(
        body(&bob[1]).text.as_deref(),
        Some("alice to bob: c1"),
        "original kept"
    );

    // Dedup is per sender: bob's "c1" is unrelated to alice's.
    let bobs = fresh(store, message("bob", "alice", "c1", 13, TS0 + 3)).await;
    assert_eq!(
        bobs.sent.seq, 4,
        "bob's own c1 is a new message in bob's stream"
    );
    assert_eq!(bobs.sent.msg_id, 13);
    assert_eq!(last_seq(store, "alice").await, 4);
    assert_eq!(
        duplicate(store, message("bob", "alice", "c1", 14, TS0 + 4)).await,
        bobs.sent
    );
}

/// 200 concurrent sends from 4 senders to one recipient all succeed; the recipient's stream is
/// exactly 1..=200, each message once; every sender's stream is exactly 1..=50.
pub async fn concurrent_sends_are_contiguous(store: Arc<dyn MessageStore>) {
    const SENDERS: u64 = 4;
    const PER_SENDER: u64 = 50;
    let mut tasks = Vec::new();
    for i in 0..SENDERS * PER_SENDER {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let from = format!("s{}", i % SENDERS);
            let msg = message(&from, "rcpt", &format!("c{i}"), 1000 + i, TS0 + i as i64);
            (from, store.append_message(msg).await)
        }));
    }
    let mut sent_seqs: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut recipient_seqs = BTreeMap::new();
    for task in tasks {
        let (from, result) = task.await.expect("a send task panicked");
        let appended = match result {
            Ok(SendOutcome::Fresh(a)) => a,
            other => panic!("concurrent send from {from} did not append: {other:?}"),
        };
        let recipient_seq = appended.recipient_event.as_ref().map(|e| e.seq);
        let msg_id = appended.sent.msg_id;
        let previous = sent_seqs
            .entry(from.clone())
            .or_default()
            .insert(appended.sent.seq, msg_id);
        assert!(
            previous.is_none(),
            "{from} got seq {} twice",
            appended.sent.seq
        );
        let seq = recipient_seq.unwrap_or_else(|| panic!("msg {msg_id} has no recipient event"));
        assert!(
            recipient_seqs.insert(seq, msg_id).is_none(),
            "recipient seq {seq} handed out twice"
        );
    }

    let total = SENDERS * PER_SENDER;
    let stream = read_all(store.as_ref(), "rcpt").await;
    assert_eq!(
        seqs(&stream),
        one_to(total),
        "recipient stream has gaps or repeats"
    );
    let ids: BTreeSet<u64> = stream.iter().map(|e| body(e).msg_id).collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "a message is stored twice in the recipient stream"
    );
    for event in &stream {
        assert_eq!(
            recipient_seqs.get(&event.seq),
            Some(&body(event).msg_id),
            "recipient seq {} holds another message than append_message reported",
            event.seq
        );
    }
    assert_eq!(last_seq(store.as_ref(), "rcpt").await, total);

    for s in 0..SENDERS {
        let from = format!("s{s}");
        let stream = read_all(store.as_ref(), &from).await;
        assert_eq!(seqs(&stream), one_to(PER_SENDER), "stream of {from}");
        let reported = &sent_seqs[&from];
        for event in &stream {
            assert_eq!(
                reported.get(&event.seq),
                Some(&body(event).msg_id),
                "{from}'s seq {} holds another message than reported",
                event.seq
            );
        }
    }
}

/// Resends of one (from, clientMsgId) racing each other store the message once; every racer gets
/// the same result.
pub async fn concurrent_resends_store_once(store: Arc<dyn MessageStore>) {
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let msg = message("alice", "bob", "same", 500 + i, TS0 + i as i64);
            store.append_message(msg).await
        }));
    }
    let mut fresh_count = 0;
    let mut results = BTreeSet::new();
    for task in tasks {
        let sent = match task.await.expect("a send task panicked") {
            Ok(SendOutcome::Fresh(a)) => {
                fresh_count += 1;
                a.sent
            }
            Ok(SendOutcome::Duplicate(sent)) => sent,
            Err(e) => panic!("a resend failed: {e}"),
        };
        results.insert((sent.msg_id, sent.seq, sent.conversation, sent.ts));
    }
    assert_eq!(fresh_count, 1, "racing resends appended more than once");
    assert_eq!(
        results.len(),
        1,
        "racing resends got different results: {results:?}"
    );
    assert_eq!(last_seq(store.as_ref(), "alice").await, 1);
    assert_eq!(last_seq(store.as_ref(), "bob").await, 1);
}

/// Appends take effect in the order `append_message` is *called*, whatever the order their futures
/// are awaited in: the domain assigns msgids under a lock around the call and relies on seqs
/// following the same order.
pub async fn appends_apply_in_call_order(store: Arc<dyn MessageStore>) {
    const N: u64 = 20;
    let pending: Vec<_> = (0..N)
        .map(|i| {
            let msg = message("alice", "bob", &format!("c{i}"), 10 + i, TS0 + i as i64);
            store.append_message(msg)
        })
        .collect();
    // Awaited last-first: a store that starts the work only when polled numbers them backwards.
    let mut sent = Vec::new();
    for future in pending.into_iter().rev() {
        match future.await {
            Ok(SendOutcome::Fresh(a)) => sent.push(a.sent),
            other => panic!("an ordered append did not append: {other:?}"),
        }
    }
    sent.reverse();
    let order: Vec<(u64, u64)> = sent.iter().map(|s| (s.msg_id, s.seq)).collect();
    let want: Vec<(u64, u64)> = (0..N).map(|i| (10 + i, i + 1)).collect();
    assert_eq!(order, want, "(msg_id, seq) of appends in call order");
    let bob = read_all(store.as_ref(), "bob").await;
    let ids: Vec<u64> = bob.iter().map(|e| body(e).msg_id).collect();
    assert_eq!(
        ids,
        (10..10 + N).collect::<Vec<_>>(),
        "bob's stream in call order"
    );
}

/// `read_stream` pages: `after_seq` is exclusive, `limit` caps the page, `has_more` is exact at the
/// boundaries (empty stream, limit equal to what remains, after_seq at or past the end).
pub async fn read_stream_paging(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    let page = |after: u64, limit: usize| async move {
        let p = store
            .read_stream("bob", after, limit)
            .await
            .unwrap_or_else(|e| panic!("read_stream(bob, {after}, {limit}) failed: {e}"));
        (seqs(&p.events), p.has_more)
    };
    assert_eq!(page(0, 10).await, (vec![], false), "empty stream");
    assert_eq!(
        page(3, 10).await,
        (vec![], false),
        "empty stream, after_seq > 0"
    );

    for i in 0..5u64 {
        fresh(
            store,
            message("alice", "bob", &format!("c{i}"), 10 + i, TS0),
        )
        .await;
    }
    assert_eq!(
        page(0, 10).await,
        (one_to(5), false),
        "limit above what remains"
    );
    assert_eq!(
        page(0, 5).await,
        (one_to(5), false),
        "limit equal to what remains"
    );
    assert_eq!(
        page(0, 4).await,
        (one_to(4), true),
        "limit one below what remains"
    );
    assert_eq!(
        page(2, 3).await,
        (vec![3, 4, 5], false),
        "mid-stream, exact limit"
    );
    assert_eq!(
        page(2, 2).await,
        (vec![3, 4], true),
        "mid-stream, short limit"
    );
    assert_eq!(page(4, 1).await, (vec![5], false), "last event alone");
    assert_eq!(page(5, 10).await, (vec![], false), "after_seq at the end");
    assert_eq!(page(6, 10).await, (vec![], false), "after_seq past the end");
    assert_eq!(
        page(u64::MAX, 10).await,
        (vec![], false),
        "after_seq = u64::MAX"
    );

    // Another user's stream is not part of bob's pages.
    fresh(store, message("carol", "dave", "c0", 20, TS0)).await;
    assert_eq!(
        page(0, 10).await,
        (one_to(5), false),
        "bob's stream after carol -> dave"
    );
}

/// A note to self appends exactly one event, in the sender's stream, as conversation `u:<self>`.
pub async fn send_to_self_appends_one_event(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    let note = fresh(store, message("alice", "alice", "n1", 7, TS0)).await;
    assert!(
        note.recipient_event.is_none(),
        "a note to self has a recipient copy"
    );
    assert_eq!(note.sent.seq, 1, "the note's seq in a fresh stream");
    assert_eq!(note.sent.conversation, "u:alice");
    assert_eq!(
        last_seq(store, "alice").await,
        1,
        "a note to self appended twice"
    );
    let stream = read_all(store, "alice").await;
    assert_eq!(stream, vec![note.sender_event.clone()], "alice's stream");
    assert_eq!(body(&stream[0]).conversation, "u:alice");
    assert_eq!(body(&stream[0]).from, "alice");

    assert_eq!(
        fresh(store, message("alice", "bob", "c1", 8, TS0))
            .await
            .sent
            .seq,
        2
    );
    assert_eq!(
        duplicate(store, message("alice", "alice", "n1", 9, TS0)).await,
        note.sent
    );
    assert_eq!(last_seq(store, "alice").await, 2);
}

/// Cursors only move forward and never past the user's last seq; each (user, device) has its own.
pub async fn advance_cursor_forward_only_and_clamped(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    let advance = |user: &'static str, device: &'static str, seq: u64| async move {
        store
            .advance_cursor(user, device, seq)
            .await
            .unwrap_or_else(|e| panic!("advance_cursor({user}, {device}, {seq}) failed: {e}"))
    };
    assert_eq!(
        advance("bob", "d1", 5).await,
        0,
        "clamped to an empty stream"
    );
    for i in 0..3u64 {
        fresh(
            store,
            message("alice", "bob", &format!("c{i}"), 10 + i, TS0),
        )
        .await;
    }
    assert_eq!(advance("bob", "d1", 2).await, 2, "forward");
    assert_eq!(advance("bob", "d1", 1).await, 2, "backwards is ignored");
    assert_eq!(advance("bob", "d1", 0).await, 2, "zero is ignored");
    assert_eq!(advance("bob", "d1", 10).await, 3, "clamped to last seq");
    assert_eq!(
        advance("bob", "d1", u64::MAX).await,
        3,
        "clamped from u64::MAX"
    );
    assert_eq!(advance("bob", "d2", 1).await, 1, "devices are independent");
    assert_eq!(advance("alice", "d1", 1).await, 1, "users are independent");

    for i in 3..5u64 {
        fresh(
            store,
            message("alice", "bob", &format!("c{i}"), 10 + i, TS0),
        )
        .await;
    }
    assert_eq!(advance("bob", "d1", 4).await, 4, "forward after new events");
    assert_eq!(
        advance("bob", "d2", 9).await,
        5,
        "clamped to the new last seq"
    );
}

/// `max_msg_id` is the highest msg_id stored, not the latest, and duplicates don't count.
pub async fn max_msg_id_is_highest_stored(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    let max = || async { store.max_msg_id().await.expect("max_msg_id failed") };
    assert_eq!(max().await, 0, "empty store");
    fresh(store, message("alice", "bob", "c1", 100, TS0)).await;
    assert_eq!(max().await, 100);
    fresh(store, message("bob", "alice", "c2", 50, TS0)).await;
    assert_eq!(max().await, 100, "a lower msg_id lowered the max");
    let big = 0x7fff_ffff_ffff_fff0;
    fresh(store, message("carol", "carol", "c3", big, TS0)).await;
    assert_eq!(max().await, big, "64-bit msg_id");
    duplicate(store, message("alice", "bob", "c1", big + 1, TS0)).await;
    assert_eq!(max().await, big, "a duplicate raised the max");
}

/// `purge_dedup` removes the entries recorded before the cutoff and only those: a purged
/// clientMsgId is accepted again as a new message, a newer one still deduplicates.
pub async fn purge_dedup_removes_only_older(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    let old = fresh(store, message("alice", "bob", "old", 1, now_ms())).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = fresh(store, message("alice", "bob", "new", 2, now_ms())).await;

    let removed = store.purge_dedup(cutoff).await.expect("purge_dedup failed");
    assert_eq!(removed, 1, "entries removed by the purge");
    assert_eq!(
        last_seq(store, "alice").await,
        2,
        "a purge touched the stream"
    );
    assert_eq!(
        read_all(store, "bob").await.len(),
        2,
        "a purge touched the stream"
    );

    let again = fresh(store, message("alice", "bob", "old", 3, now_ms())).await;
    assert_eq!(again.sent.seq, 3, "a purged clientMsgId is a new message");
    assert_ne!(again.sent, old.sent);
    let resent = duplicate(store, message("alice", "bob", "new", 4, now_ms())).await;
    assert_eq!(
        resent, new.sent,
        "an entry newer than the cutoff was purged"
    );
    assert_eq!(
        store.purge_dedup(cutoff).await.expect("purge_dedup failed"),
        0,
        "a second purge with the same cutoff"
    );
    assert_eq!(
        duplicate(store, message("alice", "bob", "old", 5, now_ms())).await,
        again.sent
    );
}

/// Text, body (arbitrary bytes) and type survive storage exactly, absent stays absent, empty
/// stays empty, and 64-bit msg_ids keep all their bits.
pub async fn content_round_trips(store: Arc<dyn MessageStore>) {
    let store = store.as_ref();
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend([0, 0, 0xff, 0xfe, 0x80]);
    let rich = NewMessage {
        from: "alice".into(),
        to: "bob".into(),
        client_msg_id: "rich".into(),
        msg_id: 0x7fff_ffff_ffff_fff0,
        ts: TS0 + 123,
        text: Some("héllo ✓ 😀\n\"quoted\"\0".into()),
        body: Some(Bytes::from(bytes)),
        kind: Some("image".into()),
    };
    let bare = NewMessage {
        client_msg_id: "bare".into(),
        msg_id: 0x7fff_ffff_ffff_fff1,
        text: None,
        body: None,
        kind: None,
        ..rich.clone()
    };
    let empty = NewMessage {
        client_msg_id: "empty".into(),
        msg_id: 0x7fff_ffff_ffff_fff2,
        text: Some(String::new()),
        body: Some(Bytes::new()),
        kind: Some(String::new()),
        ..rich.clone()
    };
    let sent = [rich, bare, empty];
    for msg in &sent {
        fresh(store, msg.clone()).await;
    }

    for (user, peer) in [("alice", "bob"), ("bob", "alice")] {
        let stream = read_all(store, user).await;
        assert_eq!(stream.len(), sent.len(), "stream of {user}");
        for (event, msg) in stream.iter().zip(&sent) {
            let want = v1::Message {
                msg_id: msg.msg_id,
                conversation: format!("u:{peer}"),
                from: msg.from.clone(),
                ts: msg.ts,
                client_msg_id: msg.client_msg_id.clone(),
                text: msg.text.clone(),
                body: msg.body.clone(),
                r#type: msg.kind.clone(),
                ..v1::Message::default()
            };
            assert_eq!(body(event), &want, "{user}'s copy of {}", msg.client_msg_id);
        }
    }
}
