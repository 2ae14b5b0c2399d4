//! The IM operations, one file each. Every operation takes a decoded request and returns a
//! future of its reply; the plugin turns the reply (or the error) into a downlink.

pub mod ack;
pub mod send;
pub mod sync;

use futures::future::BoxFuture;
use mqim_schemas::v1::reply;

use crate::error::ImError;

/// What an operation produces.
pub type OpFuture = BoxFuture<'static, Result<reply::Result, ImError>>;
