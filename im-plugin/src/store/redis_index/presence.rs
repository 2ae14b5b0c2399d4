//! Presence of devices across nodes, and the claims a node holds (its node id, the log it
//! writes), in the Redis index. Nothing here is per message.

use std::time::Duration;

use redis::Value;

use super::wire::{array, text, unexpected};
use super::RedisIndex;
use crate::store::{StoreError, StoreResult};

/// Presence of devices across nodes.
impl RedisIndex {
    /// Keeps this node's incarnation alive for `ttl`; call more often than that.
    pub async fn node_alive(&self, node: u16, incarnation: &str, ttl: Duration) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(format!("{}:node:{node}", self.prefix))
            .arg(incarnation)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// Takes or keeps the claim `what` (`node:<id>`, `log`) for `claimant` for `ttl`; returns
    /// the other claimant if someone else holds it.
    pub async fn claim(
        &self,
        what: &str,
        claimant: &str,
        ttl: Duration,
    ) -> StoreResult<Option<String>> {
        let value: Value = self
            .claim
            .key(format!("{}:claim:{what}", self.prefix))
            .arg(claimant)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        let items = array(&value)?;
        match text(items.first())?.as_str() {
            "ok" => Ok(None),
            "taken" => Ok(Some(text(items.get(1))?)),
            other => Err(unexpected(other)),
        }
    }

    /// `device` of `user` is online through `holder` (`<node>:<incarnation>:<connection>`).
    pub async fn device_online(&self, user: &str, device: &str, holder: &str) -> StoreResult<()> {
        redis::cmd("HSET")
            .arg(self.user_key("presence", user))
            .arg(device)
            .arg(holder)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// `holder`'s connection of `device` closed; a newer holder is left alone.
    pub async fn device_offline(&self, user: &str, device: &str, holder: &str) -> StoreResult<()> {
        self.offline
            .key(self.user_key("presence", user))
            .arg(device)
            .arg(holder)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// The devices of `user` online on any live node, with that node's id.
    pub async fn online_devices(&self, user: &str) -> StoreResult<Vec<(String, u16)>> {
        let flat: Vec<String> = self
            .online
            .key(self.user_key("presence", user))
            .arg(format!("{}:node:", self.prefix))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        flat.chunks(2)
            .map(|pair| match pair {
                [device, node] => Ok((device.clone(), node.parse().map_err(StoreError::new)?)),
                _ => Err(StoreError::new("Redis answered an odd presence list")),
            })
            .collect()
    }
}
