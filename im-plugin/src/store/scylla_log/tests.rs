//! The ScyllaDB log's tests, against a real ScyllaDB at `SCYLLA_URI` (reported as ignored
//! without one). Recall and edit: `tests/amend_tests.rs`.
use super::*;

mod amend_tests;

async fn log() -> ScyllaLog {
    connect_for_tests()
        .await
        .expect("set SCYLLA_URI=host:9042 to run the ScyllaDB tests")
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// A msgid at Unix time `unix_ms`, node 0, counter `n`.
fn msg_id_at(unix_ms: i64, n: u64) -> u64 {
    (((unix_ms - EPOCH_MS) as u64) << MSGID_MS_SHIFT) | n
}

fn message(from: &str, to: &str, client_msg_id: &str, msg_id: u64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        msg_id,
        ts: crate::now_ms(),
        text: Some(format!("hello {client_msg_id}")),
        body: None,
        kind: None,
    }
}

fn seqs(sender: u64, recipient: Option<u64>) -> MessageSeqs {
    MessageSeqs { sender, recipient }
}

fn message_body(event: &Event) -> &v1::Message {
    match &event.body {
        Some(event::Body::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn is_gap(event: &Event) -> bool {
    matches!(event.body, Some(event::Body::Gap(_)))
}

async fn fresh(log: &ScyllaLog, msg: NewMessage, at: MessageSeqs) -> Appended {
    match log.log_message(msg, at, soon()).await {
        Ok(SendOutcome::Fresh(appended)) => appended,
        other => panic!("expected a fresh message, got {other:?}"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn a_message_lands_in_both_streams_as_each_side_sees_it() {
    let log = log().await;
    let sent = fresh(&log, message("alice", "bob", "c1", 100), seqs(3, Some(7))).await;
    assert_eq!(sent.sent.seq, 3);
    assert_eq!(sent.sent.conversation, "u:bob");

    let alice = log.read_events("alice", 0, 10).await.expect("read alice");
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0], sent.sender_event);
    assert_eq!(alice[0].seq, 3);
    assert_eq!(message_body(&alice[0]).conversation, "u:bob");
    let bob = log.read_events("bob", 0, 10).await.expect("read bob");
    assert_eq!(bob.len(), 1);
    assert_eq!(Some(&bob[0]), sent.recipient_event.as_ref());
    assert_eq!(bob[0].seq, 7);
    assert_eq!(message_body(&bob[0]).conversation, "u:alice");

    let note = fresh(&log, message("carol", "carol", "n1", 101), seqs(1, None)).await;
    assert!(note.recipient_event.is_none());
    let carol = log.read_events("carol", 0, 10).await.expect("read carol");
    assert_eq!(carol.len(), 1, "a note to self has one copy");
    assert_eq!(message_body(&carol[0]).conversation, "u:carol");
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn a_resend_returns_the_original_and_fills_its_new_seqs_with_gaps() {
    let log = log().await;
    let original = fresh(&log, message("alice", "bob", "c1", 100), seqs(1, Some(1))).await;
    let resent = log
        .log_message(message("alice", "bob", "c1", 200), seqs(2, Some(2)), soon())
        .await
        .expect("resend");
    assert_eq!(resent, SendOutcome::Duplicate(original.sent.clone()));
    for user in ["alice", "bob"] {
        let events = log.read_events(user, 0, 10).await.expect("read");
        assert_eq!(events.len(), 2, "{user}'s stream");
        assert_eq!(message_body(&events[0]).msg_id, 100);
        assert!(is_gap(&events[1]), "{user}'s new seq holds a gap");
        assert_eq!(events[1].seq, 2);
    }
    assert_eq!(
        log.max_msg_id().await.expect("max"),
        100,
        "a resend raised it"
    );
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn a_resend_after_a_failed_original_is_written_fresh() {
    let log = connect_for_tests_with(|cfg| cfg.takeover_grace_ms = 0)
        .await
        .expect("set SCYLLA_URI=host:9042 to run the ScyllaDB tests");
    // An original whose dedup entry was recorded but whose batch never landed.
    let past = Instant::now() + Duration::from_millis(300);
    let claim = log
        .inner
        .lwt(
            &log.inner.stmts.claim_dedup,
            (
                "alice",
                "c1",
                100i64,
                1i64,
                "u:bob",
                5i64,
                wall_ms_at(past),
                3600i32,
            ),
            || "test claim".into(),
        )
        .await
        .expect("claim");
    assert!(claim.applied);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = fresh(&log, message("alice", "bob", "c1", 200), seqs(2, Some(1))).await;
    assert_eq!(again.sent.msg_id, 200);
    assert_eq!(again.sent.seq, 2);
    let duplicate = log
        .log_message(message("alice", "bob", "c1", 300), seqs(3, Some(2)), soon())
        .await
        .expect("second resend");
    assert_eq!(duplicate, SendOutcome::Duplicate(again.sent));
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn a_write_past_its_deadline_is_refused_and_leaves_nothing() {
    let log = log().await;
    let gone = Instant::now();
    let refused = log
        .log_message(message("alice", "bob", "c1", 100), seqs(1, Some(1)), gone)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = log.log_gaps(vec![("alice".into(), 2)], gone).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(log
        .read_events("alice", 0, 10)
        .await
        .expect("read")
        .is_empty());
    assert!(log
        .read_events("bob", 0, 10)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(log.max_msg_id().await.expect("max"), 0);
    // Nothing claimed the clientMsgId either: a later send is fresh.
    fresh(&log, message("alice", "bob", "c1", 100), seqs(1, Some(1))).await;
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn reads_and_max_seq_cross_bucket_boundaries() {
    let log = log().await;
    let edge = 1u64 << EVENT_BUCKET_BITS;
    let far = 5 * edge + 3;
    let seqs_written = [edge - 2, edge - 1, edge, edge + 1, far];
    let gaps = seqs_written
        .iter()
        .map(|&s| ("alice".to_string(), s))
        .collect();
    log.log_gaps(gaps, soon()).await.expect("write");
    let all = log.read_events("alice", 0, 100).await.expect("read");
    let got: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(got, seqs_written, "ascending across buckets, holes absent");
    let page = log.read_events("alice", edge - 2, 2).await.expect("read");
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [edge - 1, edge]
    );
    let tail = log.read_events("alice", edge + 1, 10).await.expect("read");
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [far]);
    assert!(log
        .read_events("alice", far, 10)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(log.max_seq("alice").await.expect("max_seq"), far);
    assert_eq!(log.max_seq("nobody").await.expect("max_seq"), 0);
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn history_pages_newest_first_across_days_without_gaps_or_repeats() {
    let log = log().await;
    let day1 = EPOCH_MS + 400 * DAY_MS as i64 + 1000;
    let day2 = day1 + 3 * DAY_MS as i64;
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let at = if i < 4 { day1 } else { day2 };
        let id = msg_id_at(at + i as i64, 0);
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        let seq = i + 1;
        fresh(
            &log,
            message(from, to, &format!("h{i}"), id),
            seqs(seq, Some(seq)),
        )
        .await;
        ids.push(id);
    }
    fresh(
        &log,
        message("carol", "bob", "other", msg_id_at(day2, 99)),
        seqs(1, Some(8)),
    )
    .await;
    ids.reverse();
    for (user, conversation) in [("bob", "u:alice"), ("alice", "u:bob")] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = log
                .history(user, conversation, before, 3)
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
        assert_eq!(seen, ids, "{user}: newest first, each once, nothing else");
    }
    let empty = log
        .history("alice", "u:nobody", None, 10)
        .await
        .expect("history");
    assert!(empty.messages.is_empty() && !empty.has_more);
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn max_msg_id_is_the_highest_logged_not_the_latest() {
    let log = log().await;
    assert_eq!(log.max_msg_id().await.expect("max"), 0);
    let now = crate::now_ms();
    let high = msg_id_at(now, 1500) | (7 << MSGID_NODE_SHIFT);
    let same_ms_lower = msg_id_at(now, 1200) | (7 << MSGID_NODE_SHIFT);
    let older = msg_id_at(now - 5000, 3) | (7 << MSGID_NODE_SHIFT);
    fresh(&log, message("alice", "bob", "m1", high), seqs(1, Some(1))).await;
    fresh(
        &log,
        message("alice", "bob", "m2", same_ms_lower),
        seqs(2, Some(2)),
    )
    .await;
    fresh(&log, message("alice", "bob", "m3", older), seqs(3, Some(3))).await;
    assert_eq!(log.max_msg_id().await.expect("max"), high);
    let other_node = msg_id_at(now - 1000, 0) | (9 << MSGID_NODE_SHIFT);
    fresh(
        &log,
        message("bob", "alice", "m4", other_node),
        seqs(4, Some(4)),
    )
    .await;
    assert_eq!(log.max_msg_id().await.expect("max"), high);
    assert_eq!(log.max_seq("alice").await.expect("max_seq"), 4);
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn a_cursor_only_moves_forward() {
    let log = log().await;
    assert_eq!(
        log.advance_cursor("alice", "phone", 5)
            .await
            .expect("cursor"),
        5
    );
    assert_eq!(
        log.advance_cursor("alice", "phone", 3)
            .await
            .expect("cursor"),
        5
    );
    assert_eq!(
        log.advance_cursor("alice", "phone", 9)
            .await
            .expect("cursor"),
        9
    );
    assert_eq!(
        log.advance_cursor("alice", "laptop", 2)
            .await
            .expect("cursor"),
        2
    );
    assert_eq!(log.purge_dedup(i64::MAX).await.expect("purge"), 0);
    log.drop_test_keyspace().await;
}

#[test]
fn layout_helpers_keep_order() {
    assert_eq!(event_bucket((1 << EVENT_BUCKET_BITS) - 1), 0);
    assert_eq!(event_bucket(1 << EVENT_BUCKET_BITS), 1);
    assert_eq!(pair("bob", "alice"), ("alice", "bob"));
    let now = crate::now_ms();
    let a = msg_id_at(now, 5);
    assert!(max_msg_id_timestamp(a) < max_msg_id_timestamp(a + 1));
    assert!(
        max_msg_id_timestamp(msg_id_at(now, 4095)) < max_msg_id_timestamp(msg_id_at(now + 1, 0))
    );
    assert_eq!(max_msg_id_timestamp(msg_id_at(now, 0)), now * 1000);
    assert_eq!(history_day(msg_id_at(EPOCH_MS + DAY_MS as i64, 0)), 1);
    assert_eq!(history_day(u64::MAX), ((u64::MAX >> 22) / DAY_MS) as i32);
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn blocks_and_presence_settings_survive_a_reopen() {
    use crate::store::extras::ExtrasLog;
    let log = log().await;
    log.set_block("alice", "mallory", true)
        .await
        .expect("block");
    log.set_block("alice", "bob", true).await.expect("block");
    log.set_block("alice", "bob", false).await.expect("unblock");
    log.set_presence_visible("carol", false)
        .await
        .expect("hide");
    log.set_presence_visible("dave", false).await.expect("hide");
    log.set_presence_visible("dave", true).await.expect("show");
    log.set_last_seen("carol", 1_700_000_000_000)
        .await
        .expect("seen");
    let keyspace = log.inner.keyspace.clone();
    let reopened = connect_for_tests_with(|cfg| cfg.keyspace = keyspace)
        .await
        .expect("set SCYLLA_URI=host:9042 to run the ScyllaDB tests");
    let state = reopened.load_extras().await.expect("load");
    let blocked: Vec<&str> = state.blocks["alice"].iter().map(String::as_str).collect();
    assert_eq!(blocked, ["mallory"], "the unblock is durable too");
    assert_eq!(state.blocks.len(), 1);
    let hidden: Vec<&str> = state.hidden.iter().map(String::as_str).collect();
    assert_eq!(hidden, ["carol"]);
    assert_eq!(
        reopened.last_seen("carol").await.expect("read"),
        1_700_000_000_000
    );
    assert_eq!(
        reopened.last_seen("dave").await.expect("read"),
        0,
        "never seen"
    );
    log.drop_test_keyspace().await;
}

#[test]
fn a_group_job_touches_its_log_its_copies_and_its_sender() {
    use crate::store::groups::{Copy, GroupAppend, GroupEntry, GroupMessage};
    let entry = GroupAppend {
        group: "7".into(),
        msg_id: 1,
        ts: 1,
        large: true,
        entry: GroupEntry::Message(GroupMessage {
            from: "olga".into(),
            client_msg_id: "c".into(),
            text: None,
            body: None,
            kind: None,
            mentions: vec!["pia".into()],
            mention_all: false,
        }),
        copies: vec![Copy {
            owner: "pia".into(),
            recent: false,
            unread: false,
            mention: true,
        }],
        basis: 0,
        membership: None,
    };
    assert_eq!(groups::group_job_users(&entry), ["#g:7", "pia", "olga"]);
}
