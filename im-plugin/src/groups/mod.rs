//! Groups in the IM layer: who is in which group, who may do what, and how a group entry is
//! committed and delivered.
//!
//! - `registry` (this file): every group and its members, in memory, loaded from the store at
//!   start and changed under the order lock when a change is enqueued, so that a send enqueued
//!   after a removal never has a copy for the removed member, on this node.
//! - `policy`: the rules (owner > admins > members) as pure functions of a [`GroupRecord`].
//! - `commit`: the one sequence every group entry goes through (order lock, msgid, enqueue,
//!   delivery slot, registry update), then live delivery of what the store wrote.
//!
//! The store keeps the truth ([`crate::store::groups`]); the registry is a view of it that the
//! order lock keeps in step with the order of writes. If a change fails to commit, the group is
//! reloaded from the store before it serves again. With several nodes on one store, another
//! node's changes make this view stale: each record carries the membership version it
//! reflects ([`crate::store::groups::GroupMeta::version_id`]), the store refuses entries
//! planned from an old one (`commit` then reloads and plans again), and group reads check it
//! first ([`Registry::for_member_current`]).

pub mod commit;
#[cfg(test)]
mod fence_tests;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;

use mqim_schemas::v1::ErrorCode;
use parking_lot::Mutex;
use tracing::warn;

use crate::error::ImError;
use crate::store::groups::GroupRecord;
use crate::store::Store;

/// A group as the registry holds it.
#[derive(Clone)]
enum Entry {
    Ready(Arc<GroupRecord>),
    /// A change failed to commit: the group is being reloaded from the store.
    Reloading,
}

/// Every group of this node, with its members.
#[derive(Default)]
pub struct Registry {
    groups: Mutex<HashMap<String, Entry>>,
    /// The store keeps groups at all.
    enabled: bool,
}

impl Registry {
    /// Loads every group the store holds.
    pub async fn load(store: &Arc<dyn Store>) -> anyhow::Result<Registry> {
        if !store.has_groups() {
            return Ok(Registry::default());
        }
        let mut groups = HashMap::new();
        for id in store.group_ids().await? {
            if let Some(record) = store.load_group(&id).await? {
                groups.insert(id, Entry::Ready(Arc::new(record)));
            }
        }
        Ok(Registry {
            groups: Mutex::new(groups),
            enabled: true,
        })
    }

    /// Whether this store shape keeps groups; FAILED_PRECONDITION if not.
    pub fn check_enabled(&self) -> Result<(), ImError> {
        if !self.enabled {
            return Err(ImError::new(
                ErrorCode::FailedPrecondition,
                "this store keeps no groups",
            ));
        }
        Ok(())
    }

    /// The group `id`, as of the writes enqueued so far. Call under the order lock when the
    /// answer decides what is enqueued.
    pub fn get(&self, id: &str) -> Result<Arc<GroupRecord>, ImError> {
        self.check_enabled()?;
        match self.groups.lock().get(id) {
            Some(Entry::Ready(g)) if g.meta.disbanded => {
                Err(policy::denied("the group was disbanded"))
            }
            Some(Entry::Ready(g)) => Ok(g.clone()),
            Some(Entry::Reloading) => Err(ImError::unavailable(
                "the group is being reloaded after a failed write; retry",
            )),
            _ => Err(ImError::new(ErrorCode::NotFound, "no such group")),
        }
    }

    /// The group `id` for a member: NOT_FOUND if it does not exist, PERMISSION_DENIED if `user`
    /// is not a member. Non-members cannot tell a group they are not in from one that exists.
    pub fn for_member(&self, id: &str, user: &str) -> Result<Arc<GroupRecord>, ImError> {
        let g = self.get(id)?;
        if !g.members.contains_key(user) {
            return Err(policy::denied("you are not a member of this group"));
        }
        Ok(g)
    }

    /// [`Registry::for_member`], after making sure this node's copy of `id` is the store's
    /// when other nodes change groups too (the store's version is read: one cheap read), so a
    /// member removed on another node reads nothing more through this one. For reads; writes
    /// are checked by the store itself (`commit`).
    pub async fn for_member_current(
        &self,
        store: &Arc<dyn Store>,
        id: &str,
        user: &str,
    ) -> Result<Arc<GroupRecord>, ImError> {
        self.check_enabled()?;
        if store.groups_shared() {
            let stored = store.group_version(id).await.map_err(ImError::from)?;
            if stored.is_some() && stored != self.version_of(id) {
                self.refresh(store, id).await?;
            }
        }
        self.for_member(id, user)
    }

    /// The entry that added `users` to `id` landed at group seq `seq`: their view starts there.
    pub(crate) fn joined_at_seq(&self, id: &str, users: &[String], seq: u64) {
        let mut groups = self.groups.lock();
        if let Some(Entry::Ready(g)) = groups.get_mut(id) {
            let g = Arc::make_mut(g);
            for u in users {
                if let Some(m) = g.members.get_mut(u).filter(|m| m.joined_seq == 0) {
                    m.joined_seq = seq;
                }
            }
        }
    }

    pub(crate) fn set(&self, id: &str, record: Arc<GroupRecord>) {
        self.groups
            .lock()
            .insert(id.to_string(), Entry::Ready(record));
    }

    /// The membership version of this node's copy of `id` (`None`: not loaded here).
    pub(crate) fn version_of(&self, id: &str) -> Option<u64> {
        match self.groups.lock().get(id) {
            Some(Entry::Ready(g)) => Some(g.meta.version_id),
            _ => None,
        }
    }

    /// Reloads `id` from the store now (the store found this node's copy stale: another node
    /// changed the group). UNAVAILABLE if the store cannot be read.
    pub(crate) async fn refresh(&self, store: &Arc<dyn Store>, id: &str) -> Result<(), ImError> {
        match store.load_group(id).await.map_err(ImError::from)? {
            Some(record) => self.set(id, Arc::new(record)),
            None => {
                self.groups.lock().remove(id);
            }
        }
        Ok(())
    }

    /// A change of `id` failed to commit: serve it again only once reloaded from the store.
    pub(crate) fn reload(self: &Arc<Self>, store: Arc<dyn Store>, id: String) {
        self.groups.lock().insert(id.clone(), Entry::Reloading);
        let this = self.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_millis(100);
            loop {
                match store.load_group(&id).await {
                    Ok(Some(record)) => return this.set(&id, Arc::new(record)),
                    Ok(None) => {
                        this.groups.lock().remove(&id);
                        return;
                    }
                    Err(e) => warn!(group = %id, error = %e, "reloading a group failed; retrying"),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        });
    }
}
