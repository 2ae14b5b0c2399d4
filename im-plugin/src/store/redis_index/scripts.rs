//! The Lua scripts of the Redis index, one per change that must be atomic. Each only returns
//! values (it never raises), so a pipeline of them fails only when Redis is unreachable. The
//! keys and arguments each takes are listed above it; `super` owns what the keys mean.

/// Allocates seqs for `#KEYS - 1` users (KEYS[1..]), unless KEYS[#KEYS] (the dedup cache key)
/// holds a record made at or after ARGV[2] (the purge horizon, Unix ms). ARGV[1] = run_id.
/// Returns {'dup', record} | {'stale', i} | {'ok', seq...}.
pub(super) const ALLOC_LUA: &str = r"
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
/// 3 padded msgid, 4 '1' to allocate the receipt seqs even if nothing changed here (an earlier
/// attempt changed it but its receipts never reached the log).
/// Returns {'stale', i} | {'same', unread} | {'read', unread, seq, peer_seq}.
pub(super) const READ_LUA: &str = r"
for i = 4, #KEYS do
  if redis.call('HGET', KEYS[i], 'rid') ~= ARGV[1] then return {'stale', i - 3} end
end
local force = ARGV[4] == '1'
local left = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local prev = redis.call('HGET', KEYS[3], ARGV[2])
local n = 0
if not prev or prev < ARGV[3] then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  n = redis.call('ZLEXCOUNT', KEYS[2], '-', '[' .. ARGV[3])
  if n > 0 then
    redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '[' .. ARGV[3])
    left = redis.call('HINCRBY', KEYS[1], ARGV[2], -n)
    if left <= 0 then
      redis.call('HDEL', KEYS[1], ARGV[2])
      left = 0
    end
  end
end
if #KEYS < 5 or (n == 0 and not force) then return {'same', left} end
return {'read', left, redis.call('HINCRBY', KEYS[4], 'n', 1), redis.call('HINCRBY', KEYS[5], 'n', 1)}
";

/// Indexes a logged message; idempotent, so a retry or replay changes nothing twice.
/// KEYS: 1 sender's seq, 2 sender's recent, 3 dedup cache; with a recipient: 4 recipient's seq,
/// 5 recipient's recent, 6 unread counts, 7 unread set, 8 read pointers.
/// ARGV: 1 run_id, 2 ts, 3 sender's conversation, 4 dedup record, 5 dedup ttl,
/// 6 recipient's conversation, 7 padded msgid. Returns {'stale', i} | {'ok'}.
pub(super) const APPLY_LUA: &str = r"
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

/// Indexes a logged group entry's copies; idempotent like APPLY. KEYS: 1 the sender's dedup
/// cache entry, then per copy 5 keys: seq, recent, unread counts, unread set of the group,
/// read pointers. ARGV: 1 run_id, 2 ts, 3 conversation, 4 dedup record ('' for none), 5 dedup
/// ttl, 6 padded msgid, then per copy its flags: 'r' moves the conversation up the owner's
/// recent list, 'u' makes the message unread for them. Returns {'stale', i} | {'ok'}.
pub(super) const APPLY_GROUP_LUA: &str = r"
local n = (#KEYS - 1) / 5
for i = 1, n do
  if redis.call('HGET', KEYS[2 + (i - 1) * 5], 'rid') ~= ARGV[1] then return {'stale', i} end
end
if ARGV[4] ~= '' then redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5]) end
for i = 1, n do
  local k = 1 + (i - 1) * 5
  local flags = ARGV[6 + i]
  if string.find(flags, 'r', 1, true) then
    redis.call('ZADD', KEYS[k + 2], 'GT', ARGV[2], ARGV[3])
  end
  if string.find(flags, 'u', 1, true) then
    local r = redis.call('HGET', KEYS[k + 5], ARGV[3])
    if not r or r < ARGV[6] then
      if redis.call('ZADD', KEYS[k + 4], 0, ARGV[6]) == 1 then
        redis.call('HINCRBY', KEYS[k + 3], ARGV[3], 1)
      end
    end
  end
end
return {'ok'}
";

/// Replaces a user's index with what the log says. KEYS: 1 seq, 2 unread counts, 3 read
/// pointers, 4 recent. ARGV: 1 run_id, 2 floor (the log's highest seq), 3 prefix of the unread
/// sets, then per conversation: name, read pointer or '', updated_at or '', k, k msgids.
/// The counter never goes down: seqs above the log's highest may have been handed out.
pub(super) const RESTORE_LUA: &str = r"
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
pub(super) const OFFLINE_LUA: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
";

/// The user's devices whose node incarnation is alive; forgets the others. KEYS: 1 presence.
/// ARGV: 1 prefix of node keys. Returns {device, node id, ...}.
pub(super) const ONLINE_LUA: &str = r"
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

/// Takes or keeps a claim. KEYS: 1 the claim. ARGV: 1 the claimant, 2 TTL in ms.
/// Returns {'ok'} | {'taken', holder}.
pub(super) const CLAIM_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return {'taken', v} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'ok'}
";

/// Allocates seqs for a group entry behind the membership fence (`store/split/fence.rs`): as
/// ALLOC (KEYS[1..#KEYS-1] the seq hashes, the group's log first; KEYS[#KEYS] the dedup
/// cache key; ARGV 1 run_id, 2 purge horizon), and the group log's hash keeps the group's
/// membership version: `mid` (msgid of its latest change), `mseq` (its group seq), `mat` (when
/// it was set, Unix ms), `mhold` (entries wait until then after the version was rebuilt).
/// ARGV: 3 the version the entry was planned from, 4 a change's own version ('' for a
/// message), 5 now (Unix ms). A missing `mid` is version 0. A change whose own version is set
/// already passes: an earlier attempt of the same change set it (its seqs are abandoned).
/// Returns {'dup', record} | {'stale', i} | {'fenced', mid, mseq, mat, mhold} | {'ok', seq...}.
pub(super) const GROUP_ALLOC_LUA: &str = r"
local d = redis.call('GET', KEYS[#KEYS])
if d and tonumber(string.match(d, '^%d+:%d+:(%-?%d+):') or '0') >= tonumber(ARGV[2]) then
  return {'dup', d}
end
for i = 1, #KEYS - 1 do
  if redis.call('HGET', KEYS[i], 'rid') ~= ARGV[1] then return {'stale', i} end
end
local v = redis.call('HMGET', KEYS[1], 'mid', 'mseq', 'mat', 'mhold')
local mid, hold = v[1] or '0', tonumber(v[4] or '0')
local planned = mid == ARGV[3] or (ARGV[4] ~= '' and mid == ARGV[4])
if not planned or tonumber(ARGV[5]) < hold then
  return {'fenced', mid, v[2] or '0', v[3] or '0', v[4] or '0'}
end
local out = {'ok'}
for i = 1, #KEYS - 1 do out[#out + 1] = redis.call('HINCRBY', KEYS[i], 'n', 1) end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'mid', ARGV[4], 'mseq', out[2], 'mat', ARGV[5])
end
return out
";

/// Replaces a group's membership version, only if it is still the one the caller read.
/// KEYS: 1 the group log's seq hash. ARGV: 1 run_id, 2 the `mid` read ('0' for none), 3 new
/// mid, 4 new mseq, 5 now (Unix ms). Returns {'stale'} | {'moved'} | {'ok'}.
pub(super) const FENCE_FIX_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'rid') ~= ARGV[1] then return {'stale'} end
if (redis.call('HGET', KEYS[1], 'mid') or '0') ~= ARGV[2] then return {'moved'} end
redis.call('HSET', KEYS[1], 'mid', ARGV[3], 'mseq', ARGV[4], 'mat', ARGV[5])
return {'ok'}
";

/// Rebuilds a group log's counter (as RESTORE, with no conversations) and its membership
/// version from the log. KEYS: 1 the seq hash. ARGV: 1 run_id, 2 floor, 3 the log's version
/// (mid), 4 its group seq, 5 now (Unix ms), 6 hold until (Unix ms). Under the same run_id (a
/// rebuild after a conflict) the version kept in Redis may be newer than the log's (a change
/// still being written): it is kept unless the log's is newer. Otherwise (a Redis that lost or
/// restored the key) the log's is taken, and entries wait until ARGV[6] for changes another node
/// may still be writing. Returns the counter.
pub(super) const RESTORE_GROUP_LUA: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local floor = tonumber(ARGV[2])
if floor > n then n = floor end
local same = redis.call('HGET', KEYS[1], 'rid') == ARGV[1]
local mseq = tonumber(redis.call('HGET', KEYS[1], 'mseq') or '0')
if not same or tonumber(ARGV[4]) > mseq then
  redis.call('HSET', KEYS[1], 'mid', ARGV[3], 'mseq', ARGV[4], 'mat', ARGV[5])
end
if not same then redis.call('HSET', KEYS[1], 'mhold', ARGV[6]) end
redis.call('HSET', KEYS[1], 'n', n, 'rid', ARGV[1])
return n
";
