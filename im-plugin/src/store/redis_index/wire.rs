//! How the Redis index encodes what it stores (dedup cache entries) and reads what its scripts
//! answer.

use redis::Value;

use super::{AllocRequest, Allocated, FenceState};
use crate::store::{SentRecord, StoreError, StoreResult};

/// `msgid:seq:ts:conversation`, and for a group message `\0` + its group seq (a conversation id
/// holds no NUL).
pub(super) fn encode_sent(sent: &SentRecord) -> String {
    let mut s = format!(
        "{}:{}:{}:{}",
        sent.msg_id, sent.seq, sent.ts, sent.conversation
    );
    if sent.group_seq != 0 {
        s.push('\0');
        s.push_str(&sent.group_seq.to_string());
    }
    s
}

pub(super) fn decode_sent(s: &str) -> StoreResult<SentRecord> {
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
    let rest = number("conversation")?;
    let (conversation, group_seq) = match rest.split_once('\0') {
        Some((c, g)) => (c.to_string(), g.parse().map_err(bad)?),
        None => (rest.to_string(), 0),
    };
    Ok(SentRecord {
        group_seq,
        msg_id,
        seq,
        conversation,
        ts,
    })
}

pub(super) fn parse_allocated(request: &AllocRequest, value: &Value) -> StoreResult<Allocated> {
    let items = array(value)?;
    let tag = text(items.first())?;
    let stale_user = |i: i64| match (request, i) {
        (AllocRequest::Group { owners, .. }, i) => usize::try_from(i)
            .ok()
            .and_then(|i| owners.get(i.wrapping_sub(1)))
            .or(owners.first())
            .cloned()
            .unwrap_or_default(),
        (AllocRequest::Message { from, .. }, 1) | (AllocRequest::Read { user: from, .. }, 1) => {
            from.clone()
        }
        (AllocRequest::Message { to, .. }, _) => to.clone(),
        (AllocRequest::Read { peer, user, .. }, _) => peer.clone().unwrap_or_else(|| user.clone()),
    };
    match (request, tag.as_str()) {
        (_, "stale") => Ok(Allocated::Stale(stale_user(int(items.get(1))?))),
        (AllocRequest::Group { owners, .. }, "ok") => Ok(Allocated::Group(
            (1..=owners.len())
                .map(|i| seq(items.get(i)))
                .collect::<StoreResult<Vec<u64>>>()?,
        )),
        (AllocRequest::Group { .. }, "fenced") => {
            let number = |i: usize| -> StoreResult<u64> {
                text(items.get(i))?
                    .parse()
                    .map_err(|e| StoreError(format!("corrupt membership version: {e}")))
            };
            Ok(Allocated::Fenced(FenceState {
                version_id: number(1)?,
                version_seq: number(2)?,
                set_at_ms: i64::try_from(number(3)?).unwrap_or(i64::MAX),
                hold_until_ms: i64::try_from(number(4)?).unwrap_or(i64::MAX),
            }))
        }
        (AllocRequest::Message { .. } | AllocRequest::Group { .. }, "dup") => {
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

pub(super) fn array(value: &Value) -> StoreResult<&[Value]> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(StoreError(format!(
            "Redis script answered {other:?}, not an array"
        ))),
    }
}

pub(super) fn text(value: Option<&Value>) -> StoreResult<String> {
    match value {
        Some(Value::BulkString(b)) => String::from_utf8(b.clone()).map_err(StoreError::new),
        Some(Value::SimpleString(s)) => Ok(s.clone()),
        other => Err(StoreError(format!(
            "Redis script answered {other:?}, not a string"
        ))),
    }
}

pub(super) fn int(value: Option<&Value>) -> StoreResult<i64> {
    match value {
        Some(Value::Int(n)) => Ok(*n),
        other => Err(StoreError(format!(
            "Redis script answered {other:?}, not an integer"
        ))),
    }
}

pub(super) fn seq(value: Option<&Value>) -> StoreResult<u64> {
    u64::try_from(int(value)?).map_err(StoreError::new)
}

pub(super) fn unexpected(tag: &str) -> StoreError {
    StoreError(format!("Redis script answered {tag:?}"))
}

pub(super) fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError(format!("Redis: {e}"))
}
