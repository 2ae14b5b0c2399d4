//! How the Redis index encodes what it stores (dedup cache entries) and reads what its scripts
//! answer.

use redis::Value;

use super::{AllocRequest, Allocated};
use crate::store::{SentRecord, StoreError, StoreResult};

pub(super) fn encode_sent(sent: &SentRecord) -> String {
    format!(
        "{}:{}:{}:{}",
        sent.msg_id, sent.seq, sent.ts, sent.conversation
    )
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
    let conversation = number("conversation")?.to_string();
    Ok(SentRecord {
        group_seq: 0,
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
