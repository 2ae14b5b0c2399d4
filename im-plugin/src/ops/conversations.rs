//! `conversations`: the user's recent conversations with unread counts and last messages.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, Conversation, ConversationsReply, ConversationsRequest};

use super::{page_limit, OpFuture};
use crate::presence::DeviceLink;
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
    let user = link.user().to_string();
    async move {
        let page = store.conversations(&user, limit).await?;
        Ok(reply::Result::Conversations(ConversationsReply {
            conversations: page
                .conversations
                .into_iter()
                .map(|c| Conversation {
                    id: c.id,
                    unread: c.unread,
                    last: c.last,
                    updated_at: c.updated_at,
                })
                .collect(),
            has_more: page.has_more,
        }))
    }
    .boxed()
}
