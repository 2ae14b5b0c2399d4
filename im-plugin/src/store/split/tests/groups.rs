//! Groups on the split store through Redis failures, with a real `redis-server`: group sends
//! (small and large groups) and one-to-one sends interleaved while Redis restarts from an older
//! snapshot and is flushed. What a member would check afterwards: the group's log holds each
//! acknowledged message once at the group seq it was acknowledged with, contiguous; every small
//! group member's stream holds it once, contiguous; the sender's seq in the reply is where the
//! message is; unread counts agree with the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;

use mqim_schemas::v1::{event, GroupChange};

use super::failures::whole_stream;
use super::*;
use crate::store::groups::{
    Copy, GroupAppend, GroupEntry, GroupMessage, GroupMeta, GroupOutcome, GroupStore, MemberWrite,
    MembershipWrite, Role,
};

static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 61);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn create(group: &str, members: &[String], large: bool) -> GroupAppend {
    let msg_id = next_id();
    let copies = match large {
        true => vec![notice(&members[0])],
        false => members.iter().map(|m| notice(m)).collect(),
    };
    GroupAppend {
        group: group.into(),
        msg_id,
        ts: msg_id as i64,
        large,
        entry: GroupEntry::Change(GroupChange {
            group: format!("g:{group}"),
            change: "created".into(),
            by: members[0].clone(),
            ..GroupChange::default()
        }),
        copies,
        basis: 0,
        membership: Some(MembershipWrite {
            meta: GroupMeta {
                name: group.into(),
                owner: members[0].clone(),
                large,
                created_at: 0,
                disbanded: false,
                member_count: members.len() as u64,
                version_id: 0,
                version_seq: 0,
            },
            upserts: members
                .iter()
                .enumerate()
                .map(|(i, m)| MemberWrite {
                    user: m.clone(),
                    role: if i == 0 { Role::Owner } else { Role::Member },
                    joins: true,
                })
                .collect(),
            removals: vec![],
        }),
    }
}

fn notice(owner: &str) -> Copy {
    Copy {
        owner: owner.into(),
        recent: false,
        unread: false,
        mention: false,
    }
}

fn group_message(
    group: &str,
    from: &str,
    cmid: &str,
    members: &[String],
    large: bool,
) -> GroupAppend {
    let msg_id = next_id();
    let copies = match large {
        true => vec![],
        false => members
            .iter()
            .map(|m| Copy {
                owner: m.clone(),
                recent: true,
                unread: m != from,
                mention: false,
            })
            .collect(),
    };
    GroupAppend {
        group: group.into(),
        msg_id,
        ts: msg_id as i64,
        large,
        entry: GroupEntry::Message(GroupMessage {
            from: from.into(),
            client_msg_id: cmid.into(),
            text: Some(cmid.into()),
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

/// What the senders were told: msg_id -> (group, sender, sender's seq, group seq).
type Acked = BTreeMap<u64, (String, String, u64, u64)>;

/// Sends as a client does: resends the same entry (same clientMsgId) until it is answered.
async fn append_until_acked(store: &SplitStore, a: GroupAppend, acked: &mut Acked) {
    let from = match &a.entry {
        GroupEntry::Message(m) => m.from.clone(),
        GroupEntry::Change(_) => String::new(),
    };
    for _ in 0..600 {
        match store.append_group(a.clone()).await {
            Ok(GroupOutcome::Fresh(x)) => {
                acked.insert(
                    x.sent.msg_id,
                    (a.group.clone(), from, x.sent.seq, x.sent.group_seq),
                );
                return;
            }
            Ok(GroupOutcome::Duplicate(s)) => {
                acked
                    .entry(s.msg_id)
                    .or_insert((a.group.clone(), from, s.seq, s.group_seq));
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("group entry {} was never acknowledged", a.msg_id);
}

/// The group's whole log as `groupSync` pages it (waiting out young holes).
async fn whole_group_log(store: &SplitStore, group: &str) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for _ in 0..2000 {
        let after = events.last().map_or(0, |e| e.seq);
        match store.group_log(group, after, 500).await {
            Ok(page) => {
                let done = !page.has_more;
                events.extend(page.events);
                if done {
                    return events;
                }
                if events.last().map_or(0, |e| e.seq) == after {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the log of group {group} never became readable to its end");
}

fn message_ids(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Some(event::Body::Message(m)) => Some(m.msg_id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sends_across_redis_restores_and_flushes_reuse_no_seq() {
    let mut redis = RedisServer::start_with_snapshots();
    let dir = TempDir::new().unwrap();
    let log = Arc::new(LsmStore::open(dir.path()).unwrap());
    let store = SplitStore::new(index_on(&redis).await, log, SplitOptions::default());
    let members: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let mut acked = Acked::new();
    append_until_acked(&store, create("s", &members, false), &mut acked).await;
    append_until_acked(&store, create("l", &members, true), &mut acked).await;

    let phases = ["before", "after-snapshot", "restored", "flushed"];
    let mut k = 0;
    for phase in phases {
        for _ in 0..15 {
            let from = &members[k % members.len()];
            let small = group_message("s", from, &format!("s{k}"), &members, false);
            append_until_acked(&store, small, &mut acked).await;
            let large = group_message("l", from, &format!("l{k}"), &members, true);
            append_until_acked(&store, large, &mut acked).await;
            k += 1;
        }
        // One-to-one traffic of the same users in between moves their stream seqs too.
        for (i, from) in members.iter().enumerate() {
            let to = &members[(i + 1) % members.len()];
            let m = msg(from, to, &format!("{phase}-{from}"), next_id());
            for _ in 0..600 {
                if store.append_message(m.clone()).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        match phase {
            "before" => redis.snapshot(),
            "after-snapshot" => redis.restart(), // back from the older snapshot
            "restored" => assert_eq!(redis.command(&["FLUSHALL"]), "+OK"),
            _ => {}
        }
    }
    assert_eq!(acked.len(), 2 + 4 * 30, "every entry was acknowledged");

    // Each group's log: contiguous, each acked entry once at its acked group seq.
    let mut last_large = 0;
    for group in ["s", "l"] {
        let events = whole_group_log(&store, group).await;
        if group == "l" {
            last_large = events.len() as u64;
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "group {group}'s log is contiguous (gaps explicit)"
        );
        let at: HashMap<u64, u64> = events
            .iter()
            .filter_map(|e| match &e.body {
                Some(event::Body::Message(m)) => Some((m.msg_id, e.seq)),
                _ => None,
            })
            .collect();
        assert_eq!(
            at.len(),
            message_ids(&events).len(),
            "no message twice in {group}"
        );
        for (msg_id, (g, _, _, group_seq)) in &acked {
            if g == group && *group_seq != 1 {
                assert_eq!(
                    at.get(msg_id),
                    Some(group_seq),
                    "group {group}: acked message {msg_id} is not at group seq {group_seq}"
                );
            }
        }
    }

    // Each member's stream: contiguous, every small-group message once, the sender's acked seq
    // holds the message; unread = others' messages above the member's own receipts.
    let small: Vec<u64> = acked
        .iter()
        .filter(|(_, (g, from, _, _))| g == "s" && !from.is_empty())
        .map(|(id, _)| *id)
        .collect();
    for m in &members {
        let events = whole_stream(&store, m).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{m}'s stream is contiguous"
        );
        let mut in_group: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.body {
                Some(event::Body::Message(x)) if x.conversation == "g:s" => Some(x.msg_id),
                _ => None,
            })
            .collect();
        in_group.sort_unstable();
        assert_eq!(in_group, small, "{m} has every small-group message once");
        for (msg_id, (g, from, seq, _)) in &acked {
            if g == "s" && from == m {
                let there = events.get(*seq as usize - 1).and_then(|e| match &e.body {
                    Some(event::Body::Message(x)) => Some(x.msg_id),
                    _ => None,
                });
                assert_eq!(
                    there,
                    Some(*msg_id),
                    "{m} seq {seq}: acked {msg_id} is not there"
                );
            }
        }
        let unread_in_log = events
            .iter()
            .filter(|e| {
                matches!(&e.body, Some(event::Body::Message(x))
                    if x.conversation == "g:s" && &x.from != m)
            })
            .count() as u64;
        let page = store.conversations(m, 100).await.expect("conversations");
        let listed: HashMap<&str, u64> = page
            .conversations
            .iter()
            .map(|c| (c.id.as_str(), c.unread))
            .collect();
        assert_eq!(
            listed.get("g:s").copied(),
            Some(unread_in_log),
            "{m}'s unread count of the small group agrees with the log"
        );
        assert!(
            !listed.contains_key("g:l"),
            "a large group is not in the index's recent list (its counts come from positions)"
        );
        let view = store.large_group_view(m, "l").await.expect("view");
        assert_eq!(
            view.last_group_seq, last_large,
            "the large group's view ends with its log"
        );
    }
}

/// A resend of a group message whose original is still in flight waits for it: one entry in the
/// group's log, one copy per member, the same `sent` for both, and no seq spent on the resend
/// (without the wait, every member's stream would get a gap for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resend_while_the_original_is_in_flight_spends_no_seq() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let store = SplitStore::new(
        index_on(&redis).await,
        Arc::new(LsmStore::open(dir.path()).unwrap()),
        SplitOptions::default(),
    );
    let members: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    let mut acked = Acked::new();
    append_until_acked(&store, create("r", &members, false), &mut acked).await;
    let m = group_message("r", &members[0], "twice", &members, false);
    // Both enqueued before either is answered: the second is a resend of one in flight.
    let (a, b) = tokio::join!(store.append_group(m.clone()), store.append_group(m));
    let (a, b) = (a.expect("original"), b.expect("resend"));
    let sent = match (&a, &b) {
        (GroupOutcome::Fresh(x), GroupOutcome::Duplicate(s)) => {
            assert_eq!(&x.sent, s, "the resend gets the original's `sent`");
            x.sent.clone()
        }
        other => panic!("not one fresh entry and one duplicate: {other:?}"),
    };
    assert_eq!(sent.group_seq, 2);
    for m in &members {
        let events = whole_stream(&store, m).await;
        assert!(
            events.iter().all(|e| e
                .body
                .as_ref()
                .is_some_and(|b| !matches!(b, event::Body::Gap(_)))),
            "{m}'s stream has a gap: {events:?}"
        );
        assert_eq!(events.len(), 2, "{m}: the creation and the message");
    }
    assert_eq!(store.group_log("r", 0, 10).await.unwrap().events.len(), 2);
}
