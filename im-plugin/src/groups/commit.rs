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
use mqim_schemas::v1::Event;

use crate::delivery::{Batch, Delivery, FanOut};
use crate::error::ImError;
use crate::store::groups::{GroupAppend, GroupOutcome, GroupRecord};
use crate::ImPlugin;

/// What a rule decided: the entry to append and, for a change, the group after it.
pub struct Planned {
    pub append: GroupAppend,
    pub after: Option<Arc<GroupRecord>>,
}

/// Commits one entry of group `group` (`None`: a new group, whose id the plan takes from the
/// msgid). `plan` runs under the order lock with the group as of the writes enqueued so far, the
/// entry's msgid and time; an error from it is the request's answer and nothing is written.
/// `requester` is the connection that asked; it is left out of the live copy of its own
/// message (its reply carries the seq), not of a change's.
pub fn commit<F>(
    plugin: &Arc<ImPlugin>,
    group: Option<&str>,
    requester: u64,
    plan: F,
) -> BoxFuture<'static, Result<GroupOutcome, ImError>>
where
    F: FnOnce(Option<Arc<GroupRecord>>, u64, i64) -> Result<Planned, ImError>,
{
    match enqueue(plugin, group, requester, plan) {
        Ok(task) => crate::ops::joined(task),
        Err(e) => futures::future::ready(Err(e)).boxed(),
    }
}

/// The part of [`commit`] that runs at the call: everything up to the spawned wait.
fn enqueue<F>(
    plugin: &Arc<ImPlugin>,
    group: Option<&str>,
    requester: u64,
    plan: F,
) -> Result<tokio::task::JoinHandle<Result<GroupOutcome, ImError>>, ImError>
where
    F: FnOnce(Option<Arc<GroupRecord>>, u64, i64) -> Result<Planned, ImError>,
{
    plugin.groups.check_enabled()?;
    let (write, slot, planned_group, changed, members, joined) = {
        let _order = plugin.order.lock();
        let current = match group {
            Some(id) => Some(plugin.groups.get(id)?),
            None => None,
        };
        let (msg_id, ts) = plugin.ids.next();
        let planned = plan(current.clone(), msg_id, ts)?;
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
        (
            write,
            plugin.deliveries.reserve(),
            id,
            changed,
            members,
            joined,
        )
    };
    let this = plugin.clone();
    let task = tokio::spawn(async move {
        let outcome = match write.await {
            Ok(o) => o,
            Err(e) => {
                if changed {
                    this.groups.reload(this.store.clone(), planned_group);
                }
                return Err(ImError::from(e));
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
    });
    Ok(task)
}
