//! `send` to a group (`to: "g:<id>"`): a member's message becomes the next entry of the group's
//! log and, in a small group, the next event of every member's stream (write diffusion); in a
//! large group it is stored once, plus a copy in each mentioned member's stream (read
//! diffusion). A non-member, a removed member or anyone after a disband gets PERMISSION_DENIED
//! and nothing is stored. Resend dedup is the same as for one-to-one messages.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::SendRequest;

use super::send::{check_content, check_rate, sent};
use super::{parse_group, OpFuture};
use crate::error::ImError;
use crate::groups::commit::{commit, Planned};
use crate::groups::policy;
use crate::presence::DeviceLink;
use crate::store::groups::{Copy, GroupAppend, GroupEntry, GroupMessage, GroupOutcome};
use crate::ImPlugin;

/// Most members one message may mention by name.
const MAX_MENTIONS: usize = 100;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: SendRequest) -> OpFuture {
    let checked = parse_group(&req.to)
        .map_err(|_| ImError::invalid("`to` must be `u:<user id>` or `g:<group id>`"))
        .and_then(|g| check_content(plugin, &req).map(|()| g))
        .and_then(|g| match req.mentions.len() {
            n if n > MAX_MENTIONS => Err(ImError::invalid(format!(
                "at most {MAX_MENTIONS} mentions (use mentionAll)"
            ))),
            _ => Ok(g),
        })
        .and_then(|g| check_rate(plugin, link.user()).map(|()| g));
    let (group, text) = match checked.and_then(|g| Ok((g, plugin.moderation.apply_text(req.text)?)))
    {
        Ok(v) => v,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    let from = link.user().to_string();
    let message = GroupMessage {
        from: from.clone(),
        client_msg_id: req.client_msg_id,
        text,
        body: req.body,
        kind: req.r#type,
        mentions: Vec::new(),
        mention_all: req.mention_all,
    };
    let mentions: BTreeSet<String> = req.mentions.into_iter().collect();
    let target = group.clone();
    let committed = commit(
        plugin,
        Some(&target),
        link.conn_id(),
        move |g, msg_id, ts| {
            let g = g.ok_or_else(|| ImError::invalid("no group"))?;
            policy::role_of(&g, &from)?;
            if message.mention_all {
                policy::may_administer(&g, &from)?;
            }
            // Only members can be mentioned; the sender mentioning themselves changes nothing.
            let mentioned: Vec<String> = mentions
                .into_iter()
                .filter(|m| *m != from && g.members.contains_key(m))
                .collect();
            let copies = if g.meta.large {
                // A large group's message is stored once; a mention is also a copy in the member's
                // own stream, so a device that syncs only its stream (and the push bridge) sees it.
                mentioned
                    .iter()
                    .map(|m| Copy {
                        owner: m.clone(),
                        recent: false,
                        unread: false,
                        mention: true,
                    })
                    .collect()
            } else {
                g.members
                    .keys()
                    .map(|m| {
                        let other = *m != from;
                        Copy {
                            owner: m.clone(),
                            recent: true,
                            unread: other,
                            mention: other && (message.mention_all || mentioned.contains(m)),
                        }
                    })
                    .collect()
            };
            Ok(Planned {
                append: GroupAppend {
                    group,
                    msg_id,
                    ts,
                    large: g.meta.large,
                    entry: GroupEntry::Message(GroupMessage {
                        mentions: mentioned,
                        ..message
                    }),
                    copies,
                    basis: 0,
                    membership: None,
                },
                after: None,
            })
        },
    );
    async move {
        match committed.await? {
            GroupOutcome::Fresh(a) => Ok(sent(a.sent)),
            GroupOutcome::Duplicate(original) => Ok(sent(original)),
        }
    }
    .boxed()
}
