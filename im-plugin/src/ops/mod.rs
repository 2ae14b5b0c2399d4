//! The IM operations, one file each. Every operation takes a decoded request and returns a
//! future of its reply; the plugin turns the reply (or the error) into a downlink.

pub mod ack;
pub mod conversations;
pub mod history;
pub mod mute;
pub mod push_register;
pub mod push_unregister;
pub mod read;
pub mod send;
pub mod sync;
pub mod unmute;

use futures::future::BoxFuture;
use mqim_schemas::v1::reply;

use crate::error::ImError;

/// What an operation produces.
pub type OpFuture = BoxFuture<'static, Result<reply::Result, ImError>>;

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

/// Checks a conversation id (`u:<user>`) and returns the peer.
pub(crate) fn parse_conversation(id: &str) -> Result<&str, ImError> {
    crate::conversation::Conversation::peer(id)
        .filter(|u| crate::topics::valid_user_id(u))
        .ok_or_else(|| ImError::invalid("`conversation` must be `u:<user id>`"))
}
