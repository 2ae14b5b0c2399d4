//! The embedded store's groups after a reopen (the contract itself is the conformance suite's
//! `group_*` cases, which this store runs with the others).

use std::sync::Arc;

use mqim_schemas::v1::GroupChange;
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

/// The conformance cases (`store::conformance::groups`) cover the contract; this one covers
/// what only a store on disk has to show: all of it is there after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_their_seqs_survive_a_reopen() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(LsmStore::open(dir.path()).unwrap());
    let members = ["olga", "pia", "quin"];
    fresh(&store, create("7", 10, &members, false)).await;
    let all = |from: &str| members.iter().map(|m| copy(m, from)).collect::<Vec<_>>();
    let a = fresh(&store, message("7", 12, "olga", "c1", all("olga"))).await;
    assert_eq!(a.sent.group_seq, 2);

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
    match store
        .append_group(message("7", 14, "olga", "c1", all("olga")))
        .await
        .unwrap()
    {
        GroupOutcome::Duplicate(s) => assert_eq!(s, a.sent, "dedup survives the reopen"),
        other => panic!("{other:?}"),
    }
    let next = fresh(&store, message("7", 15, "pia", "c2", all("pia"))).await;
    assert_eq!(next.sent.group_seq, 3, "group seqs go on after a reopen");
    assert_eq!(next.copies[1].1.seq, 3, "pia's stream too");
}
