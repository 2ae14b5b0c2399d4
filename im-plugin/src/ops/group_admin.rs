//! The membership and settings changes of a group: `groupCreate`, `groupAdd`, `groupRemove`,
//! `groupLeave`, `groupUpdate`, `groupRole`, `groupTransfer`, `groupDisband`.
//!
//! Each is a rule (from `groups::policy`) that turns the group as of the writes enqueued so far
//! into a [`Change`]: the `group` event to log, the group after it and the member rows to write.
//! [`run`] turns a change into one group entry: a copy of the event goes to every member before
//! and after it in a small group; in a large one to the one who made it and the members it
//! removes or changes the role of, while the others hear of it live and in `groupSync`. A
//! `groupCreate` given a clientMsgId is deduped like a send (a retry answers with the group the
//! first one created); the other changes are not deduped (a retried add or remove finds the
//! change made and is refused or repeats nothing). Changes count against the user's send rate.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{
    reply, GroupAddReply, GroupAddRequest, GroupChange, GroupCreateReply, GroupCreateRequest,
    GroupDisbandReply, GroupDisbandRequest, GroupInfo, GroupLeaveReply, GroupLeaveRequest,
    GroupRemoveReply, GroupRemoveRequest, GroupRoleReply, GroupRoleRequest, GroupTransferReply,
    GroupTransferRequest, GroupUpdateReply, GroupUpdateRequest,
};

use super::{parse_group, OpFuture};
use crate::conversation::Conversation;
use crate::error::ImError;
use crate::groups::commit::{commit, Planned};
use crate::groups::policy::{self, precondition};
use crate::presence::DeviceLink;
use crate::store::groups::{
    Copy, GroupAppend, GroupEntry, GroupMeta, GroupOutcome, GroupRecord, Member, MemberWrite,
    MembershipWrite, Role,
};
use crate::ImPlugin;

/// Most members one request may add or remove (and a new group may start with).
const MAX_CHANGE_MEMBERS: usize = 500;
/// Longest group name, in characters.
const MAX_NAME_CHARS: usize = 100;

/// What a rule decided.
struct Change {
    kind: &'static str,
    members: Vec<String>,
    name: Option<String>,
    role: Option<String>,
    after: GroupRecord,
    upserts: Vec<MemberWrite>,
    removals: Vec<String>,
    /// A creation's clientMsgId: its dedup key (empty: none).
    client_msg_id: String,
}

/// The group as clients see it.
pub(crate) fn info(id: &str, g: &GroupRecord) -> GroupInfo {
    GroupInfo {
        id: Conversation::Group(id.to_string()).to_string(),
        name: g.meta.name.clone(),
        owner: g.meta.owner.clone(),
        large: g.meta.large,
        member_count: g.members.len() as u64,
        created_at: g.meta.created_at,
    }
}

/// Commits the change `rule` makes of group `group` (`None`: a new one) and answers with
/// `reply` of the group after it.
fn run<R, A>(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    group: Option<String>,
    rule: R,
    reply: A,
) -> OpFuture
where
    // Clone: a rule runs again if another node changed the group meanwhile (`commit`).
    R: FnOnce(Option<&GroupRecord>, &str, u64, i64) -> Result<Change, ImError>
        + Clone
        + Send
        + 'static,
    A: FnOnce(GroupInfo) -> reply::Result + Send + 'static,
{
    let actor = link.user().to_string();
    // Every change is stored for good, like a message: it counts against the same rate, so no
    // client can grow the store (and the registry) faster than it may send.
    if let Err(e) = super::send::check_rate(plugin, &actor) {
        return ready(e);
    }
    let target = group.clone();
    let committed = commit(
        plugin,
        target.as_deref(),
        link.conn_id(),
        move |before, msg_id, ts| {
            let c = rule(before.as_deref(), &actor, msg_id, ts)?;
            let id = group.unwrap_or_else(|| msg_id.to_string());
            let large = c.after.meta.large;
            let mut owners: BTreeSet<String> = BTreeSet::new();
            if large {
                // The one who made the change, and the members it takes out or whose role it
                // changes (a removed member can no longer read the log: their stream is where
                // they learn of it). Added members learn of it live and in `groupSync`: a copy
                // listing 500 added members in each of their 500 streams would make one add
                // cost as much as 250,000 events.
                owners.insert(actor.clone());
                if matches!(c.kind, "removed" | "left" | "role" | "transferred") {
                    owners.extend(c.members.iter().cloned());
                }
            } else {
                owners.extend(c.after.members.keys().cloned());
                if let Some(b) = before.as_deref() {
                    owners.extend(b.members.keys().cloned());
                }
            }
            let copies = owners
                .into_iter()
                .map(|owner| Copy {
                    owner,
                    recent: false,
                    unread: false,
                    mention: false,
                })
                .collect();
            let change = GroupChange {
                group: Conversation::Group(id.clone()).to_string(),
                change: c.kind.to_string(),
                by: actor.clone(),
                members: c.members,
                name: c.name,
                role: c.role,
                client_msg_id: c.client_msg_id,
            };
            let mut after = c.after;
            after.meta.member_count = after.members.len() as u64;
            Ok(Planned {
                append: GroupAppend {
                    group: id,
                    msg_id,
                    ts,
                    large,
                    entry: GroupEntry::Change(change),
                    copies,
                    basis: 0,
                    membership: Some(MembershipWrite {
                        meta: after.meta.clone(),
                        upserts: c.upserts,
                        removals: c.removals,
                    }),
                },
                after: Some(Arc::new(after)),
            })
        },
    );
    let groups = plugin.groups.clone();
    async move {
        // A duplicate is a retried creation: the answer is the group the first one created.
        let id = match committed.await? {
            GroupOutcome::Fresh(a) => a.sent.conversation,
            GroupOutcome::Duplicate(original) => original.conversation,
        };
        let group = parse_group(&id)?;
        // Leave and disband answer `{}`; the others the group as it is now.
        let current = groups.get(&group).ok();
        Ok(reply(current.map(|g| info(&group, &g)).unwrap_or_default()))
    }
    .boxed()
}

fn ready(e: ImError) -> OpFuture {
    futures::future::ready(Err(e)).boxed()
}

/// Distinct, valid user ids from a request, at most [`MAX_CHANGE_MEMBERS`].
fn user_list(users: Vec<String>) -> Result<Vec<String>, ImError> {
    let set: BTreeSet<String> = users.into_iter().collect();
    if set.len() > MAX_CHANGE_MEMBERS {
        return Err(ImError::invalid(format!(
            "at most {MAX_CHANGE_MEMBERS} members per request"
        )));
    }
    if let Some(bad) = set.iter().find(|u| !crate::topics::valid_user_id(u)) {
        return Err(ImError::invalid(format!("{bad:?} is not a valid user id")));
    }
    Ok(set.into_iter().collect())
}

fn checked_name(name: String) -> Result<String, ImError> {
    let n = name.trim().chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(ImError::invalid(format!(
            "`name` must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name.trim().to_string())
}

fn existing(before: Option<&GroupRecord>) -> Result<&GroupRecord, ImError> {
    before.ok_or_else(|| ImError::invalid("no group"))
}

fn new_member(role: Role, msg_id: u64, ts: i64) -> Member {
    Member {
        role,
        joined_at: ts,
        // Filled in once the entry has its group seq (`Registry::joined_at_seq`).
        joined_seq: 0,
        joined_msg_id: msg_id,
    }
}

fn joins(users: &[String], role: Role) -> Vec<MemberWrite> {
    users
        .iter()
        .map(|u| MemberWrite {
            user: u.clone(),
            role,
            joins: true,
        })
        .collect()
}

fn role_change(user: &str, role: Role) -> MemberWrite {
    MemberWrite {
        user: user.to_string(),
        role,
        joins: false,
    }
}

fn change(kind: &'static str, after: GroupRecord) -> Change {
    Change {
        kind,
        members: Vec::new(),
        name: None,
        role: None,
        after,
        upserts: Vec::new(),
        removals: Vec::new(),
        client_msg_id: String::new(),
    }
}

pub fn create(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupCreateRequest,
) -> OpFuture {
    let checked = checked_name(req.name).and_then(|n| user_list(req.members).map(|m| (n, m)));
    let (name, mut members) = match checked {
        Ok(v) => v,
        Err(e) => return ready(e),
    };
    if req.client_msg_id.chars().count() > 64 {
        return ready(ImError::invalid("`clientMsgId` is at most 64 characters"));
    }
    let client_msg_id = req.client_msg_id;
    let actor = link.user().to_string();
    members.retain(|m| *m != actor);
    let capacity = policy::capacity(req.large, &plugin.cfg);
    if members.len() + 1 > capacity {
        return ready(precondition(format!(
            "a {} group has at most {capacity} members",
            if req.large { "large" } else { "small" }
        )));
    }
    let large = req.large;
    let rule = move |_: Option<&GroupRecord>, actor: &str, msg_id, ts| {
        let mut all = vec![actor.to_string()];
        all.extend(members.iter().cloned());
        let mut after = GroupRecord {
            meta: GroupMeta {
                name: name.clone(),
                owner: actor.to_string(),
                large,
                created_at: ts,
                disbanded: false,
                member_count: 0,
                version_id: 0,
                version_seq: 0,
            },
            members: Default::default(),
        };
        after
            .members
            .insert(actor.to_string(), new_member(Role::Owner, msg_id, ts));
        for m in &members {
            after
                .members
                .insert(m.clone(), new_member(Role::Member, msg_id, ts));
        }
        let mut upserts = joins(&members, Role::Member);
        upserts.push(MemberWrite {
            user: actor.to_string(),
            role: Role::Owner,
            joins: true,
        });
        Ok(Change {
            members: all,
            name: Some(name),
            upserts,
            client_msg_id,
            ..change("created", after)
        })
    };
    run(plugin, link, None, rule, |g| {
        reply::Result::GroupCreate(GroupCreateReply { group: Some(g) })
    })
}

pub fn add(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: GroupAddRequest) -> OpFuture {
    let checked = parse_group(&req.group).and_then(|g| user_list(req.members).map(|m| (g, m)));
    let (group, members) = match checked {
        Ok(v) => v,
        Err(e) => return ready(e),
    };
    if members.is_empty() {
        return ready(ImError::invalid("`members` is empty"));
    }
    let cfg = plugin.cfg.clone();
    let rule = move |before: Option<&GroupRecord>, actor: &str, msg_id, ts| {
        let before = existing(before)?;
        policy::may_add(before, actor)?;
        let new: Vec<String> = members
            .into_iter()
            .filter(|m| !before.members.contains_key(m))
            .collect();
        if new.is_empty() {
            return Err(precondition("they are all members already"));
        }
        let capacity = policy::capacity(before.meta.large, &cfg);
        if before.members.len() + new.len() > capacity {
            return Err(precondition(format!(
                "the group would have more than {capacity} members"
            )));
        }
        let mut after = before.clone();
        for m in &new {
            after
                .members
                .insert(m.clone(), new_member(Role::Member, msg_id, ts));
        }
        Ok(Change {
            upserts: joins(&new, Role::Member),
            members: new,
            ..change("added", after)
        })
    };
    run(plugin, link, Some(group), rule, |g| {
        reply::Result::GroupAdd(GroupAddReply { group: Some(g) })
    })
}

pub fn remove(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupRemoveRequest,
) -> OpFuture {
    let checked = parse_group(&req.group).and_then(|g| user_list(req.members).map(|m| (g, m)));
    let (group, members) = match checked {
        Ok(v) => v,
        Err(e) => return ready(e),
    };
    if members.is_empty() {
        return ready(ImError::invalid("`members` is empty"));
    }
    let rule = move |before: Option<&GroupRecord>, actor: &str, _, _| {
        let before = existing(before)?;
        for m in &members {
            policy::may_remove(before, actor, m)?;
        }
        let mut after = before.clone();
        for m in &members {
            after.members.remove(m);
        }
        Ok(Change {
            removals: members.clone(),
            members,
            ..change("removed", after)
        })
    };
    run(plugin, link, Some(group), rule, |g| {
        reply::Result::GroupRemove(GroupRemoveReply { group: Some(g) })
    })
}

pub fn leave(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupLeaveRequest,
) -> OpFuture {
    let group = match parse_group(&req.group) {
        Ok(g) => g,
        Err(e) => return ready(e),
    };
    let rule = move |before: Option<&GroupRecord>, actor: &str, _, _| {
        let before = existing(before)?;
        policy::may_leave(before, actor)?;
        let mut after = before.clone();
        after.members.remove(actor);
        Ok(Change {
            members: vec![actor.to_string()],
            removals: vec![actor.to_string()],
            ..change("left", after)
        })
    };
    run(plugin, link, Some(group), rule, |_| {
        reply::Result::GroupLeave(GroupLeaveReply {})
    })
}

pub fn update(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupUpdateRequest,
) -> OpFuture {
    let checked = parse_group(&req.group).and_then(|g| match req.name {
        Some(n) => checked_name(n).map(|n| (g, n)),
        None => Err(ImError::invalid("nothing to update: give `name`")),
    });
    let (group, name) = match checked {
        Ok(v) => v,
        Err(e) => return ready(e),
    };
    let rule = move |before: Option<&GroupRecord>, actor: &str, _, _| {
        let before = existing(before)?;
        policy::may_administer(before, actor)?;
        let mut after = before.clone();
        after.meta.name = name.clone();
        Ok(Change {
            name: Some(name),
            ..change("updated", after)
        })
    };
    run(plugin, link, Some(group), rule, |g| {
        reply::Result::GroupUpdate(GroupUpdateReply { group: Some(g) })
    })
}

pub fn role(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: GroupRoleRequest) -> OpFuture {
    let role = match req.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => return ready(ImError::invalid("`role` must be admin or member")),
    };
    let group = match parse_group(&req.group) {
        Ok(g) => g,
        Err(e) => return ready(e),
    };
    let member = req.member;
    let rule = move |before: Option<&GroupRecord>, actor: &str, _, _| {
        let before = existing(before)?;
        policy::must_own(before, actor)?;
        match before.members.get(&member).map(|m| m.role) {
            None => return Err(ImError::invalid(format!("{member:?} is not a member"))),
            Some(Role::Owner) => {
                return Err(precondition("the owner's role changes by groupTransfer"))
            }
            Some(_) => {}
        }
        let mut after = before.clone();
        if let Some(m) = after.members.get_mut(&member) {
            m.role = role;
        }
        Ok(Change {
            upserts: vec![role_change(&member, role)],
            members: vec![member],
            role: Some(role.as_str().to_string()),
            ..change("role", after)
        })
    };
    run(plugin, link, Some(group), rule, |g| {
        reply::Result::GroupRole(GroupRoleReply { group: Some(g) })
    })
}

pub fn transfer(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupTransferRequest,
) -> OpFuture {
    let group = match parse_group(&req.group) {
        Ok(g) => g,
        Err(e) => return ready(e),
    };
    let to = req.to;
    let rule = move |before: Option<&GroupRecord>, actor: &str, _, _| {
        let before = existing(before)?;
        policy::must_own(before, actor)?;
        if to == actor || !before.members.contains_key(&to) {
            return Err(ImError::invalid("`to` must be another member of the group"));
        }
        let mut after = before.clone();
        after.meta.owner = to.clone();
        for (user, role) in [(to.as_str(), Role::Owner), (actor, Role::Admin)] {
            if let Some(m) = after.members.get_mut(user) {
                m.role = role;
            }
        }
        Ok(Change {
            upserts: vec![
                role_change(&to, Role::Owner),
                role_change(actor, Role::Admin),
            ],
            members: vec![to],
            ..change("transferred", after)
        })
    };
    run(plugin, link, Some(group), rule, |g| {
        reply::Result::GroupTransfer(GroupTransferReply { group: Some(g) })
    })
}

pub fn disband(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: GroupDisbandRequest,
) -> OpFuture {
    let group = match parse_group(&req.group) {
        Ok(g) => g,
        Err(e) => return ready(e),
    };
    let rule = move |before: Option<&GroupRecord>, actor: &str, _, _| {
        let before = existing(before)?;
        policy::must_own(before, actor)?;
        let mut after = before.clone();
        after.meta.disbanded = true;
        after.members.clear();
        Ok(Change {
            removals: before.members.keys().cloned().collect(),
            ..change("disbanded", after)
        })
    };
    run(plugin, link, Some(group), rule, |_| {
        reply::Result::GroupDisband(GroupDisbandReply {})
    })
}
