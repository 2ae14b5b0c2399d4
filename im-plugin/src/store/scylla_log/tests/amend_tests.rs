//! Recall and edit in the ScyllaDB log: the checks, holders, copy maps and settling, which need
//! no database, and a recall and a race of amends against a real ScyllaDB at `SCYLLA_URI`
//! (reported as ignored without one). The amend conformance cases run through the split
//! store (`split/tests/mod.rs`, `on_scylla`).
use super::*;

/// The recall of `msg_id` by `by` in their conversation with `peer`, with a window that keeps
/// a message sent now in it.
fn recall(by: &str, peer: &str, msg_id: u64) -> crate::store::extras::Amend {
    use crate::store::extras::AmendKind;
    crate::store::extras::Amend {
        not_before_ms: 0,
        ..crate::store::conformance::one_to_one(by, peer, msg_id, AmendKind::Recall)
    }
}

fn edit(by: &str, peer: &str, msg_id: u64, text: &str) -> crate::store::extras::Amend {
    use crate::store::extras::AmendKind;
    let kind = AmendKind::Edit {
        text: Some(text.into()),
        body: None,
    };
    crate::store::extras::Amend {
        not_before_ms: 0,
        ..crate::store::conformance::one_to_one(by, peer, msg_id, kind)
    }
}

fn assert_copy_recalled(events: &[Event], seq: u64, whose: &str) {
    let copy = events
        .iter()
        .find(|e| e.seq == seq)
        .unwrap_or_else(|| panic!("{whose} has no event at seq {seq}"));
    let m = message_body(copy);
    assert!(
        m.recalled && m.text.is_none() && m.body.is_none(),
        "{whose}'s copy at seq {seq} is recalled and keeps no content: {m:?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn a_recall_survives_a_reopen_and_a_late_replay_of_the_original() {
    use crate::store::extras::{AmendKind, AmendLog, AmendOutcome, AmendPlan};
    let log = log().await;
    let original = message("alice", "bob", "c1", msg_id_at(crate::now_ms(), 1));
    let id = original.msg_id;
    fresh(&log, original.clone(), seqs(1, Some(1))).await;
    fresh(
        &log,
        message("bob", "alice", "c2", id + 1),
        seqs(2, Some(2)),
    )
    .await;
    // The write time a late duplicate of the original's batch would carry.
    let day = history_day(id);
    let ks = log.inner.keyspace.clone();
    let written = log
        .inner
        .session
        .query_unpaged(
            format!(
                "SELECT WRITETIME(message) FROM {ks}.history WHERE user_a = ? AND user_b = ? \
                 AND day = ? AND msg_id = ?"
            ),
            ("alice", "bob", day, id as i64),
        )
        .await
        .expect("read the write time")
        .into_rows_result()
        .expect("rows")
        .single_row::<(i64,)>()
        .expect("one row")
        .0;

    let plan = log.plan_amend(&recall("alice", "bob", id)).await;
    assert_eq!(
        plan.expect("plan"),
        AmendPlan::Write(vec!["alice".into(), "bob".into()])
    );
    let given = vec![("alice".to_string(), 3), ("bob".to_string(), 3)];
    let done = log
        .log_amend(recall("alice", "bob", id), given, soon())
        .await
        .expect("recall");
    let AmendOutcome::Done(events) = done else {
        panic!("expected the recall done, got {done:?}");
    };
    let at: Vec<(&str, u64)> = events.iter().map(|(o, e)| (o.as_str(), e.seq)).collect();
    assert_eq!(at, [("alice", 3), ("bob", 3)]);

    // A late duplicate of the original's history write, with its own write time, and a late
    // claim of its stream row: neither undoes the recall.
    let mut late = WriteBatch::new();
    late.push(
        &log.inner.stmts.insert_history,
        (
            "alice".to_string(),
            "bob".to_string(),
            day,
            id as i64,
            original.to_message(String::new()).encode_to_vec(),
        ),
    );
    late.batch.set_timestamp(Some(written));
    late.run(&log.inner.session, Duration::from_secs(10), || {
        "late".into()
    })
    .await
    .expect("late write");
    let late_claim = log
        .inner
        .claim_event("alice", &original.event(1, "u:bob".into()), soon())
        .await
        .expect("late claim");
    assert!(!late_claim, "the recalled copy holds the seq");

    let reopened = connect_for_tests_with(|cfg| cfg.keyspace = ks)
        .await
        .expect("set SCYLLA_URI=host:9042 to run the ScyllaDB tests");
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let events = reopened.read_events(user, 0, 10).await.expect("read");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_copy_recalled(&events, 1, user);
        assert!(
            matches!(&events[2].body, Some(event::Body::Recalled(r)) if r.msg_id == id
                && r.conversation == peer),
            "{user}'s seq 3 is the recall, as {user} sees the conversation: {:?}",
            events[2]
        );
        assert!(message_body(&events[1]).text.is_some(), "the other message");
        let h = reopened
            .history(user, peer, None, 10)
            .await
            .expect("history");
        let m = h.messages.iter().find(|m| m.msg_id == id).expect("listed");
        assert!(m.recalled && m.text.is_none(), "{user}'s history: {m:?}");
        assert_eq!(m.conversation, peer);
    }
    let again = reopened.plan_amend(&recall("alice", "bob", id)).await;
    assert_eq!(
        again.expect("plan"),
        AmendPlan::Answer(AmendOutcome::Unchanged { edited_at: 0 })
    );
    let edit_it = reopened.plan_amend(&edit("alice", "bob", id, "x")).await;
    assert_eq!(
        edit_it.expect("plan"),
        AmendPlan::Answer(AmendOutcome::Recalled)
    );
    let not_hers = crate::store::conformance::one_to_one("bob", "alice", id, AmendKind::Recall);
    // bob's own copy exists, but the message is recalled already: that answer comes first.
    assert_eq!(
        reopened.plan_amend(&not_hers).await.expect("plan"),
        AmendPlan::Answer(AmendOutcome::Unchanged { edited_at: 0 })
    );
    log.drop_test_keyspace().await;
}

#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042"
)]
async fn an_edit_and_a_recall_racing_on_two_nodes_leave_every_copy_recalled() {
    use crate::store::extras::{AmendLog, AmendOutcome};
    let a = log().await;
    let ks = a.inner.keyspace.clone();
    let b = connect_for_tests_with(|cfg| cfg.keyspace = ks)
        .await
        .expect("set SCYLLA_URI=host:9042 to run the ScyllaDB tests");
    let id = msg_id_at(crate::now_ms(), 1);
    fresh(&a, message("alice", "bob", "c1", id), seqs(1, Some(1))).await;
    let at = |seq: u64| vec![("alice".to_string(), seq), ("bob".to_string(), seq)];
    let (edited, recalled) = tokio::join!(
        a.log_amend(edit("alice", "bob", id, "x"), at(2), soon()),
        b.log_amend(recall("alice", "bob", id), at(3), soon()),
    );
    assert!(
        matches!(
            edited,
            Ok(AmendOutcome::Done(_)) | Ok(AmendOutcome::Recalled) | Err(_)
        ),
        "{edited:?}"
    );
    // A recall that lost to the edit asks for a retry; the retry recalls.
    let mut outcome = recalled;
    let mut next = 4;
    while outcome.is_err() && next < 8 {
        outcome = b
            .log_amend(recall("alice", "bob", id), at(next), soon())
            .await;
        next += 1;
    }
    assert!(
        matches!(
            outcome,
            Ok(AmendOutcome::Done(_)) | Ok(AmendOutcome::Unchanged { .. })
        ),
        "{outcome:?}"
    );
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let events = a.read_events(user, 0, 20).await.expect("read");
        assert_copy_recalled(&events, 1, user);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..next).collect::<Vec<_>>(),
            "{user}: every given seq holds an event or a gap"
        );
        let h = b.history(user, peer, None, 10).await.expect("history");
        assert!(
            h.messages[0].recalled,
            "{user}'s history: {:?}",
            h.messages[0]
        );
    }
    a.drop_test_keyspace().await;
}

#[test]
fn copy_maps_round_trip_and_refuse_corrupt_bytes() {
    let long = "u".repeat(300);
    let copies = [
        ("#g:9", 1u64),
        ("olga", 127),
        ("pia", 128),
        (long.as_str(), u64::MAX),
    ];
    let blob = encode_copies(copies.iter().copied());
    let back = decode_copies(&blob).expect("decode");
    let back: Vec<(&str, u64)> = back.iter().map(|(o, s)| (o.as_str(), *s)).collect();
    assert_eq!(back, copies);
    assert_eq!(
        encode_copies([("alice", 3), ("bob", 7)]).len(),
        1 + 2 + 5 + 3 + 2,
        "a format byte, then length, owner and seq per copy"
    );
    assert!(decode_copies(&encode_copies([])).expect("empty").is_empty());
    for corrupt in [
        &b""[..],
        &[2, 1, b'a', 1][..],
        &[1, 5, b'a', 1][..],
        &[1, 1, b'a'][..],
        &[1, 1, b'a', 0x80][..],
        &[1, 1, 0xff, 1][..],
        &[
            1, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ][..],
    ] {
        assert!(decode_copies(corrupt).is_err(), "{corrupt:?} is refused");
    }
}

#[test]
fn holders_are_the_home_then_the_named_then_the_copies_nobody_named() {
    use super::amend_rules::{holders, Holder};
    use crate::store::extras::{Amend, AmendTarget};
    let h = |owner: &str, conversation: &str, copy_seq: u64| Holder {
        owner: owner.into(),
        conversation: conversation.into(),
        copy_seq,
    };
    let map = |copies: &[(&str, u64)]| -> Vec<(String, u64)> {
        copies.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    };
    let one = recall("alice", "bob", 10);
    assert_eq!(
        holders(&one, &map(&[("bob", 4), ("alice", 9), ("eve", 1)])),
        Some(vec![h("alice", "u:bob", 9), h("bob", "u:alice", 4)]),
        "one-to-one: the two named, nothing the map adds"
    );
    assert_eq!(
        holders(&one, &map(&[("bob", 4)])),
        None,
        "not in alice's stream"
    );
    let target = |owner: &str| AmendTarget {
        owner: owner.into(),
        conversation: "g:9".into(),
    };
    let group = Amend {
        home: target("#g:9"),
        others: vec![target("olga"), target("pia"), target("zed")],
        group_log: true,
        ..recall("olga", "x", 101)
    };
    let copies = map(&[("#g:9", 2), ("quin", 5), ("olga", 3), ("pia", 4)]);
    assert_eq!(
        holders(&group, &copies),
        Some(vec![
            h("#g:9", "g:9", 2),
            h("olga", "g:9", 3),
            h("pia", "g:9", 4),
            h("quin", "g:9", 5),
        ]),
        "a group: the log, the named members who hold a copy, then one who left since"
    );
}

#[test]
fn amend_checks_and_rewrites_follow_the_embedded_log() {
    use super::amend_rules::{refusal, settled_copy};
    use crate::store::extras::{AmendKind, AmendOutcome};
    let sent = v1::Message {
        msg_id: 10,
        conversation: String::new(),
        from: "alice".into(),
        ts: 1_700_000_000_000,
        text: Some("hi".into()),
        r#type: Some("text".into()),
        mentions: vec!["bob".into()],
        mention_all: true,
        ..v1::Message::default()
    };
    let mut late = recall("alice", "bob", 10);
    late.not_before_ms = sent.ts + 1;
    let mut admin_late =
        crate::store::conformance::one_to_one("bob", "alice", 10, AmendKind::Recall);
    admin_late.privileged = true;
    admin_late.not_before_ms = i64::MAX;
    let mut admin_edit = edit("bob", "alice", 10, "x");
    admin_edit.privileged = true;
    let cases = [
        (recall("bob", "alice", 10), Some(AmendOutcome::NotYours)),
        (late, Some(AmendOutcome::TooOld)),
        (admin_late, None),
        (admin_edit, Some(AmendOutcome::NotYours)),
        (
            edit("alice", "bob", 10, "hi"),
            Some(AmendOutcome::Unchanged { edited_at: 0 }),
        ),
        (edit("alice", "bob", 10, "new"), None),
    ];
    for (a, expected) in cases {
        assert_eq!(refusal(&a, &sent), expected, "{a:?}");
    }

    let mut edited = sent.clone();
    let fix = edit("alice", "bob", 10, "fixed");
    assert!(fix.apply_to(&mut edited));
    assert_eq!(
        (edited.text.as_deref(), edited.edited_at),
        (Some("fixed"), fix.ts)
    );
    let mut gone = edited.clone();
    assert!(recall("alice", "bob", 10).apply_to(&mut gone));
    assert!(gone.recalled && gone.text.is_none() && gone.r#type.is_none());
    assert!(gone.mentions.is_empty() && !gone.mention_all);
    assert_eq!(
        gone.edited_at, fix.ts,
        "a recall keeps the time of the last edit"
    );
    assert!(
        !fix.apply_to(&mut gone.clone()),
        "a recalled message is never edited"
    );
    assert_eq!(
        refusal(&recall("alice", "bob", 10), &gone),
        Some(AmendOutcome::Unchanged { edited_at: fix.ts })
    );
    assert_eq!(refusal(&fix, &gone), Some(AmendOutcome::Recalled));

    // A copy an attempt edited, settled to history's recalled message: the copy keeps its
    // seq, conversation and group seq, and takes the content.
    let copy = Event {
        seq: 7,
        group_seq: 0,
        body: Some(event::Body::Message(v1::Message {
            conversation: "u:alice".into(),
            ..edited.clone()
        })),
    };
    let settled = settled_copy("bob", 7, &copy.encode_to_vec(), &gone).expect("settle");
    let settled = decode_event("bob", 7, &settled).expect("decode");
    assert_eq!(
        settled.body,
        Some(event::Body::Message(v1::Message {
            conversation: "u:alice".into(),
            ..gone.clone()
        }))
    );
}
