//! `pushRegister`: register the calling device for push notifications. The push hook (the
//! bridge) validates and stores the registration; this file only routes the request.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, PushRegisterReply, PushRegisterRequest};

use super::OpFuture;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: PushRegisterRequest,
) -> OpFuture {
    let hook = match plugin.hooks.push_or_error() {
        Ok(h) => h,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    let done = hook.register(link.user(), link.device(), req);
    async move {
        done.await?;
        Ok(reply::Result::PushRegister(PushRegisterReply {}))
    }
    .boxed()
}
