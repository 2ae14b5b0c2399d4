//! `read`: mark a conversation read up to a msgid; the peer gets a read receipt and the reader's
//! devices an event in the reader's stream, so unread counts converge everywhere. In a small
//! group the receipt goes to the sender of the newest message the read covers (so a sender can
//! show "read by 3 of 5"); a large group moves the reader's position and sends no receipt.
//!
//! Like `send`, the store call and the delivery slot are taken under the order lock, so receipts
//! reach devices in stream order. Unlike `send`, the requesting device gets its own stream's
//! event too: the reply does not carry its seq, and a device must never see a gap it cannot
//! explain.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, ReadReply, ReadRequest};

use super::{parse_any_conversation, OpFuture};
use crate::conversation::Conversation;
use crate::delivery::Delivery;
use crate::error::ImError;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: ReadRequest) -> OpFuture {
    let conversation = req.conversation.clone();
    super::with_current_group(plugin, link, &conversation, move |p, l| planned(p, l, req))
}

/// The read, planned from this node's copy of the group (if any), enqueued now.
fn planned(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: ReadRequest) -> OpFuture {
    let conversation = match parse_any_conversation(&req.conversation) {
        Ok(c) => c,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    if req.msg_id == 0 {
        let e = ImError::invalid("`msgId` is required");
        return futures::future::ready(Err(e)).boxed();
    }
    let user = link.user().to_string();
    if let Conversation::Group(group) = &conversation {
        match plugin.groups.for_member(group, &user) {
            Ok(g) if g.meta.large => return read_large(plugin, user, group, req),
            Ok(_) => {}
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        }
    }
    let (done, slot) = {
        let _order = plugin.order.lock();
        let done = plugin.store.mark_read(&user, &req.conversation, req.msg_id);
        (done, plugin.deliveries.reserve())
    };
    let task = tokio::spawn(async move {
        let outcome = done.await?;
        if let Some((own, (peer, peer_event))) = outcome.receipts {
            let _ = slot.send(
                vec![
                    Delivery {
                        user,
                        event: own,
                        exclude_conn: None,
                    },
                    Delivery {
                        user: peer,
                        event: peer_event,
                        exclude_conn: None,
                    },
                ]
                .into(),
            );
        }
        Ok(reply::Result::Read(ReadReply {
            conversation: req.conversation,
            unread: outcome.unread,
        }))
    });
    super::joined(task)
}

/// A large group: the reader's position moves; their other devices get the event.
fn read_large(plugin: &Arc<ImPlugin>, user: String, group: &str, req: ReadRequest) -> OpFuture {
    let (done, slot) = {
        let _order = plugin.order.lock();
        let done = plugin.store.mark_group_read(&user, group, req.msg_id);
        (done, plugin.deliveries.reserve())
    };
    let task = tokio::spawn(async move {
        let outcome = done.await?;
        if let Some(event) = outcome.own_receipt {
            let own = Delivery {
                user,
                event,
                exclude_conn: None,
            };
            let _ = slot.send(vec![own].into());
        }
        Ok(reply::Result::Read(ReadReply {
            conversation: req.conversation,
            unread: outcome.unread,
        }))
    });
    super::joined(task)
}
