//! `pushUnregister`: stop pushing to the calling device (routed to the push hook).

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, PushUnregisterReply, PushUnregisterRequest};

use super::OpFuture;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    _req: PushUnregisterRequest,
) -> OpFuture {
    let hook = match plugin.hooks.push_or_error() {
        Ok(h) => h,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    let done = hook.unregister(link.user(), link.device());
    async move {
        done.await?;
        Ok(reply::Result::PushUnregister(PushUnregisterReply {}))
    }
    .boxed()
}
