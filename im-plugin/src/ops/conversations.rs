//! `conversations`: the user's recent conversations with unread counts and last messages, newest
//! activity first.
//!
//! One-to-one conversations and small groups come from the store's recency index (a small
//! group's messages are in each member's stream). A large group has no per-member rows: each one
//! the user is in is merged in with its counts computed from positions
//! ([`crate::store::groups::GroupStore::large_group_view`]), as is a small group the user has
//! joined but that has no message yet.

use std::collections::HashSet;
use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, Conversation, ConversationsReply, ConversationsRequest};

use super::{page_limit, OpFuture};
use crate::presence::DeviceLink;
use crate::store::ConversationSummary;
use crate::ImPlugin;

pub fn start(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: ConversationsRequest,
) -> OpFuture {
    let limit = match page_limit(req.limit) {
        Ok(l) => l,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    let store = plugin.store.clone();
    let groups = plugin.groups.clone();
    let user = link.user().to_string();
    async move {
        let page = store.conversations(&user, limit).await?;
        let mut list = page.conversations;
        let mut has_more = page.has_more;
        if store.has_groups() {
            let listed: HashSet<String> = list.iter().map(|c| c.id.clone()).collect();
            for (group, large) in store.user_groups(&user).await? {
                let id = crate::conversation::Conversation::Group(group.clone()).to_string();
                if listed.contains(&id) {
                    continue;
                }
                let joined_at = groups
                    .get(&group)
                    .ok()
                    .and_then(|g| g.members.get(&user).map(|m| m.joined_at))
                    .unwrap_or_default();
                let summary = if large {
                    let v = store.large_group_view(&user, &group).await?;
                    ConversationSummary {
                        id,
                        unread: v.unread,
                        last: v.last,
                        updated_at: v.updated_at.max(joined_at),
                        mentioned: v.mentioned,
                        last_group_seq: v.last_group_seq,
                    }
                } else {
                    ConversationSummary {
                        id,
                        unread: 0,
                        last: None,
                        updated_at: joined_at,
                        mentioned: false,
                        last_group_seq: 0,
                    }
                };
                list.push(summary);
            }
            list.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.cmp(&b.id)));
            if list.len() > limit {
                list.truncate(limit);
                has_more = true;
            }
        }
        Ok(reply::Result::Conversations(ConversationsReply {
            conversations: list
                .into_iter()
                .map(|c| Conversation {
                    id: c.id,
                    unread: c.unread,
                    last: c.last,
                    updated_at: c.updated_at,
                    mentioned: c.mentioned,
                    last_group_seq: c.last_group_seq,
                })
                .collect(),
            has_more,
        }))
    }
    .boxed()
}
