//! `edit {conversation, msgId, text?, body?}`: the sender replaces the content of their message
//! within `im.edit_window_secs`. Every stream that holds the message gets an `edited` event (its
//! own seq), and history returns the latest content with `editedAt`. The content follows the
//! rules of `send` (size limit, word filter). The sequence is in `amend.rs`, shared with
//! `recall`; an edit to the content the message already has changes nothing.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, EditReply, EditRequest, SendRequest};

use super::OpFuture;
use crate::presence::DeviceLink;
use crate::store::extras::AmendKind;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: EditRequest) -> OpFuture {
    // The content rules of a send (a stand-in clientMsgId: an edit has none).
    let as_send = SendRequest {
        client_msg_id: "edit".into(),
        text: req.text,
        body: req.body,
        ..SendRequest::default()
    };
    let checked = super::send::check_content(plugin, &as_send)
        .and_then(|()| plugin.moderation.apply_text(as_send.text));
    let text = match checked {
        Ok(t) => t,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    super::amend::start(
        plugin,
        link,
        &req.conversation,
        req.msg_id,
        AmendKind::Edit {
            text,
            body: as_send.body,
        },
        |edited_at| reply::Result::Edit(EditReply { edited_at }),
    )
}
