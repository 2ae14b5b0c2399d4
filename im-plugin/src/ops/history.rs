//! `history`: a conversation's messages, newest first, paging backwards by msgid. A group's
//! history is for members only and starts after their join: a small group's from the member's
//! own stream (which holds nothing from before), a large group's from the group's log.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, HistoryReply, HistoryRequest};

use super::{page_limit, parse_any_conversation, OpFuture};
use crate::conversation::Conversation;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: HistoryRequest) -> OpFuture {
    let checked = page_limit(req.limit)
        .and_then(|l| parse_any_conversation(&req.conversation).map(|c| (l, c)));
    let (limit, conversation) = match checked {
        Ok(v) => v,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    let user = link.user().to_string();
    let plugin = plugin.clone();
    async move {
        let store = plugin.store.clone();
        // (group, member since) of a large group.
        let mut large = None;
        if let Conversation::Group(group) = &conversation {
            let g = plugin
                .groups
                .for_member_current(&store, group, &user)
                .await?;
            if g.meta.large {
                large = Some((group.clone(), g.members[&user].joined_msg_id));
            }
        }
        let page = match large {
            Some((group, since)) => {
                store
                    .group_history(&group, req.before_msg_id, since, limit)
                    .await?
            }
            None => {
                store
                    .history(&user, &req.conversation, req.before_msg_id, limit)
                    .await?
            }
        };
        Ok(reply::Result::History(HistoryReply {
            messages: page.messages,
            has_more: page.has_more,
        }))
    }
    .boxed()
}
