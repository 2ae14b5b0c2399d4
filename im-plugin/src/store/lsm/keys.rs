//! Key and value encodings of the LSM store's keyspaces (the layout in `mod.rs`'s header).

use super::*;

/// Appends `lp(s)`: the length as a big-endian u32, then the bytes.
pub(super) fn push_lp(buf: &mut Vec<u8>, s: &[u8]) {
    // A component longer than u32::MAX cannot be a key anyway (`checked_key` refuses it); the
    // saturated length only keeps this function total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s);
}

/// `lp(first) ++ rest`: the key of the dedup and cursor keyspaces.
pub(super) fn pair_key(first: &str, rest: &[u8]) -> Vec<u8> {
    pair_key_bytes(first.as_bytes(), rest)
}

pub(super) fn pair_key_bytes(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + first.len() + rest.len());
    push_lp(&mut key, first);
    key.extend_from_slice(rest);
    key
}

/// `lp(user) ++ seq_be`.
pub(super) fn event_key(user: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + user.len() + 8);
    push_lp(&mut key, user.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `lp(user) ++ lp(conversation)`: the key of the per-conversation keyspaces, and the prefix of
/// the unread and history rows.
pub(super) fn user_conv_key(user: &str, conversation: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + user.len() + conversation.len());
    push_lp(&mut key, user.as_bytes());
    push_lp(&mut key, conversation.as_bytes());
    key
}

/// `lp(user) ++ newest_first(updated) ++ conversation`: a forward scan of a user's prefix lists
/// the newest activity first.
pub(super) fn recent_by_time_key(user: &str, updated_ms: i64, conversation: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + user.len() + 8 + conversation.len());
    push_lp(&mut key, user.as_bytes());
    key.extend_from_slice(&(u64::MAX - (updated_ms.max(0) as u64)).to_be_bytes());
    key.extend_from_slice(conversation.as_bytes());
    key
}

/// (updated_ms, seq of the latest message in the owner's stream).
pub(super) fn encode_recent(updated_ms: i64, seq: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&updated_ms.to_be_bytes());
    v[8..].copy_from_slice(&seq.to_be_bytes());
    v
}

pub(super) fn decode_recent(value: &[u8]) -> StoreResult<(i64, u64)> {
    let v = <[u8; 16]>::try_from(value).map_err(|_| StoreError::new("corrupt recent value"))?;
    let (ts, seq) = v.split_at(8);
    let ts = <[u8; 8]>::try_from(ts).map_err(|_| StoreError::new("corrupt recent value"))?;
    let seq = <[u8; 8]>::try_from(seq).map_err(|_| StoreError::new("corrupt recent value"))?;
    Ok((i64::from_be_bytes(ts), u64::from_be_bytes(seq)))
}

/// An i64 whose big-endian bytes sort like the number.
pub(super) fn ordered_ts(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn by_time_key(recorded: i64, from: &str, client_msg_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 4 + from.len() + client_msg_id.len());
    key.extend_from_slice(&ordered_ts(recorded));
    push_lp(&mut key, from.as_bytes());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// (recorded, sender, client_msg_id) of a `dedup_by_time` key.
pub(super) fn decode_by_time_key(key: &[u8]) -> StoreResult<(i64, &[u8], &[u8])> {
    let corrupt = || StoreError::new("corrupt dedup_by_time key");
    let (ts, rest) = key.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let recorded = (u64::from_be_bytes(*ts) ^ (1 << 63)) as i64;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
    if rest.len() < len {
        return Err(corrupt());
    }
    let (from, client_msg_id) = rest.split_at(len);
    Ok((recorded, from, client_msg_id))
}

pub(super) fn u64_value(n: u64) -> Slice {
    Slice::from(&n.to_be_bytes()[..])
}

pub(super) fn decode_u64(bytes: &[u8], what: &str) -> StoreResult<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError(format!("corrupt {what}: {} bytes", bytes.len())))
}

pub(super) fn encode_dedup(sent: &SentRecord, recorded: i64) -> Vec<u8> {
    let mut value = Vec::with_capacity(DEDUP_FIXED_LEN + sent.conversation.len());
    value.extend_from_slice(&sent.msg_id.to_be_bytes());
    value.extend_from_slice(&sent.seq.to_be_bytes());
    value.extend_from_slice(&sent.ts.to_be_bytes());
    value.extend_from_slice(&recorded.to_be_bytes());
    value.extend_from_slice(sent.conversation.as_bytes());
    // A group message's record ends with a NUL and its group seq (no conversation id holds a
    // NUL, so one-to-one records, written before groups existed, read as before).
    if sent.group_seq != 0 {
        value.push(0);
        value.extend_from_slice(&sent.group_seq.to_be_bytes());
    }
    value
}

/// The original [`SentRecord`] and the time it was recorded.
pub(super) fn decode_dedup(value: &[u8]) -> StoreResult<(SentRecord, i64)> {
    let corrupt = || StoreError::new("corrupt dedup value");
    let (fixed, mut conversation) = value
        .split_first_chunk::<DEDUP_FIXED_LEN>()
        .ok_or_else(corrupt)?;
    let mut group_seq = 0;
    if let Some((head, tail)) = conversation.split_last_chunk::<8>() {
        if let Some((0, head)) = head.split_last() {
            group_seq = u64::from_be_bytes(*tail);
            conversation = head;
        }
    }
    let field = |i: usize| -> StoreResult<[u8; 8]> {
        fixed
            .get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(corrupt)
    };
    let sent = SentRecord {
        msg_id: u64::from_be_bytes(field(0)?),
        seq: u64::from_be_bytes(field(1)?),
        ts: i64::from_be_bytes(field(2)?),
        conversation: String::from_utf8(conversation.to_vec()).map_err(|_| corrupt())?,
        group_seq,
    };
    Ok((sent, i64::from_be_bytes(field(3)?)))
}

pub(super) fn checked_key(key: Vec<u8>) -> StoreResult<Vec<u8>> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError(format!(
            "key of {} bytes exceeds the store's limit of {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(key)
}

pub(super) fn checked_value(value: Vec<u8>) -> StoreResult<Vec<u8>> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError(format!(
            "value of {} bytes exceeds the store's limit of {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(value)
}

/// The checked (key, value) of an event row.
pub(super) fn event_row(user: &str, event: &Event) -> StoreResult<(Vec<u8>, Slice)> {
    let key = checked_key(event_key(user, event.seq))?;
    let value = checked_value(event.encode_to_vec())?;
    Ok((key, Slice::from(value)))
}
