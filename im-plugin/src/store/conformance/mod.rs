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
//! Files: `messages.rs` (the [`MessageStore`] cases), `inbox.rs` (unread, reads, conversations,
//! history), `groups.rs` (group logs, copies, positions, mentions), `amends.rs` (recall and
//! edit, for stores that amend: [`for_each_amend_case`]), `faults.rs` (each case fails on a
//! store with its defect).
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

mod amends;
#[cfg(test)]
mod faults;
mod groups;
mod inbox;
mod messages;

pub use amends::*;
pub use groups::*;
pub use inbox::*;
pub use messages::*;

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

/// Every group case with its name, in a stable order (stores with groups: `has_groups()`).
pub fn group_cases() -> Vec<(&'static str, InboxCase)> {
    vec![
        (
            "group_entries_are_contiguous_with_their_copies_and_deduped",
            |s| group_entries_are_contiguous_with_their_copies_and_deduped(s).boxed(),
        ),
        (
            "group_large_counts_unread_from_positions_and_mentions",
            |s| group_large_counts_unread_from_positions_and_mentions(s).boxed(),
        ),
        ("group_membership_rows_follow_the_log", |s| {
            group_membership_rows_follow_the_log(s).boxed()
        }),
    ]
}

/// Every amend case with its name, in a stable order (stores that amend: `has_amend()`).
pub fn amend_cases() -> Vec<(&'static str, InboxCase)> {
    vec![
        ("amend_recall_rewrites_every_copy_and_clears_unread", |s| {
            amend_recall_rewrites_every_copy_and_clears_unread(s).boxed()
        }),
        ("amend_refusals_write_nothing_and_spend_no_seq", |s| {
            amend_refusals_write_nothing_and_spend_no_seq(s).boxed()
        }),
        ("amend_edit_replaces_the_content_once", |s| {
            amend_edit_replaces_the_content_once(s).boxed()
        }),
        ("amend_group_recall_by_an_admin_reaches_every_member", |s| {
            amend_group_recall_by_an_admin_reaches_every_member(s).boxed()
        }),
        (
            "amend_large_group_recall_leaves_unread_from_positions",
            |s| amend_large_group_recall_leaves_unread_from_positions(s).boxed(),
        ),
    ]
}

/// Calls `$test!(case, case, ...)` with every case of [`amend_cases`], for the backends that
/// amend (a store shape that cannot leaves them out and refuses amends clearly).
#[cfg(test)]
macro_rules! for_each_amend_case {
    ($test:ident) => {
        $test! {
            amend_recall_rewrites_every_copy_and_clears_unread,
            amend_refusals_write_nothing_and_spend_no_seq,
            amend_edit_replaces_the_content_once,
            amend_group_recall_by_an_admin_reaches_every_member,
            amend_large_group_recall_leaves_unread_from_positions
        }
    };
}
#[cfg(test)]
pub(crate) use for_each_amend_case;

/// Calls `$test!(case, case, ...)` with every case of [`cases`], [`inbox_cases`] and
/// [`group_cases`], so a
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
            inbox_history_pages_backwards_without_gaps_or_repeats,
            group_entries_are_contiguous_with_their_copies_and_deduped,
            group_large_counts_unread_from_positions_and_mentions,
            group_membership_rows_follow_the_log
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

async fn conversation_of(store: &dyn Store, user: &str, id: &str) -> super::ConversationSummary {
    let page = store.conversations(user, 100).await.expect("conversations");
    page.conversations
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{user} has no conversation {id}"))
}
