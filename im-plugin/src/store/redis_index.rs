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
//!
//! Scripts touch keys they build from a prefix (the unread sets of a user), so this is for a
//! single Redis (with replicas/Sentinel), not Redis Cluster.

use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};

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
    /// Mark read up to `up_to`; seqs for the two receipts if anything was unread.
    Read {
        user: String,
        conversation: String,
        /// `None` when the conversation is not with another user (nothing to receipt).
        peer: Option<String>,
        up_to: u64,
    },
}

/// The answer to one [`AllocRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocated {
    /// The sender's seq, then the recipient's (absent for a note to self).
    Message { sender: u64, recipient: Option<u64> },
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
    conn: ConnectionManager,
    prefix: String,
    /// The `run_id` of the Redis process, as last seen.
    run_id: RwLock<String>,
    dedup_ttl_secs: u64,
    alloc: Script,
    read: Script,
    apply: Script,
    restore: Script,
    offline: Script,
    online: Script,
}

/// Allocates seqs for `#KEYS - 1` users (KEYS[1..]), unless KEYS[#KEYS] (the dedup cache key)
/// holds a record made at or after ARGV[2] (the purge horizon, Unix ms). ARGV[1] = run_id.
/// Returns {'dup', record} | {'stale', i} | {'ok', seq...}.
const ALLOC_LUA: &str = r"
local d = redis.call('GET', KEYS[#KEYS])
if d and tonumber(string.match(d, '^%d+:%d+:(%-?%d+):') or '0') >= tonumber(ARGV[2]) then
  return {'dup', d}
end
for i = 1, #KEYS - 1 do
  if redis.call('HGET', KEYS[i], 'rid') ~= ARGV[1] then return {'stale', i} end
end
local out = {'ok'}
for i = 1, #KEYS - 1 do out[#out + 1] = redis.call('HINCRBY', KEYS[i], 'n', 1) end
return out
";

/// Marks read. KEYS: 1 unread counts, 2 unread set of the conversation, 3 read pointers,
/// 4 reader's seq, 5 peer's seq (absent without a peer). ARGV: 1 run_id, 2 conversation,
/// 3 padded msgid. Returns {'stale', i} | {'same', unread} | {'read', unread, seq, peer_seq}.
const READ_LUA: &str = r"
for i = 4, #KEYS do
  if redis.call('HGET', KEYS[i], 'rid') ~= ARGV[1] then return {'stale', i - 3} end
end
local left = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local prev = redis.call('HGET', KEYS[3], ARGV[2])
if prev and prev >= ARGV[3] then return {'same', left} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
local n = redis.call('ZLEXCOUNT', KEYS[2], '-', '[' .. ARGV[3])
if n == 0 then return {'same', left} end
redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '[' .. ARGV[3])
left = redis.call('HINCRBY', KEYS[1], ARGV[2], -n)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
  left = 0
end
if #KEYS < 5 then return {'same', left} end
return {'read', left, redis.call('HINCRBY', KEYS[4], 'n', 1), redis.call('HINCRBY', KEYS[5], 'n', 1)}
";

/// Indexes a logged message; idempotent, so a retry or replay changes nothing twice.
/// KEYS: 1 sender's seq, 2 sender's recent, 3 dedup cache; with a recipient: 4 recipient's seq,
/// 5 recipient's recent, 6 unread counts, 7 unread set, 8 read pointers.
/// ARGV: 1 run_id, 2 ts, 3 sender's conversation, 4 dedup record, 5 dedup ttl,
/// 6 recipient's conversation, 7 padded msgid. Returns {'stale', i} | {'ok'}.
const APPLY_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'rid') ~= ARGV[1] then return {'stale', 1} end
if #KEYS > 3 and redis.call('HGET', KEYS[4], 'rid') ~= ARGV[1] then return {'stale', 2} end
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
if #KEYS > 3 then
  redis.call('ZADD', KEYS[5], 'GT', ARGV[2], ARGV[6])
  local r = redis.call('HGET', KEYS[8], ARGV[6])
  if not r or r < ARGV[7] then
    if redis.call('ZADD', KEYS[7], 0, ARGV[7]) == 1 then
      redis.call('HINCRBY', KEYS[6], ARGV[6], 1)
    end
  end
end
return {'ok'}
";

/// Replaces a user's index with what the log says. KEYS: 1 seq, 2 unread counts, 3 read
/// pointers, 4 recent. ARGV: 1 run_id, 2 floor (the log's highest seq), 3 prefix of the unread
/// sets, then per conversation: name, read pointer or '', updated_at or '', k, k msgids.
/// The counter never goes down: seqs above the log's highest may have been handed out.
const RESTORE_LUA: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local floor = tonumber(ARGV[2])
if floor > n then n = floor end
for _, conv in ipairs(redis.call('HKEYS', KEYS[2])) do redis.call('DEL', ARGV[3] .. conv) end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local i = 4
while i <= #ARGV do
  local conv, upto, ts, k = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  redis.call('DEL', ARGV[3] .. conv)
  if upto ~= '' then redis.call('HSET', KEYS[3], conv, upto) end
  if ts ~= '' then redis.call('ZADD', KEYS[4], ts, conv) end
  for j = 1, k do redis.call('ZADD', ARGV[3] .. conv, 0, ARGV[i + 3 + j]) end
  if k > 0 then redis.call('HSET', KEYS[2], conv, k) end
  i = i + 4 + k
end
redis.call('HSET', KEYS[1], 'n', n, 'rid', ARGV[1])
return n
";

/// Removes a device's presence only if the given connection still holds it (a newer connection,
/// on this node or another, may have taken the device over). KEYS: 1 presence. ARGV: 1 device,
/// 2 holder.
const OFFLINE_LUA: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
";

/// The user's devices whose node incarnation is alive; forgets the others. KEYS: 1 presence.
/// ARGV: 1 prefix of node keys. Returns {device, node id, ...}.
const ONLINE_LUA: &str = r"
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node, inc = string.match(all[i + 1], '^(%d+):([^:]+):')
  if node and redis.call('GET', ARGV[1] .. node) == inc then
    out[#out + 1] = all[i]
    out[#out + 1] = node
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

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
            conn,
            prefix: cfg.key_prefix.clone(),
            run_id: RwLock::new(String::new()),
            dedup_ttl_secs: dedup_ttl_secs.max(1),
            alloc: Script::new(ALLOC_LUA),
            read: Script::new(READ_LUA),
            apply: Script::new(APPLY_LUA),
            restore: Script::new(RESTORE_LUA),
            offline: Script::new(OFFLINE_LUA),
            online: Script::new(ONLINE_LUA),
        };
        index.refresh_run_id().await?;
        Ok(index)
    }

    /// The `run_id` of the Redis process as last seen.
    pub fn run_id(&self) -> String {
        self.run_id.read().clone()
    }

    /// Reads the current `run_id` (it changes whenever Redis restarts).
    pub async fn refresh_run_id(&self) -> StoreResult<String> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| StoreError::new("Redis INFO has no run_id"))?;
        *self.run_id.write() = id.clone();
        Ok(id)
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
    /// accepted before `dedup_horizon` (Unix ms) no longer count (they were purged).
    pub async fn allocate(
        &self,
        requests: &[AllocRequest],
        dedup_horizon: i64,
    ) -> StoreResult<Vec<Allocated>> {
        let rid = self.run_id();
        let mut pipe = redis::pipe();
        pipe.load_script(&self.alloc).load_script(&self.read);
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
                AllocRequest::Read {
                    user,
                    conversation,
                    peer,
                    up_to,
                } => {
                    let mut call = self.read.prepare_invoke();
                    call.key(self.user_key("unread", user))
                        .key(self.unread_set_key(user, conversation))
                        .key(self.user_key("readupto", user))
                        .key(self.user_key("seq", user));
                    if let Some(peer) = peer.as_ref().filter(|p| *p != user) {
                        call.key(self.user_key("seq", peer));
                    }
                    call.arg(&rid).arg(conversation).arg(padded(*up_to));
                    pipe.invoke_script(&call);
                }
            }
        }
        let values: Vec<Value> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        let answers = values.get(2..).unwrap_or_default();
        if answers.len() != requests.len() {
            return Err(StoreError::new(
                "Redis answered a different number of calls",
            ));
        }
        requests
            .iter()
            .zip(answers)
            .map(|(request, value)| parse_allocated(request, value))
            .collect()
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
        let peer_conversation = format!("u:{from}");
        if to != from {
            call.key(self.user_key("seq", to))
                .key(self.user_key("recent", to))
                .key(self.user_key("unread", to))
                .key(self.unread_set_key(to, &peer_conversation))
                .key(self.user_key("readupto", to));
        }
        call.arg(self.run_id())
            .arg(sent.ts)
            .arg(&sent.conversation)
            .arg(encode_sent(sent))
            .arg(self.dedup_ttl_secs)
            .arg(&peer_conversation)
            .arg(padded(sent.msg_id));
        let value: Value = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        let items = array(&value)?;
        match text(items.first())?.as_str() {
            "ok" => Ok(None),
            "stale" => Ok(Some(match int(items.get(1))? {
                1 => from.to_string(),
                _ => to.to_string(),
            })),
            other => Err(unexpected(other)),
        }
    }

    /// The last seq allocated to `user`, or `None` if the user's keys are stale.
    pub async fn last_seq(&self, user: &str) -> StoreResult<Option<u64>> {
        let (n, rid): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.user_key("seq", user))
            .arg("n")
            .arg("rid")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok((rid.as_deref() == Some(self.run_id().as_str())).then_some(n.unwrap_or(0)))
    }

    /// The user's recent conversations with their unread counts, newest first; `None` if the
    /// user's keys are stale.
    pub async fn recent(&self, user: &str, limit: usize) -> StoreResult<Option<RecentPage>> {
        let stop = i64::try_from(limit).unwrap_or(i64::MAX);
        type Answer = (Option<String>, Vec<(String, f64)>, Vec<(String, u64)>);
        let (rid, recent, counts): Answer = redis::pipe()
            .cmd("HGET")
            .arg(self.user_key("seq", user))
            .arg("rid")
            .cmd("ZREVRANGE")
            .arg(self.user_key("recent", user))
            .arg(0)
            .arg(stop)
            .arg("WITHSCORES")
            .cmd("HGETALL")
            .arg(self.user_key("unread", user))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        if rid.as_deref() != Some(self.run_id().as_str()) {
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
            .map_err(redis_error)
    }
}

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
            .map_err(redis_error)
    }

    /// `device` of `user` is online through `holder` (`<node>:<incarnation>:<connection>`).
    pub async fn device_online(&self, user: &str, device: &str, holder: &str) -> StoreResult<()> {
        redis::cmd("HSET")
            .arg(self.user_key("presence", user))
            .arg(device)
            .arg(holder)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error)
    }

    /// `holder`'s connection of `device` closed; a newer holder is left alone.
    pub async fn device_offline(&self, user: &str, device: &str, holder: &str) -> StoreResult<()> {
        self.offline
            .key(self.user_key("presence", user))
            .arg(device)
            .arg(holder)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error)
    }

    /// The devices of `user` online on any live node, with that node's id.
    pub async fn online_devices(&self, user: &str) -> StoreResult<Vec<(String, u16)>> {
        let flat: Vec<String> = self
            .online
            .key(self.user_key("presence", user))
            .arg(format!("{}:node:", self.prefix))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        flat.chunks(2)
            .map(|pair| match pair {
                [device, node] => Ok((device.clone(), node.parse().map_err(StoreError::new)?)),
                _ => Err(StoreError::new("Redis answered an odd presence list")),
            })
            .collect()
    }
}

fn encode_sent(sent: &SentRecord) -> String {
    format!(
        "{}:{}:{}:{}",
        sent.msg_id, sent.seq, sent.ts, sent.conversation
    )
}

fn decode_sent(s: &str) -> StoreResult<SentRecord> {
    let mut parts = s.splitn(4, ':');
    let mut number = |what: &str| {
        parts
            .next()
            .ok_or_else(|| StoreError(format!("dedup cache entry without {what}")))
    };
    let bad = |e: std::num::ParseIntError| StoreError(format!("corrupt dedup cache entry: {e}"));
    let msg_id = number("msg_id")?.parse().map_err(bad)?;
    let seq = number("seq")?.parse().map_err(bad)?;
    let ts = number("ts")?.parse().map_err(bad)?;
    let conversation = number("conversation")?.to_string();
    Ok(SentRecord {
        msg_id,
        seq,
        conversation,
        ts,
    })
}

fn parse_allocated(request: &AllocRequest, value: &Value) -> StoreResult<Allocated> {
    let items = array(value)?;
    let tag = text(items.first())?;
    let stale_user = |i: i64| match (request, i) {
        (AllocRequest::Message { from, .. }, 1) | (AllocRequest::Read { user: from, .. }, 1) => {
            from.clone()
        }
        (AllocRequest::Message { to, .. }, _) => to.clone(),
        (AllocRequest::Read { peer, user, .. }, _) => peer.clone().unwrap_or_else(|| user.clone()),
    };
    match (request, tag.as_str()) {
        (_, "stale") => Ok(Allocated::Stale(stale_user(int(items.get(1))?))),
        (AllocRequest::Message { .. }, "dup") => {
            Ok(Allocated::Duplicate(decode_sent(&text(items.get(1))?)?))
        }
        (AllocRequest::Message { from, to, .. }, "ok") => Ok(Allocated::Message {
            sender: seq(items.get(1))?,
            recipient: if to != from {
                Some(seq(items.get(2))?)
            } else {
                None
            },
        }),
        (AllocRequest::Read { .. }, "same") => Ok(Allocated::Read {
            unread: seq(items.get(1))?,
            receipts: None,
        }),
        (AllocRequest::Read { .. }, "read") => Ok(Allocated::Read {
            unread: seq(items.get(1))?,
            receipts: Some((seq(items.get(2))?, seq(items.get(3))?)),
        }),
        (_, other) => Err(unexpected(other)),
    }
}

fn array(value: &Value) -> StoreResult<&[Value]> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(StoreError(format!(
            "Redis script answered {other:?}, not an array"
        ))),
    }
}

fn text(value: Option<&Value>) -> StoreResult<String> {
    match value {
        Some(Value::BulkString(b)) => String::from_utf8(b.clone()).map_err(StoreError::new),
        Some(Value::SimpleString(s)) => Ok(s.clone()),
        other => Err(StoreError(format!(
            "Redis script answered {other:?}, not a string"
        ))),
    }
}

fn int(value: Option<&Value>) -> StoreResult<i64> {
    match value {
        Some(Value::Int(n)) => Ok(*n),
        other => Err(StoreError(format!(
            "Redis script answered {other:?}, not an integer"
        ))),
    }
}

fn seq(value: Option<&Value>) -> StoreResult<u64> {
    u64::try_from(int(value)?).map_err(StoreError::new)
}

fn unexpected(tag: &str) -> StoreError {
    StoreError(format!("Redis script answered {tag:?}"))
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError(format!("Redis: {e}"))
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
            msg_id: (1 << 62) + 3,
            seq: 17,
            conversation: "u:bob:with:colons".into(),
            ts: -5,
        };
        assert_eq!(decode_sent(&encode_sent(&sent)).unwrap(), sent);
        assert!(decode_sent("1:2").is_err());
    }
}
