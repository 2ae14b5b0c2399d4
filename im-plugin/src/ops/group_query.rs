//! The group reads: `groupInfo`, `groupMembers` (from the registry) and `groupSync` (the group's
//! log from the store, from the caller's join on). Members only: a non-member learns nothing,
//! not even the member list.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{
    reply, GroupInfoReply, GroupInfoRequest, GroupMember, GroupMembersReply, GroupMembersRequest,
    GroupSyncReply, GroupSyncRequest,
};

use super::group_admin::info;
use super::{parse_group, OpFuture};
use crate::error::ImError;
use crate::presence::DeviceLink;
use crate::ImPlugin;

/// Default and largest page of `groupMembers`.
const DEFAULT_MEMBERS: u32 = 100;
const MAX_MEMBERS: u32 = 1000;

fn ready(r: Result<reply::Result, ImError>) -> OpFuture {
    futures::future::ready(r).boxed()
}

pub fn group_info(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupInfoRequest,
) -> OpFuture {
    let (plugin, user) = (plugin.clone(), link.user().to_string());
    async move {
        let id = parse_group(&req.group)?;
        let g = member(&plugin, &id, &user).await?;
        let role = g.members[&user].role.as_str().to_string();
        Ok(reply::Result::GroupInfo(GroupInfoReply {
            group: Some(info(&id, &g)),
            role,
        }))
    }
    .boxed()
}

/// The group for a member, as the store has it now (see [`Registry::for_member_current`]).
///
/// [`Registry::for_member_current`]: crate::groups::Registry::for_member_current
async fn member(
    plugin: &Arc<ImPlugin>,
    id: &str,
    user: &str,
) -> Result<Arc<crate::store::groups::GroupRecord>, ImError> {
    plugin
        .groups
        .for_member_current(&plugin.store, id, user)
        .await
}

pub fn group_members(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupMembersRequest,
) -> OpFuture {
    let limit = match req.limit.unwrap_or(DEFAULT_MEMBERS) {
        n @ 1..=MAX_MEMBERS => n as usize,
        _ => {
            let e = ImError::invalid(format!("`limit` must be 1 to {MAX_MEMBERS}"));
            return ready(Err(e));
        }
    };
    let (plugin, user) = (plugin.clone(), link.user().to_string());
    async move {
        let id = parse_group(&req.group)?;
        let g = member(&plugin, &id, &user).await?;
        let after = req.after.unwrap_or_default();
        let mut page = g
            .members
            .range::<str, _>((
                std::ops::Bound::Excluded(after.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(user, m)| GroupMember {
                user: user.clone(),
                role: m.role.as_str().to_string(),
                joined_at: m.joined_at,
            });
        let members: Vec<GroupMember> = page.by_ref().take(limit).collect();
        let has_more = page.next().is_some();
        Ok(reply::Result::GroupMembers(GroupMembersReply {
            members,
            has_more,
        }))
    }
    .boxed()
}

pub fn group_sync(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupSyncRequest,
) -> OpFuture {
    let limit = req.limit.unwrap_or(plugin.cfg.sync_default_limit);
    if limit == 0 || limit > plugin.cfg.sync_max_limit {
        let e = ImError::invalid(format!(
            "`limit` must be 1 to {}",
            plugin.cfg.sync_max_limit
        ));
        return ready(Err(e));
    }
    let (plugin, user) = (plugin.clone(), link.user().to_string());
    async move {
        let id = parse_group(&req.group)?;
        let g = member(&plugin, &id, &user).await?;
        let joined = g.members[&user].joined_seq;
        if joined == 0 {
            return Err(ImError::unavailable("your join is being written; retry"));
        }
        let store = plugin.store.clone();
        // A member sees the log from their own join on.
        let after = req.after_group_seq.max(joined - 1);
        let page = store.group_log(&id, after, limit as usize).await?;
        let events = page
            .events
            .into_iter()
            .map(|mut e| {
                e.group_seq = e.seq;
                e.seq = 0;
                e
            })
            .collect();
        Ok(reply::Result::GroupSync(GroupSyncReply {
            events,
            has_more: page.has_more,
        }))
    }
    .boxed()
}
