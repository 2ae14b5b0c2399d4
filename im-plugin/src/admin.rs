//! What the admin API (the broker's `admin/` module) needs from the IM service: a user's state
//! as an operator sees it, system messages, and the hooks the broker's metrics and moderation
//! use. Nothing here is reachable by an MQTT client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use mqim_schemas::v1::{reply, SendRequest};

use crate::error::ImError;
use crate::moderation::Moderation;
use crate::observe::Observer;
use crate::presence::DeviceLink;
use crate::ImPlugin;

/// The reserved sender of system messages; no client may log in as it.
pub const SYSTEM_SENDER: &str = "system";

/// Most conversations counted for [`UserSummary`] (a larger count is reported as this many,
/// with `conversations_capped`).
const MAX_CONVERSATIONS: usize = 1000;

/// A user as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The highest seq of the user's stream.
    pub head_seq: u64,
    /// Devices online on this node, each with its acknowledged cursor.
    pub devices: Vec<DeviceSummary>,
    /// Unread messages over the conversations counted.
    pub unread_total: u64,
    pub conversations: usize,
    /// The user has more than `conversations` conversations.
    pub conversations_capped: bool,
}

/// One device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSummary {
    pub device: String,
    /// The last seq the device acknowledged.
    pub acked_seq: u64,
    pub online: bool,
}

/// Where a system message goes: the `sent` result of its send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemMessage {
    pub msg_id: u64,
    pub ts: i64,
}

impl ImPlugin {
    /// `user`'s stream head, online devices with their cursors, unread total and conversation
    /// count. The stores do not list offline devices, so only this node's online ones appear.
    pub async fn user_summary(&self, user: &str) -> Result<UserSummary, ImError> {
        let head_seq = self.store.last_seq(user).await?;
        let mut devices = Vec::new();
        for (device, _conn) in self.presence.devices(user) {
            // Advancing to 0 never moves a cursor (they only go forward): it reads it.
            let acked_seq = self.store.advance_cursor(user, &device, 0).await?;
            devices.push(DeviceSummary {
                device,
                acked_seq,
                online: true,
            });
        }
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        devices.dedup_by(|a, b| a.device == b.device);
        let page = self.store.conversations(user, MAX_CONVERSATIONS).await?;
        Ok(UserSummary {
            head_seq,
            devices,
            unread_total: page.conversations.iter().map(|c| c.unread).sum(),
            conversations: page.conversations.len(),
            conversations_capped: page.has_more,
        })
    }

    /// Sends `text` from [`SYSTEM_SENDER`] to conversation `to` (`u:<user>`), stored and
    /// delivered like any message, through the same send operation a client's send takes
    /// (validation, moderation, ordering, dedup).
    pub async fn send_system_message(
        self: &Arc<Self>,
        to: &str,
        text: String,
    ) -> Result<SystemMessage, ImError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let req = SendRequest {
            to: to.to_string(),
            client_msg_id: format!("sys-{}-{n}", crate::now_ms()),
            text: Some(text),
            ..SendRequest::default()
        };
        let link: Arc<dyn DeviceLink> = Arc::new(SystemLink);
        match crate::ops::send::start(self, &link, req).await? {
            reply::Result::Sent(s) => Ok(SystemMessage {
                msg_id: s.msg_id,
                ts: s.ts,
            }),
            _ => Err(ImError::new(
                mqim_schemas::v1::ErrorCode::Internal,
                "send returned something other than `sent`",
            )),
        }
    }

    /// The sensitive-word filter (loaded and reloaded by the broker).
    pub fn moderation(&self) -> &Moderation {
        &self.moderation
    }

    /// Registers the broker's metrics observer (once); false if one was already set.
    pub fn set_observer(&self, o: Arc<dyn Observer>) -> bool {
        self.hooks.set_observer(o)
    }
}

/// The sender of system messages: a device that is never connected.
struct SystemLink;

impl DeviceLink for SystemLink {
    fn conn_id(&self) -> u64 {
        // Connection ids start at 1: 0 excludes no real device from the sender's copy.
        0
    }
    fn user(&self) -> &str {
        SYSTEM_SENDER
    }
    fn device(&self) -> &str {
        "admin"
    }
    fn is_subscribed(&self, _topic: &str) -> bool {
        false
    }
    fn deliver(&self, _topic: &str, _payload: Bytes) -> bool {
        false
    }
}
