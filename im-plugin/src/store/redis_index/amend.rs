//! The index side of a recall: a recalled message is never unread, so it leaves the unread set
//! (and count) of every stream that holds it. An edit changes nothing here.

use std::sync::OnceLock;

use redis::{Script, Value};

use super::wire::{array, int, text, unexpected};
use super::{padded, RedisIndex};
use crate::store::StoreResult;

/// Takes a recalled message out of unread sets; idempotent. KEYS per copy 3: seq, unread
/// counts, unread set of the conversation. ARGV: 1 run_id, 2 padded msgid, then per copy its
/// conversation. Returns {'stale', i} | {'ok'}.
const RECALL_LUA: &str = r"
local n = #KEYS / 3
for i = 1, n do
  if redis.call('HGET', KEYS[1 + (i - 1) * 3], 'rid') ~= ARGV[1] then return {'stale', i} end
end
for i = 1, n do
  local k = (i - 1) * 3
  if redis.call('ZREM', KEYS[k + 3], ARGV[2]) == 1 then
    if redis.call('HINCRBY', KEYS[k + 2], ARGV[2 + i], -1) <= 0 then
      redis.call('HDEL', KEYS[k + 2], ARGV[2 + i])
    end
  end
end
return {'ok'}
";

fn recall_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(RECALL_LUA))
}

impl RedisIndex {
    /// Takes recalled message `msg_id` out of the unread index of each (owner, conversation)
    /// copy. `Some(owner)`: that owner's keys are stale (nothing changed).
    pub async fn apply_recall(
        &self,
        copies: &[(String, String)],
        msg_id: u64,
    ) -> StoreResult<Option<String>> {
        let Some((first, _)) = copies.first() else {
            return Ok(None);
        };
        let script = recall_script();
        let mut call = script.prepare_invoke();
        for (owner, conversation) in copies {
            call.key(self.user_key("seq", owner))
                .key(self.user_key("unread", owner))
                .key(self.unread_set_key(owner, conversation));
        }
        let rid = self.run_id();
        call.arg(&rid).arg(padded(msg_id));
        for (_, conversation) in copies {
            call.arg(conversation);
        }
        let mut pipe = Self::verified_pipe();
        pipe.invoke_script(&call);
        let values = self.query_with_scripts(&pipe, &[script]).await?;
        let Some(values) = self.verified_answer(values, &rid).await? else {
            return Ok(Some(first.clone()));
        };
        let items = array(values.first().unwrap_or(&Value::Nil))?;
        match text(items.first())?.as_str() {
            "ok" => Ok(None),
            "stale" => {
                let i = usize::try_from(int(items.get(1))?).unwrap_or(0);
                Ok(Some(
                    copies
                        .get(i.wrapping_sub(1))
                        .map_or_else(|| first.clone(), |(o, _)| o.clone()),
                ))
            }
            other => Err(unexpected(other)),
        }
    }
}
