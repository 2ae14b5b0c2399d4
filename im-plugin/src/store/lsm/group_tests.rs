//! The embedded store's groups: a group's log and its copies in one atomic write, contiguous
//! group seqs beside one-to-one seqs, resend dedup, membership rows and join positions, large
//! group positions (unread from the message count), mentions, and all of it after a reopen.

use std::sync::Arc;

use mqim_schemas::v1::{event, GroupChange};
use tempfile::TempDir;

use super::*;
use crate::store::groups::{
    Copy, GroupEntry, GroupMessage, GroupMeta, GroupStore, MemberWrite, MembershipWrite, Role,
};

fn meta(large: bool, member_count: u64) -> GroupMeta {
    GroupMeta {
        name: "g".into(),
        owner: "olga".into(),
        large,
        created_at: 1,
        disbanded: false,
        member_count,
    }
}

fn copy(owner: &str, from: &str) -> Copy {
    Copy {
        owner: owner.into(),
        recent: true,
        unread: owner != from,
        mention: false,
    }
}

fn create(group: &str, msg_id: u64, members: &[&str], large: bool) -> GroupAppend {
    GroupAppend {
        group: group.into(),
        msg_id,
        ts: msg_id as i64,
        large,
        entry: GroupEntry::Change(GroupChange {
            group: format!("g:{group}"),
            change: "created".into(),
            by: "olga".into(),
            ..GroupChange::default()
        }),
        copies: members.iter().map(|m| copy(m, "olga")).collect(),
        membership: Some(MembershipWrite {
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
        }),
    }
}

fn message(group: &str, msg_id: u64, from: &str, cmid: &str, copies: Vec<Copy>) -> GroupAppend {
    GroupAppend {
        group: group.into(),
        msg_id,
        ts: msg_id as i64,
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
        membership: None,
    }
}

async fn fresh(store: &LsmStore, a: GroupAppend) -> crate::store::groups::GroupAppended {
    match store.append_group(a).await.expect("append") {
        GroupOutcome::Fresh(a) => a,
        GroupOutcome::Duplicate(s) => panic!("unexpected duplicate {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_entries_are_contiguous_atomic_with_their_copies_and_deduped() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(LsmStore::open(dir.path()).unwrap());
    let members = ["olga", "pia", "quin"];
    fresh(&store, create("7", 10, &members, false)).await;
    // A one-to-one message in between: each stream's seqs go on from where they are.
    store
        .append_message(NewMessage {
            from: "pia".into(),
            to: "zed".into(),
            client_msg_id: "dm".into(),
            msg_id: 11,
            ts: 11,
            text: Some("hi".into()),
            body: None,
            kind: None,
        })
        .await
        .unwrap();
    let all = |from: &str| members.iter().map(|m| copy(m, from)).collect::<Vec<_>>();
    let a = fresh(&store, message("7", 12, "olga", "c1", all("olga"))).await;
    assert_eq!(a.sent.group_seq, 2);
    assert_eq!(a.sent.seq, 2, "olga's own copy");
    assert_eq!(a.sent.conversation, "g:7");
    let b = fresh(&store, message("7", 13, "quin", "c1", all("quin"))).await;
    assert_eq!(b.sent.group_seq, 3);
    let seqs: Vec<(String, u64)> = b.copies.iter().map(|(o, e)| (o.clone(), e.seq)).collect();
    assert_eq!(
        seqs,
        [("olga".into(), 3), ("pia".into(), 4), ("quin".into(), 3)]
    );

    // A resend is the original and writes nothing.
    match store
        .append_group(message("7", 14, "olga", "c1", all("olga")))
        .await
        .unwrap()
    {
        GroupOutcome::Duplicate(s) => assert_eq!(s, a.sent),
        other => panic!("{other:?}"),
    }
    let log = store.group_log("7", 0, 100).await.unwrap();
    let gs: Vec<u64> = log.events.iter().map(|e| e.group_seq).collect();
    assert_eq!(gs, [1, 2, 3]);
    assert_eq!(store.last_seq("pia").await.unwrap(), 4);

    // Unread for the others, never for the sender; history from the member's own stream.
    let pia = store.conversations("pia", 10).await.unwrap();
    let g = pia.conversations.iter().find(|c| c.id == "g:7").unwrap();
    assert_eq!(g.unread, 2);
    let olga = store.conversations("olga", 10).await.unwrap();
    assert_eq!(olga.conversations[0].unread, 1, "quin's message only");
    let h = store.history("quin", "g:7", None, 10).await.unwrap();
    assert_eq!(h.messages.len(), 2);

    // A small-group read sends the receipt to the sender of the newest message it covers.
    let r = store.mark_read("pia", "g:7", 13).await.unwrap();
    assert_eq!(r.unread, 0);
    let (own, (peer, theirs)) = r.receipts.expect("receipts");
    assert_eq!(peer, "quin");
    assert_eq!(own.seq, 5);
    match theirs.body {
        Some(event::Body::Read(rr)) => {
            assert_eq!(
                (rr.conversation.as_str(), rr.by.as_str(), rr.msg_id),
                ("g:7", "pia", 13)
            )
        }
        other => panic!("{other:?}"),
    }

    // Everything is there after a reopen.
    drop(store);
    let store = LsmStore::open(dir.path()).unwrap();
    assert_eq!(store.group_ids().await.unwrap(), ["7"]);
    let g = store.load_group("7").await.unwrap().unwrap();
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.members["olga"].role, Role::Owner);
    assert_eq!(g.members["pia"].joined_seq, 1);
    assert_eq!(
        store.user_groups("quin").await.unwrap(),
        [("7".into(), false)]
    );
    let next = fresh(&store, message("7", 15, "pia", "c2", all("pia"))).await;
    assert_eq!(next.sent.group_seq, 4, "group seqs go on after a reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_counts_unread_from_positions_and_mentions_until_read() {
    let (_dir, store) = {
        let dir = TempDir::new().unwrap();
        let store = LsmStore::open(dir.path()).unwrap();
        (dir, store)
    };
    fresh(&store, create("9", 10, &["olga", "pia", "quin"], true)).await;
    let mut last = 0;
    for (i, from) in ["olga", "pia", "olga"].iter().enumerate() {
        let id = 20 + i as u64;
        let mut m = message("9", id, from, &format!("m{i}"), vec![]);
        m.large = true;
        if i == 2 {
            m.copies = vec![Copy {
                owner: "quin".into(),
                recent: false,
                unread: false,
                mention: true,
            }];
        }
        let a = fresh(&store, m).await;
        assert_eq!(a.sent.seq, 0, "no stream copy for the sender");
        last = id;
    }
    let quin = store.large_group_view("quin", "9").await.unwrap();
    assert_eq!(
        (quin.unread, quin.mentioned, quin.last_group_seq),
        (3, true, 4)
    );
    assert_eq!(quin.last.as_ref().unwrap().msg_id, last);
    // The mention is in quin's own stream, after the creation notice.
    assert_eq!(store.last_seq("quin").await.unwrap(), 2);
    // Pia sent the second message: her position is there, one unread after it.
    let pia = store.large_group_view("pia", "9").await.unwrap();
    assert_eq!((pia.unread, pia.mentioned), (1, false));

    let r = store.mark_group_read("quin", "9", 21).await.unwrap();
    assert_eq!(r.unread, 1);
    assert!(r.own_receipt.is_some());
    let again = store.mark_group_read("quin", "9", 21).await.unwrap();
    assert!(
        again.own_receipt.is_none(),
        "the same read again changes nothing"
    );
    assert!(store.large_group_view("quin", "9").await.unwrap().mentioned);
    store.mark_group_read("quin", "9", last).await.unwrap();
    let quin = store.large_group_view("quin", "9").await.unwrap();
    assert_eq!((quin.unread, quin.mentioned), (0, false));
    let h = store.group_history("9", None, 20, 10).await.unwrap();
    assert_eq!(h.messages.len(), 2, "only messages after msgid 20");
}
