//! The IM layer's settings (the `[im]` and `[auth]` sections of `mqim.toml`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// IM behaviour. Every field has a default that works without a config file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImConfig {
    /// This node's id (0..=1023), part of every msgid: nodes of one cluster need distinct ids.
    pub node_id: u16,
    /// Largest message content (`text` plus `body`) in bytes; larger sends get `TOO_LARGE`.
    pub max_body_bytes: usize,
    /// How long a (sender, clientMsgId) pair is remembered for resend dedup, in seconds.
    pub dedup_ttl_secs: u64,
    /// `sync` page size when the request gives none.
    pub sync_default_limit: u32,
    /// Largest `sync` page.
    pub sync_max_limit: u32,
    /// Sends one user may make per second, across all devices (0: unlimited). Past it, sends get
    /// `RATE_LIMITED` and nothing is stored. Group changes, recall, edit, block, unblock and
    /// settings share the budget.
    pub max_sends_per_sec: u32,
    /// Sends a user may make in a burst above that rate.
    pub send_burst: u32,
    /// Most members of a small group (write diffusion: every message is copied to each member's
    /// stream).
    pub group_max_members: usize,
    /// Most members of a large group (read diffusion: messages are stored once).
    pub large_group_max_members: usize,
    /// How long after sending a message its sender may recall it (group owners and admins may
    /// recall any message of their group at any time).
    pub recall_window_secs: u64,
    /// How long after sending a message its sender may edit it.
    pub edit_window_secs: u64,
    /// Presence watchers hear of a change this long after it, if it still holds then.
    pub presence_debounce_ms: u64,
    /// Typing events one user sends per conversation: at most one per this interval (plus the
    /// `stop` ending a `start`); more are dropped silently.
    pub typing_interval_ms: u64,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            node_id: 0,
            max_body_bytes: 64 * 1024,
            dedup_ttl_secs: 24 * 3600,
            sync_default_limit: 100,
            sync_max_limit: 1000,
            max_sends_per_sec: 100,
            send_burst: 200,
            group_max_members: 500,
            large_group_max_members: 100_000,
            recall_window_secs: 120,
            edit_window_secs: 15 * 60,
            presence_debounce_ms: 5000,
            typing_interval_ms: 1000,
        }
    }
}

/// Token checking. With no key configured, an HS256 secret is generated on first start and kept
/// in the data dir (`jwt-secret`, mode 0600).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared HS256 secret. Overrides the generated one.
    pub hs256_secret: Option<String>,
    /// PEM public key of an external token issuer (RS256 or ES256, by `public_key_algorithm`).
    pub public_key_file: Option<PathBuf>,
    /// `"RS256"` or `"ES256"`.
    pub public_key_algorithm: Option<String>,
}

/// Which store backs the IM service (the `[store]` section).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// The Redis index (backends `redis+embedded` and `redis+scylla`).
    pub redis: crate::store::redis_index::RedisConfig,
    /// The ScyllaDB message log (backend `redis+scylla`).
    pub scylla: crate::store::scylla_log::ScyllaLogConfig,
}

/// The store's shape.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum StoreBackend {
    /// Everything in `data_dir` (fjall): one process, no external services.
    #[default]
    #[serde(rename = "embedded")]
    Embedded,
    /// Seq counters, unread index, recency and dedup cache in Redis; the message log in
    /// `data_dir`. One node (the log is local), but the Redis code runs for real.
    #[serde(rename = "redis+embedded")]
    RedisEmbedded,
    /// The Redis index over a ScyllaDB message log: any number of nodes share both.
    #[serde(rename = "redis+scylla")]
    RedisScylla,
}

impl std::str::FromStr for StoreBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(StoreBackend::Embedded),
            "redis+embedded" => Ok(StoreBackend::RedisEmbedded),
            "redis+scylla" => Ok(StoreBackend::RedisScylla),
            other => Err(format!(
                "unknown store backend {other:?}: embedded, redis+embedded or redis+scylla"
            )),
        }
    }
}
