//! `sync`: the user's stream after a seq, oldest first; also records that seq as the device's
//! acknowledged cursor (pulling from N acknowledges everything up to N).

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, SyncReply, SyncRequest};

use super::OpFuture;
use crate::error::ImError;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: SyncRequest) -> OpFuture {
    let limit = req.limit.unwrap_or(plugin.cfg.sync_default_limit);
    if limit == 0 || limit > plugin.cfg.sync_max_limit {
        let e = ImError::invalid(format!(
            "`limit` must be 1 to {}",
            plugin.cfg.sync_max_limit
        ));
        return futures::future::ready(Err(e)).boxed();
    }
    let store = plugin.store.clone();
    let (user, device) = (link.user().to_string(), link.device().to_string());
    async move {
        let page = store
            .read_stream(&user, req.after_seq, limit as usize)
            .await?;
        if req.after_seq > 0 {
            store.advance_cursor(&user, &device, req.after_seq).await?;
        }
        Ok(reply::Result::Sync(SyncReply {
            events: page.events,
            has_more: page.has_more,
        }))
    }
    .boxed()
}
