//! The scale-out store: a [`RedisIndex`] (seq counters, unread index, recency, dedup cache) in
//! front of a [`MessageLog`] (the durable streams, history, dedup records, cursors).
//!
//! This folder owns how the two are combined so that the result keeps the [`MessageStore`] and
//! [`InboxStore`] contracts, the same ones the embedded store passes. What holds, and why:
//! - **No acknowledged message is lost, no seq is reused.** The log is the arbiter: it refuses a
//!   write at a seq that already holds an event ([`super::log::LogError::Conflict`]). Whatever
//!   Redis lost or forgot (a restart from an old snapshot, an empty restart, FLUSHALL, two nodes
//!   sharing counters), an allocation that names a taken seq fails in the log, the user's index
//!   is rebuilt from the log and the request is allocated again: a slower `sent`, never an
//!   overwritten message. Redis failures cost latency, not data.
//! - **A Redis restart is noticed by the next request**, whichever request met the broken
//!   connection: every answer that depends on the keys' `run_id` is checked to come from the
//!   Redis process whose `run_id` it was compared with ([`RedisIndex`], "Which Redis answered").
//!   After a restart every user is stale until rebuilt from the log.
//! - **Order.** One pipeline task takes appends and reads in call order, allocates their seqs in
//!   Redis in one round trip per batch (a pipeline of scripts, applied in order), and enqueues the
//!   log writes in that order. A request touching a stale user waits, with every later request
//!   touching any of its users, while that user is rebuilt off the pipeline; requests of other
//!   users go on. Exception: a request retried after a conflict, or whose script met a user gone
//!   stale, is allocated again after requests that came later (its seq may then come after a
//!   later msgid's in a stream; nothing is lost or repeated).
//! - **Durability.** A send is answered only after the log made it durable. The index is updated
//!   after that; if Redis fails at that moment the message is still durable and answered, and the
//!   index update is retried in the background (every update is idempotent).
//! - **Rebuilds count what is in flight.** A rebuild waits for this node's log writes of the user
//!   to finish before it reads the log's highest seq, so the counter never restarts below a seq
//!   allocated here. (Another node's in-flight writes are what the log's conflict check catches.)
//! - **Dedup.** A resend is answered from the Redis cache when the original is durable, waits for
//!   the original when it is still in flight on this node, and is otherwise caught by the log's
//!   dedup record (the log then writes gap placeholders at the seqs it was given).
//! - **Reads are idempotent with their effects.** The log keeps a read pointer per (user,
//!   conversation), raised together with the receipts. A `read` whose Redis half was applied but
//!   whose receipts never reached the log (a Redis stall past the timeout) produces them when it
//!   is retried: the log, not Redis, says whether the receipts exist.
//! - **No silent holes.** A seq allocated whose log write failed (or whose node died) is a hole.
//!   Log writes carry a deadline and are refused after it, so a hole this node has seen for longer
//!   than `gap_settle` (well past any deadline) can never be filled; with a log only this process
//!   writes (the embedded one), a hole is dead at once when no write for that user is in flight
//!   here. A dead hole is written to the log as a `gap` event (so the seq is taken for good and a
//!   counter rebuilt later continues above it) and read as one. A younger hole ends the page
//!   early, so a device syncs again instead of skipping it.
//! - **One node per node id, one local log per Redis prefix.** At start a node claims its node id
//!   in Redis for the identity kept in its data dir, and a `redis+embedded` node claims the key
//!   prefix for its own log; a second live node claiming either refuses to start.
//! - **Failure.** Redis or the log down: sends and reads fail with [`StoreError`] (`UNAVAILABLE`
//!   to the client). For a send that means nothing was accepted; a read that failed may have been
//!   applied in Redis, and retrying it gives the same result. The Redis connection reconnects by
//!   itself.
//!
//! What this does not do: coordinate rebuilds across nodes (two nodes rebuilding one user at the
//! same moment can each miss what the other indexed in between; counts are repaired by the next
//! rebuild; seqs stay safe through the log's conflict check), or survive Redis Cluster (see
//! [`super::redis_index`]).
//!
//! Groups: see `groups.rs`; an entry is allocated, logged and indexed like a message with N
//! copies, and the group's log is a stream of its own whose counter is rebuilt like a user's.
//! With several nodes on one log, each entry's allocation also checks the group's membership
//! version (`fence.rs`), so no node writes an entry planned from members another node changed.
//!
//! Recall and edit: see `amend.rs`; the log names the streams holding the message, the index
//! allocates a seq in each, the log writes the amend there, and a recall leaves the unread sets.
//!
//! Files: `pipeline.rs` (the allocation pipeline, dispatch of log writes, retries), `groups.rs`
//! (group entries and reads, the [`crate::store::groups::GroupStore`] of the split store),
//! `amend.rs` (recall and edit), `extras.rs` (where blocks and settings are kept),
//! `fence.rs` (the membership fence: its version in Redis, rebuilt from the log, settled),
//! `fresh.rs` (which users are checked against the log, rebuilds), `stream.rs` (reading a stream
//! with its holes), `claims.rs` (node id and log claims, node liveness, presence), `tests/`.

mod amend;
mod claims;
mod extras;
mod fence;
mod fresh;
mod groups;
mod pipeline;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::log::MessageLog;
use super::redis_index::RedisIndex;
use super::{
    ConversationPage, ConversationSummary, HistoryPage, InboxStore, MessageStore, NewMessage,
    NodeNews, PresenceStore, ReadOutcome, SendOutcome, StoreError, StoreResult, StreamPage,
};
use crate::conversation::Conversation;
pub use claims::{node_identity, LogClaim, NodeClaims};
use pipeline::Job;

/// Timing of the split store.
#[derive(Clone, Debug)]
pub struct SplitOptions {
    /// A log write not durable this long after its seqs were allocated is refused.
    pub write_deadline: Duration,
    /// How long a hole must have been seen before it is reported as a gap. Must exceed
    /// `write_deadline` by more than a commit can take.
    pub gap_settle: Duration,
    /// Requests waiting for the pipeline beyond which new ones fail fast.
    pub queue: usize,
    /// This node's id (`im.node_id`), recorded with the devices online here.
    pub node_id: u16,
    /// How long this node's devices (and claims) count after it stops refreshing (it crashed).
    pub presence_ttl: Duration,
    /// What this node claims in Redis at start ([`SplitStore::open`]); `None`: nothing (tests
    /// that run several stores on one Redis on purpose).
    pub claims: Option<NodeClaims>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            write_deadline: Duration::from_secs(5),
            gap_settle: Duration::from_secs(15),
            queue: 16 * 1024,
            node_id: 0,
            presence_ttl: Duration::from_secs(30),
            claims: None,
        }
    }
}

type Reply<T> = oneshot::Sender<StoreResult<T>>;
/// (sender, clientMsgId).
type SendKey = (String, String);

/// The split store. Dropping it stops its pipeline once queued requests are done.
pub struct SplitStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
    presence: mpsc::Sender<claims::PresenceChange>,
    extras: extras::ExtrasSlot,
}

struct Shared {
    index: RedisIndex,
    log: Arc<dyn MessageLog>,
    opts: SplitOptions,
    /// Users checked against the log under the Redis `run_id` held here.
    fresh: Mutex<(String, HashSet<String>)>,
    /// Users whose index named a seq the log already had: rebuilt even if their keys look
    /// current.
    suspect: Mutex<HashSet<String>>,
    /// One rebuild per user at a time; rebuilds of different users run side by side.
    rebuilds: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (user, seq) -> when this node first saw the seq missing.
    holes: Mutex<HashMap<(String, u64), std::time::Instant>>,
    /// Users with allocations or log writes in flight on this node -> how many.
    writing: Mutex<HashMap<String, usize>>,
    /// (sender, clientMsgId) of appends in flight -> resends waiting for their outcome.
    inflight: Mutex<HashMap<SendKey, Vec<Reply<SendOutcome>>>>,
    /// The same for group entries with a dedup key (`groups.rs`).
    group_inflight: Mutex<HashMap<SendKey, Vec<Reply<crate::store::groups::GroupOutcome>>>>,
    /// msgid -> its index updates that Redis has not taken yet, oldest first, retried in the
    /// background (`pipeline::index_durable`).
    unindexed: Mutex<HashMap<u64, std::collections::VecDeque<pipeline::IndexUpdate>>>,
    /// Requests to allocate again (after a conflict or a stale answer), ahead of new ones.
    retries: mpsc::UnboundedSender<Job>,
    /// Rebuilds started by the pipeline report here when they are done.
    rebuilt: mpsc::UnboundedSender<(String, StoreResult<()>)>,
    /// Random per start: devices recorded online by an earlier run of this node are not online.
    incarnation: String,
    /// The latest purge's cutoff: cached dedup entries older than it no longer count (Redis
    /// expires them by TTL; this makes a purge take effect at once, as the contract says).
    purged_before: AtomicI64,
}

impl SplitStore {
    /// Claims what `opts.claims` names (refusing to start, with the reason, if another live node
    /// holds it), then combines `index` and `log` as [`SplitStore::new`] does.
    pub async fn open(
        index: RedisIndex,
        log: Arc<dyn MessageLog>,
        opts: SplitOptions,
    ) -> StoreResult<SplitStore> {
        if let Some(claims) = &opts.claims {
            claims::claim_at_start(&index, opts.node_id, claims, opts.presence_ttl).await?;
        }
        Ok(SplitStore::new(index, log, opts))
    }

    /// Combines `index` and `log`; starts the pipeline task on the current tokio runtime. Claims
    /// nothing at start (see [`SplitStore::open`]); keeps up the claims in `opts` if any.
    pub fn new(index: RedisIndex, log: Arc<dyn MessageLog>, opts: SplitOptions) -> SplitStore {
        let (queue, rx) = mpsc::channel(opts.queue.max(1));
        let (retries, retry_rx) = mpsc::unbounded_channel();
        let (rebuilt, rebuilt_rx) = mpsc::unbounded_channel();
        let (presence, changes) = mpsc::channel(opts.queue.max(1));
        let shared = Arc::new(Shared {
            index,
            log,
            opts,
            fresh: Mutex::new((String::new(), HashSet::new())),
            suspect: Mutex::new(HashSet::new()),
            rebuilds: Mutex::new(HashMap::new()),
            holes: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            group_inflight: Mutex::new(HashMap::new()),
            writing: Mutex::new(HashMap::new()),
            unindexed: Mutex::new(HashMap::new()),
            retries,
            rebuilt,
            purged_before: AtomicI64::new(i64::MIN),
            incarnation: format!("{:016x}", rand::random::<u64>()),
        });
        tokio::spawn(pipeline::run(shared.clone(), rx, retry_rx, rebuilt_rx));
        tokio::spawn(claims::keep_node_alive(Arc::downgrade(&shared)));
        tokio::spawn(claims::apply_presence(shared.clone(), changes));
        SplitStore {
            shared,
            queue,
            presence,
            extras: Default::default(),
        }
    }

    fn enqueue(&self, job: Job) -> Result<(), StoreError> {
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::new("the store is overloaded"),
            mpsc::error::TrySendError::Closed(_) => StoreError::new("the store has stopped"),
        })
    }
}

async fn answer<T>(rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
    rx.await
        .map_err(|_| StoreError::new("the store stopped before answering"))?
}

#[async_trait]
impl MessageStore for SplitStore {
    fn append_message(&self, msg: NewMessage) -> BoxFuture<'static, StoreResult<SendOutcome>> {
        let (reply, rx) = oneshot::channel();
        let queued = self.enqueue(Job::append(msg, reply));
        Box::pin(async move {
            queued?;
            answer(rx).await
        })
    }

    async fn read_stream(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        self.shared.read_stream(user, after_seq, limit).await
    }

    async fn last_seq(&self, user: &str) -> StoreResult<u64> {
        self.shared.counter(user).await
    }

    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
        let last = self.shared.counter(user).await?;
        self.shared
            .log
            .advance_cursor(user, device, seq.min(last))
            .await
    }

    async fn max_msg_id(&self) -> StoreResult<u64> {
        self.shared.log.max_msg_id().await
    }

    async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize> {
        self.shared
            .purged_before
            .fetch_max(before_ts_ms, Ordering::Relaxed);
        self.shared.log.purge_dedup(before_ts_ms).await
    }
}

#[async_trait]
impl PresenceStore for SplitStore {
    fn device_online(&self, user: &str, device: &str, conn_id: u64) {
        self.presence_change(true, user, device, conn_id);
    }

    fn device_offline(&self, user: &str, device: &str, conn_id: u64) {
        self.presence_change(false, user, device, conn_id);
    }

    async fn online_devices(&self, user: &str) -> StoreResult<Option<Vec<(String, u16)>>> {
        self.shared.index.online_devices(user).await.map(Some)
    }

    fn announce(&self, news: NodeNews) {
        if !self.shared.one_node() {
            tokio::spawn(claims::publish_news(self.shared.clone(), news));
        }
    }

    fn node_news(&self) -> Option<tokio::sync::mpsc::Receiver<NodeNews>> {
        match self.shared.one_node() {
            true => None,
            false => Some(
                self.shared
                    .index
                    .node_news(self.shared.opts.node_id, self.shared.opts.presence_ttl),
            ),
        }
    }
}

#[async_trait]
impl InboxStore for SplitStore {
    fn mark_read(
        &self,
        user: &str,
        conversation: &str,
        up_to_msg_id: u64,
    ) -> BoxFuture<'static, StoreResult<ReadOutcome>> {
        let (reply, rx) = oneshot::channel();
        let queued = self.enqueue(Job::read(user, conversation, up_to_msg_id, reply));
        Box::pin(async move {
            queued?;
            answer(rx).await
        })
    }

    async fn conversations(&self, user: &str, limit: usize) -> StoreResult<ConversationPage> {
        let mut recent = None;
        for _ in 0..3 {
            self.shared.ensure_fresh(&[user.to_string()]).await?;
            recent = self.shared.index.recent(user, limit).await?;
            if recent.is_some() {
                break;
            }
            self.shared.unmark_fresh(user);
        }
        let recent =
            recent.ok_or_else(|| StoreError::new("the index stayed stale across rebuilds"))?;
        let lasts = futures::future::join_all(
            recent
                .conversations
                .iter()
                .map(|(c, _, _)| self.shared.log.history(user, c, None, 1)),
        )
        .await;
        let mut page = ConversationPage {
            conversations: Vec::with_capacity(lasts.len()),
            has_more: recent.has_more,
        };
        let groups = self.shared.log.groups();
        for ((id, updated_at, unread), last) in recent.conversations.into_iter().zip(lasts) {
            let mentioned = match groups {
                Some(g) if matches!(Conversation::parse(&id), Some(Conversation::Group(_))) => {
                    g.mentioned(user, &id).await?
                }
                _ => false,
            };
            page.conversations.push(ConversationSummary {
                mentioned,
                last_group_seq: 0,
                id,
                unread,
                last: last?.messages.into_iter().next(),
                updated_at,
            });
        }
        Ok(page)
    }

    async fn history(
        &self,
        user: &str,
        conversation: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        self.shared
            .log
            .history(user, conversation, before_msg_id, limit)
            .await
    }
}
