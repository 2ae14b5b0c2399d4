//! Groups on the split store: a group entry is allocated like a message (one seq in the group's
//! log, `#g:<id>`, and one in each copy owner's stream, in one ALLOC call, deduped through the
//! cache like a send), written by the log at those seqs ([`GroupLog::log_group`]) and then
//! indexed (recency and unread of each copy, the dedup cache entry). A large group's read
//! allocates the reader's receipt seq and lets the log move the position. Everything the index
//! does not keep (members, group heads, read positions, mentions, the group's log) is read from
//! the log.
//!
//! The group log's counter is rebuilt like a user's (above the log's highest seq), so after a
//! Redis restart group seqs continue above the highest durable one.
//!
//! Several nodes: the IM layer keeps every group's members in memory per node; on a shared log
//! (`redis+scylla`) each entry's allocation checks that the node planned it from the group's
//! latest membership (`fence.rs`).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::fresh::Writing;
use super::pipeline::{fail, index_durable, retry_after_conflict, IndexUpdate, Job};
use super::{answer, Reply, Shared, SplitStore};
use crate::conversation::Conversation;
use crate::store::groups::{
    log_owner, GroupAppend, GroupEntry, GroupOutcome, GroupReadOutcome, GroupRecord, GroupStore,
    LargeGroupView,
};
use crate::store::log::{GroupLog, GroupSeqs, LogError};
use crate::store::redis_index::Allocated;
use crate::store::{HistoryPage, StoreError, StoreResult, StreamPage};

/// Messages looked at to find the sender of the newest one a small-group read covers.
const RECEIPT_LOOKUP: usize = 20;

fn no_groups() -> StoreError {
    StoreError::new("this store's log keeps no groups")
}

impl Shared {
    pub(super) fn group_log(&self) -> StoreResult<&dyn GroupLog> {
        self.log.groups().ok_or_else(no_groups)
    }
}

/// Before allocation: a small-group read learns who gets its receipt (the sender of the newest
/// message from another member the read covers); a large-group read that cannot move the
/// reader's position is answered at once (no seq is spent on it).
pub(super) async fn prepare_reads(shared: &Arc<Shared>, jobs: Vec<Job>) -> Vec<Job> {
    let mut kept = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job {
            Job::Read {
                user,
                conversation,
                resolved: false,
                up_to,
                force,
                reply,
                attempt,
                ..
            } => {
                let peer = match newest_sender(shared, &user, &conversation, up_to).await {
                    Ok(peer) => peer,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                kept.push(Job::Read {
                    user,
                    conversation,
                    peer,
                    resolved: true,
                    up_to,
                    force,
                    reply,
                    attempt,
                });
            }
            Job::GroupRead {
                user,
                group,
                up_to,
                reply,
                attempt,
            } => match read_moves(shared, &user, &group, up_to).await {
                Ok(None) => kept.push(Job::GroupRead {
                    user,
                    group,
                    up_to,
                    reply,
                    attempt,
                }),
                Ok(Some(unread)) => {
                    let _ = reply.send(Ok(GroupReadOutcome {
                        unread,
                        own_receipt: None,
                    }));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            other => kept.push(other),
        }
    }
    kept
}

/// The sender of the newest message at or below `up_to` in `user`'s copy of `conversation` that
/// is not `user`'s own.
async fn newest_sender(
    shared: &Shared,
    user: &str,
    conversation: &str,
    up_to: u64,
) -> StoreResult<Option<String>> {
    let page = shared
        .log
        .history(user, conversation, up_to.checked_add(1), RECEIPT_LOOKUP)
        .await?;
    Ok(page
        .messages
        .into_iter()
        .find(|m| m.from != user)
        .map(|m| m.from))
}

/// `None` if reading large group `group` up to `up_to` may move `user`'s position; else the
/// unread count as it stays.
async fn read_moves(
    shared: &Shared,
    user: &str,
    group: &str,
    up_to: u64,
) -> StoreResult<Option<u64>> {
    let (position, unread) = shared.group_log()?.read_position(user, group).await?;
    Ok((up_to <= position).then_some(unread))
}

/// A group entry with a dedup key whose original is still in flight on this node waits for it
/// (`None`: it is answered with the original's outcome), as a resent message does; otherwise
/// it goes on (`Some`) and is recorded as in flight. Without this a resend would be allocated
/// seqs in every member's stream that the log then fills with gaps.
pub(super) fn wait_for_inflight(
    shared: &Shared,
    entry: GroupAppend,
    reply: Reply<GroupOutcome>,
) -> Option<Job> {
    if let Some(key) = entry.dedup_key() {
        let key = (key.owner, key.client_msg_id);
        let mut inflight = shared.group_inflight.lock();
        match inflight.get_mut(&key) {
            Some(waiters) => {
                waiters.push(reply);
                return None;
            }
            None => {
                inflight.insert(key, Vec::new());
            }
        }
    }
    Some(Job::Group {
        entry,
        reply,
        attempt: 0,
    })
}

/// Answers a group entry and every resend that waited for it.
pub(super) fn finish_group(
    shared: &Shared,
    entry: &GroupAppend,
    outcome: StoreResult<GroupOutcome>,
    reply: Reply<GroupOutcome>,
) {
    let waiters = match entry.dedup_key() {
        Some(k) => shared
            .group_inflight
            .lock()
            .remove(&(k.owner, k.client_msg_id))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    for waiter in waiters {
        let answer = match &outcome {
            Ok(GroupOutcome::Fresh(a)) => Ok(GroupOutcome::Duplicate(a.sent.clone())),
            Ok(GroupOutcome::Duplicate(original)) => Ok(GroupOutcome::Duplicate(original.clone())),
            Err(e) => Err(StoreError(e.0.clone())),
        };
        let _ = waiter.send(answer);
    }
    let _ = reply.send(outcome);
}

/// Starts the log write of an allocated group job and finishes it on a task of its own.
pub(super) fn dispatch(
    shared: &Arc<Shared>,
    job: Job,
    answer: Allocated,
    guard: Writing,
    deadline: Instant,
) {
    let log = match shared.group_log() {
        Ok(log) => log,
        Err(e) => return fail(shared, job, &e),
    };
    match (job, answer) {
        (Job::Group { entry, reply, .. }, Allocated::Duplicate(original)) => {
            finish_group(shared, &entry, Ok(GroupOutcome::Duplicate(original)), reply);
        }
        (Job::Group { entry, reply, .. }, Allocated::Fenced(state)) => {
            // Planned from another membership than the group's latest: nothing was allocated.
            drop(guard);
            let this = shared.clone();
            tokio::spawn(async move {
                let e = super::fence::fenced(&this, &entry.group, state).await;
                finish_group(&this, &entry, Err(e), reply);
            });
        }
        (
            Job::Group {
                entry,
                reply,
                attempt,
            },
            Allocated::Group(seqs),
        ) if seqs.len() == entry.copies.len() + 1 => {
            let seqs = GroupSeqs {
                group_seq: seqs[0],
                copies: seqs[1..].to_vec(),
            };
            let written = log.log_group(entry.clone(), seqs, deadline);
            let this = shared.clone();
            tokio::spawn(async move {
                let outcome = written.await;
                drop(guard);
                let outcome = match outcome {
                    Ok(o) => o,
                    Err(LogError::Conflict { user, seq }) => {
                        // Nothing of it was applied: a change gives its version back.
                        super::fence::release_change(&this, &entry).await;
                        let job = Job::Group {
                            entry,
                            reply,
                            attempt: attempt + 1,
                        };
                        return retry_after_conflict(&this, job, &user, seq);
                    }
                    Err(LogError::Unavailable(e)) => {
                        if this.log.single_writer() {
                            // Refused whole by the only writer: it never lands.
                            super::fence::release_change(&this, &entry).await;
                        }
                        return finish_group(&this, &entry, Err(e), reply);
                    }
                };
                if let GroupOutcome::Fresh(a) = &outcome {
                    index_group(&this, &entry, &a.sent).await;
                }
                finish_group(&this, &entry, Ok(outcome), reply);
            });
        }
        (
            Job::GroupRead {
                user,
                group,
                up_to,
                reply,
                attempt,
            },
            Allocated::Group(seqs),
        ) if seqs.len() == 1 => {
            let written = log.log_group_read(&user, &group, up_to, seqs[0], deadline);
            let this = shared.clone();
            tokio::spawn(async move {
                let outcome = written.await;
                drop(guard);
                match outcome {
                    Err(LogError::Conflict { user: owner, seq }) => {
                        let job = Job::GroupRead {
                            user,
                            group,
                            up_to,
                            reply,
                            attempt: attempt + 1,
                        };
                        retry_after_conflict(&this, job, &owner, seq);
                    }
                    other => {
                        let _ = reply.send(other.map_err(|e| match e {
                            LogError::Unavailable(e) => e,
                            conflict => StoreError::new(conflict),
                        }));
                    }
                }
            });
        }
        (job, _) => fail(
            shared,
            job,
            &StoreError::new("Redis answered another request"),
        ),
    }
}

/// Indexes a durable group entry: each message copy's recency and unread as its flags say, and
/// the sender's dedup cache entry.
async fn index_group(shared: &Arc<Shared>, entry: &GroupAppend, sent: &crate::store::SentRecord) {
    let is_message = matches!(entry.entry, GroupEntry::Message(_));
    let message = entry.dedup_key().map(|d| (d.owner, d.client_msg_id));
    let copies: Vec<(String, bool, bool)> = entry
        .copies
        .iter()
        .map(|c| {
            (
                c.owner.clone(),
                c.recent && is_message,
                c.unread && is_message,
            )
        })
        .collect();
    let conversation = Conversation::Group(entry.group.clone()).to_string();
    let (msg_id, ts, sent) = (entry.msg_id, entry.ts, sent.clone());
    let update: IndexUpdate = Arc::new(move |shared: Arc<Shared>| {
        let (copies, message, sent) = (copies.clone(), message.clone(), sent.clone());
        let conversation = conversation.clone();
        Box::pin(async move {
            let dedup = message
                .as_ref()
                .map(|(from, id)| (from.as_str(), id.as_str(), &sent));
            shared
                .index
                .apply_group(&conversation, &copies, dedup, msg_id, ts)
                .await
        })
    });
    index_durable(shared, msg_id, update).await;
}

#[async_trait]
impl GroupStore for SplitStore {
    /// Also on a log shared by several nodes (ScyllaDB): each node's in-memory membership is
    /// checked against the group's latest change by the membership fence (`fence.rs`).
    fn has_groups(&self) -> bool {
        self.shared.log.groups().is_some()
    }

    fn append_group(&self, entry: GroupAppend) -> BoxFuture<'static, StoreResult<GroupOutcome>> {
        let (reply, rx) = oneshot::channel();
        let queued = match self.has_groups() {
            true => self.enqueue(Job::Group {
                entry,
                reply,
                attempt: 0,
            }),
            false => Err(no_groups()),
        };
        Box::pin(async move {
            queued?;
            answer(rx).await
        })
    }

    async fn group_ids(&self) -> StoreResult<Vec<String>> {
        self.shared.group_log()?.group_ids().await
    }

    async fn load_group(&self, group: &str) -> StoreResult<Option<GroupRecord>> {
        self.shared.group_log()?.load_group(group).await
    }

    /// A node that claimed its log for itself (`redis+embedded`) is the only one changing its
    /// groups, so its registry is never behind; any other split store (a shared log, or test
    /// stores with no claims) may be.
    fn groups_shared(&self) -> bool {
        self.has_groups() && !self.shared.one_node()
    }

    async fn group_version(&self, group: &str) -> StoreResult<Option<u64>> {
        let meta = self.shared.group_log()?.group_meta(group).await?;
        Ok(meta.map(|m| m.version_id))
    }

    async fn user_groups(&self, user: &str) -> StoreResult<Vec<(String, bool)>> {
        self.shared.group_log()?.user_groups(user).await
    }

    async fn large_group_view(&self, user: &str, group: &str) -> StoreResult<LargeGroupView> {
        self.shared.group_log()?.large_group_view(user, group).await
    }

    fn mark_group_read(
        &self,
        user: &str,
        group: &str,
        up_to: u64,
    ) -> BoxFuture<'static, StoreResult<GroupReadOutcome>> {
        let (reply, rx) = oneshot::channel();
        let queued = match self.has_groups() {
            true => self.enqueue(Job::GroupRead {
                user: user.to_string(),
                group: group.to_string(),
                up_to,
                reply,
                attempt: 0,
            }),
            false => Err(no_groups()),
        };
        Box::pin(async move {
            queued?;
            answer(rx).await
        })
    }

    /// The group's log is a stream like a user's: read with its holes settled into gaps, each
    /// carrying its group seq.
    async fn group_log(
        &self,
        group: &str,
        after_group_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        self.shared.group_log()?;
        let mut page = self
            .shared
            .read_stream(&log_owner(group), after_group_seq, limit)
            .await?;
        // A gap in the group's log is a group position too: a member pages on from it.
        for e in &mut page.events {
            e.group_seq = e.seq;
        }
        Ok(page)
    }

    async fn group_history(
        &self,
        group: &str,
        before: Option<u64>,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        self.shared
            .group_log()?
            .group_history(group, before, since, limit)
            .await
    }
}
