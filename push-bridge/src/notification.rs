//! What is pushed and to whom: a device's [`Registration`] and the [`Notification`] the bridge
//! decided to send it. Providers turn these into their own request shapes; nothing here knows
//! HTTP.

use serde::{Deserialize, Serialize};

/// The push services a device may register with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Apns,
    Fcm,
    Webhook,
}

impl ProviderKind {
    /// The name used on the wire and in the config (`apns`, `fcm`, `webhook`).
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Apns => "apns",
            ProviderKind::Fcm => "fcm",
            ProviderKind::Webhook => "webhook",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "apns" => Some(ProviderKind::Apns),
            "fcm" => Some(ProviderKind::Fcm),
            "webhook" => Some(ProviderKind::Webhook),
            _ => None,
        }
    }
}

/// One device's push registration (one per device; registering again replaces it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub provider: ProviderKind,
    /// APNs: the device token (hex); FCM: the registration token; webhook: the endpoint URL.
    pub token: String,
    /// APNs: the bundle id, if not the configured one.
    pub topic: Option<String>,
    /// APNs: use the sandbox endpoint (development builds).
    pub sandbox: bool,
    pub locale: Option<String>,
    /// Include a text preview. Off by default: the push provider would see the text.
    pub preview: bool,
}

/// One push to one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub user: String,
    pub device: String,
    /// The conversation of the newest event pushed (`u:<peer>`); also the collapse id.
    pub conversation: String,
    /// The newest seq of the user's stream this push covers.
    pub seq: u64,
    /// The message woken for; `None` for a badge-only (silent) push.
    pub msg_id: Option<u64>,
    /// Sender of that message (empty for a badge-only push).
    pub from: String,
    /// The user's total unread across conversations, read from the store at push time.
    pub badge: u64,
    /// Text preview, only for registrations made with `preview: true`.
    pub preview: Option<String>,
}

impl Notification {
    /// True for a badge-only push (no message to show).
    pub fn badge_only(&self) -> bool {
        self.msg_id.is_none()
    }

    /// The provider-neutral JSON body (the webhook's body, FCM's `data`): 64-bit numbers as
    /// strings, like the wire contract.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "user": self.user,
            "device": self.device,
            "conversation": self.conversation,
            "seq": self.seq.to_string(),
            "from": self.from,
            "badge": self.badge.to_string(),
        });
        if let Some(id) = self.msg_id {
            v["msgId"] = id.to_string().into();
        }
        if let Some(p) = &self.preview {
            v["preview"] = p.clone().into();
        }
        v
    }
}
