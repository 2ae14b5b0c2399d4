//! Bans: the risk-user switch. A banned user's CONNECT is refused and their connections are
//! closed, until an admin lifts the ban or its `until` passes.
//!
//! One in-memory map answers every CONNECT (no I/O on the connect path). Behind it:
//! - the embedded store: `<data_dir>/bans.json`, rewritten atomically (beside it, fsynced,
//!   renamed) on every change, so a kill -9 leaves the old or the new list, never half of one;
//! - the scale-out stores: a Redis hash `<key_prefix>:bans` (user -> JSON ban) that every node
//!   re-reads every [`REFRESH`], so a ban made on one node reaches the others' CONNECTs within it.
//!
//! It owns the ban list and nothing else: closing live connections is the caller's job (the
//! node that bans closes its own; the others are told of bans they read through
//! [`BanStore::on_new_ban`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::store::redis_index::RedisConfig;
use crate::store::{StoreError, StoreResult};

/// How often a node re-reads the shared ban list.
pub const REFRESH: Duration = Duration::from_secs(2);

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// Unix ms after which the ban no longer applies; `None`: until lifted.
    pub until: Option<i64>,
    pub reason: String,
    /// The admin who banned.
    pub by: String,
    /// When, Unix ms.
    pub at: i64,
}

impl Ban {
    /// Does the ban apply at `now_ms`?
    pub fn active(&self, now_ms: i64) -> bool {
        self.until.is_none_or(|u| now_ms < u)
    }
}

enum Backend {
    File(PathBuf),
    Redis {
        conn: redis::aio::ConnectionManager,
        key: String,
    },
}

/// Called with a user whom another node banned (seen at a refresh).
pub type BanListener = Box<dyn Fn(&str) + Send + Sync>;

/// The ban list of this deployment.
pub struct BanStore {
    map: RwLock<HashMap<String, Ban>>,
    backend: Backend,
    listener: std::sync::OnceLock<BanListener>,
}

impl BanStore {
    /// The embedded store's list, in `data_dir`.
    pub fn open_file(data_dir: &Path) -> StoreResult<Arc<BanStore>> {
        let path = data_dir.join("bans.json");
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(StoreError(format!("{}: {e}", path.display()))),
        };
        Ok(Arc::new(BanStore {
            map: RwLock::new(map),
            backend: Backend::File(path),
            listener: std::sync::OnceLock::new(),
        }))
    }

    /// The list shared by the nodes of a scale-out deployment, in Redis. Starts the refresh
    /// task.
    pub async fn open_redis(cfg: &RedisConfig) -> StoreResult<Arc<BanStore>> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(StoreError::new)?;
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| StoreError(format!("connecting to Redis at {}: {e}", cfg.url)))?;
        let store = Arc::new(BanStore {
            map: RwLock::new(HashMap::new()),
            backend: Backend::Redis {
                conn,
                key: format!("{}:bans", cfg.key_prefix),
            },
            listener: std::sync::OnceLock::new(),
        });
        store.refresh().await?;
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                if let Err(e) = s.refresh().await {
                    warn!(error = %e, "could not re-read the shared ban list");
                }
            }
        });
        Ok(store)
    }

    /// Registers what to do when a refresh finds a ban this node did not make (close the
    /// user's connections here). Once; false if one was set.
    pub fn on_new_ban(&self, f: BanListener) -> bool {
        self.listener.set(f).is_ok()
    }

    /// The ban on `user` that applies now, if any.
    pub fn check(&self, user: &str) -> Option<Ban> {
        let map = self.map.read();
        map.get(user).filter(|b| b.active(crate::now_ms())).cloned()
    }

    /// Every ban that applies now.
    pub fn list(&self) -> Vec<(String, Ban)> {
        let now = crate::now_ms();
        let mut v: Vec<_> = self
            .map
            .read()
            .iter()
            .filter(|(_, b)| b.active(now))
            .map(|(u, b)| (u.clone(), b.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Bans `user` (replacing an earlier ban), durably.
    pub async fn ban(&self, user: &str, ban: Ban) -> StoreResult<()> {
        match &self.backend {
            Backend::File(path) => {
                let snapshot = {
                    let mut map = self.map.write();
                    map.insert(user.to_string(), ban);
                    map.clone()
                };
                write_file(path.clone(), snapshot).await
            }
            Backend::Redis { conn, key } => {
                let json = serde_json::to_string(&ban).map_err(StoreError::new)?;
                let mut c = conn.clone();
                redis::cmd("HSET")
                    .arg(key)
                    .arg(user)
                    .arg(json)
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(StoreError::new)?;
                self.map.write().insert(user.to_string(), ban);
                Ok(())
            }
        }
    }

    /// Lifts the ban on `user`; false if there was none.
    pub async fn unban(&self, user: &str) -> StoreResult<bool> {
        match &self.backend {
            Backend::File(path) => {
                let (existed, snapshot) = {
                    let mut map = self.map.write();
                    let existed = map.remove(user).is_some();
                    (existed, map.clone())
                };
                if existed {
                    write_file(path.clone(), snapshot).await?;
                }
                Ok(existed)
            }
            Backend::Redis { conn, key } => {
                let mut c = conn.clone();
                let n: u64 = redis::cmd("HDEL")
                    .arg(key)
                    .arg(user)
                    .query_async(&mut c)
                    .await
                    .map_err(StoreError::new)?;
                let local = self.map.write().remove(user).is_some();
                Ok(n > 0 || local)
            }
        }
    }

    /// Re-reads the shared list (the file backend has nothing to re-read).
    async fn refresh(&self) -> StoreResult<()> {
        let Backend::Redis { conn, key } = &self.backend else {
            return Ok(());
        };
        let mut c = conn.clone();
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(StoreError::new)?;
        let map: HashMap<String, Ban> = raw
            .into_iter()
            .filter_map(|(u, j)| serde_json::from_str(&j).ok().map(|b| (u, b)))
            .collect();
        let now = crate::now_ms();
        let new: Vec<String> = {
            let old = self.map.read();
            map.iter()
                .filter(|(u, b)| b.active(now) && old.get(*u) != Some(*b))
                .map(|(u, _)| u.clone())
                .collect()
        };
        *self.map.write() = map;
        if let Some(f) = self.listener.get() {
            for user in new {
                f(&user);
            }
        }
        Ok(())
    }
}

/// Writes the list beside `path`, fsyncs, renames over it (atomic on POSIX).
async fn write_file(path: PathBuf, map: HashMap<String, Ban>) -> StoreResult<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(&map).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(StoreError::new)?
    .map_err(StoreError::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bans_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = BanStore::open_file(dir.path()).unwrap();
        let ban = |until| Ban {
            until,
            reason: "spam".into(),
            by: "root".into(),
            at: crate::now_ms(),
        };
        s.ban("mallory", ban(None)).await.unwrap();
        s.ban("eve", ban(Some(crate::now_ms() - 1))).await.unwrap();
        let s = BanStore::open_file(dir.path()).unwrap();
        assert_eq!(s.check("mallory").unwrap().reason, "spam");
        assert!(s.check("eve").is_none(), "an expired ban does not apply");
        assert!(s.unban("mallory").await.unwrap());
        assert!(!s.unban("mallory").await.unwrap());
        assert!(BanStore::open_file(dir.path())
            .unwrap()
            .check("mallory")
            .is_none());
    }
}
