//! The membership fence (`split/fence.rs`) with two nodes: two split stores on one real
//! `redis-server` (same key prefix) over one shared log. The shared log is one embedded
//! [`LsmStore`] in log mode behind an `Arc`, standing in for the ScyllaDB log every
//! `redis+scylla` node shares; each node takes its claims at start as a `redis+scylla` node
//! does (its own node id, the log as `LogClaim::Shared`). The entries are built as `groups/commit.rs` builds them:
//! each names the version (msgid of the latest change) of the record it was planned from, and
//! a change's meta carries its own msgid as the new version.

use mqim_schemas::v1::GroupChange;

use super::*;
use crate::store::groups::{
    is_stale_membership, Copy, GroupAppend, GroupEntry, GroupMessage, GroupMeta, GroupOutcome,
    GroupReadOutcome, GroupRecord, GroupStore, LargeGroupView, MemberWrite, MembershipWrite, Role,
};
use crate::store::log::{GroupLog, GroupSeqs};
use crate::store::split::{LogClaim, NodeClaims};
use crate::store::StreamPage;

struct Nodes {
    a: SplitStore,
    b: SplitStore,
    log: Arc<LsmStore>,
    redis: RedisServer,
    _dir: TempDir,
}

async fn two_nodes() -> Nodes {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(dir.path()).expect("open log"));
    let cfg = RedisConfig {
        url: redis.url(),
        key_prefix: "fence".into(),
        timeout_ms: 1000,
    };
    let node = |id| {
        let (cfg, log) = (cfg.clone(), log.clone());
        async move {
            let index = RedisIndex::connect(&cfg, 3600).await.expect("Redis");
            let opts = SplitOptions {
                node_id: id,
                claims: Some(NodeClaims {
                    identity: format!("node-{id}"),
                    log: LogClaim::Shared,
                }),
                ..SplitOptions::default()
            };
            SplitStore::open(index, log, opts)
                .await
                .expect("both nodes claim the log as shared")
        }
    };
    Nodes {
        a: node(1).await,
        b: node(2).await,
        log,
        redis,
        _dir: dir,
    }
}

const GROUP: &str = "1";
const BASE: u64 = 1 << 62;

fn notices(users: &[&str]) -> Vec<Copy> {
    users
        .iter()
        .map(|u| Copy {
            owner: u.to_string(),
            recent: false,
            unread: false,
            mention: false,
        })
        .collect()
}

fn change(msg_id: u64, kind: &str, basis: u64, copies: &[&str], w: MembershipWrite) -> GroupAppend {
    GroupAppend {
        group: GROUP.into(),
        msg_id,
        ts: 1_700_000_000_000,
        large: false,
        entry: GroupEntry::Change(GroupChange {
            group: format!("g:{GROUP}"),
            change: kind.into(),
            by: "olga".into(),
            ..GroupChange::default()
        }),
        copies: notices(copies),
        membership: Some(w),
        basis,
    }
}

fn meta(version_id: u64, member_count: u64) -> GroupMeta {
    GroupMeta {
        name: "team".into(),
        owner: "olga".into(),
        large: false,
        created_at: 0,
        disbanded: false,
        member_count,
        version_id,
        version_seq: 0,
    }
}

/// olga (owner), pia and rex.
fn create(msg_id: u64) -> GroupAppend {
    let upserts = ["olga", "pia", "rex"]
        .iter()
        .map(|u| MemberWrite {
            user: u.to_string(),
            role: if *u == "olga" {
                Role::Owner
            } else {
                Role::Member
            },
            joins: true,
        })
        .collect();
    let w = MembershipWrite {
        meta: meta(msg_id, 3),
        upserts,
        removals: vec![],
    };
    change(msg_id, "created", 0, &["olga", "pia", "rex"], w)
}

/// olga removes rex, planned from version `basis`.
fn remove_rex(msg_id: u64, basis: u64) -> GroupAppend {
    let w = MembershipWrite {
        meta: meta(msg_id, 2),
        upserts: vec![],
        removals: vec!["rex".into()],
    };
    change(msg_id, "removed", basis, &["olga", "pia", "rex"], w)
}

/// A message from olga planned from `record`: a copy for every member it lists.
fn message_from(record: &GroupRecord, msg_id: u64, cmid: &str) -> GroupAppend {
    GroupAppend {
        group: GROUP.into(),
        msg_id,
        ts: 1_700_000_000_000,
        large: false,
        entry: GroupEntry::Message(GroupMessage {
            from: "olga".into(),
            client_msg_id: cmid.into(),
            text: Some(cmid.into()),
            body: None,
            kind: None,
            mentions: vec![],
            mention_all: false,
        }),
        copies: record
            .members
            .keys()
            .map(|m| Copy {
                owner: m.clone(),
                recent: true,
                unread: m != "olga",
                mention: false,
            })
            .collect(),
        membership: None,
        basis: record.meta.version_id,
    }
}

async fn fresh(store: &SplitStore, entry: GroupAppend) -> u64 {
    match store.append_group(entry).await {
        Ok(GroupOutcome::Fresh(a)) => a.log_event.seq,
        other => panic!("expected a fresh entry: {other:?}"),
    }
}

async fn record(store: &SplitStore) -> GroupRecord {
    store
        .load_group(GROUP)
        .await
        .expect("load")
        .expect("the group")
}

/// Messages in `user`'s stream.
async fn messages_of(store: &SplitStore, user: &str) -> Vec<u64> {
    let page = store.read_stream(user, 0, 100).await.expect("read");
    page.events
        .iter()
        .filter_map(|e| match &e.body {
            Some(event::Body::Message(m)) => Some(m.msg_id),
            _ => None,
        })
        .collect()
}

/// Node B, whose copy of the group predates node A's removal of rex, sends to the group: the
/// send is refused before any seq is spent, and once B has reloaded the group, the message
/// goes to the members after the removal only: rex never reads it. With `flush`, Redis loses
/// everything between the removal and B's send: the version comes back from the log.
async fn a_removed_member_gets_nothing_sent_from_a_stale_node(flush: bool) {
    let n = two_nodes().await;
    fresh(&n.a, create(BASE)).await;
    let stale = record(&n.b).await;
    assert!(stale.members.contains_key("rex"));
    fresh(&n.a, remove_rex(BASE + 1, stale.meta.version_id)).await;
    if flush {
        assert_eq!(n.redis.command(&["FLUSHALL"]), "+OK");
    }

    let refused = n.b.append_group(message_from(&stale, BASE + 2, "m1")).await;
    match refused {
        Err(e) => assert!(is_stale_membership(&e), "refused for another reason: {e}"),
        Ok(o) => panic!("node B's send from before the removal was accepted: {o:?}"),
    }
    let reloaded = record(&n.b).await;
    assert!(!reloaded.members.contains_key("rex"), "{reloaded:?}");
    assert_eq!(reloaded.meta.version_id, BASE + 1);
    assert_eq!(reloaded.meta.version_seq, 2);
    let seq = fresh(&n.b, message_from(&reloaded, BASE + 3, "m1")).await;
    assert_eq!(seq, 3, "the refused send spent no group seq");

    assert!(
        messages_of(&n.a, "rex").await.is_empty(),
        "rex has a message sent after his removal"
    );
    assert_eq!(messages_of(&n.a, "pia").await, [BASE + 3]);
    let log = n.b.group_log(GROUP, 0, 10).await.expect("group log");
    assert_eq!(log.events.len(), 3, "create, remove, message: no gap");
    let _ = &n.log;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_a_node_with_a_stale_member_list_is_fenced() {
    a_removed_member_gets_nothing_sent_from_a_stale_node(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_holds_after_redis_loses_its_data() {
    a_removed_member_gets_nothing_sent_from_a_stale_node(true).await;
}

/// A stale node's change is fenced too: two nodes cannot both change the group from the same
/// membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_a_stale_node_is_fenced() {
    let n = two_nodes().await;
    fresh(&n.a, create(BASE)).await;
    let stale = record(&n.b).await;
    fresh(&n.a, remove_rex(BASE + 1, stale.meta.version_id)).await;
    let again =
        n.b.append_group(remove_rex(BASE + 2, stale.meta.version_id))
            .await;
    assert!(
        matches!(&again, Err(e) if is_stale_membership(e)),
        "{again:?}"
    );
}

/// Redis names a version no log write will ever bring (the change's node died after its
/// allocation): once that change could no longer land, the next refused entry claims its seq
/// with a gap and sets the version back to the log's latest change, so the group is not fenced
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_change_never_lands_is_settled() {
    let n = two_nodes().await;
    fresh(&n.a, create(BASE)).await;
    let current = record(&n.b).await;
    // As the allocation of a change at group seq 2 would leave it, a minute ago.
    let mut conn = redis::Client::open(n.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let long_ago = (crate::now_ms() - 60_000).to_string();
    let _: () = redis::cmd("HSET")
        .arg("fence:seq:4:#g:1")
        .arg("mid")
        .arg("77")
        .arg("mseq")
        .arg("2")
        .arg("mat")
        .arg(&long_ago)
        .arg("n")
        .arg("2")
        .query_async(&mut conn)
        .await
        .unwrap();

    let first =
        n.b.append_group(message_from(&current, BASE + 2, "m1"))
            .await;
    assert!(
        matches!(&first, Err(e) if is_stale_membership(e)),
        "{first:?}"
    );
    let seq = fresh(&n.b, message_from(&record(&n.b).await, BASE + 3, "m1")).await;
    assert_eq!(seq, 3);
    let log = n.b.group_log(GROUP, 0, 10).await.expect("group log");
    assert_eq!(
        kinds(&log.events),
        [(1, "group"), (2, "gap"), (3, "message")],
        "the lost change's seq is a gap"
    );
}

/// The embedded log as a log several processes write (as ScyllaDB is): it says it is not the
/// only writer, so the split store treats holes and a rebuilt membership version as it does
/// over ScyllaDB.
struct SharedLog(Arc<LsmStore>);

#[async_trait]
impl MessageLog for SharedLog {
    fn log_message(
        &self,
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<SendOutcome>> {
        self.0.log_message(msg, seqs, deadline)
    }
    fn log_gaps(&self, g: Vec<(String, u64)>, d: Instant) -> BoxFuture<'static, StoreResult<()>> {
        self.0.log_gaps(g, d)
    }
    fn log_receipts(&self, r: ReceiptWrite, d: Instant) -> BoxFuture<'static, LogResult<bool>> {
        self.0.log_receipts(r, d)
    }
    async fn read_pointer(&self, u: &str, c: &str) -> StoreResult<u64> {
        self.0.read_pointer(u, c).await
    }
    async fn read_events(&self, u: &str, a: u64, l: usize) -> StoreResult<Vec<Event>> {
        self.0.read_events(u, a, l).await
    }
    async fn max_seq(&self, u: &str) -> StoreResult<u64> {
        MessageLog::max_seq(self.0.as_ref(), u).await
    }
    async fn max_msg_id(&self) -> StoreResult<u64> {
        MessageLog::max_msg_id(self.0.as_ref()).await
    }
    async fn history(
        &self,
        u: &str,
        c: &str,
        b: Option<u64>,
        l: usize,
    ) -> StoreResult<HistoryPage> {
        MessageLog::history(self.0.as_ref(), u, c, b, l).await
    }
    async fn advance_cursor(&self, u: &str, d: &str, s: u64) -> StoreResult<u64> {
        MessageLog::advance_cursor(self.0.as_ref(), u, d, s).await
    }
    async fn purge_dedup(&self, t: i64) -> StoreResult<usize> {
        MessageLog::purge_dedup(self.0.as_ref(), t).await
    }
    fn groups(&self) -> Option<&dyn GroupLog> {
        Some(self)
    }
}

#[async_trait]
impl GroupStore for SharedLog {
    fn has_groups(&self) -> bool {
        true
    }
    async fn group_ids(&self) -> StoreResult<Vec<String>> {
        self.0.group_ids().await
    }
    async fn load_group(&self, g: &str) -> StoreResult<Option<GroupRecord>> {
        self.0.load_group(g).await
    }
    async fn user_groups(&self, u: &str) -> StoreResult<Vec<(String, bool)>> {
        self.0.user_groups(u).await
    }
    async fn large_group_view(&self, u: &str, g: &str) -> StoreResult<LargeGroupView> {
        self.0.large_group_view(u, g).await
    }
    async fn group_log(&self, g: &str, a: u64, l: usize) -> StoreResult<StreamPage> {
        self.0.group_log(g, a, l).await
    }
    async fn group_history(
        &self,
        g: &str,
        b: Option<u64>,
        s: u64,
        l: usize,
    ) -> StoreResult<HistoryPage> {
        self.0.group_history(g, b, s, l).await
    }
}

#[async_trait]
impl GroupLog for SharedLog {
    fn log_group(
        &self,
        e: GroupAppend,
        s: GroupSeqs,
        d: Instant,
    ) -> BoxFuture<'static, LogResult<GroupOutcome>> {
        self.0.log_group(e, s, d)
    }
    fn log_group_read(
        &self,
        u: &str,
        g: &str,
        up_to: u64,
        own: u64,
        d: Instant,
    ) -> BoxFuture<'static, LogResult<GroupReadOutcome>> {
        self.0.log_group_read(u, g, up_to, own, d)
    }
    async fn mentioned(&self, u: &str, c: &str) -> StoreResult<bool> {
        self.0.mentioned(u, c).await
    }
    async fn read_position(&self, u: &str, g: &str) -> StoreResult<(u64, u64)> {
        self.0.read_position(u, g).await
    }
    async fn is_large(&self, g: &str) -> StoreResult<Option<bool>> {
        self.0.is_large(g).await
    }
    async fn group_meta(&self, g: &str) -> StoreResult<Option<GroupMeta>> {
        self.0.group_meta(g).await
    }
}

/// On a log other processes write too, a membership version rebuilt after Redis lost its data
/// holds the group's entries back for the write deadline (a change another node allocated
/// before the loss may still land), then lets them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_a_shared_log_holds_group_entries_for_the_write_deadline() {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(SharedLog(Arc::new(
        LsmStore::open(dir.path()).expect("open log"),
    )));
    let cfg = RedisConfig {
        url: redis.url(),
        key_prefix: "held".into(),
        timeout_ms: 1000,
    };
    let index = RedisIndex::connect(&cfg, 3600).await.expect("Redis");
    let opts = SplitOptions {
        write_deadline: Duration::from_millis(300),
        gap_settle: Duration::from_millis(900),
        ..SplitOptions::default()
    };
    let store = SplitStore::new(index, log, opts);
    fresh(&store, create(BASE)).await;
    let current = record(&store).await;
    fresh(&store, message_from(&current, BASE + 1, "m1")).await;
    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");

    let started = Instant::now();
    let held = store
        .append_group(message_from(&current, BASE + 2, "m2"))
        .await;
    assert!(
        matches!(&held, Err(e) if is_stale_membership(e)),
        "right after the rebuild: {held:?}"
    );
    let mut sent = None;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(GroupOutcome::Fresh(a)) = store
            .append_group(message_from(&current, BASE + 2, "m2"))
            .await
        {
            sent = Some((started.elapsed(), a.log_event.seq));
            break;
        }
    }
    let (after, seq) = sent.expect("entries go on after the hold");
    assert!(after >= Duration::from_millis(700), "held for {after:?}");
    assert_eq!(seq, 3, "the held attempts spent no group seq");
}
