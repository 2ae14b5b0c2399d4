//! The scale-out store: a [`RedisIndex`] (seq counters, unread index, recency, dedup cache) in
//! front of a [`MessageLog`] (the durable streams, history, dedup records, cursors).
//!
//! This file owns how the two are combined so that the result keeps the [`MessageStore`] and
//! [`InboxStore`] contracts, the same ones the embedded store passes:
//! - **Order.** One pipeline task takes appends and reads in call order, allocates their seqs in
//!   Redis in one round trip per batch (a pipeline of scripts, applied in order), and enqueues the
//!   log writes in that same order before it looks at the next batch.
//! - **Durability.** A send is answered only after the log made it durable. The index is updated
//!   after that; if Redis fails at that moment the message is still durable and answered, and the
//!   index update is retried in the background (every update is idempotent).
//! - **Dedup.** A resend is answered from the Redis cache when the original is durable, waits for
//!   the original when it is still in flight on this node, and is otherwise caught by the log's
//!   dedup record (the log then writes gap placeholders at the seqs it was given).
//! - **Seq safety.** A user's keys carry the `run_id` of the Redis that last checked them against
//!   the log. After a Redis restart (data lost, or restored from an old snapshot) every user is
//!   stale until rebuilt from the log: the counter resumes at or above the log's highest seq, and
//!   unread sets, read pointers and recency are recomputed from the user's stream (receipts carry
//!   the read pointers). Nothing is allocated for a stale user.
//! - **Holes.** A seq allocated whose log write failed (or whose node died) is a hole. Log writes
//!   carry a deadline and are refused after it, so a hole this node has seen for longer than
//!   `gap_settle` (well past any deadline) can never be filled: `read_stream` returns it as a `gap`
//!   event. A younger hole ends the page early, so a device syncs again instead of skipping it.
//!   With a log that only this process writes (the embedded one), a hole is a gap at once when
//!   no write for that user is in flight here: after a crash and restart, nothing waits.
//! - **Failure.** Redis or the log down: sends and reads fail with [`StoreError`] (`UNAVAILABLE`
//!   to the client), nothing unacknowledged is claimed durable, and the next request after the
//!   store is back works: the Redis connection reconnects by itself.
//!
//! What this does not do: coordinate rebuilds across nodes (two nodes rebuilding one user at the
//! same moment can each miss what the other indexed in between; the next Redis restart or the
//! user's next read repairs counts only by a rebuild), or survive Redis Cluster (see
//! [`super::redis_index`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use mqim_schemas::v1::event;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::log::{MessageLog, MessageSeqs};
use super::redis_index::{AllocRequest, Allocated, RebuiltConversation, RedisIndex};
use super::{
    gap_event, receipt_event, ConversationPage, ConversationSummary, HistoryPage, InboxStore,
    MessageStore, NewMessage, PresenceStore, ReadOutcome, SendOutcome, SentRecord, StoreError,
    StoreResult, StreamPage,
};

/// Timing of the split store.
#[derive(Clone, Copy, Debug)]
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
    /// How long this node's devices count as online after it stops refreshing (it crashed).
    pub presence_ttl: Duration,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            write_deadline: Duration::from_secs(5),
            gap_settle: Duration::from_secs(15),
            queue: 16 * 1024,
            node_id: 0,
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// Requests taken per Redis round trip.
const MAX_BATCH: usize = 256;
/// Events read per log call while rebuilding a user.
const REBUILD_PAGE: usize = 1000;
/// Holes remembered at most; past it the oldest observations are forgotten (and start over).
const MAX_HOLES: usize = 100_000;

type Reply<T> = oneshot::Sender<StoreResult<T>>;
/// (sender, clientMsgId).
type SendKey = (String, String);

enum Job {
    Append(NewMessage, Reply<SendOutcome>),
    Read {
        user: String,
        conversation: String,
        up_to: u64,
        reply: Reply<ReadOutcome>,
    },
}

/// The split store. Dropping it stops its pipeline once queued requests are done.
pub struct SplitStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
    presence: mpsc::Sender<PresenceChange>,
}

struct PresenceChange {
    online: bool,
    user: String,
    device: String,
    conn_id: u64,
}

struct Shared {
    index: RedisIndex,
    log: Arc<dyn MessageLog>,
    opts: SplitOptions,
    /// Users checked against the log under the Redis `run_id` held here.
    fresh: Mutex<(String, HashSet<String>)>,
    /// (user, seq) -> when this node first saw the seq missing.
    holes: Mutex<HashMap<(String, u64), Instant>>,
    /// Rebuilds on this node run one at a time.
    rebuild: tokio::sync::Mutex<()>,
    /// Users with allocations or log writes in flight on this node -> how many.
    writing: Mutex<HashMap<String, usize>>,
    /// (sender, clientMsgId) of appends in flight -> resends waiting for their outcome.
    inflight: Mutex<HashMap<SendKey, Vec<Reply<SendOutcome>>>>,
    /// Random per start: devices recorded online by an earlier run of this node are not online.
    incarnation: String,
    /// The latest purge's cutoff: cached dedup entries older than it no longer count (Redis
    /// expires them by TTL; this makes a purge take effect at once, as the contract says).
    purged_before: AtomicI64,
}

impl SplitStore {
    /// Combines `index` and `log`; starts the pipeline task on the current tokio runtime.
    pub fn new(index: RedisIndex, log: Arc<dyn MessageLog>, opts: SplitOptions) -> SplitStore {
        let (queue, rx) = mpsc::channel(opts.queue.max(1));
        let shared = Arc::new(Shared {
            index,
            log,
            opts,
            fresh: Mutex::new((String::new(), HashSet::new())),
            holes: Mutex::new(HashMap::new()),
            rebuild: tokio::sync::Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            writing: Mutex::new(HashMap::new()),
            purged_before: AtomicI64::new(i64::MIN),
            incarnation: format!("{:016x}", rand::random::<u64>()),
        });
        tokio::spawn(pipeline(shared.clone(), rx));
        tokio::spawn(keep_node_alive(Arc::downgrade(&shared)));
        let (presence, changes) = mpsc::channel(opts.queue.max(1));
        tokio::spawn(apply_presence(shared.clone(), changes));
        SplitStore {
            shared,
            queue,
            presence,
        }
    }

    /// Queues a presence change; one task applies them in order, so a connection's offline never
    /// overtakes its online.
    fn presence_change(&self, online: bool, user: &str, device: &str, conn_id: u64) {
        let change = PresenceChange {
            online,
            user: user.to_string(),
            device: device.to_string(),
            conn_id,
        };
        if self.presence.try_send(change).is_err() {
            warn!(
                user,
                device, "presence updates are backed up; one was dropped"
            );
        }
    }

    fn enqueue(&self, job: Job) -> Result<(), StoreError> {
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::new("the store is overloaded"),
            mpsc::error::TrySendError::Closed(_) => StoreError::new("the store has stopped"),
        })
    }
}

/// Takes whatever queued up, allocates it in one Redis round trip and hands the log its writes in
/// order; the waits for durability run on their own tasks.
async fn pipeline(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        shared.run_batch(std::mem::take(&mut jobs)).await;
    }
}

/// Refreshes this node's incarnation in Redis while the store lives, three times per TTL.
async fn keep_node_alive(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(this) = shared.upgrade() else { return };
        let ttl = this.opts.presence_ttl;
        if let Err(e) = this
            .index
            .node_alive(this.opts.node_id, &this.incarnation, ttl)
            .await
        {
            warn!(error = %e, "could not refresh this node's presence in Redis");
        }
        drop(this);
        tokio::time::sleep(ttl / 3).await;
    }
}

/// Applies presence changes in the order they happened, until the store is dropped.
async fn apply_presence(shared: Arc<Shared>, mut changes: mpsc::Receiver<PresenceChange>) {
    while let Some(c) = changes.recv().await {
        let holder = shared.presence_holder(c.conn_id);
        let done = if c.online {
            shared
                .index
                .device_online(&c.user, &c.device, &holder)
                .await
        } else {
            shared
                .index
                .device_offline(&c.user, &c.device, &holder)
                .await
        };
        if let Err(e) = done {
            warn!(user = c.user, device = c.device, error = %e, "could not update presence in Redis");
        }
    }
}

impl Shared {
    fn presence_holder(&self, conn_id: u64) -> String {
        format!("{}:{}:{conn_id}", self.opts.node_id, self.incarnation)
    }

    async fn run_batch(self: &Arc<Self>, jobs: Vec<Job>) {
        // Resends of an append in flight wait for it instead of allocating again.
        let mut jobs: Vec<Job> = jobs
            .into_iter()
            .filter_map(|job| match job {
                Job::Append(msg, reply) => {
                    let key = (msg.from.clone(), msg.client_msg_id.clone());
                    let mut inflight = self.inflight.lock();
                    match inflight.get_mut(&key) {
                        Some(waiters) => {
                            waiters.push(reply);
                            None
                        }
                        None => {
                            inflight.insert(key, Vec::new());
                            Some(Job::Append(msg, reply))
                        }
                    }
                }
                read => Some(read),
            })
            .collect();
        if jobs.is_empty() {
            return;
        }
        // Held until each job's log write is over (dropped with the job on every other path).
        let guards: Vec<Writing> = jobs
            .iter()
            .map(|job| Writing::new(self, job_users(job)))
            .collect();
        let users: Vec<String> = guards.iter().flat_map(|g| g.users.clone()).collect();
        if let Err(e) = self.ensure_fresh(&users).await {
            for job in jobs.drain(..) {
                self.fail(job, &e);
            }
            return;
        }
        let requests: Vec<AllocRequest> = jobs.iter().map(alloc_request).collect();
        let horizon = self.purged_before.load(Ordering::Relaxed);
        let answers = match self.index.allocate(&requests, horizon).await {
            Ok(answers) => answers,
            Err(e) => {
                // Redis may have restarted: check every user again once it answers.
                self.forget_fresh();
                for job in jobs.drain(..) {
                    self.fail(job, &e);
                }
                return;
            }
        };
        for ((job, answer), guard) in jobs.into_iter().zip(answers).zip(guards) {
            self.dispatch(job, answer, guard);
        }
    }

    /// Starts the log write of one allocated request (enqueued now, in order) and finishes it on
    /// a task of its own.
    fn dispatch(self: &Arc<Self>, job: Job, answer: Allocated, guard: Writing) {
        let deadline = Instant::now() + self.opts.write_deadline;
        match (job, answer) {
            (job, Allocated::Stale(user)) => {
                // Only when Redis restarted between the freshness check and the script.
                self.forget_fresh();
                let e = StoreError(format!(
                    "the index of {user} is being rebuilt after a Redis restart; try again"
                ));
                self.fail(job, &e);
            }
            (Job::Append(msg, reply), Allocated::Duplicate(original)) => {
                self.finish_append(&msg, Ok(SendOutcome::Duplicate(original)), reply);
            }
            (Job::Append(msg, reply), Allocated::Message { sender, recipient }) => {
                let written =
                    self.log
                        .log_message(msg.clone(), MessageSeqs { sender, recipient }, deadline);
                let this = self.clone();
                tokio::spawn(async move {
                    let outcome = written.await;
                    drop(guard);
                    match &outcome {
                        Ok(SendOutcome::Fresh(a)) => this.index_message(&msg, &a.sent).await,
                        // The log knew it, the cache did not: the original may have been logged
                        // by a node that died before indexing it. Indexing is idempotent, so
                        // doing it again repairs that and changes nothing otherwise.
                        Ok(SendOutcome::Duplicate(original)) => {
                            this.index_message(&msg, original).await
                        }
                        Err(_) => {}
                    }
                    this.finish_append(&msg, outcome, reply);
                });
            }
            (
                Job::Read {
                    user,
                    conversation,
                    up_to,
                    reply,
                },
                Allocated::Read { unread, receipts },
            ) => {
                let Some((own_seq, peer_seq)) = receipts else {
                    let _ = reply.send(Ok(ReadOutcome {
                        unread,
                        receipts: None,
                    }));
                    return;
                };
                let peer = peer_of(&conversation).unwrap_or_default().to_string();
                let own = receipt_event(own_seq, conversation.clone(), &user, up_to);
                let theirs = receipt_event(peer_seq, format!("u:{user}"), &user, up_to);
                let written = self.log.log_events(
                    vec![(user.clone(), own.clone()), (peer.clone(), theirs.clone())],
                    deadline,
                );
                tokio::spawn(async move {
                    let outcome = written.await;
                    drop(guard);
                    let outcome = outcome.map(|()| ReadOutcome {
                        unread,
                        receipts: Some((own, (peer, theirs))),
                    });
                    let _ = reply.send(outcome);
                });
            }
            (job, _) => self.fail(job, &StoreError::new("Redis answered another request")),
        }
    }

    /// Answers an append and every resend that waited for it.
    fn finish_append(
        &self,
        msg: &NewMessage,
        outcome: StoreResult<SendOutcome>,
        reply: Reply<SendOutcome>,
    ) {
        let waiters = self
            .inflight
            .lock()
            .remove(&(msg.from.clone(), msg.client_msg_id.clone()))
            .unwrap_or_default();
        for waiter in waiters {
            let answer = match &outcome {
                Ok(SendOutcome::Fresh(a)) => Ok(SendOutcome::Duplicate(a.sent.clone())),
                Ok(SendOutcome::Duplicate(original)) => {
                    Ok(SendOutcome::Duplicate(original.clone()))
                }
                Err(e) => Err(StoreError(e.0.clone())),
            };
            let _ = waiter.send(answer);
        }
        let _ = reply.send(outcome);
    }

    fn fail(&self, job: Job, e: &StoreError) {
        match job {
            Job::Append(msg, reply) => {
                self.finish_append(&msg, Err(StoreError(e.0.clone())), reply)
            }
            Job::Read { reply, .. } => {
                let _ = reply.send(Err(StoreError(e.0.clone())));
            }
        }
    }

    /// Indexes a durable message. On failure the message stays durable and answered; the update
    /// is retried in the background until Redis takes it (it is idempotent).
    async fn index_message(self: &Arc<Self>, msg: &NewMessage, sent: &SentRecord) {
        if self.try_index(msg, sent).await.is_ok() {
            return;
        }
        let (this, msg, sent) = (self.clone(), msg.clone(), sent.clone());
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                match this.try_index(&msg, &sent).await {
                    Ok(()) => return,
                    Err(e) if wait >= Duration::from_secs(5) => {
                        warn!(error = %e, msg_id = sent.msg_id, "indexing a logged message still fails");
                    }
                    Err(_) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn try_index(&self, msg: &NewMessage, sent: &SentRecord) -> StoreResult<()> {
        for _ in 0..3 {
            match self
                .index
                .apply_message(&msg.from, &msg.to, &msg.client_msg_id, sent)
                .await?
            {
                None => return Ok(()),
                // A rebuild from the log includes this message once it runs: it was logged first.
                Some(user) => {
                    self.forget_fresh();
                    self.ensure_fresh(&[user]).await?;
                }
            }
        }
        Err(StoreError::new("the index stayed stale across rebuilds"))
    }

    fn forget_fresh(&self) {
        self.fresh.lock().1.clear();
    }

    /// Makes sure every user's index keys were checked against the log under the current Redis
    /// `run_id`, rebuilding those that were not.
    async fn ensure_fresh(&self, users: &[String]) -> StoreResult<()> {
        let unknown: Vec<&String> = {
            let fresh = self.fresh.lock();
            let current = fresh.0 == self.index.run_id() && !fresh.0.is_empty();
            let mut seen = HashSet::new();
            users
                .iter()
                .filter(|u| (!current || !fresh.1.contains(*u)) && seen.insert(*u))
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let rid = self.index.refresh_run_id().await?;
        {
            let mut fresh = self.fresh.lock();
            if fresh.0 != rid {
                *fresh = (rid.clone(), HashSet::new());
            }
        }
        for user in unknown {
            if self.index.last_seq(user).await?.is_none() {
                self.rebuild(user).await?;
            }
            let mut fresh = self.fresh.lock();
            if fresh.0 == rid {
                if fresh.1.len() >= 1_000_000 {
                    fresh.1.clear();
                }
                fresh.1.insert(user.clone());
            }
        }
        Ok(())
    }

    /// Recomputes `user`'s index keys from the log: counter floor, read pointers (the user's own
    /// receipts), unread sets (the peers' messages above them) and recency.
    async fn rebuild(&self, user: &str) -> StoreResult<()> {
        let _one_at_a_time = self.rebuild.lock().await;
        let rid = self.index.refresh_run_id().await?;
        if self.index.last_seq(user).await?.is_some() {
            return Ok(()); // rebuilt meanwhile
        }
        let floor = self.log.max_seq(user).await?;
        let mut convs: BTreeMap<String, RebuiltConversation> = BTreeMap::new();
        let mut peers_messages: Vec<(String, u64)> = Vec::new();
        let mut after = 0;
        loop {
            let events = self.log.read_events(user, after, REBUILD_PAGE).await?;
            let Some(last) = events.last() else { break };
            after = last.seq;
            for e in events {
                match e.body {
                    Some(event::Body::Message(m)) => {
                        let c = conv_entry(&mut convs, &m.conversation);
                        c.updated_at = Some(c.updated_at.map_or(m.ts, |t| t.max(m.ts)));
                        if m.from != user {
                            peers_messages.push((m.conversation, m.msg_id));
                        }
                    }
                    Some(event::Body::Read(r)) if r.by == user => {
                        let c = conv_entry(&mut convs, &r.conversation);
                        c.read_upto = Some(c.read_upto.map_or(r.msg_id, |x| x.max(r.msg_id)));
                    }
                    _ => {}
                }
            }
        }
        for (conversation, msg_id) in peers_messages {
            let c = conv_entry(&mut convs, &conversation);
            if c.read_upto.is_none_or(|x| msg_id > x) {
                c.unread.push(msg_id);
            }
        }
        let convs: Vec<RebuiltConversation> = convs.into_values().collect();
        let counter = self.index.restore(user, &rid, floor, &convs).await?;
        if floor > 0 {
            info!(
                user,
                floor, counter, "rebuilt the index of a user from the log"
            );
        }
        Ok(())
    }

    /// The user's seq counter, after making sure it is not stale.
    async fn counter(&self, user: &str) -> StoreResult<u64> {
        for _ in 0..3 {
            self.ensure_fresh(&[user.to_string()]).await?;
            if let Some(n) = self.index.last_seq(user).await? {
                return Ok(n);
            }
            self.forget_fresh();
        }
        Err(StoreError::new("the index stayed stale across rebuilds"))
    }

    /// Whether the missing `seq` of `user` can no longer be written; records the first sighting.
    fn settled(&self, user: &str, seq: u64) -> bool {
        let now = Instant::now();
        let mut holes = self.holes.lock();
        if holes.len() >= MAX_HOLES {
            let horizon = self.opts.gap_settle * 4;
            holes.retain(|_, seen| now.duration_since(*seen) < horizon);
            if holes.len() >= MAX_HOLES {
                holes.clear();
            }
        }
        let seen = *holes.entry((user.to_string(), seq)).or_insert(now);
        now.duration_since(seen) >= self.opts.gap_settle
    }
}

/// Marks users as having a log write in flight on this node while it lives.
struct Writing {
    shared: Arc<Shared>,
    users: Vec<String>,
}

impl Writing {
    fn new(shared: &Arc<Shared>, users: Vec<String>) -> Writing {
        let mut writing = shared.writing.lock();
        for user in &users {
            *writing.entry(user.clone()).or_default() += 1;
        }
        drop(writing);
        Writing {
            shared: shared.clone(),
            users,
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut writing = self.shared.writing.lock();
        for user in &self.users {
            if let Some(n) = writing.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    writing.remove(user);
                }
            }
        }
    }
}

fn conv_entry<'a>(
    convs: &'a mut BTreeMap<String, RebuiltConversation>,
    conversation: &str,
) -> &'a mut RebuiltConversation {
    convs
        .entry(conversation.to_string())
        .or_insert_with(|| RebuiltConversation {
            conversation: conversation.to_string(),
            ..Default::default()
        })
}

fn peer_of(conversation: &str) -> Option<&str> {
    conversation.strip_prefix("u:")
}

fn job_users(job: &Job) -> Vec<String> {
    match job {
        Job::Append(msg, _) => vec![msg.from.clone(), msg.to.clone()],
        Job::Read {
            user, conversation, ..
        } => {
            let mut users = vec![user.clone()];
            users.extend(peer_of(conversation).map(str::to_string));
            users
        }
    }
}

fn alloc_request(job: &Job) -> AllocRequest {
    match job {
        Job::Append(msg, _) => AllocRequest::Message {
            from: msg.from.clone(),
            to: msg.to.clone(),
            client_msg_id: msg.client_msg_id.clone(),
        },
        Job::Read {
            user,
            conversation,
            up_to,
            ..
        } => AllocRequest::Read {
            user: user.clone(),
            conversation: conversation.clone(),
            peer: peer_of(conversation).map(str::to_string),
            up_to: *up_to,
        },
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
        let queued = self.enqueue(Job::Append(msg, reply));
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
        let last = self.shared.counter(user).await?;
        if after_seq >= last || limit == 0 {
            return Ok(StreamPage {
                events: Vec::new(),
                has_more: after_seq < last,
            });
        }
        // With a log only this process writes, a hole is dead at once unless this node has a write
        // for the user in flight: taken after reading the counter (every seq up to it was
        // allocated before) and before reading the log (a write that ends in between is read).
        let quiet =
            self.shared.log.single_writer() && !self.shared.writing.lock().contains_key(user);
        let logged = self.shared.log.read_events(user, after_seq, limit).await?;
        let mut page = StreamPage::default();
        let mut expected = after_seq + 1;
        // Walks seqs from after_seq + 1: a logged event is taken, a missing seq becomes a gap once
        // settled, and the page ends at the first hole that is not.
        let mut logged = logged.into_iter().peekable();
        while expected <= last && page.events.len() < limit {
            match logged.peek() {
                Some(e) if e.seq == expected => {
                    page.events.extend(logged.next());
                }
                Some(e) if e.seq < expected => {
                    logged.next(); // a log answering out of order; skip
                    continue;
                }
                _ if quiet || self.shared.settled(user, expected) => {
                    page.events.push(gap_event(expected))
                }
                _ => return Ok(page), // a hole still in flight: sync again later
            }
            expected += 1;
        }
        page.has_more = expected <= last;
        Ok(page)
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
        let queued = self.enqueue(Job::Read {
            user: user.to_string(),
            conversation: conversation.to_string(),
            up_to: up_to_msg_id,
            reply,
        });
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
            self.shared.forget_fresh();
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
        for ((id, updated_at, unread), last) in recent.conversations.into_iter().zip(lasts) {
            page.conversations.push(ConversationSummary {
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

#[cfg(test)]
mod tests {
    use mqim_schemas::v1::Event;
    use std::sync::atomic::AtomicU64;

    use tempfile::TempDir;

    use super::*;
    use crate::store::conformance;
    use crate::store::lsm::LsmStore;
    use crate::store::redis_index::RedisConfig;
    use crate::store::Store;
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

    /// A log that fails its next writes on demand, around the real embedded log.
    struct FlakyLog {
        inner: Arc<LsmStore>,
        fail_next: AtomicU64,
    }

    #[async_trait]
    impl MessageLog for FlakyLog {
        fn log_message(
            &self,
            msg: NewMessage,
            seqs: MessageSeqs,
            deadline: Instant,
        ) -> BoxFuture<'static, StoreResult<SendOutcome>> {
            if self.fail_next.load(Ordering::SeqCst) > 0 {
                self.fail_next.fetch_sub(1, Ordering::SeqCst);
                return Box::pin(async { Err(StoreError::new("injected log failure")) });
            }
            self.inner.log_message(msg, seqs, deadline)
        }
        fn log_events(
            &self,
            events: Vec<(String, Event)>,
            deadline: Instant,
        ) -> BoxFuture<'static, StoreResult<()>> {
            self.inner.log_events(events, deadline)
        }
        async fn read_events(&self, u: &str, a: u64, l: usize) -> StoreResult<Vec<Event>> {
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
    }

    /// A seq allocated whose write failed is not a silent hole: the page stops before it while it
    /// could still be written, and once it cannot, it is a `gap` event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_becomes_a_gap_event_once_settled() {
        let redis = RedisServer::start();
        let dir = TempDir::new().unwrap();
        let log = Arc::new(FlakyLog {
            inner: Arc::new(LsmStore::open(dir.path()).unwrap()),
            fail_next: AtomicU64::new(0),
        });
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
    async fn delete_keys(
        conn: &mut redis::aio::MultiplexedConnection,
        pattern: &str,
    ) -> Vec<String> {
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
}
