//! What the admin API (the broker's `admin/` module) needs from the IM service. Nothing here is
//! reachable by an MQTT client.
//!
//! - `mod.rs` (this file): a user's state as an operator sees it (devices online on any node
//!   where the store shares presence), and the hooks the broker's metrics and moderation use.
//! - `system`: system messages from the reserved sender `system`, to a user or a group.
//! - `groups`: a group and its members as an operator sees them.

mod groups;
mod system;

pub use groups::AdminGroup;
pub use system::{SystemMessage, SYSTEM_SENDER};

use std::sync::Arc;

use crate::error::ImError;
use crate::moderation::Moderation;
use crate::observe::Observer;
use crate::ImPlugin;

/// Most conversations counted for [`UserSummary`] (a larger count is reported as this many,
/// with `conversations_capped`).
const MAX_CONVERSATIONS: usize = 1000;

/// A user as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The highest seq of the user's stream.
    pub head_seq: u64,
    /// Devices online, each with its acknowledged cursor and the node it is connected to: on
    /// every node when `presence_shared`, else on this node only.
    pub devices: Vec<DeviceSummary>,
    /// The store shares presence across nodes (the Redis store shapes): `devices` lists the
    /// user's devices online anywhere. Else only this node's connections are known.
    pub presence_shared: bool,
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
    /// The node id the device is connected to.
    pub node: u16,
}

impl ImPlugin {
    /// `user`'s stream head, online devices with their cursors and nodes, unread total and
    /// conversation count. The stores keep no list of a user's devices, so offline devices do
    /// not appear; online ones on other nodes do where the store shares presence.
    pub async fn user_summary(&self, user: &str) -> Result<UserSummary, ImError> {
        let head_seq = self.store.last_seq(user).await?;
        let here = self.cfg.node_id;
        let mut online: Vec<(String, u16)> = self
            .presence
            .devices(user)
            .into_iter()
            .map(|(device, _conn)| (device, here))
            .collect();
        // This node's own registry is the fresher answer for its devices: it goes first, so
        // the dedup below keeps it over the shared entry of the same device.
        let shared = self.store.online_devices(user).await?;
        let presence_shared = shared.is_some();
        online.extend(shared.into_iter().flatten());
        let mut devices = Vec::with_capacity(online.len());
        for (device, node) in online {
            if devices.iter().any(|d: &DeviceSummary| d.device == device) {
                continue;
            }
            // Advancing to 0 never moves a cursor (they only go forward): it reads it.
            let acked_seq = self.store.advance_cursor(user, &device, 0).await?;
            devices.push(DeviceSummary {
                device,
                acked_seq,
                online: true,
                node,
            });
        }
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        let page = self.store.conversations(user, MAX_CONVERSATIONS).await?;
        Ok(UserSummary {
            head_seq,
            devices,
            presence_shared,
            unread_total: page.conversations.iter().map(|c| c.unread).sum(),
            conversations: page.conversations.len(),
            conversations_capped: page.has_more,
        })
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
