//! The membership fence: several nodes over one shared log (`redis+scylla`) each keep every
//! group's members in memory ([`crate::groups`]), changed under the node's own order lock. A
//! change made on node A leaves node B's copy stale; without a check, B would accept a send
//! from a removed member, or write the copies of a message for the old member list (a removed
//! member would read what was sent after their removal). Redis, which already serializes every
//! group seq, serializes the membership too; nothing here is a consensus of our own.
//!
//! - The group's membership version is the msgid of its latest change (its creation included),
//!   with that change's group seq: [`GroupMeta::version_id`] / [`GroupMeta::version_seq`] in
//!   the log (written with the change's member rows), and fields `mid`, `mseq` (and `mat`, when
//!   set) of the group log's counter hash in Redis. Every group entry names the version it was
//!   planned from ([`GroupAppend::basis`]); the allocation script (`GROUP_ALLOC_LUA`) refuses
//!   it, spending no seq, when Redis's version differs, and a change's allocation sets the
//!   version to its own (the `version_id` of the meta it writes, which the IM layer makes the
//!   change's msgid) in the same step. So among the entries of a group, in group seq
//!   order, each was planned from the membership of the latest change before it.
//! - A refused entry (`Allocated::Fenced`) fails with [`stale_membership`]; the IM layer
//!   reloads the group from the log and plans it again (`groups/commit.rs`), a bounded number
//!   of times, then answers UNAVAILABLE, which clients resend (dedup makes that safe).
//! - Redis losing the key (a restart from an older snapshot, FLUSHALL) makes the group log's
//!   counter stale, like any user's; its rebuild ([`Shared::restore_group_log`]) takes the
//!   version from the log's meta, as the counter from the log's highest seq. A change another
//!   node may still be writing is not in the log yet: on a shared log the rebuilt version holds
//!   every entry of the group back for the write deadline plus [`HOLD_MARGIN`], after which no
//!   write allocated before the rebuild can land (the log refuses writes past their deadline);
//!   so after a Redis data loss, each group's first entries on `redis+scylla` wait (or get
//!   UNAVAILABLE) for about 5.5 s. A group whose log is empty (a new one) is not held.
//! - A version Redis has that the log never gets (the change's node died, its write failed) must
//!   not fence the group forever (a change whose own version Redis has already passes: an
//!   earlier attempt of it set it). When an entry is refused, [`reconcile`] compares: if the log's
//!   latest change is newer than Redis's, Redis is raised to it (it lost it); if Redis names a
//!   change the log does not hold, once that change could no longer land ([`SplitOptions`]'s
//!   `gap_settle` after it was set) a gap is claimed at its group seq (so it never can), and
//!   Redis is set back to the log's latest change, by a compare-and-set (`FENCE_FIX_LUA`) that
//!   changes nothing if another node moved the version meanwhile. A change whose write was
//!   refused for a conflict (nothing of it applied) gives its version back at once
//!   ([`release_change`]), so its own retry is not fenced.
//!
//! Residual risks: a change allocated before Redis lost its data and landing after the
//! rebuild's hold (a ScyllaDB coordinator applying a write the node gave up on, up to
//! ScyllaDB's write timeout later) is raised into Redis only when the next entry is refused; an
//! entry planned from the older membership in between passes the fence. A change that failed
//! after its allocation set the version (a log outage on a shared log, a Redis answer lost)
//! fences the group's other entries until it can no longer land (`gap_settle`, 15 s); on the
//! embedded log a refused write gives its version back at once. The log's meta row and member
//! rows are the truth a reload reads: on ScyllaDB they land in the entry's logged batch, so a
//! batch replayed late (its coordinator died) can apply a change whose stream rows were undone.
//! Timestamps (`mat`, holds) are node wall clocks: skew shortens or lengthens the waits.
//!
//! [`SplitOptions`]: super::SplitOptions

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use super::Shared;
use crate::store::groups::{log_owner, stale_membership, GroupAppend, GroupMeta};
use crate::store::redis_index::{FenceFix, FenceState, GroupFence};
use crate::store::{StoreError, StoreResult};

/// How long past the write deadline a rebuilt version holds a shared log's group entries back.
pub(super) const HOLD_MARGIN: Duration = Duration::from_millis(500);

/// What the allocation of `entry` checks and sets: a change sets the version its meta row
/// will say (`GroupMeta::version_id`, which the IM layer makes the change's msgid).
pub(super) fn fence_of(entry: &GroupAppend) -> GroupFence {
    GroupFence {
        basis: entry.basis,
        sets: entry.membership.as_ref().map(|w| w.meta.version_id),
        now_ms: crate::now_ms(),
    }
}

/// (msgid, group seq) of the latest change a stored meta reflects; (0, 0) for no group.
fn version_of(meta: Option<GroupMeta>) -> (u64, u64) {
    meta.map_or((0, 0), |m| (m.version_id, m.version_seq))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Shared {
    /// Rebuilds the counter (at least `floor`) and the membership version of the group whose
    /// log is `owner`, from the log (see the module comment).
    pub(super) async fn restore_group_log(
        &self,
        owner: &str,
        rid: &str,
        floor: u64,
    ) -> StoreResult<()> {
        let version = match (owner.strip_prefix("#g:"), self.log.groups()) {
            (Some(group), Some(log)) => version_of(log.group_meta(group).await?),
            _ => (0, 0),
        };
        // No hold when every write of this log is this node's (the rebuild waited for them),
        // nor for a group whose log is empty (a new one: no other node knows its id yet).
        let hold_until = match self.log.single_writer() || floor == 0 {
            true => 0,
            false => crate::now_ms() + ms(self.opts.write_deadline + HOLD_MARGIN),
        };
        self.index
            .restore_group(owner, rid, floor, version, hold_until)
            .await?;
        Ok(())
    }
}

/// The answer to an entry of `group` the allocation refused with Redis's version `state`:
/// [`stale_membership`], after settling the version if Redis's can no longer be right.
pub(super) async fn fenced(shared: &Arc<Shared>, group: &str, state: FenceState) -> StoreError {
    if let Err(e) = reconcile(shared, group, state).await {
        debug!(group, error = %e, "could not check a group's membership version");
    }
    stale_membership(group)
}

/// See the module comment.
async fn reconcile(shared: &Arc<Shared>, group: &str, redis: FenceState) -> StoreResult<()> {
    let log = shared.group_log()?;
    let owner = log_owner(group);
    let latest = version_of(log.group_meta(group).await?);
    if latest.0 == redis.version_id {
        return Ok(()); // the planner's copy was older: a reload is all it takes
    }
    if latest.1 > redis.version_seq {
        return fix(shared, &owner, redis.version_id, latest).await;
    }
    let now = crate::now_ms();
    if now < redis.hold_until_ms || now < redis.set_at_ms + ms(shared.opts.gap_settle) {
        return Ok(()); // the change Redis names may still land
    }
    if redis.version_seq > 0 {
        // From now on it never can: its seq holds a gap, or the change itself if it landed.
        let deadline = std::time::Instant::now() + shared.opts.write_deadline;
        shared
            .log
            .log_gaps(vec![(owner.clone(), redis.version_seq)], deadline)
            .await?;
    }
    let latest = version_of(log.group_meta(group).await?);
    if latest.0 == redis.version_id {
        return Ok(());
    }
    fix(shared, &owner, redis.version_id, latest).await
}

async fn fix(shared: &Shared, owner: &str, from: u64, to: (u64, u64)) -> StoreResult<()> {
    match shared.index.fix_fence(owner, from, to).await? {
        FenceFix::Fixed => info!(
            group_log = owner,
            from,
            to = to.0,
            "set a group's membership version to the log's latest change"
        ),
        FenceFix::Moved => {}
        // Rebuilt from the log before its next allocation.
        FenceFix::Stale => shared.unmark_fresh(owner),
    }
    Ok(())
}

/// A change whose log write was refused whole (a conflict) gives back the version its
/// allocation set, so that its retry, planned from the version before, is not fenced by itself.
pub(super) async fn release_change(shared: &Arc<Shared>, entry: &GroupAppend) {
    let Some(set) = entry.membership.as_ref().map(|w| w.meta.version_id) else {
        return;
    };
    let released = async {
        let latest = version_of(shared.group_log()?.group_meta(&entry.group).await?);
        if latest.0 != set {
            fix(shared, &log_owner(&entry.group), set, latest).await?;
        }
        Ok::<(), StoreError>(())
    };
    if let Err(e) = released.await {
        debug!(group = %entry.group, error = %e, "could not give a change's version back");
    }
}
