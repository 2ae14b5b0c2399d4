//! mqim's push bridge: wakes devices that are not connected through APNs, FCM or a signed
//! webhook, with the user's unread total as the badge, and keeps a per-device push log.
//!
//! It sits between `im-plugin` and `broker` in the crate stack: it uses the IM layer's public
//! types (the store traits, presence, the push hook) and the IM layer knows it only as a
//! [`mqim_im_plugin::hooks::PushHook`].
//!
//! Layout:
//! - `bridge`: `PushBridge`, the push hook: which device gets what, when; outcomes.
//! - `state`: registrations, per-device cursors, mutes and the push log, in files.
//! - `config`: the `[push]` section.
//! - `notification`: a device's registration and the notification decided for it.
//! - `provider`: the provider trait and push outcomes; one file per provider: `apns`, `fcm`,
//!   `webhook`.
//! - `testing` (feature `testing`): a local fake push service for tests.
#![forbid(unsafe_code)]

pub mod apns;
pub mod bridge;
pub mod config;
pub mod fcm;
pub mod notification;
pub mod provider;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhook;

pub use bridge::PushBridge;
