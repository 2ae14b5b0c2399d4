//! What a node of the split store holds in Redis besides the index: its node id, the log it
//! writes (for `redis+embedded`, the key prefix is one node's), its liveness (the incarnation
//! presence entries point at), and the presence of its devices.
//!
//! Claims are keyed by the node's identity, a random id kept in its data dir: a node that
//! restarts (even after `kill -9`) takes its claims back at once, while another node, with
//! another data dir, is refused until the holder has been gone for the claim's TTL. The claims
//! are refreshed three times per TTL; a claim found taken later (the node was cut off from Redis
//! for longer than the TTL and another took its place) is logged as an error when it happens.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::{Shared, SplitStore};
use crate::store::redis_index::RedisIndex;
use crate::store::{NodeNews, StoreError, StoreResult};

/// Which log a node writes, as it claims the key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogClaim {
    /// A log on this node's own disk (`redis+embedded`): no other node may use the prefix.
    Exclusive,
    /// A log every node shares (`redis+scylla`): any number of such nodes, but no node with a
    /// log of its own.
    Shared,
}

/// What a node claims at start and keeps claiming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeClaims {
    /// This node's identity (see [`node_identity`]).
    pub identity: String,
    pub log: LogClaim,
}

impl NodeClaims {
    fn log_value(&self) -> String {
        match self.log {
            LogClaim::Exclusive => format!("embedded:{}", self.identity),
            LogClaim::Shared => "shared".to_string(),
        }
    }
}

/// The node identity kept in `data_dir/node-identity`, created on first use.
pub fn node_identity(data_dir: &Path) -> StoreResult<String> {
    let file = data_dir.join("node-identity");
    match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError(format!("reading {}: {e}", file.display()))),
    }
    let id = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    std::fs::write(&file, format!("{id}\n"))
        .map_err(|e| StoreError(format!("writing {}: {e}", file.display())))?;
    Ok(id)
}

/// Takes the node id and log claims, or refuses to start, saying who holds them.
pub(super) async fn claim_at_start(
    index: &RedisIndex,
    node_id: u16,
    claims: &NodeClaims,
    ttl: Duration,
) -> StoreResult<()> {
    match take_claims(index, node_id, claims, ttl).await? {
        None => Ok(()),
        Some(refusal) => Err(StoreError(refusal)),
    }
}

/// Takes or keeps the claims; `Some(why)` if another node holds one.
async fn take_claims(
    index: &RedisIndex,
    node_id: u16,
    claims: &NodeClaims,
    ttl: Duration,
) -> StoreResult<Option<String>> {
    if let Some(holder) = index
        .claim(&format!("node:{node_id}"), &claims.identity, ttl)
        .await?
    {
        return Ok(Some(format!(
            "node id {node_id} is held by another live node (identity {holder}) on this Redis; \
             give every node its own im.node_id (MQIM_NODE_ID), or wait {}s if that node is gone",
            ttl.as_secs()
        )));
    }
    if let Some(holder) = index.claim("log", &claims.log_value(), ttl).await? {
        let why = match claims.log {
            LogClaim::Exclusive => {
                "redis+embedded keeps its messages on one node's disk, so one node only may use \
                 this Redis key prefix"
            }
            LogClaim::Shared => {
                "a redis+embedded node keeps its own log under this Redis key prefix; nodes \
                 with a shared log must use another prefix"
            }
        };
        return Ok(Some(format!(
            "another live node uses this Redis key prefix with its own log ({holder}): {why} \
             ([store.redis] key_prefix)"
        )));
    }
    Ok(None)
}

pub(super) struct PresenceChange {
    online: bool,
    user: String,
    device: String,
    conn_id: u64,
}

impl SplitStore {
    /// Queues a presence change; one task applies them in order, so a connection's offline never
    /// overtakes its online.
    pub(super) fn presence_change(&self, online: bool, user: &str, device: &str, conn_id: u64) {
        let change = PresenceChange {
            online,
            user: user.to_string(),
            device: device.to_string(),
            conn_id,
        };
        if self.presence.try_send(change).is_err() {
            warn!(
                user,
                device, "presence updates are backed up; one was dropped"
            );
        }
    }
}

/// Refreshes this node's incarnation and claims in Redis while the store lives, three times per
/// TTL.
pub(super) async fn keep_node_alive(shared: Weak<Shared>) {
    let mut lost = false;
    loop {
        let Some(this) = shared.upgrade() else { return };
        let ttl = this.opts.presence_ttl;
        if let Err(e) = this
            .index
            .node_alive(this.opts.node_id, &this.incarnation, ttl)
            .await
        {
            warn!(error = %e, "could not refresh this node's presence in Redis");
        }
        if let Some(claims) = &this.opts.claims {
            match take_claims(&this.index, this.opts.node_id, claims, ttl).await {
                Ok(None) => lost = false,
                Ok(Some(why)) => {
                    if !lost {
                        error!(why, "this node's claim in Redis was taken by another node");
                    }
                    lost = true;
                }
                Err(e) => warn!(error = %e, "could not refresh this node's claims in Redis"),
            }
        }
        drop(this);
        tokio::time::sleep(ttl / 3).await;
    }
}

/// Applies presence changes in the order they happened, until the store is dropped.
pub(super) async fn apply_presence(
    shared: Arc<Shared>,
    mut changes: mpsc::Receiver<PresenceChange>,
) {
    while let Some(c) = changes.recv().await {
        let holder = shared.presence_holder(c.conn_id);
        let done = if c.online {
            shared
                .index
                .device_online(&c.user, &c.device, &holder)
                .await
        } else {
            shared
                .index
                .device_offline(&c.user, &c.device, &holder)
                .await
        };
        if let Err(e) = done {
            warn!(user = c.user, device = c.device, error = %e, "could not update presence in Redis");
            continue;
        }
        // Other nodes' presence watches look again, now that Redis says it.
        if !shared.one_node() {
            publish_news(shared.clone(), NodeNews::Presence(c.user)).await;
        }
    }
}

/// Publishes `news` to the other nodes, trying three times over about a second: a node that
/// misses it entirely keeps a stale view until its subscription breaks and it resyncs. A
/// typing event is tried once: late, it would be wrong.
pub(super) async fn publish_news(shared: Arc<Shared>, news: NodeNews) {
    let attempts = match news {
        NodeNews::Typing { .. } => 1,
        _ => 3,
    };
    for attempt in 1..=attempts {
        match shared.index.publish_news(shared.opts.node_id, &news).await {
            Ok(()) => return,
            Err(e) if attempt == attempts => {
                return warn!(?news, error = %e, "news for the other nodes not published");
            }
            Err(e) => debug!(?news, error = %e, "publishing news; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(300 << (attempt - 1))).await;
    }
}

impl Shared {
    /// A node that claimed its log for itself (`redis+embedded`) is the only node on its Redis
    /// key prefix; any other split store (a shared log, or a test store with no claims) may
    /// share it with other nodes.
    pub(super) fn one_node(&self) -> bool {
        matches!(&self.opts.claims, Some(c) if c.log == LogClaim::Exclusive)
    }

    fn presence_holder(&self, conn_id: u64) -> String {
        format!("{}:{}:{conn_id}", self.opts.node_id, self.incarnation)
    }
}
