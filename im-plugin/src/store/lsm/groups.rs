//! The embedded store's group writes: one entry at the next seq of the group's log, its copies in
//! member streams with their inbox rows, the membership rows, the group head (message count and
//! latest message) and the dedup entry (a message's, or a creation's given a clientMsgId), all
//! in the batch of the writer thread.
//! A large group member's read position is (message ordinal, msgid): unread is the group's
//! message count minus the ordinal. As in `inbox.rs`, everything that can fail happens before
//! the first write.
//!
//! Keyspaces (see `mod.rs` for the encodings `lp` and `user_conv_key`):
//! - `group_meta`: `group` -> JSON [`GroupMeta`]; `group_members`: `lp(group) ++ user` -> JSON
//!   [`Member`]; `user_groups`: `lp(user) ++ group` -> `[large]`.
//! - `group_head`: `group` -> `last_msg_seq_be ++ msg_count_be ++ updated_be`.
//! - `group_ordinal`: `lp(group) ++ msg_id_be` -> ordinal of the message (1, 2, 3, ...).
//! - `group_read`: `user_conv_key(user, g:<group>)` -> `ordinal_be ++ msg_id_be`.
//! - `group_left`: `lp(group) ++ msg_id_be ++ user` -> empty: `user` left (or was removed
//!   from) `group` with the change `msg_id`. A recall or an edit reaches the copies of members
//!   who left after the message (`extras.rs`).
//! - `group_recalled`: `lp(group) ++ ordinal_be` -> empty: a recalled message (`extras.rs`),
//!   which a large group's unread count leaves out: unread is the message count minus the
//!   ordinal minus the recalled messages after it (a range count; recalls are rare).
//! - `mentions`: `user_conv_key(user, conversation)` -> msgid of the newest unread mention.
//!
//! The log's messages are also in `conv_index` under `user_conv_key(#g:<group>, g:<group>)`,
//! which is a large group's history; so are a large group's mention copies under the mentioned
//! member's key (found by msgid for a recall or an edit, never listed: a large group's history
//! is the log's).

use super::*;
use crate::store::groups::{log_owner, GroupEntry, GroupMeta, Member};

/// The group head: where the latest message is and how many there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Head {
    pub last_msg_seq: u64,
    pub msg_count: u64,
    pub updated_at: i64,
}

pub(super) fn encode_head(h: Head) -> Slice {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&h.last_msg_seq.to_be_bytes());
    v.extend_from_slice(&h.msg_count.to_be_bytes());
    v.extend_from_slice(&h.updated_at.to_be_bytes());
    Slice::from(v)
}

pub(super) fn decode_head(v: &[u8]) -> StoreResult<Head> {
    let corrupt = || StoreError::new("corrupt group head");
    let field = |i: usize| -> StoreResult<[u8; 8]> {
        v.get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(corrupt)
    };
    Ok(Head {
        last_msg_seq: u64::from_be_bytes(field(0)?),
        msg_count: u64::from_be_bytes(field(1)?),
        updated_at: i64::from_be_bytes(field(2)?),
    })
}

/// The `group_left` row of `user` leaving `group` with the change `msg_id`.
pub(super) fn left_key(group: &str, msg_id: u64, user: &str) -> Vec<u8> {
    let mut key = pair_key(group, &msg_id.to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key
}

/// Users who left `group` (removed, left) after message `msg_id`: their streams may hold it.
pub(super) fn left_after(ks: &Keyspaces, group: &str, msg_id: u64) -> StoreResult<Vec<String>> {
    let start = pair_key(group, &msg_id.to_be_bytes());
    let prefix_len = start.len();
    let end = pair_key(group, &u64::MAX.to_be_bytes());
    let mut users = Vec::new();
    for entry in ks.group_left.range(start..=end) {
        let key = entry.key().map_err(StoreError::new)?;
        let user = key
            .get(prefix_len..)
            .and_then(|u| std::str::from_utf8(u).ok())
            .ok_or_else(|| StoreError::new("corrupt group_left key"))?;
        if !users.iter().any(|u| u == user) {
            users.push(user.to_string());
        }
    }
    Ok(users)
}

/// Recalled messages of `group` after message ordinal `ordinal`.
pub(super) fn recalled_after(ks: &Keyspaces, group: &str, ordinal: u64) -> StoreResult<u64> {
    let Some(from) = ordinal.checked_add(1) else {
        return Ok(0);
    };
    let start = pair_key(group, &from.to_be_bytes());
    let end = pair_key(group, &u64::MAX.to_be_bytes());
    let mut n = 0;
    for entry in ks.group_recalled.range(start..=end) {
        entry.key().map_err(StoreError::new)?;
        n += 1;
    }
    Ok(n)
}

/// A large-group member's unread count at read position `ordinal`.
pub(super) fn large_unread(
    ks: &Keyspaces,
    group: &str,
    head: &Head,
    ordinal: u64,
) -> StoreResult<u64> {
    Ok(head
        .msg_count
        .saturating_sub(ordinal)
        .saturating_sub(recalled_after(ks, group, ordinal)?))
}

/// (ordinal, msg_id) of a read position.
pub(super) fn decode_read(v: &[u8]) -> StoreResult<(u64, u64)> {
    let corrupt = || StoreError::new("corrupt group read position");
    let (a, b) = v.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let b = <[u8; 8]>::try_from(b).map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*a), u64::from_be_bytes(b)))
}

fn encode_read(ordinal: u64, msg_id: u64) -> Slice {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&ordinal.to_be_bytes());
    v.extend_from_slice(&msg_id.to_be_bytes());
    Slice::from(v)
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> StoreResult<Slice> {
    serde_json::to_vec(value)
        .map(Slice::from)
        .map_err(StoreError::new)
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(v: &[u8], what: &str) -> StoreResult<T> {
    serde_json::from_slice(v).map_err(|e| StoreError(format!("corrupt {what}: {e}")))
}

/// One copy of an entry, decided before writing.
struct PlannedCopy {
    owner: String,
    event: Event,
    row: (Vec<u8>, Slice),
    inbox: Option<InboxUpdate>,
    /// The history index row of a copy with no inbox row (a large group's mention).
    mention_index: Option<Vec<u8>>,
    unread: Option<(Vec<u8>, u64)>,
    mention: Option<Vec<u8>>,
}

impl Pending<'_> {
    /// A group entry, at the next seqs (embedded) or at the seqs the index allocated (`given`,
    /// log mode: then no unread counts or recency rows, which the index keeps, and a seq that
    /// holds an event refuses the whole write with [`Output::Conflict`]).
    pub(super) fn append_group(
        &mut self,
        g: &GroupAppend,
        given: Option<&GroupSeqs>,
    ) -> StoreResult<Output> {
        if let Some(seqs) = given {
            if seqs.copies.len() != g.copies.len() {
                return Err(StoreError::new("a group write names a seq per copy"));
            }
        }
        let conversation = Conversation::Group(g.group.clone()).to_string();
        let message = match &g.entry {
            GroupEntry::Message(m) => Some(m),
            GroupEntry::Change(_) => None,
        };
        let dedup_key = g.dedup_key();
        let dedup = match &dedup_key {
            Some(d) => {
                let key = checked_key(pair_key(&d.owner, d.client_msg_id.as_bytes()))?;
                if let Some(original) = self.get(Table::Dedup, &key)? {
                    if let Some(seqs) = given {
                        // The seqs the index gave this resend stay taken, as gaps.
                        let owner = log_owner(&g.group);
                        let gaps: Vec<(String, Event)> =
                            std::iter::once((owner, gap_event(seqs.group_seq)))
                                .chain(
                                    g.copies
                                        .iter()
                                        .zip(&seqs.copies)
                                        .map(|(c, s)| (c.owner.clone(), gap_event(*s))),
                                )
                                .collect();
                        self.write_free(&gaps)?;
                    }
                    let original = decode_dedup(&original)?.0;
                    return Ok(Output::Group(Box::new(GroupOutcome::Duplicate(original))));
                }
                let by_time = checked_key(by_time_key(g.ts, &d.owner, &d.client_msg_id))?;
                Some((key, by_time))
            }
            None => None,
        };

        let owner = log_owner(&g.group);
        if let Some(seqs) = given {
            let at = std::iter::once((owner.as_str(), seqs.group_seq)).chain(
                g.copies
                    .iter()
                    .zip(&seqs.copies)
                    .map(|(c, s)| (c.owner.as_str(), *s)),
            );
            if let Some(conflict) = self.first_taken(at)? {
                return Ok(conflict);
            }
        }
        let group_seq = match given {
            Some(seqs) => seqs.group_seq,
            None => self.next_seq(&owner)?,
        };
        // Every copy is the log's event at its own seq: built once, cloned per copy.
        let log_event = g.event(group_seq, group_seq);
        let log_row = event_row(&owner, &log_event)?;
        let mut copies = Vec::with_capacity(g.copies.len());
        for (i, c) in g.copies.iter().enumerate() {
            let seq = match given {
                Some(seqs) => seqs.copies[i],
                None => self.next_seq(&c.owner)?,
            };
            let event = Event {
                seq,
                ..log_event.clone()
            };
            let row = event_row(&c.owner, &event)?;
            let inbox = match c.recent && message.is_some() {
                true => Some(self.inbox_update(&c.owner, &conversation, g.msg_id, g.ts, seq)?),
                false => None,
            };
            let key = checked_key(user_conv_key(&c.owner, &conversation))?;
            let unread = match c.unread && message.is_some() && given.is_none() {
                true => Some((
                    key.clone(),
                    self.get_u64(Table::UnreadCount, &key, "unread count")?,
                )),
                false => None,
            };
            // A mention without an inbox row (a large group's) is still found by its msgid, so
            // a recall or an edit reaches the mentioned member's copy.
            let mention_index = match (c.mention && message.is_some(), &inbox) {
                (true, None) => {
                    let mut k = key.clone();
                    k.extend_from_slice(&g.msg_id.to_be_bytes());
                    Some(k)
                }
                _ => None,
            };
            let mention = (c.mention && message.is_some()).then_some(key);
            copies.push(PlannedCopy {
                owner: c.owner.clone(),
                event,
                row,
                inbox,
                mention_index,
                unread,
                mention,
            });
        }

        let head_key = checked_key(g.group.as_bytes().to_vec())?;
        let mut head = match self.get(Table::GroupHead, &head_key)? {
            Some(v) => decode_head(&v)?,
            None => Head::default(),
        };
        let history_key = {
            let mut k = checked_key(user_conv_key(&owner, &conversation))?;
            k.extend_from_slice(&g.msg_id.to_be_bytes());
            k
        };
        if message.is_some() {
            head = Head {
                last_msg_seq: group_seq,
                msg_count: head.msg_count + 1,
                updated_at: head.updated_at.max(g.ts),
            };
        }
        let mut member_rows = Vec::new();
        let mut left_rows = Vec::new();
        if let Some(w) = &g.membership {
            for u in &w.upserts {
                let key = checked_key(pair_key(&g.group, u.user.as_bytes()))?;
                let member = match (u.joins, self.get(Table::GroupMembers, &key)?) {
                    (false, Some(v)) => Member {
                        role: u.role,
                        ..from_json::<Member>(&v, "group member")?
                    },
                    _ => Member {
                        role: u.role,
                        joined_at: g.ts,
                        joined_seq: group_seq,
                        joined_msg_id: g.msg_id,
                    },
                };
                let index = checked_key(pair_key(&u.user, g.group.as_bytes()))?;
                member_rows.push((key, Some(json(&member)?), index));
            }
            for user in &w.removals {
                let key = checked_key(pair_key(&g.group, user.as_bytes()))?;
                let index = checked_key(pair_key(user, g.group.as_bytes()))?;
                member_rows.push((key, None, index));
                left_rows.push(checked_key(left_key(&g.group, g.msg_id, user))?);
            }
        }
        let meta = match &g.membership {
            // The meta says which change it reflects, at its group seq (the fence reads it).
            Some(w) => Some(json::<GroupMeta>(&GroupMeta {
                version_seq: group_seq,
                ..w.meta.clone()
            })?),
            None => None,
        };
        let sender_read = match message {
            Some(m) if g.large => Some(checked_key(user_conv_key(&m.from, &conversation))?),
            _ => None,
        };
        let sent = SentRecord {
            msg_id: g.msg_id,
            seq: dedup_key
                .as_ref()
                .and_then(|d| copies.iter().find(|c| c.owner == d.actor))
                .map_or(0, |c| c.event.seq),
            conversation: conversation.clone(),
            ts: g.ts,
            group_seq,
        };
        let dedup_value = checked_value(encode_dedup(&sent, g.ts))?;
        let max = self.get_u64(Table::Meta, META_MAX_MSG_ID, "max msg_id")?;

        // Log mode: the last seqs only ever rise (a retried write may land below them).
        let log_mode = given.is_some();
        let mut last_seqs = Vec::with_capacity(copies.len() + 1);
        for (who, seq) in std::iter::once((owner.as_str(), group_seq))
            .chain(copies.iter().map(|c| (c.owner.as_str(), c.event.seq)))
        {
            let last = match log_mode {
                true => self.get_u64(Table::LastSeq, who.as_bytes(), "last seq")?,
                false => 0,
            };
            last_seqs.push((seq > last).then_some(seq));
        }
        let mut last_seqs = last_seqs.into_iter();

        // Writes: nothing below can fail.
        if let Some(seq) = last_seqs.next().flatten() {
            self.put(Table::LastSeq, owner.as_bytes().to_vec(), u64_value(seq));
        }
        self.put_row(log_mode, log_row);
        if message.is_some() {
            self.batch
                .insert(&self.ks.conv_index, history_key, u64_value(group_seq));
            self.batch.insert(
                &self.ks.group_ordinal,
                pair_key(&g.group, &g.msg_id.to_be_bytes()),
                u64_value(head.msg_count),
            );
            self.put(Table::GroupHead, head_key, encode_head(head));
        }
        let mut written = Vec::with_capacity(copies.len());
        for c in copies {
            if let Some(seq) = last_seqs.next().flatten() {
                self.put(Table::LastSeq, c.owner.as_bytes().to_vec(), u64_value(seq));
            }
            self.put_row(log_mode, c.row);
            match c.inbox {
                Some(update) if log_mode => {
                    self.batch
                        .insert(&self.ks.conv_index, update.index_key, u64_value(update.seq));
                }
                Some(update) => self.write_inbox(update),
                None => {}
            }
            if let Some(key) = c.mention_index {
                self.batch
                    .insert(&self.ks.conv_index, key, u64_value(c.event.seq));
            }
            if let Some((count_key, count)) = c.unread {
                let mut unread_key = count_key.clone();
                unread_key.extend_from_slice(&c.event.seq.to_be_bytes());
                self.batch
                    .insert(&self.ks.unread, unread_key, u64_value(g.msg_id));
                self.put(Table::UnreadCount, count_key, u64_value(count + 1));
            }
            if let Some(key) = c.mention {
                self.put(Table::Mentions, key, u64_value(g.msg_id));
            }
            written.push((c.owner, c.event));
        }
        if let Some(meta) = meta {
            self.batch
                .insert(&self.ks.group_meta, g.group.as_bytes().to_vec(), meta);
        }
        for key in left_rows {
            self.batch.insert(&self.ks.group_left, key, Vec::new());
        }
        for (key, row, index) in member_rows {
            match row {
                Some(row) => {
                    self.put(Table::GroupMembers, key, row);
                    let large = [u8::from(g.large)];
                    self.batch.insert(&self.ks.user_groups, index, &large[..]);
                }
                None => {
                    self.remove(Table::GroupMembers, key);
                    self.batch.remove(&self.ks.user_groups, index);
                }
            }
        }
        if let Some(key) = sender_read {
            // Your own message is never unread: sending moves your read position to it.
            self.put(Table::GroupRead, key, encode_read(head.msg_count, g.msg_id));
        }
        if let Some((key, by_time)) = dedup {
            self.put(Table::Dedup, key, Slice::from(dedup_value));
            self.batch
                .insert(&self.ks.dedup_by_time, by_time, Vec::new());
        }
        if g.msg_id > max {
            self.put(Table::Meta, META_MAX_MSG_ID.to_vec(), u64_value(g.msg_id));
        }
        Ok(Output::Group(Box::new(GroupOutcome::Fresh(
            super::super::groups::GroupAppended {
                sent,
                log_event,
                copies: written,
            },
        ))))
    }

    /// An event row: in log mode visible to the rest of the batch (its conflict checks read
    /// it); the embedded store allocates its seqs itself and never reads a row back in a batch.
    fn put_row(&mut self, log_mode: bool, row: (Vec<u8>, Slice)) {
        match log_mode {
            true => self.put(Table::Events, row.0, row.1),
            false => self.batch.insert(&self.ks.events, row.0, row.1),
        }
    }

    /// Runs alone in its batch (like `mark_read`): it scans committed `group_ordinal` rows.
    /// `own_seq`: log mode, the seq the index allocated for the reader's receipt (a gap there if
    /// the read moves nothing).
    pub(super) fn mark_group_read(
        &mut self,
        user: &str,
        group: &str,
        up_to: u64,
        own_seq: Option<u64>,
    ) -> StoreResult<Output> {
        if let Some(seq) = own_seq {
            if let Some(conflict) = self.first_taken([(user, seq)])? {
                return Ok(conflict);
            }
        }
        let conversation = Conversation::Group(group.to_string()).to_string();
        let key = checked_key(user_conv_key(user, &conversation))?;
        let head = match self.get(Table::GroupHead, group.as_bytes())? {
            Some(v) => decode_head(&v)?,
            None => Head::default(),
        };
        let (current, _) = match self.get(Table::GroupRead, &key)? {
            Some(v) => decode_read(&v)?,
            None => (0, 0),
        };
        let start = pair_key(group, &[]);
        let end = pair_key(group, &up_to.to_be_bytes());
        let found = match self.ks.group_ordinal.range(start..=end).next_back() {
            Some(entry) => {
                let (k, v) = entry.into_inner().map_err(StoreError::new)?;
                let msg_id = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::new("corrupt group ordinal key"))?;
                Some((decode_u64(&v, "group ordinal")?, msg_id))
            }
            None => None,
        };
        let mention = match self.get(Table::Mentions, &key)? {
            Some(v) => Some(decode_u64(&v, "mention")?),
            None => None,
        };
        let Some((ordinal, msg_id)) = found.filter(|(o, _)| *o > current) else {
            if let Some(seq) = own_seq {
                self.write_free(&[(user.to_string(), gap_event(seq))])?;
            }
            return Ok(Output::GroupRead(Box::new(GroupReadOutcome {
                unread: large_unread(self.ks, group, &head, current)?,
                own_receipt: None,
            })));
        };
        let seq = match own_seq {
            Some(seq) => seq,
            None => self.next_seq(user)?,
        };
        let receipt = receipt_event(seq, conversation, user, msg_id);
        let row = event_row(user, &receipt)?;
        let unread = large_unread(self.ks, group, &head, ordinal)?;

        // Writes: nothing below can fail.
        self.put(Table::GroupRead, key.clone(), encode_read(ordinal, msg_id));
        if mention.is_some_and(|m| m <= up_to) {
            self.remove(Table::Mentions, key);
        }
        self.put_event(user, row, seq)?;
        Ok(Output::GroupRead(Box::new(GroupReadOutcome {
            unread,
            own_receipt: Some(receipt),
        })))
    }
}
