//! Test support: several nodes' IM layers over one shared log, as `redis+scylla` nodes run. Each
//! node is an [`ImPlugin`] on its own split store; the stores share one real `redis-server`
//! (same key prefix) and one embedded log in log mode (an `Arc`, standing in for the ScyllaDB
//! log the nodes of a cluster share), and claim their node ids and the log as such nodes do.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use crate::auth::Authenticator;
use crate::config::{AuthConfig, ImConfig};
use crate::store::lsm::LsmStore;
use crate::store::redis_index::{RedisConfig, RedisIndex};
use crate::store::split::{LogClaim, NodeClaims, SplitOptions, SplitStore};
use crate::store::Store;
use crate::testing::RedisServer;
use crate::ImPlugin;

/// Node `id` with the default settings.
pub(crate) async fn node(
    id: u16,
    redis: &RedisServer,
    log: &Arc<LsmStore>,
    dir: &TempDir,
) -> Arc<ImPlugin> {
    let ttl = SplitOptions::default().presence_ttl;
    node_with(id, redis, log, dir, ImConfig::default(), ttl).await
}

/// Node `id` with `im` (its node id set to `id`) and a heartbeat that expires after
/// `presence_ttl`.
pub(crate) async fn node_with(
    id: u16,
    redis: &RedisServer,
    log: &Arc<LsmStore>,
    dir: &TempDir,
    im: ImConfig,
    presence_ttl: Duration,
) -> Arc<ImPlugin> {
    let cfg = RedisConfig {
        url: redis.url(),
        key_prefix: "nodes".into(),
        timeout_ms: 1000,
    };
    let index = RedisIndex::connect(&cfg, 3600).await.expect("Redis");
    let opts = SplitOptions {
        node_id: id,
        claims: Some(NodeClaims {
            identity: format!("node-{id}"),
            log: LogClaim::Shared,
        }),
        presence_ttl,
        ..SplitOptions::default()
    };
    let split = SplitStore::open(index, log.clone(), opts)
        .await
        .expect("claims");
    split.set_extras_log(log.clone());
    let store: Arc<dyn Store> = Arc::new(split);
    let im = ImConfig { node_id: id, ..im };
    let auth = Authenticator::load(&AuthConfig::default(), dir.path()).expect("auth");
    ImPlugin::open(im, auth, store).await.expect("open")
}
