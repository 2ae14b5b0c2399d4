//! `ack`: the device stored everything up to `seq`; its cursor moves forward (never back).

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, AckReply, AckRequest};

use super::OpFuture;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: AckRequest) -> OpFuture {
    let store = plugin.store.clone();
    let (user, device) = (link.user().to_string(), link.device().to_string());
    async move {
        store.advance_cursor(&user, &device, req.seq).await?;
        Ok(reply::Result::Ack(AckReply {}))
    }
    .boxed()
}
