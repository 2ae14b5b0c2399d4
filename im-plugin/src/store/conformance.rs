//! The store conformance suite: the [`MessageStore`] contract, stated as executable cases.
//!
//! Every backend runs every case against a fresh, empty store (see [`run_all`] and [`cases`]). A
//! case panics, with a message saying which promise broke, when the store under test breaks the
//! contract; it never inspects a backend's internals, only what the trait returns.
//!
//! This module owns the contract's tests and nothing else: no backend-specific knowledge, no test
//! framework beyond tokio (already a dependency), because the crates of later backends (Redis,
//! ScyllaDB) link it from their own tests.
//!
//! One assumption about time: a dedup entry counts as "recorded" no later than the moment
//! `append_message` returns and no earlier than the message's `ts`; [`purge_dedup_removes_only_older`]
//! uses real clock readings so that both a backend that stamps entries with `NewMessage::ts` and one
//! that uses its own clock pass.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt as _};
use mqim_schemas::v1::{self, event, Event};

use super::{Appended, MessageStore, NewMessage, SendOutcome, SentRecord, Store};

/// A conformance case, boxed so that all cases fit in one list.
pub type Case = fn(Arc<dyn MessageStore>) -> BoxFuture<'static, ()>;

/// Every case with its name, in a stable order.
pub fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("seqs_start_at_one_and_are_contiguous", |s| {
            seqs_start_at_one_and_are_contiguous(s).boxed()
        }),
        ("resend_returns_original_and_appends_nothing", |s| {
            resend_returns_original_and_appends_nothing(s).boxed()
        }),
        ("concurrent_sends_are_contiguous", |s| {
            concurrent_sends_are_contiguous(s).boxed()
        }),
        ("concurrent_resends_store_once", |s| {
            concurrent_resends_store_once(s).boxed()
        }),
        ("appends_apply_in_call_order", |s| {
            appends_apply_in_call_order(s).boxed()
        }),
        ("read_stream_paging", |s| read_stream_paging(s).boxed()),
        ("send_to_self_appends_one_event", |s| {
            send_to_self_appends_one_event(s).boxed()
        }),
        ("advance_cursor_forward_only_and_clamped", |s| {
            advance_cursor_forward_only_and_clamped(s).boxed()
        }),
        ("max_msg_id_is_highest_stored", |s| {
            max_msg_id_is_highest_stored(s).boxed()
        }),
        ("purge_dedup_removes_only_older", |s| {
            purge_dedup_removes_only_older(s).boxed()
        }),
        ("content_round_trips", |s| content_round_trips(s).boxed()),
    ]
}

/// An inbox case: for backends that also implement [`super::InboxStore`].
pub type InboxCase = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// Every inbox case with its name, in a stable order.
pub fn inbox_cases() -> Vec<(&'static str, InboxCase)> {
    vec![
        ("inbox_unread_counts_only_the_recipient", |s| {
            inbox_unread_counts_only_the_recipient(s).boxed()
        }),
        ("inbox_read_removes_up_to_msgid_and_is_idempotent", |s| {
            inbox_read_removes_up_to_msgid_and_is_idempotent(s).boxed()
        }),
        ("inbox_conversations_newest_first_with_paging", |s| {
            inbox_conversations_newest_first_with_paging(s).boxed()
        }),
        (
            "inbox_history_pages_backwards_without_gaps_or_repeats",
            |s| inbox_history_pages_backwards_without_gaps_or_repeats(s).boxed(),
        ),
    ]
}

/// Calls `$test!(case, case, ...)` with every case of [`cases`] and then of [`inbox_cases`], so a
/// backend's test module lists no case by hand: `conformance::for_each_case!(my_test_macro);`.
#[cfg(test)]
macro_rules! for_each_case {
    ($test:ident) => {
        $test! {
            seqs_start_at_one_and_are_contiguous,
            resend_returns_original_and_appends_nothing,
            concurrent_sends_are_contiguous,
            concurrent_resends_store_once,
            appends_apply_in_call_order,
            read_stream_paging,
            send_to_self_appends_one_event,
            advance_cursor_forward_only_and_clamped,
            max_msg_id_is_highest_stored,
            purge_dedup_removes_only_older,
            content_round_trips,
            inbox_unread_counts_only_the_recipient,
            inbox_read_removes_up_to_msgid_and_is_idempotent,
            inbox_conversations_newest_first_with_paging,
            inbox_history_pages_backwards_without_gaps_or_repeats
        }
    };
}
#[cfg(test)]
pub(crate) use for_each_case;

/// Runs every case, each against a fresh store from `make` (which gets the case's name, handy for
/// a directory, key prefix or keyspace). Panics at the first broken case, naming it.
pub async fn run_all<F, Fut>(mut make: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    for (name, case) in cases() {
        // Printed before running so that a failure's captured output names the case.
        eprintln!("store conformance: {name}");
        let store = make(name).await;
        case(store).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const TS0: i64 = 1_700_000_000_000;

fn message(from: &str, to: &str, client_msg_id: &str, msg_id: u64, ts: i64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        msg_id,
        ts,
        text: Some(format!("{from} to {to}: {client_msg_id}")),
        body: None,
        kind: Some("text".into()),
    }
}

async fn fresh(store: &dyn MessageStore, msg: NewMessage) -> Appended {
    let what = format!("{} -> {} ({})", msg.from, msg.to, msg.client_msg_id);
    match store.append_message(msg).await {
        Ok(SendOutcome::Fresh(appended)) => appended,
        Ok(SendOutcome::Duplicate(sent)) => {
            panic!("{what}: expected a fresh message, the store says duplicate of {sent:?}")
        }
        Err(e) => panic!("{what}: append failed: {e}"),
    }
}

async fn duplicate(store: &dyn MessageStore, msg: NewMessage) -> SentRecord {
    let what = format!("{} -> {} ({})", msg.from, msg.to, msg.client_msg_id);
    match store.append_message(msg).await {
        Ok(SendOutcome::Duplicate(sent)) => sent,
        Ok(SendOutcome::Fresh(appended)) => {
            panic!("{what}: expected a duplicate, the store appended {appended:?}")
        }
        Err(e) => panic!("{what}: append failed: {e}"),
    }
}

async fn last_seq(store: &dyn MessageStore, user: &str) -> u64 {
    store
        .last_seq(user)
        .await
        .unwrap_or_else(|e| panic!("last_seq({user}) failed: {e}"))
}

/// The whole stream, read in small pages so that paging is exercised on the way.
async fn read_all(store: &dyn MessageStore, user: &str) -> Vec<Event> {
    let mut all: Vec<Event> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.seq);
        let page = store
            .read_stream(user, after, 7)
            .await
            .unwrap_or_else(|e| panic!("read_stream({user}, {after}) failed: {e}"));
        let got = page.events.len();
        all.extend(page.events);
        if !page.has_more {
            return all;
        }
        assert!(
            got > 0,
            "read_stream({user}, {after}): has_more with no events"
        );
    }
}

fn body(event: &Event) -> &v1::Message {
    match &event.body {
        Some(event::Body::Message(m)) => m,
        other => panic!("event {} is not a message: {other:?}", event.seq),
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

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

// ---------------------------------------------------------------------------------------------
// Inbox cases

/// Msgids near 2^62 that differ by one: an index keyed by IEEE doubles would merge them.
const BIG_ID: u64 = 1 << 62;

async fn conversation_of(store: &dyn Store, user: &str, id: &str) -> super::ConversationSummary {
    let page = store.conversations(user, 100).await.expect("conversations");
    page.conversations
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{user} has no conversation {id}"))
}

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
    let ids = |page: &super::ConversationPage| -> Vec<String> {
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

#[cfg(test)]
mod tests {
    //! Proves that the suite can fail: each case must reject a store with a matching defect.
    //! The defects are injected by a wrapper around a real (embedded) store.

    use std::collections::HashMap;
    use std::panic::AssertUnwindSafe;
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use parking_lot::Mutex;

    use super::*;
    use crate::store::lsm::LsmStore;
    use crate::store::{StoreResult, StreamPage};

    #[test]
    fn for_each_case_names_every_case_in_order() {
        macro_rules! names {
            ($($case:ident),*) => {
                vec![$(stringify!($case)),*]
            };
        }
        let listed: Vec<&str> = for_each_case!(names);
        let all: Vec<&str> = cases()
            .into_iter()
            .map(|(n, _)| n)
            .chain(inbox_cases().into_iter().map(|(n, _)| n))
            .collect();
        assert_eq!(listed, all);
    }

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        None,
        NoRecipientCopy,
        SenderSeesOwnName,
        NoDedup,
        DedupAcrossSenders,
        LoseEvery(u64),
        HasMoreWhenFull,
        AfterSeqInclusive,
        SelfSendTwice,
        ApplyInPollOrder,
        CursorUnclamped,
        MaxIsLatest,
        PurgeEverything,
        PurgeNothing,
        TruncateMsgId,
        LoseEmptyBody,
    }

    struct Faulty {
        inner: Arc<LsmStore>,
        fault: Fault,
        appends: AtomicU64,
        latest_msg_id: AtomicU64,
        seen: Arc<Mutex<HashMap<String, SentRecord>>>,
    }

    #[async_trait]
    impl MessageStore for Faulty {
        fn append_message(
            &self,
            mut msg: NewMessage,
        ) -> BoxFuture<'static, StoreResult<SendOutcome>> {
            let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
            self.latest_msg_id.store(msg.msg_id, Ordering::SeqCst);
            let mut first = None;
            match self.fault {
                Fault::NoRecipientCopy => msg.to = msg.from.clone(),
                Fault::NoDedup => msg.client_msg_id = format!("{}#{n}", msg.client_msg_id),
                Fault::DedupAcrossSenders => {
                    if let Some(sent) = self.seen.lock().get(&msg.client_msg_id).cloned() {
                        return futures::future::ready(Ok(SendOutcome::Duplicate(sent))).boxed();
                    }
                }
                Fault::LoseEvery(k) if n.is_multiple_of(k) => {
                    let event = make_event(0, &msg);
                    let appended = Appended {
                        sent: SentRecord {
                            group_seq: 0,
                            msg_id: msg.msg_id,
                            seq: 0,
                            conversation: format!("u:{}", msg.to),
                            ts: msg.ts,
                        },
                        sender_event: event.clone(),
                        recipient_event: Some(event),
                    };
                    return futures::future::ready(Ok(SendOutcome::Fresh(appended))).boxed();
                }
                Fault::SelfSendTwice if msg.to == msg.from => {
                    let mut copy = msg.clone();
                    copy.client_msg_id.push_str("#copy");
                    first = Some(self.inner.append_message(copy));
                }
                Fault::ApplyInPollOrder => {
                    let inner = self.inner.clone();
                    return async move { inner.append_message(msg).await }.boxed();
                }
                _ => {}
            }
            let cmid = msg.client_msg_id.clone();
            let seen = self.seen.clone();
            let pending = self.inner.append_message(msg);
            async move {
                if let Some(first) = first {
                    first.await?;
                }
                let outcome = pending.await?;
                if let SendOutcome::Fresh(a) = &outcome {
                    seen.lock().insert(cmid, a.sent.clone());
                }
                Ok(outcome)
            }
            .boxed()
        }

        async fn read_stream(
            &self,
            user: &str,
            after_seq: u64,
            limit: usize,
        ) -> StoreResult<StreamPage> {
            let after = match self.fault {
                Fault::AfterSeqInclusive => after_seq.saturating_sub(1),
                _ => after_seq,
            };
            let mut page = self.inner.read_stream(user, after, limit).await?;
            if let Fault::HasMoreWhenFull = self.fault {
                page.has_more = page.events.len() == limit;
            }
            for event in &mut page.events {
                if let Some(event::Body::Message(m)) = &mut event.body {
                    match self.fault {
                        Fault::SenderSeesOwnName => m.conversation = format!("u:{}", m.from),
                        Fault::TruncateMsgId => m.msg_id &= 0xffff_ffff,
                        Fault::LoseEmptyBody if m.body.as_ref().is_some_and(|b| b.is_empty()) => {
                            m.body = None
                        }
                        _ => {}
                    }
                }
            }
            Ok(page)
        }

        async fn last_seq(&self, user: &str) -> StoreResult<u64> {
            self.inner.last_seq(user).await
        }

        async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
            let cursor = self.inner.advance_cursor(user, device, seq).await?;
            Ok(match self.fault {
                Fault::CursorUnclamped => seq,
                _ => cursor,
            })
        }

        async fn max_msg_id(&self) -> StoreResult<u64> {
            match self.fault {
                Fault::MaxIsLatest => Ok(self.latest_msg_id.load(Ordering::SeqCst)),
                _ => self.inner.max_msg_id().await,
            }
        }

        async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize> {
            match self.fault {
                Fault::PurgeEverything => self.inner.purge_dedup(i64::MAX).await,
                Fault::PurgeNothing => Ok(0),
                _ => self.inner.purge_dedup(before_ts_ms).await,
            }
        }
    }

    fn make_event(seq: u64, msg: &NewMessage) -> Event {
        Event {
            seq,
            body: Some(event::Body::Message(v1::Message {
                msg_id: msg.msg_id,
                conversation: format!("u:{}", msg.to),
                from: msg.from.clone(),
                ts: msg.ts,
                client_msg_id: msg.client_msg_id.clone(),
                text: msg.text.clone(),
                body: msg.body.clone(),
                r#type: msg.kind.clone(),
                ..v1::Message::default()
            })),
            group_seq: 0,
        }
    }

    /// Whether `case` passes against a fresh store with `fault`.
    async fn passes(case_name: &str, fault: Fault) -> bool {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let inner = Arc::new(LsmStore::open(dir.path()).expect("open store"));
        let store: Arc<dyn MessageStore> = Arc::new(Faulty {
            inner,
            fault,
            appends: AtomicU64::new(0),
            latest_msg_id: AtomicU64::new(0),
            seen: Arc::new(Mutex::new(HashMap::new())),
        });
        let (_, case) = cases()
            .into_iter()
            .find(|(name, _)| *name == case_name)
            .unwrap_or_else(|| panic!("no case {case_name}"));
        AssertUnwindSafe(case(store)).catch_unwind().await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_case_catches_its_defect() {
        // The wrapper itself must be transparent, or the failures below would prove nothing.
        for (name, _) in cases() {
            assert!(
                passes(name, Fault::None).await,
                "{name} fails without a fault"
            );
        }
        let expectations = [
            (
                "seqs_start_at_one_and_are_contiguous",
                Fault::NoRecipientCopy,
            ),
            (
                "seqs_start_at_one_and_are_contiguous",
                Fault::SenderSeesOwnName,
            ),
            (
                "resend_returns_original_and_appends_nothing",
                Fault::NoDedup,
            ),
            (
                "resend_returns_original_and_appends_nothing",
                Fault::DedupAcrossSenders,
            ),
            ("concurrent_sends_are_contiguous", Fault::LoseEvery(37)),
            ("concurrent_resends_store_once", Fault::NoDedup),
            ("appends_apply_in_call_order", Fault::ApplyInPollOrder),
            ("read_stream_paging", Fault::HasMoreWhenFull),
            ("read_stream_paging", Fault::AfterSeqInclusive),
            ("send_to_self_appends_one_event", Fault::SelfSendTwice),
            (
                "advance_cursor_forward_only_and_clamped",
                Fault::CursorUnclamped,
            ),
            ("max_msg_id_is_highest_stored", Fault::MaxIsLatest),
            ("purge_dedup_removes_only_older", Fault::PurgeEverything),
            ("purge_dedup_removes_only_older", Fault::PurgeNothing),
            ("content_round_trips", Fault::TruncateMsgId),
            ("content_round_trips", Fault::LoseEmptyBody),
        ];
        for (name, fault) in expectations {
            assert!(
                !passes(name, fault).await,
                "{name} accepts a store with {fault:?}"
            );
        }
        let covered: BTreeSet<&str> = expectations.iter().map(|(name, _)| *name).collect();
        for (name, _) in cases() {
            assert!(
                covered.contains(name),
                "no defect proves that {name} can fail"
            );
        }
    }
}
