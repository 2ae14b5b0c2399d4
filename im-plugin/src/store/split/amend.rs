//! Recall and edit on the split store. An amend goes through the pipeline like a message: the
//! log plans it first (which of the streams that may hold the message do, and whether the amend
//! is allowed at all: [`AmendLog::plan_amend`]), the index allocates one seq in each holder's
//! stream (the group's log first, for a group message), the log writes the amend at those seqs
//! ([`AmendLog::log_amend`], which checks again and writes gaps if another amend got there
//! first), and a recall then leaves the unread sets of the holders in Redis.
//!
//! A rebuild of a user's index from the log skips recalled messages (`fresh.rs`), so the unread
//! counts stay right after Redis lost its data, whichever of the two updates Redis saw last.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::fresh::Writing;
use super::pipeline::{fail, index_durable, retry_after_conflict, IndexUpdate, Job};
use super::{answer, Shared, SplitStore};
use crate::store::extras::{Amend, AmendKind, AmendLog, AmendOutcome, AmendPlan};
use crate::store::log::LogError;
use crate::store::redis_index::Allocated;
use crate::store::{StoreError, StoreResult};

fn no_amend() -> StoreError {
    StoreError::new("this store's message log cannot recall or edit messages")
}

impl Shared {
    fn amend_log(&self) -> StoreResult<&dyn AmendLog> {
        self.log.amends().ok_or_else(no_amend)
    }
}

impl SplitStore {
    /// Whether this store's log can write recalls and edits.
    pub(super) fn can_amend(&self) -> bool {
        self.shared.log.amends().is_some()
    }

    /// Enqueues `amend` in call order, like an append.
    pub(super) fn enqueue_amend(
        &self,
        amend: Amend,
    ) -> BoxFuture<'static, StoreResult<AmendOutcome>> {
        let (reply, rx) = oneshot::channel();
        let queued = match self.can_amend() {
            true => self.enqueue(Job::Amend {
                amend: Box::new(amend),
                holders: None,
                reply,
                attempt: 0,
            }),
            false => Err(no_amend()),
        };
        Box::pin(async move {
            queued?;
            answer(rx).await
        })
    }
}

/// Before allocation: the log names the streams that hold each amend's message, or answers the
/// amend at once (not found, not yours, too old, already recalled, unchanged), spending no seq.
pub(super) async fn prepare(shared: &Arc<Shared>, jobs: Vec<Job>) -> Vec<Job> {
    let mut kept = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job {
            Job::Amend {
                amend,
                holders: None,
                reply,
                attempt,
            } => {
                let plan = match shared.amend_log() {
                    Ok(log) => log.plan_amend(&amend).await,
                    Err(e) => Err(e),
                };
                match plan {
                    Ok(AmendPlan::Write(holders)) => kept.push(Job::Amend {
                        amend,
                        holders: Some(holders),
                        reply,
                        attempt,
                    }),
                    Ok(AmendPlan::Answer(outcome)) => {
                        let _ = reply.send(Ok(outcome));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            other => kept.push(other),
        }
    }
    kept
}

/// Starts the log write of an allocated amend and finishes it on a task of its own.
pub(super) fn dispatch(
    shared: &Arc<Shared>,
    job: Job,
    answer: Allocated,
    guard: Writing,
    deadline: Instant,
) {
    let log = match shared.amend_log() {
        Ok(log) => log,
        Err(e) => return fail(shared, job, &e),
    };
    let (amend, holders, reply, attempt, seqs) = match (job, answer) {
        (
            Job::Amend {
                amend,
                holders: Some(holders),
                reply,
                attempt,
            },
            Allocated::Group(seqs),
        ) if seqs.len() == holders.len() => (amend, holders, reply, attempt, seqs),
        (job, _) => {
            return fail(
                shared,
                job,
                &StoreError::new("Redis answered another request"),
            )
        }
    };
    let given = holders.iter().cloned().zip(seqs).collect();
    let written = log.log_amend((*amend).clone(), given, deadline);
    let this = shared.clone();
    tokio::spawn(async move {
        let outcome = written.await;
        drop(guard);
        let outcome = match outcome {
            Ok(o) => o,
            Err(LogError::Conflict { user, seq }) => {
                let job = Job::Amend {
                    amend,
                    holders: Some(holders),
                    reply,
                    attempt: attempt + 1,
                };
                return retry_after_conflict(&this, job, &user, seq);
            }
            Err(LogError::Unavailable(e)) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if matches!(outcome, AmendOutcome::Done(_)) && amend.kind == AmendKind::Recall {
            index_recall(&this, &amend, &holders).await;
        }
        let _ = reply.send(Ok(outcome));
    });
}

/// A durable recall leaves the unread sets of the users holding the message.
async fn index_recall(shared: &Arc<Shared>, amend: &Amend, holders: &[String]) {
    // A holder the caller did not name (found by the log: a group member who left since, a
    // large group's mention) sees the conversation as the group's log does.
    let copies: Vec<(String, String)> = holders
        .iter()
        .filter(|h| !h.starts_with('#'))
        .map(|h| {
            let named = std::iter::once(&amend.home)
                .chain(&amend.others)
                .find(|t| t.owner == *h);
            let conversation = named.map_or(&amend.home.conversation, |t| &t.conversation);
            (h.clone(), conversation.clone())
        })
        .collect();
    if copies.is_empty() {
        return;
    }
    let msg_id = amend.msg_id;
    let update: IndexUpdate = Arc::new(move |shared: Arc<Shared>| {
        let copies = copies.clone();
        Box::pin(async move { shared.index.apply_recall(&copies, msg_id).await })
    });
    index_durable(shared, msg_id, update).await;
}
