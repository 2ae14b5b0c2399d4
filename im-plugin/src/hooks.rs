//! Hooks: how layers above the IM domain (the push bridge) learn of committed events and take
//! the push operations, without the IM domain depending on them.
//!
//! The broker registers a [`PushHook`] once at start-up ([`crate::ImPlugin::set_push_hook`]).
//! The delivery task calls [`PushHook::event_committed`] for every event it hands to live
//! delivery, in commit order; the hook must only signal (never block, never await), so pushing
//! can never slow sending. The push operations (`pushRegister`, ...) are answered by the hook;
//! without one they get `INVALID_ARGUMENT`.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use mqim_schemas::v1::{Event, PushRegisterRequest};

use crate::error::ImError;

/// The push bridge as the IM layer sees it.
pub trait PushHook: Send + Sync + 'static {
    /// `event` was committed to `user`'s stream. Signal only: this runs on the delivery task.
    fn event_committed(&self, user: &str, event: &Event);

    /// Registers `device` of `user` (replacing its registration).
    fn register(
        &self,
        user: &str,
        device: &str,
        req: PushRegisterRequest,
    ) -> BoxFuture<'static, Result<(), ImError>>;

    /// Removes `device`'s registration (no error if it had none).
    fn unregister(&self, user: &str, device: &str) -> BoxFuture<'static, Result<(), ImError>>;

    /// No pushes to `user` for `conversation` until `until_ms` (Unix ms; `None`: until unmuted).
    fn mute(
        &self,
        user: &str,
        conversation: &str,
        until_ms: Option<i64>,
    ) -> BoxFuture<'static, Result<(), ImError>>;

    fn unmute(&self, user: &str, conversation: &str) -> BoxFuture<'static, Result<(), ImError>>;
}

/// The hooks registered with one plugin (none until the broker sets them).
#[derive(Default)]
pub struct Hooks {
    push: OnceLock<Arc<dyn PushHook>>,
    observer: OnceLock<Arc<dyn crate::observe::Observer>>,
}

impl Hooks {
    /// Sets the push hook; false if one was already set.
    pub fn set_push(&self, hook: Arc<dyn PushHook>) -> bool {
        self.push.set(hook).is_ok()
    }

    pub fn push(&self) -> Option<&Arc<dyn PushHook>> {
        self.push.get()
    }

    /// Tells the push hook, if any, that `event` joined `user`'s stream.
    pub fn event_committed(&self, user: &str, event: &Event) {
        if let Some(h) = self.push.get() {
            h.event_committed(user, event);
        }
    }

    /// Sets the metrics observer; false if one was already set.
    pub fn set_observer(&self, o: Arc<dyn crate::observe::Observer>) -> bool {
        self.observer.set(o).is_ok()
    }

    /// The metrics observer, if the broker set one.
    pub fn observer(&self) -> Option<&Arc<dyn crate::observe::Observer>> {
        self.observer.get()
    }

    /// The push hook, or the error a push operation gets without one.
    pub(crate) fn push_or_error(&self) -> Result<Arc<dyn PushHook>, ImError> {
        self.push
            .get()
            .cloned()
            .ok_or_else(|| ImError::invalid("push notifications are not enabled on this server"))
    }
}
