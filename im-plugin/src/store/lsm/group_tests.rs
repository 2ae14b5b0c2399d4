//! The embedded store's groups after a reopen (the contract itself is the conformance suite's
//! `group_*` cases, which this store runs with the others).

use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use crate::store::conformance::{group_create as create, group_message as message, member_copy};
use crate::store::groups::{GroupStore, Role};

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
    let all = |from: &str| {
        members
            .iter()
            .map(|m| member_copy(m, from))
            .collect::<Vec<_>>()
    };
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
