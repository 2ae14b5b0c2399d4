//! The allocation pipeline of the split store: one task takes appends and reads in call order,
//! holds back those that touch a stale user (and every later one touching any of their users)
//! while rebuilds run elsewhere, allocates the rest in one Redis round trip per batch, and
//! enqueues their log writes in that order. Each write is finished on a task of its own: a
//! conflict in the log makes the user suspect and sends the request round again; a read whose
//! Redis half changed nothing asks the log whether its receipts exist.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::warn;

use super::fresh::{debug_rebuild_failed, Writing};
use super::{Reply, Shared};
use crate::conversation::Conversation;
use crate::store::extras::{Amend, AmendOutcome};
use crate::store::groups::{log_owner, GroupAppend, GroupOutcome, GroupReadOutcome};
use crate::store::log::{peer_conversation, LogError, MessageSeqs, ReceiptWrite};
use crate::store::redis_index::{AllocRequest, Allocated};
use crate::store::{
    receipt_event, NewMessage, ReadOutcome, SendOutcome, SentRecord, StoreError, StoreResult,
};

/// Requests taken per Redis round trip.
const MAX_BATCH: usize = 256;
/// Allocations of one request at most (the first and the retries after conflicts).
const MAX_ATTEMPTS: u8 = 8;
/// History pages read at most to find out whether a read's receipts are due.
const RECEIPT_CHECK_PAGES: usize = 10;

/// One request of the pipeline.
// A group entry is moved a few times per request, like `GroupOutcome`: not worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Append {
        msg: NewMessage,
        reply: Reply<SendOutcome>,
        attempt: u8,
    },
    Read {
        user: String,
        conversation: String,
        /// Who gets the receipt: the other user; in a small group, the sender of the newest
        /// message the read covers (looked up in the log before allocating: `resolved`).
        peer: Option<String>,
        resolved: bool,
        up_to: u64,
        /// Allocate receipt seqs even if Redis says nothing changed (the log says they are due).
        force: bool,
        reply: Reply<ReadOutcome>,
        attempt: u8,
    },
    /// A group entry (`groups.rs`).
    Group {
        entry: GroupAppend,
        reply: Reply<GroupOutcome>,
        attempt: u8,
    },
    /// A member's read position in a large group (`groups.rs`).
    GroupRead {
        user: String,
        group: String,
        up_to: u64,
        reply: Reply<GroupReadOutcome>,
        attempt: u8,
    },
    /// A recall or an edit (`amend.rs`): `holders` are the streams holding the message, once
    /// the log named them (before that, every stream that may hold it).
    Amend {
        amend: Box<Amend>,
        holders: Option<Vec<String>>,
        reply: Reply<AmendOutcome>,
        attempt: u8,
    },
}

impl Job {
    pub(super) fn append(msg: NewMessage, reply: Reply<SendOutcome>) -> Job {
        Job::Append {
            msg,
            reply,
            attempt: 0,
        }
    }

    pub(super) fn read(
        user: &str,
        conversation: &str,
        up_to: u64,
        reply: Reply<ReadOutcome>,
    ) -> Job {
        let peer = peer_of(conversation).map(str::to_string);
        Job::Read {
            user: user.to_string(),
            conversation: conversation.to_string(),
            resolved: peer.is_some(),
            peer,
            up_to,
            force: false,
            reply,
            attempt: 0,
        }
    }

    pub(super) fn users(&self) -> Vec<String> {
        match self {
            Job::Append { msg, .. } => vec![msg.from.clone(), msg.to.clone()],
            Job::Read { user, peer, .. } => {
                let mut users = vec![user.clone()];
                users.extend(peer.iter().filter(|p| *p != user).cloned());
                users
            }
            Job::Group { entry, .. } => std::iter::once(log_owner(&entry.group))
                .chain(entry.copies.iter().map(|c| c.owner.clone()))
                .collect(),
            Job::GroupRead { user, .. } => vec![user.clone()],
            Job::Amend {
                holders: Some(holders),
                ..
            } => holders.clone(),
            Job::Amend { amend, .. } => std::iter::once(&amend.home)
                .chain(&amend.others)
                .map(|t| t.owner.clone())
                .collect(),
        }
    }

    /// The same request, counted as allocated once more (so it is not taken for a resend of
    /// itself when it comes round again).
    fn bumped(mut self) -> Job {
        match &mut self {
            Job::Append { attempt, .. }
            | Job::Read { attempt, .. }
            | Job::Group { attempt, .. }
            | Job::GroupRead { attempt, .. }
            | Job::Amend { attempt, .. } => *attempt = attempt.saturating_add(1),
        }
        self
    }

    fn attempt(&self) -> u8 {
        match self {
            Job::Append { attempt, .. }
            | Job::Read { attempt, .. }
            | Job::Group { attempt, .. }
            | Job::GroupRead { attempt, .. }
            | Job::Amend { attempt, .. } => *attempt,
        }
    }

    fn alloc_request(&self) -> AllocRequest {
        match self {
            Job::Append { msg, .. } => AllocRequest::Message {
                from: msg.from.clone(),
                to: msg.to.clone(),
                client_msg_id: msg.client_msg_id.clone(),
            },
            Job::Read {
                user,
                conversation,
                peer,
                up_to,
                force,
                ..
            } => AllocRequest::Read {
                user: user.clone(),
                conversation: conversation.clone(),
                peer: peer.clone(),
                up_to: *up_to,
                force: *force,
            },
            Job::Group { entry, .. } => AllocRequest::Group {
                owners: self.users(),
                dedup: entry.dedup_key().map(|d| (d.owner, d.client_msg_id)),
                fence: Some(super::fence::fence_of(entry)),
            },
            Job::GroupRead { user, .. } => AllocRequest::Group {
                owners: vec![user.clone()],
                dedup: None,
                fence: None,
            },
            // One seq in each stream holding the message (`users` is the holders by now).
            Job::Amend { .. } => AllocRequest::Group {
                owners: self.users(),
                dedup: None,
                fence: None,
            },
        }
    }
}

pub(super) fn peer_of(conversation: &str) -> Option<&str> {
    Conversation::peer(conversation)
}

/// The pipeline task's state.
struct Pipeline {
    shared: Arc<Shared>,
    /// Requests held back, in call order.
    deferred: VecDeque<Job>,
    /// Users being rebuilt for the pipeline.
    rebuilding: HashSet<String>,
    /// `deferred` may hold requests that can run now.
    ready: bool,
}

/// Runs the pipeline until the store is dropped and every request is answered.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    mut retries: mpsc::UnboundedReceiver<Job>,
    mut rebuilt: mpsc::UnboundedReceiver<(String, StoreResult<()>)>,
) {
    let mut p = Pipeline {
        shared,
        deferred: VecDeque::new(),
        rebuilding: HashSet::new(),
        ready: false,
    };
    let mut open = true;
    let mut incoming = Vec::with_capacity(MAX_BATCH);
    loop {
        if !p.ready {
            if !open && p.deferred.is_empty() && p.rebuilding.is_empty() {
                // Writes still finishing that retry later find the channel closed and fail.
                while let Ok(job) = retries.try_recv() {
                    fail(&p.shared, job, &StoreError::new("the store has stopped"));
                }
                return;
            }
            tokio::select! {
                biased;
                Some((user, done)) = rebuilt.recv() => p.rebuilt(user, done),
                Some(job) = retries.recv() => incoming.push(job),
                n = rx.recv_many(&mut incoming, MAX_BATCH), if open => open = n > 0,
            }
        }
        while let Ok((user, done)) = rebuilt.try_recv() {
            p.rebuilt(user, done);
        }
        while incoming.len() < MAX_BATCH {
            match retries.try_recv() {
                Ok(job) => incoming.push(job),
                Err(_) => break,
            }
        }
        let batch = p.select(std::mem::take(&mut incoming));
        if !batch.is_empty() {
            p.run_batch(batch).await;
        }
    }
}

impl Pipeline {
    /// A rebuild the pipeline started is over: on failure, the requests that waited for it fail.
    fn rebuilt(&mut self, user: String, done: StoreResult<()>) {
        self.rebuilding.remove(&user);
        self.ready = true;
        if let Err(e) = done {
            debug_rebuild_failed(&user, &e);
            let (failed, kept): (Vec<Job>, Vec<Job>) = self
                .deferred
                .drain(..)
                .partition(|job| job.users().contains(&user));
            self.deferred = kept.into();
            for job in failed {
                fail(&self.shared, job, &e);
            }
        }
    }

    /// The requests that can be allocated now, in call order; the others are held back and the
    /// rebuilds they wait for are started.
    fn select(&mut self, incoming: Vec<Job>) -> Vec<Job> {
        self.ready = false;
        let mut blocked: HashSet<String> = HashSet::new();
        let mut batch = Vec::new();
        let candidates: Vec<Job> = self.deferred.drain(..).chain(incoming).collect();
        for job in candidates {
            let users = job.users();
            let stale: Vec<&String> = users.iter().filter(|u| !self.shared.is_fresh(u)).collect();
            let held = !stale.is_empty() || users.iter().any(|u| blocked.contains(u));
            if held || batch.len() >= MAX_BATCH {
                for user in stale {
                    self.start_rebuild(user);
                }
                if batch.len() >= MAX_BATCH {
                    self.ready = true;
                }
                blocked.extend(users);
                self.deferred.push_back(job);
            } else {
                batch.push(job);
            }
        }
        batch
    }

    fn start_rebuild(&mut self, user: &str) {
        if !self.rebuilding.insert(user.to_string()) {
            return;
        }
        let (shared, user) = (self.shared.clone(), user.to_string());
        tokio::spawn(async move {
            let done = shared.ensure_fresh(std::slice::from_ref(&user)).await;
            let _ = shared.rebuilt.send((user, done));
        });
    }

    async fn run_batch(&mut self, jobs: Vec<Job>) {
        let shared = self.shared.clone();
        // Resends of an append in flight wait for it instead of allocating again.
        let jobs: Vec<Job> = jobs
            .into_iter()
            .filter_map(|job| match job {
                Job::Append {
                    msg,
                    reply,
                    attempt: 0,
                } => {
                    let key = (msg.from.clone(), msg.client_msg_id.clone());
                    let mut inflight = shared.inflight.lock();
                    match inflight.get_mut(&key) {
                        Some(waiters) => {
                            waiters.push(reply);
                            None
                        }
                        None => {
                            inflight.insert(key, Vec::new());
                            Some(Job::append(msg, reply))
                        }
                    }
                }
                Job::Group {
                    entry,
                    reply,
                    attempt: 0,
                } => super::groups::wait_for_inflight(&shared, entry, reply),
                other => Some(other),
            })
            .collect();
        // Group reads look in the log first: who gets a small group's receipt, and whether a
        // large group's read moves anything at all.
        let jobs = super::groups::prepare_reads(&shared, jobs).await;
        // An amend asks the log which streams hold the message, and whether it may go on.
        let jobs = super::amend::prepare(&shared, jobs).await;
        if jobs.is_empty() {
            return;
        }
        // Held until each job's log write is over (dropped with the job on every other path).
        let guards: Vec<Writing> = jobs
            .iter()
            .map(|job| Writing::new(&shared, job.users()))
            .collect();
        let requests: Vec<AllocRequest> = jobs.iter().map(Job::alloc_request).collect();
        let horizon = shared.purged_before.load(Ordering::Relaxed);
        let answers = match shared.index.allocate(&requests, horizon).await {
            Ok(Some(answers)) => answers,
            Ok(None) => {
                // Redis restarted: every user is stale under the new run_id. Hold the batch
                // back, ahead of later requests, until its users are rebuilt.
                drop(guards);
                for job in jobs.into_iter().rev() {
                    self.deferred.push_front(job.bumped());
                }
                self.ready = true;
                return;
            }
            Err(e) => {
                for job in jobs {
                    fail(&shared, job, &e);
                }
                return;
            }
        };
        for ((job, answer), guard) in jobs.into_iter().zip(answers).zip(guards) {
            if let Allocated::Stale(user) = &answer {
                // The script found the user's keys missing or stamped by another Redis.
                shared.unmark_fresh(user);
                drop(guard);
                self.deferred.push_back(job.bumped());
                self.ready = true;
                continue;
            }
            dispatch(&shared, job, answer, guard);
        }
    }
}

/// Starts the log write of one allocated request (enqueued now, in order) and finishes it on a
/// task of its own.
fn dispatch(shared: &Arc<Shared>, job: Job, answer: Allocated, guard: Writing) {
    let deadline = Instant::now() + shared.opts.write_deadline;
    match (job, answer) {
        (Job::Append { msg, reply, .. }, Allocated::Duplicate(original)) => {
            finish_append(shared, &msg, Ok(SendOutcome::Duplicate(original)), reply);
        }
        (
            Job::Append {
                msg,
                reply,
                attempt,
            },
            Allocated::Message { sender, recipient },
        ) => {
            let written =
                shared
                    .log
                    .log_message(msg.clone(), MessageSeqs { sender, recipient }, deadline);
            let this = shared.clone();
            tokio::spawn(async move {
                let outcome = written.await;
                drop(guard);
                let outcome = match outcome {
                    Ok(o) => Ok(o),
                    Err(LogError::Conflict { user, seq }) => {
                        let job = Job::Append {
                            msg,
                            reply,
                            attempt: attempt + 1,
                        };
                        return retry_after_conflict(&this, job, &user, seq);
                    }
                    Err(LogError::Unavailable(e)) => Err(e),
                };
                match &outcome {
                    Ok(SendOutcome::Fresh(a)) => index_message(&this, &msg, &a.sent).await,
                    // The log knew it, the cache did not: the original may have been logged by
                    // a node that died before indexing it. Indexing is idempotent, so doing it
                    // again repairs that and changes nothing otherwise.
                    Ok(SendOutcome::Duplicate(original)) => {
                        index_message(&this, &msg, original).await
                    }
                    Err(_) => {}
                }
                finish_append(&this, &msg, outcome, reply);
            });
        }
        (
            Job::Read {
                user,
                conversation,
                peer,
                resolved,
                up_to,
                reply,
                attempt,
                ..
            },
            Allocated::Read { unread, receipts },
        ) => {
            let this = shared.clone();
            let Some((own_seq, peer_seq)) = receipts else {
                drop(guard);
                tokio::spawn(async move {
                    let job = Job::Read {
                        user,
                        conversation,
                        peer,
                        resolved,
                        up_to,
                        force: true,
                        reply,
                        attempt: attempt + 1,
                    };
                    receipts_due_or_answer(&this, job, unread).await;
                });
                return;
            };
            let peer = peer.unwrap_or_default();
            let receipt = ReceiptWrite {
                user: user.clone(),
                conversation: conversation.clone(),
                peer: peer.clone(),
                up_to,
                own_seq,
                peer_seq,
            };
            let written = shared.log.log_receipts(receipt, deadline);
            tokio::spawn(async move {
                let outcome = written.await;
                drop(guard);
                let answer = match outcome {
                    Ok(true) => {
                        let theirs = peer_conversation(&conversation, &user);
                        Ok(ReadOutcome {
                            unread,
                            receipts: Some((
                                receipt_event(own_seq, conversation, &user, up_to),
                                (peer, receipt_event(peer_seq, theirs, &user, up_to)),
                            )),
                        })
                    }
                    // An earlier attempt of this read logged the receipts already.
                    Ok(false) => Ok(ReadOutcome {
                        unread,
                        receipts: None,
                    }),
                    Err(LogError::Conflict { user: owner, seq }) => {
                        let job = Job::Read {
                            user,
                            conversation,
                            peer: Some(peer),
                            resolved: true,
                            up_to,
                            force: true,
                            reply,
                            attempt: attempt + 1,
                        };
                        return retry_after_conflict(&this, job, &owner, seq);
                    }
                    Err(LogError::Unavailable(e)) => Err(e),
                };
                let _ = reply.send(answer);
            });
        }
        (job @ (Job::Group { .. } | Job::GroupRead { .. }), answer) => {
            super::groups::dispatch(shared, job, answer, guard, deadline)
        }
        (job @ Job::Amend { .. }, answer) => {
            super::amend::dispatch(shared, job, answer, guard, deadline)
        }
        (job, _) => fail(
            shared,
            job,
            &StoreError::new("Redis answered another request"),
        ),
    }
}

/// The log refused a write at a seq it already had: `owner`'s counter is behind the log. Rebuild
/// them and allocate the request again.
pub(super) fn retry_after_conflict(shared: &Arc<Shared>, job: Job, owner: &str, seq: u64) {
    shared.suspect(owner);
    if job.attempt() >= MAX_ATTEMPTS {
        let e = StoreError(format!(
            "seq {seq} of {owner} kept being allocated twice; try again"
        ));
        return fail(shared, job, &e);
    }
    warn!(
        user = owner,
        seq, "the index allocated a seq the log already holds; rebuilding and retrying"
    );
    if let Err(mpsc::error::SendError(job)) = shared.retries.send(job) {
        fail(shared, job, &StoreError::new("the store has stopped"));
    }
}

/// Redis says the read changed nothing. If the log's read pointer is behind `up_to` and a message
/// from the peer lies in between, an earlier attempt changed Redis without logging its receipts:
/// allocate them now (`job` has `force` set). Otherwise answer.
async fn receipts_due_or_answer(shared: &Arc<Shared>, job: Job, unread: u64) {
    let due = match &job {
        Job::Read {
            user,
            conversation,
            peer: Some(_),
            up_to,
            ..
        } => receipts_due(shared, user, conversation, *up_to).await,
        _ => Ok(false),
    };
    match due {
        Ok(false) => {
            if let Job::Read { reply, .. } = job {
                let _ = reply.send(Ok(ReadOutcome {
                    unread,
                    receipts: None,
                }));
            }
        }
        Ok(true) if job.attempt() < MAX_ATTEMPTS => {
            if let Err(mpsc::error::SendError(job)) = shared.retries.send(job) {
                fail(shared, job, &StoreError::new("the store has stopped"));
            }
        }
        Ok(true) => fail(
            shared,
            job,
            &StoreError::new("the read's receipts could not be logged; try again"),
        ),
        Err(e) => fail(shared, job, &e),
    }
}

async fn receipts_due(
    shared: &Shared,
    user: &str,
    conversation: &str,
    up_to: u64,
) -> StoreResult<bool> {
    let pointer = shared.log.read_pointer(user, conversation).await?;
    if pointer >= up_to {
        return Ok(false);
    }
    let mut before = up_to.checked_add(1);
    for _ in 0..RECEIPT_CHECK_PAGES {
        let page = shared.log.history(user, conversation, before, 100).await?;
        for m in &page.messages {
            if m.msg_id <= pointer {
                return Ok(false);
            }
            if m.from != user {
                return Ok(true); // the peer's, or in a group another member's
            }
        }
        match page.messages.last() {
            Some(last) if page.has_more => before = Some(last.msg_id),
            _ => return Ok(false),
        }
    }
    Ok(true) // a long run of own messages: a receipt too many is harmless
}

/// Answers an append and every resend that waited for it.
fn finish_append(
    shared: &Shared,
    msg: &NewMessage,
    outcome: StoreResult<SendOutcome>,
    reply: Reply<SendOutcome>,
) {
    let waiters = shared
        .inflight
        .lock()
        .remove(&(msg.from.clone(), msg.client_msg_id.clone()))
        .unwrap_or_default();
    for waiter in waiters {
        let answer = match &outcome {
            Ok(SendOutcome::Fresh(a)) => Ok(SendOutcome::Duplicate(a.sent.clone())),
            Ok(SendOutcome::Duplicate(original)) => Ok(SendOutcome::Duplicate(original.clone())),
            Err(e) => Err(StoreError(e.0.clone())),
        };
        let _ = waiter.send(answer);
    }
    let _ = reply.send(outcome);
}

pub(super) fn fail(shared: &Shared, job: Job, e: &StoreError) {
    let e = StoreError(e.0.clone());
    match job {
        Job::Append { msg, reply, .. } => finish_append(shared, &msg, Err(e), reply),
        Job::Read { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Job::Group { entry, reply, .. } => {
            super::groups::finish_group(shared, &entry, Err(e), reply)
        }
        Job::GroupRead { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Job::Amend { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

/// An index update of something the log made durable; Redis answers `Some(user)` when that
/// user's keys are stale (nothing changed). Every update is idempotent.
pub(super) type IndexUpdate =
    Arc<dyn Fn(Arc<Shared>) -> BoxFuture<'static, StoreResult<Option<String>>> + Send + Sync>;

/// Indexes a durable message.
async fn index_message(shared: &Arc<Shared>, msg: &NewMessage, sent: &SentRecord) {
    let (msg, sent) = (msg.clone(), sent.clone());
    let msg_id = sent.msg_id;
    let update: IndexUpdate = Arc::new(move |shared: Arc<Shared>| {
        let (msg, sent) = (msg.clone(), sent.clone());
        Box::pin(async move {
            shared
                .index
                .apply_message(&msg.from, &msg.to, &msg.client_msg_id, &sent)
                .await
        })
    });
    index_durable(shared, msg_id, update).await;
}

/// Runs `update`; on failure the write stays durable and answered, and the update is retried in
/// the background until Redis takes it. The updates of one msgid land in call order: one that
/// finds an earlier update of its msgid still waiting for Redis waits behind it, so a recall's
/// update never lands before its message's (which would make the recalled message unread again).
pub(super) async fn index_durable(shared: &Arc<Shared>, msg_id: u64, update: IndexUpdate) {
    if let Some(waiting) = shared.unindexed.lock().get_mut(&msg_id) {
        waiting.push_back(update);
        return;
    }
    if try_index(shared, &update).await.is_ok() {
        return;
    }
    {
        let mut unindexed = shared.unindexed.lock();
        if let Some(waiting) = unindexed.get_mut(&msg_id) {
            // Another update of this msgid failed meanwhile and is being retried.
            waiting.push_back(update);
            return;
        }
        unindexed.insert(msg_id, std::collections::VecDeque::from([update]));
    }
    let this = shared.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            let Some(update) = this
                .unindexed
                .lock()
                .get(&msg_id)
                .and_then(|w| w.front().cloned())
            else {
                return;
            };
            match try_index(&this, &update).await {
                Ok(()) => {
                    let mut unindexed = this.unindexed.lock();
                    let Some(waiting) = unindexed.get_mut(&msg_id) else {
                        return;
                    };
                    waiting.pop_front();
                    if waiting.is_empty() {
                        unindexed.remove(&msg_id);
                        return;
                    }
                    wait = Duration::ZERO;
                }
                Err(e) => {
                    if wait >= Duration::from_secs(5) {
                        warn!(error = %e, msg_id, "indexing a logged message still fails");
                    }
                    wait = (wait * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                }
            }
        }
    });
}

async fn try_index(shared: &Arc<Shared>, update: &IndexUpdate) -> StoreResult<()> {
    for _ in 0..3 {
        match update(shared.clone()).await? {
            None => return Ok(()),
            // A rebuild from the log includes this write once it runs: it was logged first.
            Some(user) => {
                shared.unmark_fresh(&user);
                shared.ensure_fresh(&[user]).await?;
            }
        }
    }
    Err(super::fresh::stale_too_long())
}
