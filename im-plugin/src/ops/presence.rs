//! `presence`, `presenceWatch` and `settings {presenceVisible}`.
//!
//! A user's presence may be read only by users who have a conversation with them (a one-to-one
//! history, or a group they share); anyone else gets `PERMISSION_DENIED` for that user, so
//! presence cannot be scraped. A user who hides their presence, and both sides of a block, are
//! reported offline without `lastSeen`. Online means a device connected to any node (the split
//! store shares presence in Redis) or to this one; `lastSeen` is when the user's last device
//! went offline (kept in memory and in the store, so it survives a restart; 0: never seen).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{
    reply, Error, ErrorCode, PresenceEntry, PresenceReply, PresenceRequest, PresenceWatchReply,
    PresenceWatchRequest, SettingsReply, SettingsRequest,
};

use super::OpFuture;
use crate::conversation::Conversation;
use crate::error::ImError;
use crate::extras::watch::MAX_WATCH;
use crate::presence::DeviceLink;
use crate::ImPlugin;

/// Most users one `presence` request may name.
pub const MAX_USERS: usize = 100;

pub fn presence(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: PresenceRequest,
) -> OpFuture {
    let (plugin, me) = (plugin.clone(), link.user().to_string());
    async move {
        let users = entries(&plugin, &me, req.users, MAX_USERS).await?;
        Ok(reply::Result::Presence(PresenceReply { users }))
    }
    .boxed()
}

pub fn watch(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: PresenceWatchRequest,
) -> OpFuture {
    let (plugin, link) = (plugin.clone(), link.clone());
    async move {
        let out = entries(&plugin, link.user(), req.users, MAX_WATCH).await?;
        // Only the users the caller may see are watched.
        let watched = out
            .iter()
            .filter(|e| e.error.is_none())
            .map(|e| (e.user.clone(), e.online))
            .collect();
        if !plugin.extras.watch.set(&link, watched) {
            return Err(ImError::unavailable(
                "too many presence watches on this node; try again later",
            ));
        }
        Ok(reply::Result::PresenceWatch(PresenceWatchReply {
            users: out,
        }))
    }
    .boxed()
}

pub fn settings(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: SettingsRequest,
) -> OpFuture {
    let (plugin, me) = (plugin.clone(), link.user().to_string());
    async move {
        if let Some(visible) = req.presence_visible {
            plugin.extras.check_enabled()?;
            super::send::check_change_rate(&plugin, &me)?;
            let log = plugin.store.extras_log().ok_or_else(|| {
                ImError::new(ErrorCode::FailedPrecondition, "no settings on this store")
            })?;
            log.set_presence_visible(&me, visible).await?;
            plugin.extras.set_presence_visible(&me, visible);
            crate::extras::news::announce_extras(&plugin, &me);
        }
        Ok(reply::Result::Settings(SettingsReply {
            presence_visible: plugin.extras.presence_visible(&me),
        }))
    }
    .boxed()
}

/// What `me` may know of each of `users` (valid user ids, at most `max`), each once.
async fn entries(
    plugin: &ImPlugin,
    me: &str,
    users: Vec<String>,
    max: usize,
) -> Result<Vec<PresenceEntry>, ImError> {
    if users.len() > max {
        return Err(ImError::invalid(format!("at most {max} users per request")));
    }
    if let Some(bad) = users.iter().find(|u| !crate::topics::valid_user_id(u)) {
        return Err(ImError::invalid(format!("{bad:?} is not a user id")));
    }
    let users: BTreeSet<String> = users.into_iter().collect();
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        out.push(entry(plugin, me, user).await?);
    }
    Ok(out)
}

/// What `me` may know of `user`'s presence.
async fn entry(plugin: &ImPlugin, me: &str, user: String) -> Result<PresenceEntry, ImError> {
    if !may_see(plugin, me, &user).await? {
        return Ok(PresenceEntry {
            user,
            error: Some(Error {
                code: ErrorCode::PermissionDenied as i32,
                message: "you have no conversation with this user".into(),
            }),
            ..PresenceEntry::default()
        });
    }
    let shown = user == me
        || (plugin.extras.presence_visible(&user) && !plugin.extras.either_blocks(me, &user));
    if !shown {
        return Ok(PresenceEntry {
            user,
            ..PresenceEntry::default()
        });
    }
    let online = plugin.presence.devices_of(&user) > 0
        || plugin
            .store
            .online_devices(&user)
            .await?
            .is_some_and(|d| !d.is_empty());
    let last_seen = match online {
        true => 0,
        false => {
            plugin
                .extras
                .last_seen_anywhere(&plugin.store, &user)
                .await?
        }
    };
    Ok(PresenceEntry {
        last_seen,
        user,
        online,
        error: None,
    })
}

/// Does `me` have a conversation with `user`: a one-to-one history, or a group they share?
async fn may_see(plugin: &ImPlugin, me: &str, user: &str) -> Result<bool, ImError> {
    if me == user {
        return Ok(true);
    }
    let one_to_one = plugin
        .store
        .history(me, &Conversation::with_user(user), None, 1)
        .await?;
    if !one_to_one.messages.is_empty() {
        return Ok(true);
    }
    if !plugin.store.has_groups() {
        return Ok(false);
    }
    for (group, _) in plugin.store.user_groups(me).await? {
        if plugin
            .groups
            .get(&group)
            .is_ok_and(|g| g.members.contains_key(user))
        {
            return Ok(true);
        }
    }
    Ok(false)
}
