//! `unmute`: pushes for the conversation again (routed to the push hook).

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, UnmuteReply, UnmuteRequest};

use super::{parse_conversation, OpFuture};
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: UnmuteRequest) -> OpFuture {
    let hook =
        match parse_conversation(&req.conversation).and_then(|_| plugin.hooks.push_or_error()) {
            Ok(h) => h,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
    let done = hook.unmute(link.user(), &req.conversation);
    async move {
        done.await?;
        Ok(reply::Result::Unmute(UnmuteReply {}))
    }
    .boxed()
}
