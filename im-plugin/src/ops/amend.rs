//! The sequence `recall` and `edit` share: under the order lock, decide who may amend and which
//! streams can hold the message (the peer's; in a small group every member's; a group's log),
//! take the amend's time from the msgid generator, enqueue the store write and take a delivery
//! slot; then, on a task of its own, wait for the commit and deliver the events it appended.
//!
//! The requesting device gets its own event too (the reply has no seq). In a large group the
//! log's event goes live to the online members, as a large group's messages do; the store
//! finds the members whose streams hold a copy (the mentioned ones) itself.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, ErrorCode, Event};

use super::OpFuture;
use crate::conversation::Conversation;
use crate::delivery::{Batch, Delivery, FanOut};
use crate::error::ImError;
use crate::groups::policy;
use crate::presence::DeviceLink;
use crate::store::extras::{Amend, AmendKind, AmendOutcome, AmendTarget};
use crate::store::groups::{log_owner, Role};
use crate::ImPlugin;

/// Starts an amend of `msg_id` in `conversation` by `link`'s user; `answer` builds the reply
/// from the amend's time.
pub(super) fn start(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    conversation: &str,
    msg_id: u64,
    kind: AmendKind,
    answer: fn(i64) -> reply::Result,
) -> OpFuture {
    let planned = {
        let conversation = conversation.to_string();
        move |p: &Arc<ImPlugin>, l: &Arc<dyn DeviceLink>| match enqueue(
            p,
            l.user(),
            &conversation,
            msg_id,
            kind,
            answer,
        ) {
            Ok(task) => super::joined(task),
            Err(e) => futures::future::ready(Err(e)).boxed(),
        }
    };
    super::with_current_group(plugin, link, conversation, planned)
}

fn enqueue(
    plugin: &Arc<ImPlugin>,
    me: &str,
    conversation: &str,
    msg_id: u64,
    kind: AmendKind,
    answer: fn(i64) -> reply::Result,
) -> Result<tokio::task::JoinHandle<Result<reply::Result, ImError>>, ImError> {
    if !plugin.store.has_amend() {
        return Err(ImError::new(
            ErrorCode::FailedPrecondition,
            "this store cannot recall or edit messages",
        ));
    }
    if msg_id == 0 {
        return Err(ImError::invalid("`msgId` is required"));
    }
    let conversation = super::parse_any_conversation(conversation)?;
    super::send::check_change_rate(plugin, me)?;
    let recall = kind == AmendKind::Recall;
    let window_secs = match recall {
        true => plugin.cfg.recall_window_secs,
        false => plugin.cfg.edit_window_secs,
    };
    let (write, slot, fan_out, ts) = {
        let _order = plugin.order.lock();
        let (home, others, group) = match &conversation {
            Conversation::User(peer) => {
                let home = AmendTarget {
                    owner: me.to_string(),
                    conversation: Conversation::with_user(peer),
                };
                let others = match peer == me {
                    true => Vec::new(),
                    false => vec![AmendTarget {
                        owner: peer.clone(),
                        conversation: Conversation::with_user(me),
                    }],
                };
                (home, others, None)
            }
            Conversation::Group(id) => {
                let g = plugin.groups.for_member(id, me)?;
                let role = policy::role_of(&g, me)?;
                let seen_as = conversation.to_string();
                let home = AmendTarget {
                    owner: log_owner(id),
                    conversation: seen_as.clone(),
                };
                let others = match g.meta.large {
                    true => Vec::new(),
                    false => g
                        .members
                        .keys()
                        .map(|m| AmendTarget {
                            owner: m.clone(),
                            conversation: seen_as.clone(),
                        })
                        .collect(),
                };
                (home, others, Some((g, role >= Role::Admin)))
            }
        };
        let (_, ts) = plugin.ids.next();
        let privileged = group.as_ref().is_some_and(|(_, admin)| *admin);
        let amend = Amend {
            by: me.to_string(),
            msg_id,
            kind,
            home,
            others,
            group_log: group.is_some(),
            privileged,
            not_before_ms: ts.saturating_sub((window_secs as i64).saturating_mul(1000)),
            ts,
        };
        let fan_out = group.map(|(g, _)| g).filter(|g| g.meta.large);
        (
            plugin.store.amend(amend),
            plugin.deliveries.reserve(),
            fan_out,
            ts,
        )
    };
    let what = if recall { "recall" } else { "edit" };
    Ok(tokio::spawn(async move {
        let events = match write.await? {
            AmendOutcome::Done(events) => events,
            // An edit to the content it has: its editedAt is that of the edit that set it.
            AmendOutcome::Unchanged { edited_at } => return Ok(answer(edited_at)),
            AmendOutcome::NotFound => {
                return Err(ImError::new(
                    ErrorCode::NotFound,
                    "no message with this msgId in this conversation",
                ))
            }
            AmendOutcome::NotYours => {
                return Err(policy::denied(&format!(
                    "you may only {what} your own messages"
                )))
            }
            AmendOutcome::TooOld => {
                return Err(policy::denied(&format!(
                    "the message is older than the {what} window ({window_secs} s)"
                )))
            }
            AmendOutcome::Recalled => return Err(policy::precondition("the message was recalled")),
        };
        // The group log's own event (its owner is `#g:..`) reaches members live only in a
        // large group, through the fan-out; members' copies go to their owners.
        let log_event = events
            .first()
            .filter(|(owner, _)| owner.starts_with('#'))
            .map(|(_, e)| e.clone());
        let each: Vec<Delivery> = events
            .iter()
            .filter(|(owner, _)| !owner.starts_with('#'))
            .map(|(owner, event)| Delivery {
                user: owner.clone(),
                event: event.clone(),
                exclude_conn: None,
            })
            .collect();
        let fan_out = match (fan_out, log_event) {
            (Some(members), Some(event)) => Some(FanOut {
                skip: each.iter().map(|d| d.user.clone()).collect(),
                members,
                event: Event { seq: 0, ..event },
                exclude_conn: None,
            }),
            _ => None,
        };
        let _ = slot.send(Batch { each, fan_out });
        Ok(answer(ts))
    }))
}
