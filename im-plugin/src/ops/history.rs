//! `history`: a conversation's messages, newest first, paging backwards by msgid.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, HistoryReply, HistoryRequest};

use super::{page_limit, parse_conversation, OpFuture};
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: HistoryRequest) -> OpFuture {
    let checked =
        page_limit(req.limit).and_then(|l| parse_conversation(&req.conversation).map(|_| l));
    let limit = match checked {
        Ok(l) => l,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    let store = plugin.store.clone();
    let user = link.user().to_string();
    async move {
        let page = store
            .history(&user, &req.conversation, req.before_msg_id, limit)
            .await?;
        Ok(reply::Result::History(HistoryReply {
            messages: page.messages,
            has_more: page.has_more,
        }))
    }
    .boxed()
}
