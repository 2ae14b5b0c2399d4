//! The one sequence every group entry goes through, messages and membership changes alike:
//! under the order lock, read the group as of the writes enqueued so far, plan the entry (the
//! caller's rules decide its copies and the group after it), assign its msgid, enqueue the
//! store write, take a delivery slot and install the group's new state; then, on a task of its
//! own (a requester that disconnects cannot leave a committed entry undelivered), wait for the
//! commit and hand its copies to live delivery: each copy to its owner's devices, and in a large
//! group one live event (no stream seq) to every other online member through the fan-out worker.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use mqim_schemas::v1::{ErrorCode, Event};

use crate::delivery::{Batch, Delivery, FanOut};
use crate::error::ImError;
use crate::store::groups::{is_stale_membership, GroupAppend, GroupOutcome, GroupRecord};
use crate::store::StoreResult;
use crate::ImPlugin;

/// What a rule decided: the entry to append and, for a change, the group after it.
pub struct Planned {
    pub append: GroupAppend,
    pub after: Option<Arc<GroupRecord>>,
}

/// Times an entry is planned again after the store found the membership it was planned from
/// stale (another node changed the group): each retry reloads the group from the store first.
const FENCE_RETRIES: u32 = 3;

/// Commits one entry of group `group` (`None`: a new group, whose id the plan takes from the
/// msgid). `plan` runs under the order lock with the group as of the writes enqueued so far, the
/// entry's msgid and time; an error from it is the request's answer and nothing is written.
/// `requester` is the connection that asked; it is left out of the live copy of its own
/// message (its reply carries the seq), not of a change's.
///
/// If the store refuses the entry because the group changed on another node
/// ([`is_stale_membership`]: the entry's [`GroupAppend::basis`] is not the group's latest
/// change), the group is reloaded from the store and `plan` runs again, up to
/// [`FENCE_RETRIES`] times; then the answer is UNAVAILABLE (a client's resend is deduped).
pub fn commit<F>(
    plugin: &Arc<ImPlugin>,
    group: Option<&str>,
    requester: u64,
    plan: F,
) -> BoxFuture<'static, Result<GroupOutcome, ImError>>
where
    F: FnOnce(Option<Arc<GroupRecord>>, u64, i64) -> Result<Planned, ImError>
        + Clone
        + Send
        + 'static,
{
    // The first attempt is enqueued at the call, so calls keep their order.
    let first = match (enqueue(plugin, group, plan.clone()), group) {
        (Ok(e), _) => e,
        // Refused from this node's copy of the group, which may be behind the store (another
        // node added this member, or created the group): look at the stored version first.
        (Err(e), Some(id)) if plugin.store.groups_shared() && may_be_stale(&e) => {
            return recheck(plugin, id, requester, plan, e);
        }
        (Err(e), _) => return futures::future::ready(Err(e)).boxed(),
    };
    run(plugin, group, requester, plan, first)
}

/// Whether a rule's refusal may come from a copy of the group that is behind the store.
fn may_be_stale(e: &ImError) -> bool {
    matches!(
        e.code,
        ErrorCode::NotFound | ErrorCode::PermissionDenied | ErrorCode::FailedPrecondition
    )
}

/// A refusal made from this node's copy of group `id`: if the store's version of the group is
/// another, reload it and plan again; else the refusal stands.
fn recheck<F>(
    plugin: &Arc<ImPlugin>,
    id: &str,
    requester: u64,
    plan: F,
    refused: ImError,
) -> BoxFuture<'static, Result<GroupOutcome, ImError>>
where
    F: FnOnce(Option<Arc<GroupRecord>>, u64, i64) -> Result<Planned, ImError>
        + Clone
        + Send
        + 'static,
{
    let (this, id) = (plugin.clone(), id.to_string());
    async move {
        let stored = this.store.group_version(&id).await.map_err(ImError::from)?;
        if stored.is_none() || stored == this.groups.version_of(&id) {
            return Err(refused);
        }
        this.groups.refresh(&this.store, &id).await?;
        let first = enqueue(&this, Some(&id), plan.clone())?;
        run(&this, Some(&id), requester, plan, first).await
    }
    .boxed()
}

/// Waits for an enqueued attempt and plans again while the store finds it stale.
fn run<F>(
    plugin: &Arc<ImPlugin>,
    group: Option<&str>,
    requester: u64,
    plan: F,
    first: Enqueued,
) -> BoxFuture<'static, Result<GroupOutcome, ImError>>
where
    F: FnOnce(Option<Arc<GroupRecord>>, u64, i64) -> Result<Planned, ImError>
        + Clone
        + Send
        + 'static,
{
    let (this, group) = (plugin.clone(), group.map(str::to_string));
    let task = tokio::spawn(async move {
        let mut attempt = first;
        let mut retries = 0;
        loop {
            let id = attempt.group.clone();
            match finish(&this, attempt, requester).await {
                Err(Finish::Stale) if retries < FENCE_RETRIES => {
                    retries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 << retries)).await;
                    this.groups.refresh(&this.store, &id).await?;
                    attempt = enqueue(&this, group.as_deref(), plan.clone())?;
                }
                Err(Finish::Stale) => {
                    return Err(ImError::unavailable(
                        "the group was changed on another node meanwhile; try again",
                    ))
                }
                Err(Finish::Failed(e)) => return Err(e),
                Ok(outcome) => return Ok(outcome),
            }
        }
    });
    crate::ops::joined(task)
}

/// One attempt, as enqueued under the order lock.
struct Enqueued {
    write: BoxFuture<'static, StoreResult<GroupOutcome>>,
    slot: crate::delivery::Slot,
    group: String,
    changed: bool,
    members: Option<Arc<GroupRecord>>,
    joined: Vec<String>,
}

/// How an attempt ended without an outcome.
enum Finish {
    /// The store refused it for a stale membership: reload and plan again.
    Stale,
    Failed(ImError),
}

/// The part of [`commit`] that runs under the order lock: plan, enqueue, take a delivery slot,
/// install the group's new state.
fn enqueue<F>(plugin: &Arc<ImPlugin>, group: Option<&str>, plan: F) -> Result<Enqueued, ImError>
where
    F: FnOnce(Option<Arc<GroupRecord>>, u64, i64) -> Result<Planned, ImError>,
{
    plugin.groups.check_enabled()?;
    let _order = plugin.order.lock();
    let current = match group {
        Some(id) => Some(plugin.groups.get(id)?),
        None => None,
    };
    let (msg_id, ts) = plugin.ids.next();
    let mut planned = plan(current.clone(), msg_id, ts)?;
    // The fence: the entry names the membership it was planned from, and a change the one it
    // makes (its own msgid), in the store's row and in this node's copy alike.
    planned.append.basis = current.as_ref().map_or(0, |g| g.meta.version_id);
    if let Some(w) = planned.append.membership.as_mut() {
        w.meta.version_id = msg_id;
    }
    if let Some(after) = planned.after.as_mut() {
        Arc::make_mut(after).meta.version_id = msg_id;
    }
    let id = planned.append.group.clone();
    let large = planned.append.large;
    // A large group's other members hear of the entry live: everyone who was a member
    // before it (so a removal or a disband reaches them too), or everyone after a create.
    let joined: Vec<String> = planned
        .append
        .membership
        .iter()
        .flat_map(|w| w.upserts.iter().filter(|u| u.joins).map(|u| u.user.clone()))
        .collect();
    let members = current.or_else(|| planned.after.clone()).filter(|_| large);
    let changed = planned.after.is_some();
    let write = plugin.store.append_group(planned.append);
    if let Some(after) = planned.after {
        plugin.groups.set(&id, after);
    }
    Ok(Enqueued {
        write,
        slot: plugin.deliveries.reserve(),
        group: id,
        changed,
        members,
        joined,
    })
}

/// Waits for an attempt's commit and hands its copies to live delivery.
async fn finish(
    this: &Arc<ImPlugin>,
    attempt: Enqueued,
    requester: u64,
) -> Result<GroupOutcome, Finish> {
    let Enqueued {
        write,
        slot,
        group: planned_group,
        changed,
        members,
        joined,
    } = attempt;
    let outcome = match write.await {
        Ok(o) => o,
        Err(e) if is_stale_membership(&e) => return Err(Finish::Stale),
        Err(e) => {
            if changed {
                this.groups.reload(this.store.clone(), planned_group);
            }
            return Err(Finish::Failed(ImError::from(e)));
        }
    };
    if changed && matches!(outcome, GroupOutcome::Duplicate(_)) {
        // A retried creation: the group installed at enqueue was never stored.
        this.groups
            .reload(this.store.clone(), planned_group.clone());
    }
    if let GroupOutcome::Fresh(a) = &outcome {
        if !joined.is_empty() {
            this.groups
                .joined_at_seq(&planned_group, &joined, a.log_event.seq);
        }
        let sender = match a.log_event.body.as_ref() {
            Some(mqim_schemas::v1::event::Body::Message(m)) => Some(m.from.clone()),
            _ => None,
        };
        let each: Vec<Delivery> = a
            .copies
            .iter()
            .map(|(owner, event)| Delivery {
                exclude_conn: (sender.as_deref() == Some(owner)).then_some(requester),
                user: owner.clone(),
                event: event.clone(),
            })
            .collect();
        let fan_out = members.map(|members| FanOut {
            skip: a.copies.iter().map(|(o, _)| o.clone()).collect(),
            members,
            event: Event {
                seq: 0,
                ..a.log_event.clone()
            },
            exclude_conn: sender.is_some().then_some(requester),
        });
        let _ = slot.send(Batch { each, fan_out });
    }
    Ok(outcome)
}
