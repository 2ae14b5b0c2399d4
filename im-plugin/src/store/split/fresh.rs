//! Which users' Redis keys may be trusted, and rebuilding those that may not from the log.
//!
//! A user is fresh when their keys were checked against the log under the `run_id` of the Redis
//! process that answers now. A Redis restart (new `run_id`) makes everyone stale at once; a
//! script that finds a user's keys missing or stamped with another `run_id`, or a log conflict on
//! one of their seqs, makes that user stale. A rebuild runs on the task that needs it (a reader's,
//! or one the pipeline spawns), one at a time per user and side by side for different users, so a
//! user with a long stream delays only their own requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqim_schemas::v1::event;
use tracing::{debug, info};

use super::Shared;
use crate::conversation::Conversation;
use crate::store::redis_index::RebuiltConversation;
use crate::store::{StoreError, StoreResult};

/// Stream owners that start with this are groups' logs ([`crate::store::groups::log_owner`]).
const GROUP_LOG_MARK: char = '#';
/// Events read per log call while rebuilding a user.
const REBUILD_PAGE: usize = 1000;
/// Fresh users remembered at most; past it the set starts over (they are checked again).
const MAX_FRESH: usize = 1_000_000;

impl Shared {
    pub(super) fn is_fresh(&self, user: &str) -> bool {
        let fresh = self.fresh.lock();
        !fresh.0.is_empty() && fresh.0 == self.index.run_id() && fresh.1.contains(user)
    }

    fn mark_fresh(&self, user: &str, rid: &str) {
        let mut fresh = self.fresh.lock();
        if fresh.0 != rid {
            *fresh = (rid.to_string(), HashSet::new());
        }
        if fresh.1.len() >= MAX_FRESH {
            fresh.1.clear();
        }
        fresh.1.insert(user.to_string());
    }

    /// `user`'s keys were found missing or stale: check them again before the next use.
    pub(super) fn unmark_fresh(&self, user: &str) {
        self.fresh.lock().1.remove(user);
    }

    /// The log already had a seq `user`'s counter handed out: rebuild them, whatever their keys
    /// say.
    pub(super) fn suspect(&self, user: &str) {
        self.suspect.lock().insert(user.to_string());
        self.unmark_fresh(user);
    }

    /// Makes sure every user's index keys were checked against the log under the current Redis
    /// `run_id`, rebuilding those that were not.
    pub(super) async fn ensure_fresh(&self, users: &[String]) -> StoreResult<()> {
        let mut seen = HashSet::new();
        for user in users {
            if !seen.insert(user) || self.is_fresh(user) {
                continue;
            }
            let lock = self
                .rebuilds
                .lock()
                .entry(user.clone())
                .or_default()
                .clone();
            let done = self.check_user(user, &lock).await;
            let mut rebuilds = self.rebuilds.lock();
            if Arc::strong_count(&lock) == 2 {
                rebuilds.remove(user); // nobody else waits on it
            }
            done?;
        }
        Ok(())
    }

    async fn check_user(&self, user: &str, lock: &tokio::sync::Mutex<()>) -> StoreResult<()> {
        let _one_at_a_time = lock.lock().await;
        if self.is_fresh(user) {
            return Ok(()); // checked meanwhile
        }
        // Verified against the Redis process whose run_id is `known` (see
        // `RedisIndex::query_verified`); `None` if the keys are stale or that process is gone.
        let known = self.index.run_id();
        let counter = self.index.last_seq(user).await?;
        let rid = self.index.run_id();
        let forced = self.suspect.lock().remove(user);
        if forced || counter.is_none() || rid != known {
            if let Err(e) = self.rebuild(user, &rid).await {
                if forced {
                    self.suspect.lock().insert(user.to_string());
                }
                return Err(e);
            }
        }
        // A conflict seen while this ran asks for another rebuild.
        if !self.suspect.lock().contains(user) {
            self.mark_fresh(user, &rid);
        }
        Ok(())
    }

    /// Waits until this node has no log write of `user` in flight (the caller holds requests of
    /// `user` back, so none start). Gives up after the write deadline: a write still running
    /// then is refused by the log, or caught by its conflict check.
    async fn quiesce(&self, user: &str) {
        let until = Instant::now() + self.opts.write_deadline + Duration::from_millis(500);
        while self.writing.lock().contains_key(user) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Recomputes `user`'s index keys from the log: counter floor, read pointers (the user's own
    /// receipts), unread sets (the peers' messages above them, not recalled) and recency.
    async fn rebuild(&self, user: &str, rid: &str) -> StoreResult<()> {
        self.quiesce(user).await;
        let floor = self.log.max_seq(user).await?;
        if user.starts_with(GROUP_LOG_MARK) {
            // A group's log: only its counter is indexed, and the group's membership version
            // (`fence.rs`).
            return self.restore_group_log(user, rid, floor).await;
        }
        // Large groups keep their unread counts and recency in the log (positions), not in
        // the index: their copies (mentions) are left out here.
        let mut large: HashMap<String, bool> = HashMap::new();
        let mut convs: BTreeMap<String, RebuiltConversation> = BTreeMap::new();
        let mut peers_messages: Vec<(String, u64)> = Vec::new();
        let mut after = 0;
        loop {
            let events = self.log.read_events(user, after, REBUILD_PAGE).await?;
            let Some(last) = events.last() else { break };
            after = last.seq;
            for e in events {
                match e.body {
                    Some(event::Body::Message(m)) => {
                        if self.in_large_group(&m.conversation, &mut large).await? {
                            continue;
                        }
                        let c = conv_entry(&mut convs, &m.conversation);
                        c.updated_at = Some(c.updated_at.map_or(m.ts, |t| t.max(m.ts)));
                        // A recalled message is never unread.
                        if m.from != user && !m.recalled {
                            peers_messages.push((m.conversation, m.msg_id));
                        }
                    }
                    Some(event::Body::Read(r)) if r.by == user => {
                        let c = conv_entry(&mut convs, &r.conversation);
                        c.read_upto = Some(c.read_upto.map_or(r.msg_id, |x| x.max(r.msg_id)));
                    }
                    _ => {}
                }
            }
        }
        for (conversation, msg_id) in peers_messages {
            let c = conv_entry(&mut convs, &conversation);
            if c.read_upto.is_none_or(|x| msg_id > x) {
                c.unread.push(msg_id);
            }
        }
        let convs: Vec<RebuiltConversation> = convs.into_values().collect();
        let counter = self.index.restore(user, rid, floor, &convs).await?;
        if floor > 0 {
            info!(
                user,
                floor, counter, "rebuilt the index of a user from the log"
            );
        }
        Ok(())
    }

    /// Whether `conversation` is a large group's (looked up once per rebuild).
    async fn in_large_group(
        &self,
        conversation: &str,
        known: &mut HashMap<String, bool>,
    ) -> StoreResult<bool> {
        let (Some(Conversation::Group(group)), Some(log)) =
            (Conversation::parse(conversation), self.log.groups())
        else {
            return Ok(false);
        };
        if let Some(large) = known.get(&group) {
            return Ok(*large);
        }
        let large = log.is_large(&group).await?.unwrap_or(false);
        known.insert(group, large);
        Ok(large)
    }

    /// The user's seq counter, after making sure it is not stale.
    pub(super) async fn counter(&self, user: &str) -> StoreResult<u64> {
        for _ in 0..3 {
            self.ensure_fresh(&[user.to_string()]).await?;
            if let Some(n) = self.index.last_seq(user).await? {
                return Ok(n);
            }
            self.unmark_fresh(user);
        }
        Err(stale_too_long())
    }
}

pub(super) fn stale_too_long() -> StoreError {
    StoreError::new("the index stayed stale across rebuilds")
}

fn conv_entry<'a>(
    convs: &'a mut BTreeMap<String, RebuiltConversation>,
    conversation: &str,
) -> &'a mut RebuiltConversation {
    convs
        .entry(conversation.to_string())
        .or_insert_with(|| RebuiltConversation {
            conversation: conversation.to_string(),
            ..Default::default()
        })
}

/// Marks users as having a log write in flight on this node while it lives.
pub(super) struct Writing {
    shared: Arc<Shared>,
    pub(super) users: Vec<String>,
}

impl Writing {
    pub(super) fn new(shared: &Arc<Shared>, users: Vec<String>) -> Writing {
        let mut writing = shared.writing.lock();
        for user in &users {
            *writing.entry(user.clone()).or_default() += 1;
        }
        drop(writing);
        Writing {
            shared: shared.clone(),
            users,
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut writing = self.shared.writing.lock();
        for user in &self.users {
            if let Some(n) = writing.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    writing.remove(user);
                }
            }
        }
    }
}

/// A failed rebuild, at debug level: the requests that waited for it fail with UNAVAILABLE,
/// which is logged where errors are mapped; one line per user here would only repeat it while
/// Redis is down.
pub(super) fn debug_rebuild_failed(user: &str, e: &StoreError) {
    debug!(user, error = %e, "could not rebuild a user's index from the log");
}
