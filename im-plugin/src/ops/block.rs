//! `block`, `unblock`, `blocked`: a user's block list. A blocked user's one-to-one sends to the
//! blocker are refused (`send.rs` asks [`crate::extras::Extras::blocks`]), their typing is not
//! shown to the blocker, and neither sees the other's presence. The store makes the change
//! durable first; the in-memory view the send path reads changes after, before the reply.

use std::sync::Arc;

use futures::FutureExt;
use mqim_schemas::v1::{
    reply, BlockReply, BlockRequest, BlockedReply, BlockedRequest, ErrorCode, UnblockReply,
    UnblockRequest,
};

use super::OpFuture;
use crate::error::ImError;
use crate::extras::MAX_BLOCKS;
use crate::presence::DeviceLink;
use crate::ImPlugin;

pub fn block(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: BlockRequest) -> OpFuture {
    change(plugin, link.user(), req.user, true)
}

pub fn unblock(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    req: UnblockRequest,
) -> OpFuture {
    change(plugin, link.user(), req.user, false)
}

pub fn blocked(
    plugin: &Arc<ImPlugin>,
    link: &Arc<dyn DeviceLink>,
    _req: BlockedRequest,
) -> OpFuture {
    let result = plugin.extras.check_enabled().map(|()| {
        reply::Result::Blocked(BlockedReply {
            users: plugin.extras.blocked_by(link.user()),
        })
    });
    futures::future::ready(result).boxed()
}

fn change(plugin: &Arc<ImPlugin>, me: &str, user: String, on: bool) -> OpFuture {
    if let Err(e) = check(plugin, me, &user, on) {
        return futures::future::ready(Err(e)).boxed();
    }
    let (plugin, me) = (plugin.clone(), me.to_string());
    async move {
        let log = plugin
            .store
            .extras_log()
            .ok_or_else(|| ImError::new(ErrorCode::FailedPrecondition, "no block list here"))?;
        log.set_block(&me, &user, on).await?;
        plugin.extras.set_block(&me, &user, on);
        crate::extras::news::announce_extras(&plugin, &me);
        Ok(match on {
            true => reply::Result::Block(BlockReply {}),
            false => reply::Result::Unblock(UnblockReply {}),
        })
    }
    .boxed()
}

fn check(plugin: &ImPlugin, me: &str, user: &str, on: bool) -> Result<(), ImError> {
    plugin.extras.check_enabled()?;
    if !crate::topics::valid_user_id(user) {
        return Err(ImError::invalid("`user` must be a user id"));
    }
    if user == me {
        return Err(ImError::invalid("you cannot block yourself"));
    }
    if on && !plugin.extras.blocks(me, user) && plugin.extras.block_count(me) >= MAX_BLOCKS {
        return Err(ImError::new(
            ErrorCode::FailedPrecondition,
            format!("you block {MAX_BLOCKS} users already; unblock someone first"),
        ));
    }
    super::send::check_change_rate(plugin, me)
}
