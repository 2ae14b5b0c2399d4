//! The Redis index of the scale-out store: per-user seq counters, the unread index (seed 001's
//! "storage structure"), read pointers, conversation recency and the resend-dedup cache.
//!
//! This file owns the Redis keys and the Lua scripts that change them; it does not know about
//! the message log, MQTT or the wire format. Every change that must be atomic is one script, and
//! every script only returns values (it never raises), so a pipeline of them fails only when Redis
//! is unreachable. Nothing here is the durable truth: [`super::split::SplitStore`] rebuilds a
//! user's keys from the message log whenever they may be stale.
//!
//! Keys (`P` is the configured prefix, default `mqim`; `U` is `<len(user)>:<user>`, so no user id,
//! whatever it contains, reaches into another user's keys):
//! - `P:seq:U` hash: `n` = the last seq allocated, `rid` = the Redis `run_id` the counter was last
//!   checked against the log under. A restarted Redis has a new `run_id`, so every counter that
//!   may have lost increments is stale until [`RedisIndex::restore`] raised it above the log's
//!   highest seq. (~60 bytes per user.)
//! - `P:unread:U` hash: conversation -> unread count. (~30 bytes per conversation with unread.)
//! - `P:unread:U:<conversation>` sorted set of the unread msgids. Scores are IEEE doubles, exact
//!   only to 2^53, and msgids use 63 bits; so every member has score 0 and the member is the msgid
//!   as 20 zero-padded decimal digits: for equal scores Redis orders members bytewise, and
//!   fixed-width decimals order bytewise exactly as numbers do. "Read up to X" is ZREMRANGEBYLEX
//!   `- [X`, exact for every 64-bit msgid. (~20 bytes + ~40 of skiplist/dict overhead per unread
//!   message, listpack-encoded and smaller while a conversation has few.)
//! - `P:readupto:U` hash: conversation -> highest msgid read (zero-padded). A message at or below
//!   it never becomes unread, should it arrive late from another node. (~40 bytes per
//!   conversation read.)
//! - `P:recent:U` sorted set: conversation, score = time of its latest message in Unix ms (exact
//!   as a double). (~40 bytes per conversation.)
//! - `P:dedup:<len(from)>:<from>:<clientMsgId>` string `msgid:seq:ts:conversation` with the
//!   dedup TTL: answers a resend without touching the log. A cache: the log's dedup record is the
//!   truth. (~100 bytes per message for the TTL.)
//!
//! - `P:presence:U` hash: device -> `<node id>:<incarnation>:<connection id>` of the connection
//!   that has it online, and `P:node:<node id>` string: that node's current incarnation (random
//!   per start) with a short TTL the node keeps refreshing. A device counts as online only while
//!   its node's incarnation is alive, so a crashed node's devices drop out by themselves. (~60
//!   bytes per online device; nothing per message.)
//! - `P:news` pub/sub channel (no key): `<node id>:p:<user>` whenever a device of the user came
//!   online or went offline on that node, after `P:presence:U` says so; `<node id>:x:<user>`
//!   after the user's blocks or presence setting changed there. Every node subscribes; nothing
//!   is stored, a node that was not listening misses it (`news.rs`).
//!
//! - `P:claim:node:<id>` string: the identity (random per data dir, kept in it) of the node that
//!   holds node id `<id>`, with a short TTL it keeps refreshing; `P:claim:log` string:
//!   `embedded:<identity>` while a node with its own local log uses this prefix, `shared` while
//!   nodes with a shared log do. A second node claiming either refuses to start
//!   ([`super::split`]). (~100 bytes per node.)
//!
//! Which Redis answered. Every request whose answer depends on the keys' `rid` runs as a pipeline
//! that first asks for the connection's name; the connection on which the current `run_id` was
//! read was given a random name. An answer that cannot be shown to come from that Redis process
//! is discarded (see [`RedisIndex::query_verified`]). So a restart is noticed by the first request
//! after it, whichever request (a presence update, a heartbeat) met the broken connection.
//!
//! Files: `scripts.rs` (the Lua), `wire.rs` (value encodings and script answers), `presence.rs`
//! (devices online, node claims), `news.rs` (what a node announces to the others),
//! `amend.rs` (a recalled message leaves the unread sets).
//!
//! Scripts touch keys they build from a prefix (the unread sets of a user), so this is for a
//! single Redis (with replicas/Sentinel), not Redis Cluster.

use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};

mod amend;
mod news;
mod presence;
mod scripts;
mod wire;

use scripts::*;
use wire::*;

use super::{SentRecord, StoreError, StoreResult};

/// Where the index lives.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// Milliseconds a command may take before it fails (and the send gets `UNAVAILABLE`).
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "mqim".into(),
            timeout_ms: 1000,
        }
    }
}

/// One request of an allocation round trip.
#[derive(Clone, Debug)]
pub enum AllocRequest {
    /// Seqs for a message's copies, unless the dedup cache already knows it.
    Message {
        from: String,
        to: String,
        client_msg_id: String,
    },
    /// Seqs for a group entry: one in each of `owners`' streams (the group's log first), unless
    /// `dedup` (sender, clientMsgId) is in the dedup cache.
    Group {
        owners: Vec<String>,
        dedup: Option<(String, String)>,
        /// A group entry's membership fence (a large group's read has none).
        fence: Option<GroupFence>,
    },
    /// Mark read up to `up_to`; seqs for the two receipts if anything was unread.
    Read {
        user: String,
        conversation: String,
        /// `None` when the conversation is not with another user (nothing to receipt).
        peer: Option<String>,
        up_to: u64,
        /// Allocate the receipt seqs even if this read changes nothing in Redis.
        force: bool,
    },
}

/// What a group entry's allocation checks (and, for a change, sets): the group's membership
/// version, kept in the hash of the group log's counter (`super::split`'s `fence.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupFence {
    /// The version (msgid of the latest change) the entry was planned from.
    pub basis: u64,
    /// A change: the version it makes (its own msgid).
    pub sets: Option<u64>,
    /// Unix ms, recorded with a version set.
    pub now_ms: i64,
}

/// A group's membership version as Redis keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceState {
    /// Msgid of the latest change (0: none known).
    pub version_id: u64,
    /// Its group seq.
    pub version_seq: u64,
    /// When it was set (Unix ms).
    pub set_at_ms: i64,
    /// Entries wait until then (Unix ms) after the version was rebuilt from the log.
    pub hold_until_ms: i64,
}

/// What [`RedisIndex::fix_fence`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceFix {
    Fixed,
    /// The version is not the one read any more (someone changed it meanwhile).
    Moved,
    /// The group's keys are stale (rebuild it first).
    Stale,
}

/// The answer to one [`AllocRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocated {
    /// The sender's seq, then the recipient's (absent for a note to self).
    Message { sender: u64, recipient: Option<u64> },
    /// A seq per owner of a [`AllocRequest::Group`], in its order.
    Group(Vec<u64>),
    /// The dedup cache knows this (sender, clientMsgId): nothing was allocated.
    Duplicate(SentRecord),
    /// What reading did; `receipts` holds the reader's and the peer's new seqs.
    Read {
        unread: u64,
        receipts: Option<(u64, u64)>,
    },
    /// This user's keys may be stale (Redis restarted or never saw the user): nothing was
    /// changed; rebuild the user from the log and ask again.
    Stale(String),
    /// A group entry planned from another membership version than the group's: nothing was
    /// allocated.
    Fenced(FenceState),
}

/// One conversation of a user as rebuilt from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuiltConversation {
    pub conversation: String,
    /// Highest msgid the user read (receipts by the user), if any.
    pub read_upto: Option<u64>,
    /// Time of the latest message, if any.
    pub updated_at: Option<i64>,
    /// Msgids from the peer above `read_upto`.
    pub unread: Vec<u64>,
}

/// A user's recent conversations as the index knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecentPage {
    /// (conversation, updated_at, unread), newest first.
    pub conversations: Vec<(String, i64, u64)>,
    pub has_more: bool,
}

/// The Redis index. Cheap to share: the connection is multiplexed and reconnects by itself.
pub struct RedisIndex {
    /// For connections of their own (the presence-news subscription).
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    /// The `run_id` of the Redis process, as last seen.
    run_id: RwLock<String>,
    /// The name given to the connection on which `run_id` was read (empty: none verified).
    verified: parking_lot::Mutex<String>,
    dedup_ttl_secs: u64,
    alloc: Script,
    read: Script,
    apply: Script,
    apply_group: Script,
    restore: Script,
    offline: Script,
    online: Script,
    claim: Script,
    group_alloc: Script,
    fence_fix: Script,
    restore_group: Script,
}

/// A msgid as a sorted-set member: 20 digits, so bytewise order is numeric order.
fn padded(msg_id: u64) -> String {
    format!("{msg_id:020}")
}

impl RedisIndex {
    /// Connects (failing if Redis cannot be reached now) and reads its `run_id`.
    pub async fn connect(cfg: &RedisConfig, dedup_ttl_secs: u64) -> StoreResult<RedisIndex> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(StoreError::new)?;
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| StoreError(format!("connecting to Redis at {}: {e}", cfg.url)))?;
        let index = RedisIndex {
            client,
            conn,
            prefix: cfg.key_prefix.clone(),
            run_id: RwLock::new(String::new()),
            verified: parking_lot::Mutex::new(String::new()),
            dedup_ttl_secs: dedup_ttl_secs.max(1),
            alloc: Script::new(ALLOC_LUA),
            read: Script::new(READ_LUA),
            apply: Script::new(APPLY_LUA),
            apply_group: Script::new(APPLY_GROUP_LUA),
            restore: Script::new(RESTORE_LUA),
            offline: Script::new(OFFLINE_LUA),
            online: Script::new(ONLINE_LUA),
            claim: Script::new(CLAIM_LUA),
            group_alloc: Script::new(GROUP_ALLOC_LUA),
            fence_fix: Script::new(FENCE_FIX_LUA),
            restore_group: Script::new(RESTORE_GROUP_LUA),
        };
        index.refresh_run_id().await?;
        Ok(index)
    }

    /// The `run_id` of the Redis process as last seen.
    pub fn run_id(&self) -> String {
        self.run_id.read().clone()
    }

    /// Reads the current `run_id` (it changes whenever Redis restarts) and names the connection
    /// it was read on, so later requests can tell that they still run on that connection and so
    /// on that Redis process (see [`RedisIndex::query_verified`]).
    pub async fn refresh_run_id(&self) -> StoreResult<String> {
        let nonce = format!("mqim-{:016x}", rand::random::<u64>());
        let ((), info): ((), String) = redis::pipe()
            .cmd("CLIENT")
            .arg("SETNAME")
            .arg(&nonce)
            .cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| StoreError::new("Redis INFO has no run_id"))?;
        let mut verified = self.verified.lock();
        *self.run_id.write() = id.clone();
        *verified = nonce;
        Ok(id)
    }

    /// A pipeline whose first command asks for the connection's name; run it with
    /// [`RedisIndex::query_verified`].
    fn verified_pipe() -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("GETNAME");
        pipe
    }

    /// Runs `pipe` (made by [`RedisIndex::verified_pipe`]) and returns its answers after the
    /// first, or `None` if they may come from another Redis process than the one whose run_id is
    /// `rid` (the scripts compared keys against `rid`, so their answers would be wrong).
    ///
    /// Why this is needed: the connection reconnects by itself, and any request (a presence
    /// update, a heartbeat) may be the one that meets the restart, so a failed request is not a
    /// reliable sign of one. A pipeline runs on one connection, and a connection on one process;
    /// the connection on which the current run_id was read carries a name nobody else knows.
    /// If the pipeline ran on it, the answers are from that process. If not, the connection is
    /// new: its process is found out now, and the answers count only if it is still the process
    /// with `rid` (run_ids are random per start, and processes follow each other: if the process
    /// now is the one `rid` names, every connection since was to it).
    async fn query_verified(
        &self,
        pipe: &redis::Pipeline,
        rid: &str,
    ) -> StoreResult<Option<Vec<Value>>> {
        let values: Vec<Value> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))?;
        self.verified_answer(values, rid).await
    }

    /// The answers of a pipeline made by [`RedisIndex::verified_pipe`], after its first, if
    /// they come from the Redis process whose run_id is `rid` (see
    /// [`RedisIndex::query_verified`]).
    async fn verified_answer(
        &self,
        mut values: Vec<Value>,
        rid: &str,
    ) -> StoreResult<Option<Vec<Value>>> {
        if values.is_empty() {
            return Err(StoreError::new("Redis answered nothing"));
        }
        let name = values.remove(0);
        let known = self.verified.lock().clone();
        let same_connection =
            matches!(&name, Value::BulkString(b) if !known.is_empty() && *b == known.as_bytes());
        let current = if same_connection {
            self.run_id()
        } else {
            self.refresh_run_id().await?
        };
        Ok((current == rid).then_some(values))
    }

    /// Runs `pipe` (made by [`RedisIndex::verified_pipe`], invoking `scripts`). The scripts are
    /// sent only when Redis does not know them (after a restart or SCRIPT FLUSH): then the
    /// pipeline runs again behind their SCRIPT LOADs. (Should another client flush the scripts
    /// in the middle of a pipeline, its calls before that ran twice: their seqs become gaps.)
    async fn query_with_scripts(
        &self,
        pipe: &redis::Pipeline,
        scripts: &[&Script],
    ) -> StoreResult<Vec<Value>> {
        match pipe.query_async(&mut self.conn.clone()).await {
            Ok(values) => Ok(values),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut loading = Self::verified_pipe();
                for script in scripts {
                    loading.load_script(script).ignore();
                }
                // The first command of `pipe` is its own CLIENT GETNAME.
                for cmd in pipe.cmd_iter().skip(1) {
                    loading.add_command(cmd.clone());
                }
                loading
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| self.failed(e))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Any failed request: the connection may be reconnecting, maybe to a restarted Redis. The
    /// next verified request finds out which.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        self.verified.lock().clear();
        redis_error(e)
    }

    fn user_key(&self, kind: &str, user: &str) -> String {
        format!("{}:{kind}:{}:{user}", self.prefix, user.len())
    }

    fn unread_set_key(&self, user: &str, conversation: &str) -> String {
        format!("{}:{conversation}", self.user_key("unread", user))
    }

    fn dedup_key(&self, from: &str, client_msg_id: &str) -> String {
        format!("{}:{client_msg_id}", self.user_key("dedup", from))
    }

    /// Answers `requests` in one round trip, applied in order. Dedup cache entries of messages
    /// accepted before `dedup_horizon` (Unix ms) no longer count (they were purged). `None`: Redis
    /// restarted, no answer counts (every user is stale under the new run_id; seqs the scripts
    /// may have taken are never used, and become gaps).
    pub async fn allocate(
        &self,
        requests: &[AllocRequest],
        dedup_horizon: i64,
    ) -> StoreResult<Option<Vec<Allocated>>> {
        let rid = self.run_id();
        let mut pipe = Self::verified_pipe();
        for request in requests {
            match request {
                AllocRequest::Message {
                    from,
                    to,
                    client_msg_id,
                } => {
                    let mut call = self.alloc.prepare_invoke();
                    call.key(self.user_key("seq", from));
                    if to != from {
                        call.key(self.user_key("seq", to));
                    }
                    call.key(self.dedup_key(from, client_msg_id))
                        .arg(&rid)
                        .arg(dedup_horizon);
                    pipe.invoke_script(&call);
                }
                AllocRequest::Group {
                    owners,
                    dedup,
                    fence,
                } => {
                    let mut call = match fence {
                        Some(_) => self.group_alloc.prepare_invoke(),
                        None => self.alloc.prepare_invoke(),
                    };
                    for owner in owners {
                        call.key(self.user_key("seq", owner));
                    }
                    // A change has no dedup entry: a key nothing writes stands in for it.
                    match dedup {
                        Some((from, client_msg_id)) => {
                            call.key(self.dedup_key(from, client_msg_id))
                        }
                        None => call.key(format!("{}:nodedup", self.prefix)),
                    };
                    call.arg(&rid).arg(dedup_horizon);
                    if let Some(f) = fence {
                        call.arg(f.basis.to_string())
                            .arg(f.sets.map(|id| id.to_string()).unwrap_or_default())
                            .arg(f.now_ms);
                    }
                    pipe.invoke_script(&call);
                }
                AllocRequest::Read {
                    user,
                    conversation,
                    peer,
                    up_to,
                    force,
                } => {
                    let mut call = self.read.prepare_invoke();
                    call.key(self.user_key("unread", user))
                        .key(self.unread_set_key(user, conversation))
                        .key(self.user_key("readupto", user))
                        .key(self.user_key("seq", user));
                    if let Some(peer) = peer.as_ref().filter(|p| *p != user) {
                        call.key(self.user_key("seq", peer));
                    }
                    call.arg(&rid)
                        .arg(conversation)
                        .arg(padded(*up_to))
                        .arg(if *force { "1" } else { "0" });
                    pipe.invoke_script(&call);
                }
            }
        }
        let values = self
            .query_with_scripts(&pipe, &[&self.alloc, &self.read, &self.group_alloc])
            .await?;
        let Some(answers) = self.verified_answer(values, &rid).await? else {
            return Ok(None);
        };
        if answers.len() != requests.len() {
            return Err(StoreError::new(
                "Redis answered a different number of calls",
            ));
        }
        requests
            .iter()
            .zip(&answers)
            .map(|(request, value)| parse_allocated(request, value))
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    /// Indexes a message the log has made durable: unread for the recipient (unless already read
    /// past it), recency for both, the dedup cache. `Ok(Some(user))` when that user's keys are
    /// stale (nothing changed). Idempotent.
    pub async fn apply_message(
        &self,
        from: &str,
        to: &str,
        client_msg_id: &str,
        sent: &SentRecord,
    ) -> StoreResult<Option<String>> {
        let mut call = self.apply.prepare_invoke();
        call.key(self.user_key("seq", from))
            .key(self.user_key("recent", from))
            .key(self.dedup_key(from, client_msg_id));
        let peer_conversation = crate::conversation::Conversation::with_user(from);
        if to != from {
            call.key(self.user_key("seq", to))
                .key(self.user_key("recent", to))
                .key(self.user_key("unread", to))
                .key(self.unread_set_key(to, &peer_conversation))
                .key(self.user_key("readupto", to));
        }
        let rid = self.run_id();
        call.arg(&rid)
            .arg(sent.ts)
            .arg(&sent.conversation)
            .arg(encode_sent(sent))
            .arg(self.dedup_ttl_secs)
            .arg(&peer_conversation)
            .arg(padded(sent.msg_id));
        let mut pipe = Self::verified_pipe();
        pipe.invoke_script(&call);
        let values = self.query_with_scripts(&pipe, &[&self.apply]).await?;
        let Some(values) = self.verified_answer(values, &rid).await? else {
            return Ok(Some(from.to_string()));
        };
        let items = array(values.first().unwrap_or(&Value::Nil))?;
        match text(items.first())?.as_str() {
            "ok" => Ok(None),
            "stale" => Ok(Some(match int(items.get(1))? {
                1 => from.to_string(),
                _ => to.to_string(),
            })),
            other => Err(unexpected(other)),
        }
    }

    /// Indexes a group entry the log has made durable: for each copy (owner, recent, unread),
    /// recency and unread as its flags say, and the sender's dedup cache entry. `Ok(Some(user))`
    /// when that owner's keys are stale (nothing changed). Idempotent.
    pub async fn apply_group(
        &self,
        conversation: &str,
        copies: &[(String, bool, bool)],
        dedup: Option<(&str, &str, &SentRecord)>,
        msg_id: u64,
        ts: i64,
    ) -> StoreResult<Option<String>> {
        let indexed: Vec<&(String, bool, bool)> =
            copies.iter().filter(|(_, r, u)| *r || *u).collect();
        if indexed.is_empty() && dedup.is_none() {
            return Ok(None);
        }
        let mut call = self.apply_group.prepare_invoke();
        match dedup {
            Some((from, client_msg_id, _)) => call.key(self.dedup_key(from, client_msg_id)),
            None => call.key(format!("{}:nodedup", self.prefix)),
        };
        for (owner, _, _) in &indexed {
            call.key(self.user_key("seq", owner))
                .key(self.user_key("recent", owner))
                .key(self.user_key("unread", owner))
                .key(self.unread_set_key(owner, conversation))
                .key(self.user_key("readupto", owner));
        }
        let rid = self.run_id();
        call.arg(&rid)
            .arg(ts)
            .arg(conversation)
            .arg(
                dedup
                    .map(|(_, _, sent)| encode_sent(sent))
                    .unwrap_or_default(),
            )
            .arg(self.dedup_ttl_secs)
            .arg(padded(msg_id));
        for (_, recent, unread) in &indexed {
            let flags = match (recent, unread) {
                (true, true) => "ru",
                (true, false) => "r",
                (false, true) => "u",
                (false, false) => "-",
            };
            call.arg(flags);
        }
        let mut pipe = Self::verified_pipe();
        pipe.invoke_script(&call);
        let values = self.query_with_scripts(&pipe, &[&self.apply_group]).await?;
        let first = indexed.first().map(|(o, _, _)| o.clone());
        let Some(values) = self.verified_answer(values, &rid).await? else {
            return Ok(Some(first.unwrap_or_default()));
        };
        let items = array(values.first().unwrap_or(&Value::Nil))?;
        match text(items.first())?.as_str() {
            "ok" => Ok(None),
            "stale" => {
                let i = usize::try_from(int(items.get(1))?).unwrap_or(0);
                Ok(Some(indexed.get(i.wrapping_sub(1)).map_or_else(
                    || first.unwrap_or_default(),
                    |(o, _, _)| o.clone(),
                )))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Rebuilds a group log's counter (at least `floor`) and its membership version from the
    /// log's latest change (`version_id`, `version_seq`) under `run_id`; see
    /// `RESTORE_GROUP_LUA` for when a version Redis has is kept, and `hold_until_ms`. Returns
    /// the counter.
    pub async fn restore_group(
        &self,
        owner: &str,
        run_id: &str,
        floor: u64,
        version: (u64, u64),
        hold_until_ms: i64,
    ) -> StoreResult<u64> {
        let mut call = self.restore_group.prepare_invoke();
        call.key(self.user_key("seq", owner))
            .arg(run_id)
            .arg(floor)
            .arg(version.0.to_string())
            .arg(version.1)
            .arg(crate::now_ms())
            .arg(hold_until_ms);
        call.invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// Sets the membership version of the group whose log is `owner` to `to` (msgid, group
    /// seq) if it is still `from` (the msgid read) under the current run_id.
    pub async fn fix_fence(&self, owner: &str, from: u64, to: (u64, u64)) -> StoreResult<FenceFix> {
        let rid = self.run_id();
        let mut call = self.fence_fix.prepare_invoke();
        call.key(self.user_key("seq", owner))
            .arg(&rid)
            .arg(from.to_string())
            .arg(to.0.to_string())
            .arg(to.1)
            .arg(crate::now_ms());
        let mut pipe = Self::verified_pipe();
        pipe.invoke_script(&call);
        let values = self.query_with_scripts(&pipe, &[&self.fence_fix]).await?;
        let Some(values) = self.verified_answer(values, &rid).await? else {
            return Ok(FenceFix::Stale);
        };
        let items = array(values.first().unwrap_or(&Value::Nil))?;
        match text(items.first())?.as_str() {
            "ok" => Ok(FenceFix::Fixed),
            "moved" => Ok(FenceFix::Moved),
            "stale" => Ok(FenceFix::Stale),
            other => Err(unexpected(other)),
        }
    }

    /// The last seq allocated to `user`, or `None` if the user's keys are stale.
    pub async fn last_seq(&self, user: &str) -> StoreResult<Option<u64>> {
        let known = self.run_id();
        let mut pipe = Self::verified_pipe();
        pipe.cmd("HMGET")
            .arg(self.user_key("seq", user))
            .arg("n")
            .arg("rid");
        let Some(values) = self.query_verified(&pipe, &known).await? else {
            return Ok(None);
        };
        let (n, rid): (Option<u64>, Option<String>) =
            redis::from_redis_value(values.into_iter().next().unwrap_or(Value::Nil))
                .map_err(StoreError::new)?;
        Ok((rid.as_deref() == Some(known.as_str())).then_some(n.unwrap_or(0)))
    }

    /// The user's recent conversations with their unread counts, newest first; `None` if the
    /// user's keys are stale.
    pub async fn recent(&self, user: &str, limit: usize) -> StoreResult<Option<RecentPage>> {
        let stop = i64::try_from(limit).unwrap_or(i64::MAX);
        type Answer = (Option<String>, Vec<(String, f64)>, Vec<(String, u64)>);
        let known = self.run_id();
        let mut pipe = Self::verified_pipe();
        pipe.cmd("HGET")
            .arg(self.user_key("seq", user))
            .arg("rid")
            .cmd("ZREVRANGE")
            .arg(self.user_key("recent", user))
            .arg(0)
            .arg(stop)
            .arg("WITHSCORES")
            .cmd("HGETALL")
            .arg(self.user_key("unread", user));
        let Some(values) = self.query_verified(&pipe, &known).await? else {
            return Ok(None);
        };
        let (rid, recent, counts): Answer =
            redis::from_redis_value(Value::Array(values)).map_err(StoreError::new)?;
        if rid.as_deref() != Some(known.as_str()) {
            return Ok(None);
        }
        let counts: std::collections::HashMap<String, u64> = counts.into_iter().collect();
        let has_more = recent.len() > limit;
        let conversations = recent
            .into_iter()
            .take(limit)
            .map(|(conversation, ts)| {
                let unread = counts.get(&conversation).copied().unwrap_or(0);
                (conversation, ts as i64, unread)
            })
            .collect();
        Ok(Some(RecentPage {
            conversations,
            has_more,
        }))
    }

    /// Replaces `user`'s keys with the rebuilt state and marks them current under `run_id`; the
    /// counter becomes at least `floor`. Returns the counter.
    pub async fn restore(
        &self,
        user: &str,
        run_id: &str,
        floor: u64,
        conversations: &[RebuiltConversation],
    ) -> StoreResult<u64> {
        let mut call = self.restore.prepare_invoke();
        call.key(self.user_key("seq", user))
            .key(self.user_key("unread", user))
            .key(self.user_key("readupto", user))
            .key(self.user_key("recent", user))
            .arg(run_id)
            .arg(floor)
            .arg(format!("{}:", self.user_key("unread", user)));
        for c in conversations {
            call.arg(&c.conversation)
                .arg(c.read_upto.map(padded).unwrap_or_default())
                .arg(c.updated_at.map(|t| t.to_string()).unwrap_or_default())
                .arg(c.unread.len());
            for msg_id in &c.unread {
                call.arg(padded(*msg_id));
            }
        }
        call.invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_msgids_order_bytewise_like_numbers() {
        let ids = [0u64, 9, 10, (1 << 53) + 1, (1 << 62) - 1, 1 << 62, u64::MAX];
        for pair in ids.windows(2) {
            assert!(padded(pair[0]) < padded(pair[1]), "{pair:?}");
            assert_eq!(padded(pair[0]).len(), 20);
        }
    }

    #[test]
    fn dedup_cache_entries_round_trip() {
        let sent = SentRecord {
            group_seq: 0,
            msg_id: (1 << 62) + 3,
            seq: 17,
            conversation: "u:bob:with:colons".into(),
            ts: -5,
        };
        assert_eq!(decode_sent(&encode_sent(&sent)).unwrap(), sent);
        let group = SentRecord {
            group_seq: 41,
            conversation: "g:7".into(),
            ..sent
        };
        assert_eq!(decode_sent(&encode_sent(&group)).unwrap(), group);
        assert!(decode_sent("1:2").is_err());
    }
}
