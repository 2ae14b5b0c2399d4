//! `send`: accept a one-to-one message, make it durable in both streams, deliver it live. A
//! send to a group (`g:<id>`) goes on to `group_send`.
//!
//! The msgid is assigned, the store append enqueued and a delivery slot taken under one lock, so
//! msgid order, commit order and live delivery order agree. The commit runs on its own task: a
//! sender that disconnects mid-send cannot leave a committed message undelivered.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{reply, ErrorCode, SendRequest, SentReply};

use super::OpFuture;
use crate::delivery::Delivery;
use crate::error::ImError;
use crate::presence::DeviceLink;
use crate::store::{NewMessage, SendOutcome, SentRecord};
use crate::ImPlugin;

/// Validates and starts a send from `link`'s user.
pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: SendRequest) -> OpFuture {
    if req.to.starts_with("g:") {
        return super::group_send::start(plugin, link, req);
    }
    let msg = match validate(plugin, link.user(), req).and_then(|m| plugin.moderation.apply(m)) {
        Ok(m) => m,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    // A blocked sender learns nothing beyond this error; nothing is stored.
    if plugin.extras.blocks(&msg.to, &msg.from) {
        let e = crate::groups::policy::denied("you cannot send messages to this user");
        return futures::future::ready(Err(e)).boxed();
    }
    if let Err(e) = check_rate(plugin, &msg.from) {
        return futures::future::ready(Err(e)).boxed();
    }
    let (from, to) = (msg.from.clone(), msg.to.clone());
    let (commit, slot) = {
        let _order = plugin.order.lock();
        let (msg_id, ts) = plugin.ids.next();
        let commit = plugin
            .store
            .append_message(NewMessage { msg_id, ts, ..msg });
        (commit, plugin.deliveries.reserve())
    };
    let exclude = link.conn_id();
    let task = tokio::spawn(async move {
        match commit.await? {
            SendOutcome::Fresh(a) => {
                let mut out = Vec::with_capacity(2);
                if let Some(event) = a.recipient_event {
                    out.push(Delivery {
                        user: to,
                        event,
                        exclude_conn: None,
                    });
                }
                out.push(Delivery {
                    user: from,
                    event: a.sender_event,
                    exclude_conn: Some(exclude),
                });
                let _ = slot.send(out.into());
                Ok(sent(a.sent))
            }
            SendOutcome::Duplicate(original) => Ok(sent(original)),
        }
    });
    super::joined(task)
}

/// The per-user send rate (one-to-one and group sends alike).
pub(super) fn check_rate(plugin: &ImPlugin, user: &str) -> Result<(), ImError> {
    within_budget(
        plugin,
        user,
        "too many messages; slow down and resend with the same clientMsgId",
    )
}

/// The same per-user budget for the other requests that write something for others to see or
/// keep (`recall`, `edit`, `block`, `unblock`, `settings`): an edit of a message in a small
/// group appends an event to every member's stream, so it costs what a send costs.
pub(super) fn check_change_rate(plugin: &ImPlugin, user: &str) -> Result<(), ImError> {
    within_budget(plugin, user, "too many changes; slow down and try again")
}

fn within_budget(plugin: &ImPlugin, user: &str, refusal: &str) -> Result<(), ImError> {
    match plugin.send_limit.allow(user) {
        true => Ok(()),
        false => Err(ImError::new(ErrorCode::RateLimited, refusal)),
    }
}

pub(super) fn sent(r: SentRecord) -> reply::Result {
    reply::Result::Sent(SentReply {
        msg_id: r.msg_id,
        seq: r.seq,
        conversation: r.conversation,
        ts: r.ts,
        group_seq: r.group_seq,
    })
}

fn validate(plugin: &ImPlugin, from: &str, req: SendRequest) -> Result<NewMessage, ImError> {
    let to = super::parse_conversation(&req.to)
        .map_err(|_| ImError::invalid("`to` must be `u:<user id>` or `g:<group id>`"))?;
    if !req.mentions.is_empty() || req.mention_all {
        return Err(ImError::invalid("mentions are for group messages"));
    }
    check_content(plugin, &req)?;
    Ok(NewMessage {
        from: from.to_string(),
        to: to.to_string(),
        client_msg_id: req.client_msg_id,
        msg_id: 0,
        ts: 0,
        text: req.text,
        body: req.body,
        kind: req.r#type,
    })
}

/// The content rules every message follows: a clientMsgId, some content, within the size limit.
pub(super) fn check_content(plugin: &ImPlugin, req: &SendRequest) -> Result<(), ImError> {
    let n = req.client_msg_id.chars().count();
    if !(1..=64).contains(&n) {
        return Err(ImError::invalid(
            "`clientMsgId` is required, 1 to 64 characters",
        ));
    }
    if req.text.is_none() && req.body.is_none() {
        return Err(ImError::invalid("a message needs `text` or `body`"));
    }
    let size = req.text.as_ref().map_or(0, String::len) + req.body.as_ref().map_or(0, |b| b.len());
    if size > plugin.cfg.max_body_bytes {
        return Err(ImError::new(
            ErrorCode::TooLarge,
            format!(
                "message content is {size} bytes; the limit is {}",
                plugin.cfg.max_body_bytes
            ),
        ));
    }
    Ok(())
}
