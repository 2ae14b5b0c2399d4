//! mqim's IM domain: the service behind the `im/` topic tree.
//!
//! Layout:
//! - `plugin`: `ImPlugin`, the service: authorizes IM topics, dispatches requests, replies.
//! - `ops/`: one file per operation (`send`, `sync`, `ack`, ...; the group changes share
//!   `group_admin`, the group reads `group_query`).
//! - `extras/`: blocks, presence settings and watches, typing rates (conversation extras).
//! - `groups/`: the group registry (members, in step with the order of writes), the rules of
//!   who may do what, and the commit sequence every group entry goes through.
//! - `wire`: request decoding and downlink encoding (canonical proto3 JSON or protobuf).
//! - `topics`: the `im/{user}/{device}/{up|down}/{json|pb}` tree.
//! - `presence`: online devices; `delivery`: live delivery in commit order.
//! - `msgid`: node-unique, time-ordered message ids; `conversation`: conversation ids (`u:`, `g:`).
//! - `auth`: JWT checking and issuing.
//! - `store/`: the store traits, their conformance suite and the backends (embedded: fjall; scale-out: Redis index + message log).
//! - `config`, `error`: settings and the stable error codes; `limits`: the per-user send rate.
//! - `hooks`: the push hook the broker registers (committed events, the push operations).
//! - `observe`: what the broker's metrics see (requests answered, events delivered).
//! - `admin`: what the admin API reads and does (user summary, system messages);
//!   `bans`: the ban list; `moderation`: the sensitive-word filter on sends.
//!
//! It knows nothing of MQTT packets or sockets: the connection layer reaches it through
//! [`presence::DeviceLink`] and [`ImPlugin::handle_uplink`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod bans;
pub mod config;
pub mod conversation;
pub mod delivery;
pub mod error;
pub mod extras;
pub mod groups;
pub mod hooks;
pub mod limits;
pub mod moderation;
pub mod msgid;
pub mod observe;
pub mod ops;
pub mod plugin;
pub mod presence;
pub mod store;
pub mod testing;
pub mod topics;
pub mod wire;

pub use plugin::ImPlugin;

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
