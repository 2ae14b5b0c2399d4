//! The ScyllaDB log's settings (`[store.scylla]`), their defaults and their checks.

use super::*;

/// Settings of the ScyllaDB log. Every field has a default.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaLogConfig {
    /// Contact points, `host:port`; the driver discovers the rest of the cluster from them.
    pub nodes: Vec<String>,
    /// Keyspace of the log's tables (letters, digits, `_`; at most 48 characters).
    pub keyspace: String,
    /// CQL map literal of the keyspace's replication, used only when the keyspace is created.
    /// Default: `NetworkTopologyStrategy`, RF 3 in every datacenter, the smallest RF with which
    /// LOCAL_QUORUM survives one replica down. A one-node development cluster needs RF 1.
    pub replication: String,
    /// Create the keyspace with `tablets = {'enabled': false}`: ScyllaDB releases with tablets on
    /// by default do not support LWTs (which dedup and cursors need) in tablet keyspaces. Turn
    /// off for ScyllaDB before 6.0 or Cassandra, which do not know the option.
    pub disable_tablets: bool,
    /// Username for password authentication (none: no authentication).
    pub username: Option<String>,
    /// Password for `username`. Never printed.
    pub password: Option<String>,
    /// How long a dedup record lives, in seconds (expired natively by ScyllaDB; 0: never).
    /// Not a setting of its own: [`super::open`] sets it from `im.dedup_ttl_secs`.
    #[serde(skip)]
    pub dedup_ttl_secs: u32,
    /// Client-side timeout of one request: reads, and writes whose deadline is further away.
    pub request_timeout_ms: u64,
    /// How long after an attempt's deadline its writes are still assumed able to land (a
    /// coordinator finishing what the driver gave up on, a batchlog replay). A resend whose
    /// original is missing takes its dedup record over only after this.
    pub takeover_grace_ms: u64,
    /// Writes queued beyond this fail at once.
    pub queue_capacity: usize,
    /// Writes run at once at most (never two touching the same user).
    pub max_in_flight: usize,
}

impl Default for ScyllaLogConfig {
    fn default() -> Self {
        ScyllaLogConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "mqim".into(),
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            disable_tablets: true,
            username: None,
            password: None,
            dedup_ttl_secs: 24 * 3600,
            request_timeout_ms: 5_000,
            takeover_grace_ms: 120_000,
            queue_capacity: 16 * 1024,
            max_in_flight: 64,
        }
    }
}

impl fmt::Debug for ScyllaLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaLogConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("disable_tablets", &self.disable_tablets)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dedup_ttl_secs", &self.dedup_ttl_secs)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("takeover_grace_ms", &self.takeover_grace_ms)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

pub(super) fn validate(cfg: &ScyllaLogConfig) -> StoreResult<()> {
    let ks = &cfg.keyspace;
    let name_ok = !ks.is_empty()
        && ks.len() <= 48
        && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(StoreError::new(format!(
            "scylla keyspace {ks:?}: use 1 to 48 letters, digits or '_'"
        )));
    }
    if cfg.nodes.is_empty() {
        return Err(StoreError::new("scylla nodes: give at least one host:port"));
    }
    Ok(())
}
