//! Conversation extras in the IM layer: what is kept in memory for blocking, presence and typing.
//!
//! - `mod.rs` (this file): [`Extras`], the block lists and hidden-presence users (loaded from the
//!   store at start, changed after each durable write here, read again when another node says
//!   it changed them), and when each user was last seen here (also written to the store; the
//!   later of the two is the answer, so a user last seen on another node is answered too).
//! - `typing`: the per-(user, conversation) rate of typing events.
//! - `watch`: presence watch lists per connection and their debounced announcements.
//! - `news`: what other nodes sharing the store announce (presence, blocks and settings
//!   changed there, typing), applied to this node's view.
//!
//! Every map is bounded: blocks per user ([`MAX_BLOCKS`]), watch lists per connection
//! ([`watch::MAX_WATCH`]) and in total, typing entries ([`typing::MAX_ENTRIES`]), last-seen
//! times ([`MAX_LAST_SEEN`]). The store keeps the truth of blocks and settings
//! ([`crate::store::extras`]); this is a view of it for the send path, which must not wait.

pub mod news;
#[cfg(test)]
mod news_tests;
pub mod typing;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqim_schemas::v1::ErrorCode;
use parking_lot::Mutex;

use crate::error::ImError;
use crate::store::{Store, StoreError};

/// Most users one user may block.
pub const MAX_BLOCKS: usize = 1000;
/// Most users whose last-seen time is remembered (beyond it, a new one is not recorded).
pub const MAX_LAST_SEEN: usize = 1 << 20;

/// Blocks, presence settings, last-seen times, typing rates and presence watches of this node.
pub struct Extras {
    /// The store has a place for blocks and settings.
    enabled: bool,
    /// blocker -> the users they block.
    blocks: Mutex<HashMap<String, HashSet<String>>>,
    hidden: Mutex<HashSet<String>>,
    /// Counts the changes made on this node, so a reload from the store cannot undo one.
    local_changes: AtomicU64,
    last_seen: Mutex<HashMap<String, i64>>,
    pub(crate) typing: typing::TypingLimiter,
    pub(crate) watch: watch::Watchers,
}

impl Extras {
    /// Loads the blocks and settings the store holds.
    pub async fn load(
        store: &Arc<dyn Store>,
        debounce: std::time::Duration,
    ) -> anyhow::Result<Extras> {
        let state = match store.extras_log() {
            Some(log) => Some(log.load_extras().await?),
            None => None,
        };
        let enabled = state.is_some();
        let state = state.unwrap_or_default();
        Ok(Extras {
            enabled,
            blocks: Mutex::new(block_map(state.blocks)),
            hidden: Mutex::new(state.hidden.into_iter().collect()),
            local_changes: AtomicU64::new(0),
            last_seen: Mutex::default(),
            typing: typing::TypingLimiter::default(),
            watch: watch::Watchers::new(debounce),
        })
    }

    /// Blocks and settings are available on this store shape.
    pub fn check_enabled(&self) -> Result<(), ImError> {
        if !self.enabled {
            return Err(ImError::new(
                ErrorCode::FailedPrecondition,
                "this store has no place for blocks and presence settings",
            ));
        }
        Ok(())
    }

    /// Does `blocker` block `user`?
    pub fn blocks(&self, blocker: &str, user: &str) -> bool {
        self.blocks
            .lock()
            .get(blocker)
            .is_some_and(|b| b.contains(user))
    }

    /// Does either of the two block the other?
    pub fn either_blocks(&self, a: &str, b: &str) -> bool {
        self.blocks(a, b) || self.blocks(b, a)
    }

    /// How many users `blocker` blocks.
    pub fn block_count(&self, blocker: &str) -> usize {
        self.blocks.lock().get(blocker).map_or(0, HashSet::len)
    }

    /// Records a block the store made durable.
    pub(crate) fn set_block(&self, blocker: &str, blocked: &str, on: bool) {
        let mut blocks = self.blocks.lock();
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        if on {
            blocks
                .entry(blocker.to_string())
                .or_default()
                .insert(blocked.to_string());
        } else if let Some(set) = blocks.get_mut(blocker) {
            set.remove(blocked);
            if set.is_empty() {
                blocks.remove(blocker);
            }
        }
    }

    /// The users `blocker` blocks, in order.
    pub fn blocked_by(&self, blocker: &str) -> Vec<String> {
        let blocks = self.blocks.lock();
        let set: BTreeSet<&String> = blocks.get(blocker).into_iter().flatten().collect();
        set.into_iter().cloned().collect()
    }

    pub fn presence_visible(&self, user: &str) -> bool {
        !self.hidden.lock().contains(user)
    }

    /// Records a setting the store made durable.
    pub(crate) fn set_presence_visible(&self, user: &str, visible: bool) {
        let mut hidden = self.hidden.lock();
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        if visible {
            hidden.remove(user);
        } else {
            hidden.insert(user.to_string());
        }
    }

    /// `user`'s last device on this node went offline now; returns the time recorded.
    pub(crate) fn seen(&self, user: &str) -> i64 {
        let now = crate::now_ms();
        let mut last = self.last_seen.lock();
        if last.len() < MAX_LAST_SEEN || last.contains_key(user) {
            last.insert(user.to_string(), now);
        }
        now
    }

    /// When `user` was last seen going offline here (0: not since this node started). The
    /// store keeps it too ([`crate::store::extras::ExtrasLog::last_seen`]), for after a restart.
    pub fn last_seen(&self, user: &str) -> i64 {
        self.last_seen.lock().get(user).copied().unwrap_or(0)
    }

    /// When `user`'s last device went offline, here or anywhere the store knows of (another
    /// node, or before this node started): the later of the two.
    pub async fn last_seen_anywhere(
        &self,
        store: &Arc<dyn Store>,
        user: &str,
    ) -> Result<i64, StoreError> {
        let here = self.last_seen(user);
        let stored = match store.extras_log() {
            Some(log) => log.last_seen(user).await?,
            None => 0,
        };
        Ok(here.max(stored))
    }

    /// Reads `user`'s blocks and setting from the store again (another node changed them).
    pub(crate) async fn reload_user(&self, store: &Arc<dyn Store>, user: &str) {
        let Some(log) = store.extras_log() else {
            return;
        };
        self.reload(
            || log.user_extras(user),
            |(blocks, hidden), all, hiding| {
                match blocks.is_empty() {
                    true => all.remove(user),
                    false => all.insert(user.to_string(), blocks.into_iter().collect()),
                };
                match hidden {
                    true => hiding.insert(user.to_string()),
                    false => hiding.remove(user),
                };
            },
        )
        .await;
    }

    /// Reads every block and setting from the store again (news from other nodes may have been
    /// missed).
    pub(crate) async fn reload_all(&self, store: &Arc<dyn Store>) {
        let Some(log) = store.extras_log() else {
            return;
        };
        self.reload(
            || log.load_extras(),
            |state, all, hiding| {
                *all = block_map(state.blocks);
                *hiding = state.hidden.into_iter().collect();
            },
        )
        .await;
    }

    /// Reads with `read` and applies what it read with `apply`, unless a change was made on this
    /// node meanwhile: then the read is made again (a change here wins over an older read).
    async fn reload<T, F>(
        &self,
        read: impl Fn() -> F,
        apply: impl Fn(T, &mut HashMap<String, HashSet<String>>, &mut HashSet<String>),
    ) where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        for _ in 0..3 {
            let before = self.local_changes.load(Ordering::Acquire);
            let read = match read().await {
                Ok(read) => read,
                Err(e) => {
                    return tracing::warn!(error = %e, "cannot read blocks and settings again");
                }
            };
            // Both locks before the check: a local change counts itself under its lock.
            let (mut all, mut hiding) = (self.blocks.lock(), self.hidden.lock());
            if self.local_changes.load(Ordering::Acquire) == before {
                return apply(read, &mut all, &mut hiding);
            }
        }
    }
}

/// The store's block lists as the send path looks them up.
fn block_map(blocks: BTreeMap<String, BTreeSet<String>>) -> HashMap<String, HashSet<String>> {
    blocks
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}
