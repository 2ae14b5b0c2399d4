//! `recall {conversation, msgId}`: the sender within `im.recall_window_secs`, a group's owner
//! and admins any message of their group at any time. The content is removed from every stream
//! that holds the message (history and sync then return it as `recalled: true`), each of those
//! streams gets a `recalled` event, and a recalled message is no longer unread. The sequence is
//! in `amend.rs`, shared with `edit`.

use std::sync::Arc;

use mqim_schemas::v1::{reply, RecallReply, RecallRequest};

use super::OpFuture;
use crate::presence::DeviceLink;
use crate::store::extras::AmendKind;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: RecallRequest) -> OpFuture {
    super::amend::start(
        plugin,
        link,
        &req.conversation,
        req.msg_id,
        AmendKind::Recall,
        |_| reply::Result::Recall(RecallReply {}),
    )
}
