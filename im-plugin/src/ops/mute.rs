//! `mute`: no pushes to the user for one conversation (until a time, or until `unmute`). The
//! messages are still stored, delivered and counted; only the push hook consults mutes.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, MuteReply, MuteRequest};

use super::{parse_conversation, OpFuture};
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: MuteRequest) -> OpFuture {
    let hook =
        match parse_conversation(&req.conversation).and_then(|_| plugin.hooks.push_or_error()) {
            Ok(h) => h,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
    let done = hook.mute(link.user(), &req.conversation, req.until);
    async move {
        done.await?;
        Ok(reply::Result::Mute(MuteReply {}))
    }
    .boxed()
}
