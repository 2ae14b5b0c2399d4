//! The [`super::super::extras::ExtrasStore`] amend cases of the conformance suite: a recall
//! removes the content from every copy, appends an event at the next seq of each stream that
//! holds the message and takes it out of the unread counts; an edit replaces the content once;
//! refusals (not found, not yours, too old, recalled) write nothing and spend no seq; a group's
//! admin recalls a member's message in the group's log and in every member's stream. Run
//! against every store that can amend (`has_amend()`).

use super::groups::{change, group_create, group_message, member_copy, meta, notice};
use super::*;
use crate::conversation::Conversation;
use crate::store::extras::{Amend, AmendKind, AmendOutcome, AmendTarget};
use crate::store::groups::{log_owner, MembershipWrite};

/// `by`'s amend of `msg_id` in their one-to-one conversation with `peer`, accepted at
/// `TS0 + 100 s` with a window back to `TS0` (also the backends' own tests' builder).
pub(crate) fn one_to_one(by: &str, peer: &str, msg_id: u64, kind: AmendKind) -> Amend {
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
        not_before_ms: TS0,
        ts: TS0 + 100_000,
    }
}

fn edit_to(text: &str) -> AmendKind {
    AmendKind::Edit {
        text: Some(text.into()),
        body: None,
    }
}

async fn amended(store: &dyn Store, a: Amend) -> Vec<(String, Event)> {
    let what = format!("{:?} of {} by {}", a.kind, a.msg_id, a.by);
    match store.amend(a).await {
        Ok(AmendOutcome::Done(events)) => events,
        other => panic!("{what}: expected it done, the store says {other:?}"),
    }
}

async fn unread(store: &dyn Store, user: &str, conversation: &str) -> u64 {
    conversation_of(store, user, conversation).await.unread
}

fn assert_recalled(events: &[Event], msg_id: u64, whose: &str) {
    let copy = events
        .iter()
        .find_map(|e| match &e.body {
            Some(event::Body::Message(m)) if m.msg_id == msg_id => Some(m),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{whose}'s stream has no copy of {msg_id}"));
    assert!(
        copy.recalled,
        "{whose}'s copy of {msg_id} is marked recalled"
    );
    assert_eq!(
        (copy.text.as_ref(), copy.body.as_ref(), copy.r#type.as_ref()),
        (None, None, None),
        "{whose}'s copy of {msg_id} keeps no content"
    );
}

/// One-to-one recall: both copies rewritten, a `recalled` event at the next seq of both
/// streams, the message no longer unread, a second recall changes nothing, a recalled message
/// cannot be edited, and a read past it counts only what is left.
pub async fn amend_recall_rewrites_every_copy_and_clears_unread(store: Arc<dyn Store>) {
    assert!(store.has_amend(), "this case is for stores that amend");
    fresh(&*store, message("alice", "bob", "c1", 10, TS0 + 10)).await;
    fresh(&*store, message("alice", "bob", "c2", 11, TS0 + 11)).await;
    assert_eq!(unread(&*store, "bob", "u:alice").await, 2);

    let events = amended(&*store, one_to_one("alice", "bob", 10, AmendKind::Recall)).await;
    let at: Vec<(&str, u64)> = events.iter().map(|(o, e)| (o.as_str(), e.seq)).collect();
    assert_eq!(
        at,
        [("alice", 3), ("bob", 3)],
        "the recall is the next event of both streams, the caller's first"
    );
    match &events[1].1.body {
        Some(event::Body::Recalled(r)) => assert_eq!(
            (r.conversation.as_str(), r.msg_id, r.by.as_str()),
            ("u:alice", 10, "alice"),
            "bob's event names the conversation as bob sees it"
        ),
        other => panic!("bob's event is not a recall: {other:?}"),
    }
    assert_eq!(
        unread(&*store, "bob", "u:alice").await,
        1,
        "a recalled message is never unread"
    );
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let all = read_all(&*store, user).await;
        assert_eq!(seqs(&all), one_to(3), "{user}'s stream stays contiguous");
        assert_recalled(&all, 10, user);
        let h = store.history(user, peer, None, 10).await.expect("history");
        let m = h
            .messages
            .iter()
            .find(|m| m.msg_id == 10)
            .expect("in history");
        assert!(m.recalled && m.text.is_none(), "{user}'s history: recalled");
        let kept = h
            .messages
            .iter()
            .find(|m| m.msg_id == 11)
            .expect("in history");
        assert!(kept.text.is_some(), "{user}'s other message keeps its text");
    }

    let again = store
        .amend(one_to_one("alice", "bob", 10, AmendKind::Recall))
        .await
        .expect("recall again");
    assert_eq!(again, AmendOutcome::Unchanged { edited_at: 0 });
    let edit = store
        .amend(one_to_one("alice", "bob", 10, edit_to("too late")))
        .await
        .expect("edit a recalled message");
    assert_eq!(edit, AmendOutcome::Recalled);
    assert_eq!(
        last_seq(&*store, "bob").await,
        3,
        "neither wrote an event nor spent a seq"
    );
    let read = store.mark_read("bob", "u:alice", 11).await.expect("read");
    assert_eq!(read.unread, 0, "the read covers the message that is left");
}

/// Refusals answer without writing: another sender's message, one older than the window, an
/// unknown msgid. The streams stay where they were and the next message takes the next seq.
pub async fn amend_refusals_write_nothing_and_spend_no_seq(store: Arc<dyn Store>) {
    assert!(store.has_amend(), "this case is for stores that amend");
    fresh(&*store, message("alice", "bob", "c1", 10, TS0 + 10)).await;
    let cases = [
        (
            one_to_one("bob", "alice", 10, AmendKind::Recall),
            AmendOutcome::NotYours,
        ),
        (
            Amend {
                not_before_ms: TS0 + 11,
                ..one_to_one("alice", "bob", 10, edit_to("late"))
            },
            AmendOutcome::TooOld,
        ),
        (
            one_to_one("alice", "bob", 99, AmendKind::Recall),
            AmendOutcome::NotFound,
        ),
    ];
    for (a, expected) in cases {
        let what = format!("{:?} of {} by {}", a.kind, a.msg_id, a.by);
        assert_eq!(store.amend(a).await.expect(&what), expected, "{what}");
    }
    for user in ["alice", "bob"] {
        assert_eq!(last_seq(&*store, user).await, 1, "{user}: nothing written");
    }
    let next = fresh(&*store, message("bob", "alice", "c2", 12, TS0 + 12)).await;
    assert_eq!(
        (next.sent.seq, next.recipient_event.map(|e| e.seq)),
        (2, Some(2)),
        "no seq was spent by a refusal"
    );
    assert_eq!(seqs(&read_all(&*store, "alice").await), one_to(2));
}

/// An edit replaces the content of both copies, once: the same content again is no new event
/// and answers the first edit's time. The message's unread state does not change.
pub async fn amend_edit_replaces_the_content_once(store: Arc<dyn Store>) {
    assert!(store.has_amend(), "this case is for stores that amend");
    fresh(&*store, message("alice", "bob", "c1", 10, TS0 + 10)).await;
    let events = amended(&*store, one_to_one("alice", "bob", 10, edit_to("fixed"))).await;
    match &events[1].1.body {
        Some(event::Body::Edited(e)) => assert_eq!(
            (e.text.as_deref(), e.edited_at, e.conversation.as_str()),
            (Some("fixed"), TS0 + 100_000, "u:alice")
        ),
        other => panic!("bob's event is not an edit: {other:?}"),
    }
    let again = store
        .amend(one_to_one("alice", "bob", 10, edit_to("fixed")))
        .await
        .expect("the same edit again");
    assert_eq!(
        again,
        AmendOutcome::Unchanged {
            edited_at: TS0 + 100_000
        }
    );
    for (user, peer) in [("alice", "u:bob"), ("bob", "u:alice")] {
        let h = store.history(user, peer, None, 10).await.expect("history");
        assert_eq!(
            (h.messages[0].text.as_deref(), h.messages[0].edited_at),
            (Some("fixed"), TS0 + 100_000),
            "{user}'s history has the latest content"
        );
        assert_eq!(last_seq(&*store, user).await, 2, "{user}: one edit event");
    }
    assert_eq!(
        unread(&*store, "bob", "u:alice").await,
        1,
        "an edit makes a message neither read nor unread again"
    );
}

/// A small group's owner recalls a member's message at any age: the entry in the group's log and
/// every copy are rewritten (a member who left since included), each gets an event carrying the
/// group's next seq, and no member counts it unread.
pub async fn amend_group_recall_by_an_admin_reaches_every_member(store: Arc<dyn Store>) {
    assert!(
        store.has_amend() && store.has_groups(),
        "this case is for stores with groups that amend"
    );
    let members = ["olga", "pia", "quin"];
    store
        .append_group(group_create("9", 100, &members, false))
        .await
        .expect("create");
    let copies = members.iter().map(|m| member_copy(m, "pia")).collect();
    store
        .append_group(group_message("9", 101, "pia", "m1", copies))
        .await
        .expect("send");
    assert_eq!(unread(&*store, "quin", "g:9").await, 1);
    // quin leaves: the caller no longer names quin, but quin's copy is recalled too.
    let mut leave = change("9", 102, "left", false, vec![notice("olga"), notice("pia")]);
    leave.membership = Some(MembershipWrite {
        meta: meta(false, 2),
        upserts: vec![],
        removals: vec!["quin".into()],
    });
    store.append_group(leave).await.expect("leave");
    let members = ["olga", "pia"];

    let recall = Amend {
        by: "olga".into(),
        msg_id: 101,
        kind: AmendKind::Recall,
        home: AmendTarget {
            owner: log_owner("9"),
            conversation: "g:9".into(),
        },
        others: members
            .iter()
            .map(|m| AmendTarget {
                owner: m.to_string(),
                conversation: "g:9".into(),
            })
            .collect(),
        group_log: true,
        privileged: true,
        // Far past any window: an admin's recall has none.
        not_before_ms: i64::MAX,
        ts: TS0 + 200,
    };
    let events = amended(&*store, recall).await;
    let at: Vec<(&str, u64, u64)> = events
        .iter()
        .map(|(o, e)| (o.as_str(), e.seq, e.group_seq))
        .collect();
    assert_eq!(
        at,
        [
            ("#g:9", 4, 4),
            ("olga", 4, 4),
            ("pia", 4, 4),
            ("quin", 3, 4)
        ],
        "the group's entry 4, the next event of each stream that holds the message"
    );
    for m in ["olga", "pia", "quin"] {
        assert_eq!(unread(&*store, m, "g:9").await, 0, "{m}: nothing unread");
        assert_recalled(&read_all(&*store, m).await, 101, m);
    }
    let log = store.group_log("9", 0, 10).await.expect("group log");
    assert_eq!(
        seqs(&log.events),
        one_to(4),
        "the group's log is contiguous"
    );
    assert_recalled(&log.events, 101, "the group's log");
}

/// A large group's recalled message leaves the unread counts computed from read positions (for
/// members who had not read it, not for those who had); the mentioned member's copy is recalled
/// too and the mention cleared; reads after it count only what is left.
pub async fn amend_large_group_recall_leaves_unread_from_positions(store: Arc<dyn Store>) {
    assert!(
        store.has_amend() && store.has_groups(),
        "this case is for stores with groups that amend"
    );
    store
        .append_group(group_create("8", 100, &["olga", "pia", "quin"], true))
        .await
        .expect("create");
    for (id, cmid) in [(101, "m1"), (102, "m2"), (103, "m3")] {
        let mut m = group_message("8", id, "pia", cmid, vec![]);
        m.large = true;
        if id == 102 {
            if let crate::store::groups::GroupEntry::Message(gm) = &mut m.entry {
                gm.mentions = vec!["quin".into()];
            }
            m.copies = vec![crate::store::groups::Copy {
                owner: "quin".into(),
                recent: false,
                unread: false,
                mention: true,
            }];
        }
        store.append_group(m).await.expect("send");
    }
    store.mark_group_read("olga", "8", 102).await.expect("read");
    let view = |user: &'static str| {
        let store = store.clone();
        async move { store.large_group_view(user, "8").await.expect("view") }
    };
    assert_eq!(
        (view("quin").await.unread, view("olga").await.unread),
        (3, 1)
    );
    assert!(view("quin").await.mentioned);

    let recall = Amend {
        by: "pia".into(),
        msg_id: 102,
        kind: AmendKind::Recall,
        home: AmendTarget {
            owner: log_owner("8"),
            conversation: "g:8".into(),
        },
        // The caller names no member of a large group: the store knows whom it mentions.
        others: vec![],
        group_log: true,
        privileged: false,
        not_before_ms: TS0,
        ts: TS0 + 200,
    };
    let events = amended(&*store, recall).await;
    let owners: Vec<&str> = events.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(owners, ["#g:8", "quin"], "the log and quin's mention copy");
    let quin = view("quin").await;
    assert_eq!(
        (quin.unread, quin.mentioned),
        (2, false),
        "quin: the recalled message is not unread, its mention is gone"
    );
    assert_eq!(
        view("olga").await.unread,
        1,
        "olga had read it: her count does not change"
    );
    let r = store.mark_group_read("quin", "8", 102).await.expect("read");
    assert_eq!(r.unread, 1, "only m3 is left after the read");
    assert_eq!(view("pia").await.unread, 0, "the sender has nothing unread");
}
