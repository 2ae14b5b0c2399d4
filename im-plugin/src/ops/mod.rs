//! The IM operations, one file each. Every operation takes a decoded request and returns a
//! future of its reply; the plugin turns the reply (or the error) into a downlink.

pub mod ack;
pub mod amend;
pub mod block;
pub mod conversations;
pub mod edit;
pub mod group_admin;
pub mod group_query;
pub mod group_send;
pub mod history;
pub mod mute;
pub mod presence;
pub mod push_register;
pub mod push_unregister;
pub mod read;
pub mod recall;
pub mod send;
pub mod sync;
pub mod typing;
pub mod unmute;

use futures::future::BoxFuture;
use mqim_schemas::v1::reply;

use crate::conversation::Conversation;
use crate::error::ImError;

/// What an operation produces.
pub type OpFuture = BoxFuture<'static, Result<reply::Result, ImError>>;

/// Runs `op` for `link` on `conversation`; in a group, when other nodes change groups too
/// ([`crate::store::groups::GroupStore::groups_shared`]), only after this node's copy of the
/// group was checked against the store's version (and reloaded if behind), so an op planned
/// from the members (`read`'s receipt, `typing`'s recipients, `recall`/`edit`'s streams and
/// roles) never uses a membership another node changed. Elsewhere `op` starts at once, so it
/// is enqueued in call order.
pub(crate) fn with_current_group(
    plugin: &std::sync::Arc<crate::ImPlugin>,
    link: &std::sync::Arc<dyn crate::presence::DeviceLink>,
    conversation: &str,
    op: impl FnOnce(
            &std::sync::Arc<crate::ImPlugin>,
            &std::sync::Arc<dyn crate::presence::DeviceLink>,
        ) -> OpFuture
        + Send
        + 'static,
) -> OpFuture {
    use futures::FutureExt as _;
    let group = match Conversation::parse(conversation) {
        Some(Conversation::Group(g)) if plugin.store.groups_shared() => g,
        _ => return op(plugin, link),
    };
    let (plugin, link) = (plugin.clone(), link.clone());
    async move {
        // Not a member, no such group: the op's own answer too.
        plugin
            .groups
            .for_member_current(&plugin.store, &group, link.user())
            .await?;
        op(&plugin, &link).await
    }
    .boxed()
}

/// The answer of an operation that runs on a task of its own (so a requester that goes away
/// cannot cancel the delivery of what it committed); a task that panicked is `INTERNAL`.
pub(crate) fn joined<T: Send + 'static>(
    task: tokio::task::JoinHandle<Result<T, ImError>>,
) -> BoxFuture<'static, Result<T, ImError>> {
    Box::pin(async move {
        task.await.unwrap_or_else(|e| {
            Err(ImError::new(
                mqim_schemas::v1::ErrorCode::Internal,
                e.to_string(),
            ))
        })
    })
}

/// Default and largest page of `conversations` and `history`.
const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// Checks a page size from a request (default 20, 1 to 100).
pub(crate) fn page_limit(requested: Option<u32>) -> Result<usize, ImError> {
    match requested.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n as usize),
        _ => Err(ImError::invalid(format!("`limit` must be 1 to {MAX_PAGE}"))),
    }
}

/// Checks a one-to-one conversation id (`u:<user>`) and returns the peer.
pub(crate) fn parse_conversation(id: &str) -> Result<&str, ImError> {
    crate::conversation::Conversation::peer(id)
        .filter(|u| crate::topics::valid_user_id(u))
        .ok_or_else(|| ImError::invalid("`conversation` must be `u:<user id>` or `g:<group id>`"))
}

/// Checks a conversation id from a client: `u:<user>` or `g:<group>`.
pub(crate) fn parse_any_conversation(id: &str) -> Result<Conversation, ImError> {
    match Conversation::parse(id) {
        Some(Conversation::User(u)) if crate::topics::valid_user_id(&u) => {
            Ok(Conversation::User(u))
        }
        Some(Conversation::Group(g)) if valid_group_id(&g) => Ok(Conversation::Group(g)),
        _ => Err(ImError::invalid(
            "`conversation` must be `u:<user id>` or `g:<group id>`",
        )),
    }
}

/// A group id as the server assigns them: decimal digits.
pub(crate) fn valid_group_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a group reference from a client (`g:<id>`) and returns the id.
pub(crate) fn parse_group(id: &str) -> Result<String, ImError> {
    match Conversation::parse(id) {
        Some(Conversation::Group(g)) if valid_group_id(&g) => Ok(g),
        _ => Err(ImError::invalid("`group` must be `g:<group id>`")),
    }
}
