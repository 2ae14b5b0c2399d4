//! The split store's tests, against a real `redis-server` each test starts: the shared
//! conformance suite (on the embedded log, and on ScyllaDB when `SCYLLA_URI` is set), and the
//! split store's own behaviour (Redis data loss, gaps, presence, dedup through the log).
//! `failures.rs` holds the Redis failure scenarios and the randomized test of them; `groups.rs`
//! and `amends.rs` the same for group entries and for recall and edit.

mod amends;
mod failures;
mod fence;
mod groups;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use mqim_schemas::v1::{event, Event};
use tempfile::TempDir;

use super::{SplitOptions, SplitStore};
use crate::store::conformance;
use crate::store::log::{LogResult, MessageLog, MessageSeqs, ReceiptWrite};
use crate::store::lsm::LsmStore;
use crate::store::redis_index::{RedisConfig, RedisIndex};
use crate::store::{
    HistoryPage, InboxStore, MessageStore, NewMessage, PresenceStore, SendOutcome, Store,
    StoreError, StoreResult,
};
use crate::testing::RedisServer;

/// A split store on a fresh Redis and a fresh embedded log, with what keeps them alive.
struct Fixture {
    store: Arc<SplitStore>,
    log: Arc<LsmStore>,
    redis: RedisServer,
    _dir: TempDir,
}

async fn index_on(redis: &RedisServer) -> RedisIndex {
    static PREFIX: AtomicU64 = AtomicU64::new(0);
    let cfg = RedisConfig {
        url: redis.url(),
        key_prefix: format!("t{}", PREFIX.fetch_add(1, Ordering::Relaxed)),
        timeout_ms: 1000,
    };
    RedisIndex::connect(&cfg, 3600)
        .await
        .expect("connect to Redis")
}

async fn fixture_with(opts: SplitOptions) -> Fixture {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(dir.path()).expect("open log"));
    let store = Arc::new(SplitStore::new(index_on(&redis).await, log.clone(), opts));
    Fixture {
        store,
        log,
        redis,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(SplitOptions::default()).await
}

macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let f = fixture().await;
            let store: Arc<dyn Store> = f.store.clone();
            conformance::$case(store).await;
        }
    )*};
}

conformance::for_each_case!(conformance_tests);
conformance::for_each_amend_case!(conformance_tests);

/// Redis + ScyllaDB: the same suite through the split store, when a ScyllaDB is reachable at
/// `SCYLLA_URI`; otherwise every case is reported as ignored, never as passed. Left out:
/// `purge_dedup_removes_only_older`, since ScyllaDB expires dedup records by TTL and its
/// `purge_dedup` removes (and counts) nothing.
macro_rules! scylla_conformance_tests {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(scylla_available),
            ignore = "needs a ScyllaDB: set SCYLLA_URI=host:9042 when building and running"
        )]
        async fn $case() {
            let redis = RedisServer::start();
            let log = Arc::new(
                crate::store::scylla_log::connect_for_tests()
                    .await
                    .expect("SCYLLA_URI is set"),
            );
            let index = index_on(&redis).await;
            let store: Arc<dyn Store> =
                Arc::new(SplitStore::new(index, log.clone(), SplitOptions::default()));
            conformance::$case(store).await;
            log.drop_test_keyspace().await;
        }
    )*};
}

mod on_scylla {
    use super::*;

    scylla_conformance_tests!(
        seqs_start_at_one_and_are_contiguous,
        resend_returns_original_and_appends_nothing,
        concurrent_sends_are_contiguous,
        concurrent_resends_store_once,
        appends_apply_in_call_order,
        read_stream_paging,
        send_to_self_appends_one_event,
        advance_cursor_forward_only_and_clamped,
        max_msg_id_is_highest_stored,
        content_round_trips,
        inbox_unread_counts_only_the_recipient,
        inbox_read_removes_up_to_msgid_and_is_idempotent,
        inbox_conversations_newest_first_with_paging,
        inbox_history_pages_backwards_without_gaps_or_repeats,
        group_entries_are_contiguous_with_their_copies_and_deduped,
        group_large_counts_unread_from_positions_and_mentions,
        group_membership_rows_follow_the_log,
        amend_recall_rewrites_every_copy_and_clears_unread,
        amend_refusals_write_nothing_and_spend_no_seq,
        amend_edit_replaces_the_content_once,
        amend_group_recall_by_an_admin_reaches_every_member,
        amend_large_group_recall_leaves_unread_from_positions,
    );
}

fn msg(from: &str, to: &str, cmid: &str, msg_id: u64) -> NewMessage {
    NewMessage {
        from: from.into(),
        to: to.into(),
        client_msg_id: cmid.into(),
        msg_id,
        ts: 1_700_000_000_000 + msg_id as i64,
        text: Some(cmid.to_string()),
        body: None,
        kind: None,
    }
}

async fn send(store: &SplitStore, m: NewMessage) -> StoreResult<SendOutcome> {
    store.append_message(m).await
}

fn kinds(events: &[Event]) -> Vec<(u64, &'static str)> {
    events
        .iter()
        .map(|e| {
            let kind = match e.body {
                Some(event::Body::Message(_)) => "message",
                Some(event::Body::Read(_)) => "read",
                Some(event::Body::Gap(_)) => "gap",
                Some(event::Body::Group(_)) => "group",
                Some(_) => "extras",
                None => "none",
            };
            (e.seq, kind)
        })
        .collect()
}

/// Redis loses everything (a restart without persistence): seqs continue above the log's
/// highest, unread counts and read pointers come back from the log, nothing is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_and_unread_survive_a_redis_that_lost_its_data() {
    let mut f = fixture().await;
    let base = 1u64 << 62;
    for i in 0..5 {
        send(&f.store, msg("alice", "bob", &format!("m{i}"), base + i))
            .await
            .expect("send");
    }
    let read = f
        .store
        .mark_read("bob", "u:alice", base + 1)
        .await
        .expect("read");
    assert_eq!(read.unread, 3);
    // bob: 5 messages + 1 own receipt; alice: 5 + the receipt from bob.
    assert_eq!(f.store.last_seq("bob").await.unwrap(), 6);

    f.redis.restart();
    // The first request after the restart may meet the dead connection; then it recovers.
    let mut after = None;
    for _ in 0..50 {
        match send(&f.store, msg("alice", "bob", "m5", base + 5)).await {
            Ok(o) => {
                after = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let Some(SendOutcome::Fresh(a)) = after else {
        panic!("no fresh send after the Redis restart: {after:?}");
    };
    assert_eq!(
        a.sent.seq, 7,
        "alice's seq continues after 5 messages + 1 receipt"
    );
    assert_eq!(a.recipient_event.map(|e| e.seq), Some(7));
    let all = f.store.read_stream("bob", 0, 100).await.unwrap();
    assert_eq!(
        all.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let page = f.store.conversations("bob", 10).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].unread, 4, "3 unread before + 1 new");
    // The read pointer came back too: reading an old msgid again changes nothing.
    let again = f.store.mark_read("bob", "u:alice", base + 1).await.unwrap();
    assert_eq!((again.unread, again.receipts.is_none()), (4, true));
    let alice = f.store.conversations("alice", 10).await.unwrap();
    assert_eq!(
        alice.conversations[0].unread, 0,
        "own messages are never unread"
    );
}

/// Redis down: sends fail (nothing is acknowledged), the connection heals by itself once
/// Redis is back, and the failed send can be resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_sends_then_recovers() {
    let mut f = fixture().await;
    send(&f.store, msg("alice", "bob", "a", 10))
        .await
        .expect("send");
    f.redis.kill();
    let down = send(&f.store, msg("alice", "bob", "b", 11)).await;
    assert!(down.is_err(), "a send with Redis down must fail: {down:?}");
    assert!(f.store.conversations("bob", 10).await.is_err());
    f.redis.restart();
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(o) = send(&f.store, msg("alice", "bob", "b", 11)).await {
            ok = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match ok {
        Some(SendOutcome::Fresh(a)) => assert_eq!(a.sent.seq, 2),
        other => panic!("after recovery: {other:?}"),
    }
}

/// The real embedded log with faults injected on demand: its next writes fail, its writes are
/// slow (queued in call order behind a delay, as on a disk whose fsync takes that long), or its
/// reads of one user's stream wait until released (a rebuild that takes as long as a test needs).
pub(super) struct FaultyLog {
    pub(super) inner: Arc<LsmStore>,
    pub(super) fail_next: AtomicU64,
    /// Milliseconds each write waits, in call order, before it reaches the log.
    pub(super) write_delay_ms: AtomicU64,
    writes: tokio::sync::mpsc::UnboundedSender<BoxFuture<'static, ()>>,
    /// Reads of this user's stream wait for `released`.
    pub(super) hold_reads_of: parking_lot::Mutex<Option<String>>,
    pub(super) released: tokio::sync::Notify,
    /// Reads that started waiting.
    pub(super) held: AtomicU64,
    /// Whether to say the log has one writer (the embedded log does; holes then die at once).
    pub(super) one_writer: std::sync::atomic::AtomicBool,
}

impl FaultyLog {
    pub(super) fn new(inner: Arc<LsmStore>) -> Arc<FaultyLog> {
        let (writes, mut queue) = tokio::sync::mpsc::unbounded_channel::<BoxFuture<'static, ()>>();
        tokio::spawn(async move {
            while let Some(write) = queue.recv().await {
                write.await;
            }
        });
        Arc::new(FaultyLog {
            inner,
            fail_next: AtomicU64::new(0),
            write_delay_ms: AtomicU64::new(0),
            writes,
            hold_reads_of: parking_lot::Mutex::new(None),
            released: tokio::sync::Notify::new(),
            held: AtomicU64::new(0),
            one_writer: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `write` (which enqueues on the inner log when called) after the delay, in call order.
    fn queued<T: Send + 'static>(
        &self,
        write: impl FnOnce() -> BoxFuture<'static, T> + Send + 'static,
    ) -> BoxFuture<'static, T> {
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay == 0 {
            return write();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.writes.send(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            // Enqueued on the inner log here, in call order; waited for on the caller's side.
            let _ = tx.send(write());
        }));
        Box::pin(async move { rx.await.expect("the write queue is alive").await })
    }
}

#[async_trait]
impl MessageLog for FaultyLog {
    fn log_message(
        &self,
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<SendOutcome>> {
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Box::pin(async { Err(StoreError::new("injected log failure").into()) });
        }
        let inner = self.inner.clone();
        self.queued(move || inner.log_message(msg, seqs, deadline))
    }
    fn log_gaps(
        &self,
        gaps: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, StoreResult<()>> {
        let inner = self.inner.clone();
        self.queued(move || inner.log_gaps(gaps, deadline))
    }
    fn log_receipts(
        &self,
        receipt: ReceiptWrite,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<bool>> {
        let inner = self.inner.clone();
        self.queued(move || inner.log_receipts(receipt, deadline))
    }
    async fn read_pointer(&self, u: &str, c: &str) -> StoreResult<u64> {
        self.inner.read_pointer(u, c).await
    }
    async fn read_events(&self, u: &str, a: u64, l: usize) -> StoreResult<Vec<Event>> {
        let hold = self.hold_reads_of.lock().as_deref() == Some(u);
        if hold {
            let released = self.released.notified();
            self.held.fetch_add(1, Ordering::SeqCst);
            released.await;
        }
        self.inner.read_events(u, a, l).await
    }
    async fn max_seq(&self, u: &str) -> StoreResult<u64> {
        MessageLog::max_seq(self.inner.as_ref(), u).await
    }
    async fn max_msg_id(&self) -> StoreResult<u64> {
        MessageLog::max_msg_id(self.inner.as_ref()).await
    }
    async fn history(
        &self,
        u: &str,
        c: &str,
        b: Option<u64>,
        l: usize,
    ) -> StoreResult<HistoryPage> {
        MessageLog::history(self.inner.as_ref(), u, c, b, l).await
    }
    async fn advance_cursor(&self, u: &str, d: &str, s: u64) -> StoreResult<u64> {
        MessageLog::advance_cursor(self.inner.as_ref(), u, d, s).await
    }
    async fn purge_dedup(&self, t: i64) -> StoreResult<usize> {
        MessageLog::purge_dedup(self.inner.as_ref(), t).await
    }
    fn single_writer(&self) -> bool {
        self.one_writer.load(Ordering::SeqCst)
    }
}

/// A seq allocated whose write failed is not a silent hole: the page stops before it while it
/// could still be written, and once it cannot, it is a `gap` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_becomes_a_gap_event_once_settled() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let log = FaultyLog::new(Arc::new(LsmStore::open(dir.path()).unwrap()));
    let opts = SplitOptions {
        write_deadline: Duration::from_millis(100),
        gap_settle: Duration::from_millis(400),
        ..SplitOptions::default()
    };
    let store = SplitStore::new(index_on(&redis).await, log.clone(), opts);
    send(&store, msg("alice", "bob", "a", 10)).await.unwrap();
    log.fail_next.store(1, Ordering::SeqCst);
    assert!(send(&store, msg("alice", "bob", "b", 11)).await.is_err());
    send(&store, msg("alice", "bob", "c", 12)).await.unwrap();

    let early = store.read_stream("bob", 0, 10).await.unwrap();
    assert_eq!(
        kinds(&early.events),
        vec![(1, "message")],
        "stops at the young hole"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = store.read_stream("bob", 0, 10).await.unwrap();
    assert_eq!(
        kinds(&settled.events),
        vec![(1, "message"), (2, "gap"), (3, "message")]
    );
    assert!(!settled.has_more);
    // The resend of the failed message is a fresh message at the next seq.
    let resent = send(&store, msg("alice", "bob", "b", 13)).await.unwrap();
    assert!(
        matches!(resent, SendOutcome::Fresh(ref a) if a.sent.seq == 4),
        "{resent:?}"
    );
}

/// A log write past its deadline is refused and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_refuses_a_write_past_its_deadline() {
    let f = fixture().await;
    let late = Instant::now() - Duration::from_millis(1);
    let seqs = MessageSeqs {
        sender: 1,
        recipient: Some(1),
    };
    assert!(f
        .log
        .log_message(msg("a", "b", "x", 5), seqs, late)
        .await
        .is_err());
    assert_eq!(MessageLog::max_seq(f.log.as_ref(), "a").await.unwrap(), 0);
    assert!(f.log.read_events("b", 0, 10).await.unwrap().is_empty());
}

/// Waits (up to 5 s) until `user`'s online devices are `want`.
async fn wait_online(store: &SplitStore, user: &str, want: &[(&str, u16)]) {
    let want: Vec<(String, u16)> = want.iter().map(|(d, n)| (d.to_string(), *n)).collect();
    let mut got = None;
    for _ in 0..100 {
        let mut now = store.online_devices(user).await.unwrap().unwrap();
        now.sort();
        if now == want {
            return;
        }
        got = Some(now);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} online: {got:?}, want {want:?}");
}

/// Presence across two nodes on one Redis: a takeover on another node survives the old
/// connection's close, and a node that stops refreshing (crashed) takes its devices with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_takeovers_and_dies_with_its_node() {
    let redis = RedisServer::start();
    let cfg = RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    };
    let dirs = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let node = |id: u16, dir: &TempDir| {
        let log = Arc::new(LsmStore::open(dir.path()).unwrap());
        let cfg = cfg.clone();
        async move {
            let index = RedisIndex::connect(&cfg, 3600).await.unwrap();
            let opts = SplitOptions {
                node_id: id,
                presence_ttl: Duration::from_millis(600),
                ..SplitOptions::default()
            };
            SplitStore::new(index, log, opts)
        }
    };
    let one = node(1, &dirs.0).await;
    let two = node(2, &dirs.1).await;

    one.device_online("alice", "phone", 7);
    one.device_online("alice", "laptop", 8);
    wait_online(&one, "alice", &[("laptop", 1), ("phone", 1)]).await;
    // The phone reconnects through node 2, then node 1 notices its old connection closed.
    two.device_online("alice", "phone", 3);
    one.device_offline("alice", "phone", 7);
    wait_online(&two, "alice", &[("laptop", 1), ("phone", 2)]).await;
    // A connection that closes at once is offline, whatever the order Redis saw.
    one.device_online("bob", "tablet", 9);
    one.device_offline("bob", "tablet", 9);
    wait_online(&one, "bob", &[]).await;
    // Node 1 dies: its incarnation expires and its devices with it.
    drop(one);
    wait_online(&two, "alice", &[("phone", 2)]).await;
}

/// Deletes the keys matching `pattern`; returns them.
async fn delete_keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(conn)
            .await
            .expect("DEL");
    }
    keys
}

/// The log's own dedup record catches a resend the Redis cache no longer knows, the seqs
/// allocated for it become gap events, not holes, and the original is indexed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_the_cache_forgot_is_caught_by_the_log() {
    let f = fixture().await;
    let first = send(&f.store, msg("alice", "bob", "same", 10))
        .await
        .unwrap();
    let SendOutcome::Fresh(first) = first else {
        panic!("{first:?}")
    };
    let mut conn = redis::Client::open(f.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = delete_keys(&mut conn, "*:dedup:*").await;
    assert_eq!(keys.len(), 1, "one cached dedup entry: {keys:?}");
    // As if the node that logged the original died before indexing it: no unread either.
    let unread = delete_keys(&mut conn, "*:unread:*").await;
    assert_eq!(unread.len(), 2, "bob's counts and unread set: {unread:?}");
    let lost = f.store.conversations("bob", 10).await.unwrap();
    assert_eq!(lost.conversations[0].unread, 0);

    let again = send(&f.store, msg("alice", "bob", "same", 11))
        .await
        .unwrap();
    assert_eq!(again, SendOutcome::Duplicate(first.sent.clone()));
    let bob = f.store.read_stream("bob", 0, 10).await.unwrap();
    assert_eq!(kinds(&bob.events), vec![(1, "message"), (2, "gap")]);
    let repaired = f.store.conversations("bob", 10).await.unwrap();
    assert_eq!(
        repaired.conversations[0].unread, 1,
        "the resend indexed the original again"
    );
    let next = send(&f.store, msg("alice", "bob", "next", 12))
        .await
        .unwrap();
    assert!(
        matches!(next, SendOutcome::Fresh(ref a) if a.sent.seq == 3),
        "{next:?}"
    );
}

/// Scripts are sent only when Redis does not know them: after SCRIPT FLUSH (or a restart) the
/// next allocation and index update load them again and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_after_redis_forgets_its_scripts() {
    let f = fixture().await;
    send(&f.store, msg("alice", "bob", "a", 10)).await.unwrap();
    assert_eq!(f.redis.command(&["SCRIPT", "FLUSH"]), "+OK");
    let second = send(&f.store, msg("alice", "bob", "b", 11)).await.unwrap();
    assert!(
        matches!(second, SendOutcome::Fresh(ref a) if a.sent.seq == 2),
        "{second:?}"
    );
    assert_eq!(f.redis.command(&["SCRIPT", "FLUSH"]), "+OK");
    let read = f.store.mark_read("bob", "u:alice", 11).await.unwrap();
    assert_eq!(read.unread, 0);
    assert!(read.receipts.is_some());
    let page = f.store.conversations("bob", 10).await.unwrap();
    assert_eq!(page.conversations[0].unread, 0);
}
