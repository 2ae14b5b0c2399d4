//! The [`super::super::groups::GroupStore`] cases of the conformance suite: a group's log and its
//! copies, contiguous group seqs beside one-to-one seqs, resend dedup, unread and receipts in a
//! small group, positions and mentions in a large one, membership rows. Run against every store
//! that keeps groups (`has_groups()`).

use mqim_schemas::v1::GroupChange;

use super::*;
use crate::store::groups::{
    Copy, GroupAppend, GroupAppended, GroupEntry, GroupMessage, GroupMeta, GroupOutcome,
    MemberWrite, MembershipWrite, Role,
};

pub(super) fn meta(large: bool, member_count: u64) -> GroupMeta {
    GroupMeta {
        name: "g".into(),
        owner: "olga".into(),
        large,
        created_at: TS0,
        disbanded: false,
        member_count,
        version_id: 0,
        version_seq: 0,
    }
}

/// A small-group copy: recent for everyone, unread for all but the sender.
pub(crate) fn member_copy(owner: &str, from: &str) -> Copy {
    Copy {
        owner: owner.into(),
        recent: true,
        unread: owner != from,
        mention: false,
    }
}

/// A change's copy: in the stream, not unread, not recent.
pub(super) fn notice(owner: &str) -> Copy {
    Copy {
        owner: owner.into(),
        recent: false,
        unread: false,
        mention: false,
    }
}

pub(super) fn change(
    group: &str,
    msg_id: u64,
    kind: &str,
    large: bool,
    copies: Vec<Copy>,
) -> GroupAppend {
    GroupAppend {
        group: group.into(),
        msg_id,
        ts: TS0 + msg_id as i64,
        large,
        entry: GroupEntry::Change(GroupChange {
            group: format!("g:{group}"),
            change: kind.into(),
            by: "olga".into(),
            ..GroupChange::default()
        }),
        copies,
        basis: 0,
        membership: None,
    }
}

pub(crate) fn group_create(group: &str, msg_id: u64, members: &[&str], large: bool) -> GroupAppend {
    let copies = match large {
        true => vec![notice("olga")],
        false => members.iter().map(|m| notice(m)).collect(),
    };
    let mut a = change(group, msg_id, "created", large, copies);
    a.membership = Some(MembershipWrite {
        meta: meta(large, members.len() as u64),
        upserts: members
            .iter()
            .map(|m| MemberWrite {
                user: m.to_string(),
                role: if *m == "olga" {
                    Role::Owner
                } else {
                    Role::Member
                },
                joins: true,
            })
            .collect(),
        removals: vec![],
    });
    a
}

pub(crate) fn group_message(
    group: &str,
    msg_id: u64,
    from: &str,
    cmid: &str,
    copies: Vec<Copy>,
) -> GroupAppend {
    GroupAppend {
        group: group.into(),
        msg_id,
        ts: TS0 + msg_id as i64,
        large: false,
        entry: GroupEntry::Message(GroupMessage {
            from: from.into(),
            client_msg_id: cmid.into(),
            text: Some(format!("text {msg_id}")),
            body: None,
            kind: None,
            mentions: vec![],
            mention_all: false,
        }),
        copies,
        basis: 0,
        membership: None,
    }
}

async fn appended(store: &dyn Store, a: GroupAppend) -> GroupAppended {
    match store.append_group(a).await.expect("append a group entry") {
        GroupOutcome::Fresh(a) => a,
        GroupOutcome::Duplicate(s) => panic!("a fresh group entry was taken for a resend: {s:?}"),
    }
}

/// Messages and changes of a small group: the next seq of the group's log and of every copy's
/// stream, one-to-one seqs in between go on, a resend is the original, unread for all but the
/// sender, history from the member's own copies, and the receipt of a read goes to the sender
/// of the newest message it covers.
pub async fn group_entries_are_contiguous_with_their_copies_and_deduped(store: Arc<dyn Store>) {
    assert!(store.has_groups(), "this case is for stores with groups");
    let members = ["olga", "pia", "quin"];
    let created = appended(&*store, group_create("7", 10, &members, false)).await;
    assert_eq!(created.log_event.seq, 1, "a group's log starts at 1");
    assert_eq!(
        created.copies.len(),
        3,
        "every member hears of the creation"
    );
    fresh(&*store, super::message("pia", "zed", "dm", 11, TS0 + 11)).await;

    let all = |from: &str| {
        members
            .iter()
            .map(|m| member_copy(m, from))
            .collect::<Vec<_>>()
    };
    let a = appended(&*store, group_message("7", 12, "olga", "c1", all("olga"))).await;
    assert_eq!(a.sent.group_seq, 2, "the group seq follows the creation");
    assert_eq!(a.sent.seq, 2, "the sender's own copy is her next seq");
    assert_eq!(a.sent.conversation, "g:7");
    let b = appended(&*store, group_message("7", 13, "quin", "c1", all("quin"))).await;
    assert_eq!(b.sent.group_seq, 3);
    let seqs: Vec<(String, u64)> = b.copies.iter().map(|(o, e)| (o.clone(), e.seq)).collect();
    assert_eq!(
        seqs,
        [("olga".into(), 3), ("pia".into(), 4), ("quin".into(), 3)],
        "each copy at its owner's next seq (pia's one-to-one message in between)"
    );
    for (_, e) in &b.copies {
        assert_eq!(e.group_seq, 3, "every copy carries the group seq");
    }

    match store
        .append_group(group_message("7", 14, "olga", "c1", all("olga")))
        .await
        .expect("resend")
    {
        GroupOutcome::Duplicate(s) => assert_eq!(s, a.sent, "a resend gets the original back"),
        other => panic!("a resend was stored again: {other:?}"),
    }
    let log = store.group_log("7", 0, 100).await.expect("group log");
    let gs: Vec<u64> = log.events.iter().map(|e| e.group_seq).collect();
    assert_eq!(
        gs,
        [1, 2, 3],
        "the group's log holds each entry once, in order"
    );
    let pia_stream: Vec<u64> = read_all(&*store, "pia")
        .await
        .iter()
        .filter(|e| e.group_seq != 0)
        .map(|e| e.group_seq)
        .collect();
    assert_eq!(pia_stream, [1, 2, 3], "pia's stream has every entry once");

    let pia = conversation_of(&*store, "pia", "g:7").await;
    assert_eq!(pia.unread, 2, "both messages are unread for pia");
    assert_eq!(pia.last.as_ref().map(|m| m.msg_id), Some(13));
    let olga = conversation_of(&*store, "olga", "g:7").await;
    assert_eq!(olga.unread, 1, "her own message is never unread for olga");
    let h = store
        .history("quin", "g:7", None, 10)
        .await
        .expect("history");
    let ids: Vec<u64> = h.messages.iter().map(|m| m.msg_id).collect();
    assert_eq!(
        ids,
        [13, 12],
        "history from quin's own copies, newest first"
    );

    let r = store.mark_read("pia", "g:7", 13).await.expect("read");
    assert_eq!(r.unread, 0);
    let (own, (peer, theirs)) = r.receipts.expect("a read of unread messages has receipts");
    assert_eq!(
        peer, "quin",
        "the receipt goes to the newest covered message's sender"
    );
    assert_eq!(own.seq, 5, "pia's own receipt at her next seq");
    match theirs.body {
        Some(event::Body::Read(rr)) => assert_eq!(
            (rr.conversation.as_str(), rr.by.as_str(), rr.msg_id),
            ("g:7", "pia", 13),
            "the sender sees the read in the group's conversation"
        ),
        other => panic!("not a read receipt: {other:?}"),
    }
    assert_eq!(conversation_of(&*store, "pia", "g:7").await.unread, 0);
    let again = store.mark_read("pia", "g:7", 13).await.expect("read again");
    assert!(again.receipts.is_none(), "reading again sends nothing");
}

/// A large group: the sender has no stream copy, unread counts come from positions, a mention
/// is a copy in the mentioned member's stream and is reported until read, reads move forward
/// only, history starts where asked.
pub async fn group_large_counts_unread_from_positions_and_mentions(store: Arc<dyn Store>) {
    assert!(store.has_groups(), "this case is for stores with groups");
    appended(
        &*store,
        group_create("9", 10, &["olga", "pia", "quin"], true),
    )
    .await;
    let mut last = 0;
    for (i, from) in ["olga", "pia", "olga"].iter().enumerate() {
        let id = 20 + i as u64;
        let mut m = group_message("9", id, from, &format!("m{i}"), vec![]);
        m.large = true;
        if i == 2 {
            m.copies = vec![Copy {
                owner: "quin".into(),
                recent: false,
                unread: false,
                mention: true,
            }];
        }
        let a = appended(&*store, m).await;
        assert_eq!(
            a.sent.seq, 0,
            "no stream copy for the sender of a large group"
        );
        assert_eq!(a.sent.group_seq, 2 + i as u64);
        last = id;
    }
    let quin = store.large_group_view("quin", "9").await.expect("view");
    assert_eq!(
        (quin.unread, quin.mentioned, quin.last_group_seq),
        (3, true, 4),
        "three unread, one mentioning quin, four entries"
    );
    assert_eq!(quin.last.as_ref().map(|m| m.msg_id), Some(last));
    assert_eq!(
        last_seq(&*store, "quin").await,
        1,
        "only the mention is in quin's stream (the creation notice went to olga)"
    );
    let pia = store.large_group_view("pia", "9").await.expect("view");
    assert_eq!(
        (pia.unread, pia.mentioned),
        (1, false),
        "sending moved pia's position to her message"
    );

    let r = store.mark_group_read("quin", "9", 21).await.expect("read");
    assert_eq!(r.unread, 1);
    assert!(
        r.own_receipt.is_some(),
        "quin's other devices hear of the read"
    );
    let again = store.mark_group_read("quin", "9", 21).await.expect("read");
    assert!(
        again.own_receipt.is_none(),
        "the same read again changes nothing"
    );
    assert_eq!(again.unread, 1);
    assert!(store.large_group_view("quin", "9").await.unwrap().mentioned);
    store
        .mark_group_read("quin", "9", last)
        .await
        .expect("read");
    let quin = store.large_group_view("quin", "9").await.expect("view");
    assert_eq!(
        (quin.unread, quin.mentioned),
        (0, false),
        "all read, mention gone"
    );
    let h = store
        .group_history("9", None, 20, 10)
        .await
        .expect("history");
    assert_eq!(h.messages.len(), 2, "only messages after msgid 20");
    let log = store.group_log("9", 1, 10).await.expect("group log");
    let gs: Vec<u64> = log.events.iter().map(|e| e.group_seq).collect();
    assert_eq!(gs, [2, 3, 4], "the group's log after the creation");
}

/// Membership rows are written with the entries that change them: joins with their position,
/// removals, roles, the user's list of groups.
pub async fn group_membership_rows_follow_the_log(store: Arc<dyn Store>) {
    assert!(store.has_groups(), "this case is for stores with groups");
    appended(&*store, group_create("5", 10, &["olga", "pia"], false)).await;
    let mut add = change("5", 11, "added", false, vec![notice("olga"), notice("rex")]);
    add.membership = Some(MembershipWrite {
        meta: meta(false, 3),
        upserts: vec![MemberWrite {
            user: "rex".into(),
            role: Role::Member,
            joins: true,
        }],
        removals: vec![],
    });
    appended(&*store, add).await;
    let mut remove = change("5", 12, "removed", false, vec![notice("pia")]);
    remove.membership = Some(MembershipWrite {
        meta: meta(false, 2),
        upserts: vec![MemberWrite {
            user: "rex".into(),
            role: Role::Admin,
            joins: false,
        }],
        removals: vec!["pia".into()],
    });
    appended(&*store, remove).await;

    assert_eq!(store.group_ids().await.expect("ids"), ["5"]);
    let g = store
        .load_group("5")
        .await
        .expect("load")
        .expect("the group");
    let members: Vec<&str> = g.members.keys().map(String::as_str).collect();
    assert_eq!(members, ["olga", "rex"], "pia was removed, rex added");
    assert_eq!(g.members["olga"].role, Role::Owner);
    assert_eq!(
        g.members["rex"].role,
        Role::Admin,
        "a role change keeps the join"
    );
    assert_eq!(
        g.members["rex"].joined_seq, 2,
        "rex joined at the entry that added him"
    );
    assert_eq!(g.members["rex"].joined_msg_id, 11);
    assert_eq!(g.meta.member_count, 2);
    assert_eq!(
        store.user_groups("rex").await.expect("groups"),
        [("5".to_string(), false)]
    );
    assert!(store.user_groups("pia").await.expect("groups").is_empty());
    assert!(store.load_group("nope").await.expect("load").is_none());
}
