//! The value encodings of the ScyllaDB log's keys: the unordered pair of a one-to-one history,
//! the bucket of a seq, the day of a msgid, the msgid's node slot and write timestamp, wall-clock
//! deadlines, the copy map of a message (`message_copies`, see `amends.rs`), and the checked
//! conversions between seqs and CQL `bigint`s.

use std::time::Instant;

use mqim_schemas::v1::Event;
use prost::Message as _;

use super::*;

pub(super) fn decode_event(owner: &str, seq: i64, blob: &[u8]) -> StoreResult<Event> {
    let event = Event::decode(blob)
        .map_err(|e| StoreError::new(format!("decoding {owner}'s event at seq {seq}: {e}")))?;
    if i64::try_from(event.seq) != Ok(seq) {
        return Err(StoreError::new(format!(
            "{owner}'s event at seq {seq} says it is seq {}",
            event.seq
        )));
    }
    Ok(event)
}

/// The unordered pair, smaller first: both users' history lives under one key.
pub(super) fn pair<'a>(x: &'a str, y: &'a str) -> (&'a str, &'a str) {
    if x <= y {
        (x, y)
    } else {
        (y, x)
    }
}

pub(super) fn event_bucket(seq: u64) -> i64 {
    // seq <= 2^63, so the shifted value fits.
    (seq >> EVENT_BUCKET_BITS) as i64
}

pub(super) fn history_day(msg_id: u64) -> i32 {
    // (2^64 >> 22) / DAY_MS < 2^31.
    ((msg_id >> MSGID_MS_SHIFT) / DAY_MS) as i32
}

pub(super) fn msg_id_slot(msg_id: u64) -> i32 {
    ((msg_id >> MSGID_NODE_SHIFT) & MSGID_NODE_MASK) as i32
}

/// The write timestamp of a `max_msg_id` cell: the msgid's time in Unix microseconds plus its
/// counter (capped at 999, so it stays within the millisecond). Larger msgids of one node never
/// get a smaller timestamp; equal ones are settled by value.
pub(super) fn max_msg_id_timestamp(msg_id: u64) -> i64 {
    // msg_id <= i64::MAX (checked by the caller): the millisecond part is below 2^41.
    let unix_ms = (msg_id >> MSGID_MS_SHIFT) as i64 + EPOCH_MS;
    unix_ms * 1000 + (msg_id & MSGID_COUNTER_MASK).min(999) as i64
}

/// The wall-clock time (Unix ms) of an `Instant`, to store a deadline other nodes can read.
pub(super) fn wall_ms_at(deadline: Instant) -> i64 {
    let left = deadline.saturating_duration_since(Instant::now());
    crate::now_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn cql_limit(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(super) fn to_i64(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::new(format!("{what} {value} does not fit a CQL bigint")))
}

pub(super) fn from_i64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::new(format!("{what} {value} is negative")))
}

/// The first byte of an encoded copy map: its format.
const COPIES_FORMAT: u8 = 1;

/// The copy map of a message: for each stream holding a copy, its owner and the copy's seq.
/// Encoded as a format byte, then per copy the owner's length and the seq as LEB128 varints
/// around the owner's UTF-8 bytes: 13-15 bytes per copy for 10-byte user ids.
pub(super) fn encode_copies<'a>(copies: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut out = vec![COPIES_FORMAT];
    for (owner, seq) in copies {
        push_varint(&mut out, owner.len() as u64);
        out.extend_from_slice(owner.as_bytes());
        push_varint(&mut out, seq);
    }
    out
}

/// The copies of an encoded copy map, in the order they were written.
pub(super) fn decode_copies(blob: &[u8]) -> StoreResult<Vec<(String, u64)>> {
    let corrupt = |why: &str| StoreError::new(format!("corrupt copy map: {why}"));
    let Some((&COPIES_FORMAT, mut rest)) = blob.split_first() else {
        return Err(corrupt("unknown format"));
    };
    let mut copies = Vec::new();
    while !rest.is_empty() {
        let len = take_varint(&mut rest).ok_or_else(|| corrupt("bad length"))?;
        let len = usize::try_from(len).map_err(|_| corrupt("bad length"))?;
        if len > rest.len() {
            return Err(corrupt("truncated owner"));
        }
        let (owner, tail) = rest.split_at(len);
        let owner = std::str::from_utf8(owner).map_err(|_| corrupt("owner is not UTF-8"))?;
        rest = tail;
        let seq = take_varint(&mut rest).ok_or_else(|| corrupt("bad seq"))?;
        copies.push((owner.to_owned(), seq));
    }
    Ok(copies)
}

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for (i, &b) in rest.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        // The tenth byte may carry one bit only.
        if i == 9 && bits > 1 {
            return None;
        }
        n |= bits << (7 * i);
        if b & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Some(n);
        }
    }
    None
}
