//! The embedded store's own writes (the whole `MessageStore` + `InboxStore` in one node): a
//! message's two copies at their next seqs with the dedup entry and the inbox rows (unread,
//! recency, history index), read pointers and receipts, cursors and dedup purges. Everything
//! that can fail happens before the first write, so a failed request leaves nothing in the batch.

use super::*;

impl Pending<'_> {
    /// Everything that can fail (reads, decoding, key checks) happens before the first write, so
    /// a failed append leaves nothing behind in the batch.
    pub(super) fn append(&mut self, msg: &NewMessage) -> StoreResult<SendOutcome> {
        let dedup_key = checked_key(pair_key(&msg.from, msg.client_msg_id.as_bytes()))?;
        if let Some(original) = self.get(Table::Dedup, &dedup_key)? {
            return Ok(SendOutcome::Duplicate(decode_dedup(&original)?.0));
        }
        let by_time_key = checked_key(by_time_key(msg.ts, &msg.from, &msg.client_msg_id))?;

        let conversation = Conversation::with_user(&msg.to);
        let sender_seq = self.next_seq(&msg.from)?;
        let sender_event = msg.event(sender_seq, conversation.clone());
        let sender_row = event_row(&msg.from, &sender_event)?;
        let recipient = if msg.to == msg.from {
            None
        } else {
            let seq = self.next_seq(&msg.to)?;
            let event = msg.event(seq, Conversation::with_user(&msg.from));
            let row = event_row(&msg.to, &event)?;
            Some((seq, event, row))
        };
        let dedup_value = checked_value(encode_dedup(
            &SentRecord {
                group_seq: 0,
                msg_id: msg.msg_id,
                seq: sender_seq,
                conversation: conversation.clone(),
                ts: msg.ts,
            },
            msg.ts,
        ))?;
        let max = self.get_u64(Table::Meta, META_MAX_MSG_ID, "max msg_id")?;
        let sender_inbox =
            self.inbox_update(&msg.from, &conversation, msg.msg_id, msg.ts, sender_seq)?;
        let recipient_inbox = match &recipient {
            Some((seq, _, _)) => {
                let peer_conversation = Conversation::with_user(&msg.from);
                let update =
                    self.inbox_update(&msg.to, &peer_conversation, msg.msg_id, msg.ts, *seq)?;
                let count_key = checked_key(user_conv_key(&msg.to, &peer_conversation))?;
                let count = self.get_u64(Table::UnreadCount, &count_key, "unread count")?;
                Some((update, count_key, count, *seq))
            }
            None => None,
        };

        // Writes: nothing below can fail.
        self.write_inbox(sender_inbox);
        if let Some((update, count_key, count, seq)) = recipient_inbox {
            // Unread for the recipient only: a user's own messages are never unread.
            let mut unread_key = count_key.clone();
            unread_key.extend_from_slice(&seq.to_be_bytes());
            self.batch
                .insert(&self.ks.unread, unread_key, u64_value(msg.msg_id));
            self.put(Table::UnreadCount, count_key, u64_value(count + 1));
            self.write_inbox(update);
        }
        self.put(
            Table::LastSeq,
            msg.from.as_bytes().to_vec(),
            u64_value(sender_seq),
        );
        self.batch
            .insert(&self.ks.events, sender_row.0, sender_row.1);
        let recipient_event = recipient.map(|(seq, event, row)| {
            self.put(Table::LastSeq, msg.to.as_bytes().to_vec(), u64_value(seq));
            self.batch.insert(&self.ks.events, row.0, row.1);
            event
        });
        self.put(Table::Dedup, dedup_key, Slice::from(dedup_value));
        self.batch
            .insert(&self.ks.dedup_by_time, by_time_key, Vec::new());
        if msg.msg_id > max {
            self.put(Table::Meta, META_MAX_MSG_ID.to_vec(), u64_value(msg.msg_id));
        }

        Ok(SendOutcome::Fresh(Appended {
            sent: SentRecord {
                group_seq: 0,
                msg_id: msg.msg_id,
                seq: sender_seq,
                conversation,
                ts: msg.ts,
            },
            sender_event,
            recipient_event,
        }))
    }

    /// Computes (without writing) the history index row and the recency move of one copy of a
    /// message in its owner's stream.
    pub(super) fn inbox_update(
        &self,
        owner: &str,
        conversation: &str,
        msg_id: u64,
        ts: i64,
        seq: u64,
    ) -> StoreResult<InboxUpdate> {
        let key = checked_key(user_conv_key(owner, conversation))?;
        let previous = match self.get(Table::Recent, &key)? {
            Some(value) => Some(decode_recent(&value)?.0),
            None => None,
        };
        // Never move a conversation back in time, should clocks disagree.
        let updated = previous.map_or(ts, |p| p.max(ts));
        let mut index_key = key.clone();
        index_key.extend_from_slice(&msg_id.to_be_bytes());
        Ok(InboxUpdate {
            old_by_time: previous.map(|p| recent_by_time_key(owner, p, conversation)),
            new_by_time: checked_key(recent_by_time_key(owner, updated, conversation))?,
            recent_value: encode_recent(updated, seq),
            recent_key: key,
            index_key,
            seq,
        })
    }

    pub(super) fn write_inbox(&mut self, u: InboxUpdate) {
        self.batch
            .insert(&self.ks.conv_index, u.index_key, u64_value(u.seq));
        if let Some(old) = u.old_by_time {
            self.batch.remove(&self.ks.recent_by_time, old);
        }
        self.batch
            .insert(&self.ks.recent_by_time, u.new_by_time, Vec::new());
        self.put(
            Table::Recent,
            u.recent_key,
            Slice::from(&u.recent_value[..]),
        );
    }

    /// Runs alone in its batch (see [`writer_loop`]), so the committed unread rows it scans are
    /// current. Removes every unread message with msgid <= `up_to`; if any, appends the receipts.
    pub(super) fn mark_read(
        &mut self,
        user: &str,
        conversation: &str,
        up_to: u64,
    ) -> StoreResult<ReadOutcome> {
        let key = checked_key(user_conv_key(user, conversation))?;
        let count = self.get_u64(Table::UnreadCount, &key, "unread count")?;
        let read_upto = match self.ks.read_upto.get(&key).map_err(StoreError::new)? {
            Some(v) => decode_u64(&v, "read pointer")?,
            None => 0,
        };
        if up_to <= read_upto {
            return Ok(ReadOutcome {
                unread: count,
                receipts: None,
            });
        }
        let mut removed = Vec::new();
        for entry in self.ks.unread.prefix(&key) {
            let (row, msg_id) = entry.into_inner().map_err(StoreError::new)?;
            // Every entry is checked, not just a prefix of them: seq order and msgid order agree
            // on one node, but the index must stay right if they ever do not.
            if decode_u64(&msg_id, "unread msg_id")? <= up_to {
                removed.push(row.to_vec());
            }
        }
        let left = count.saturating_sub(removed.len() as u64);
        // Who gets the receipt: the peer of a one-to-one conversation; in a group, the sender of
        // the newest message the read covers.
        let peer = match Conversation::parse(conversation) {
            _ if removed.is_empty() => None,
            Some(Conversation::User(peer)) => Some((peer, Conversation::with_user(user))),
            Some(Conversation::Group(_)) => {
                let newest = removed
                    .iter()
                    .filter_map(|row| row.last_chunk::<8>().map(|s| u64::from_be_bytes(*s)))
                    .max()
                    .unwrap_or(0);
                match self
                    .ks
                    .events
                    .get(event_key(user, newest))
                    .map_err(StoreError::new)?
                {
                    Some(bytes) => Some((decode_message(&bytes)?.from, conversation.to_string())),
                    None => None,
                }
            }
            None => None,
        };
        let mention = match self.get(Table::Mentions, &key)? {
            Some(v) => decode_u64(&v, "mention")? <= up_to,
            None => false,
        };
        let receipts = match peer {
            Some((peer, their_conversation)) => {
                let peer = peer.as_str();
                let own = receipt_event(self.next_seq(user)?, conversation.into(), user, up_to);
                let theirs = receipt_event(self.next_seq(peer)?, their_conversation, user, up_to);
                let rows = (event_row(user, &own)?, event_row(peer, &theirs)?);
                Some((own, peer.to_string(), theirs, rows))
            }
            None => None,
        };

        // Writes: nothing below can fail.
        if mention {
            self.remove(Table::Mentions, key.clone());
        }
        self.ks_put_read_upto(key.clone(), up_to);
        for row in removed {
            self.batch.remove(&self.ks.unread, row);
        }
        if left == 0 {
            self.remove(Table::UnreadCount, key);
        } else {
            self.put(Table::UnreadCount, key, u64_value(left));
        }
        let receipts = receipts.map(|(own, peer, theirs, (own_row, their_row))| {
            self.put(Table::LastSeq, user.as_bytes().to_vec(), u64_value(own.seq));
            self.put(
                Table::LastSeq,
                peer.as_bytes().to_vec(),
                u64_value(theirs.seq),
            );
            self.batch.insert(&self.ks.events, own_row.0, own_row.1);
            self.batch.insert(&self.ks.events, their_row.0, their_row.1);
            (own, (peer, theirs))
        });
        Ok(ReadOutcome {
            unread: left,
            receipts,
        })
    }

    pub(super) fn ks_put_read_upto(&mut self, key: Vec<u8>, up_to: u64) {
        self.batch.insert(&self.ks.read_upto, key, u64_value(up_to));
    }

    /// The user's next seq, not yet claimed: the caller writes it back with its other writes.
    pub(super) fn next_seq(&self, user: &str) -> StoreResult<u64> {
        checked_key(user.as_bytes().to_vec())?;
        self.get_u64(Table::LastSeq, user.as_bytes(), "last seq")?
            .checked_add(1)
            .ok_or_else(|| StoreError(format!("seq space of {user} exhausted")))
    }

    pub(super) fn advance_cursor(
        &mut self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> StoreResult<u64> {
        let key = checked_key(pair_key(user, device.as_bytes()))?;
        let last = self.get_u64(Table::LastSeq, user.as_bytes(), "last seq")?;
        let current = self.get_u64(Table::Cursors, &key, "cursor")?;
        let next = current.max(seq.min(last));
        if next != current {
            self.put(Table::Cursors, key, u64_value(next));
        }
        Ok(next)
    }

    /// Runs alone in its batch (see [`writer_loop`]), so the committed rows it scans are current.
    pub(super) fn purge(&mut self, before_ts_ms: i64, limit: usize) -> StoreResult<usize> {
        let mut expired = Vec::new();
        let end = ordered_ts(before_ts_ms).to_vec();
        for entry in self.ks.dedup_by_time.range(..end).take(limit) {
            let key = entry.key().map_err(StoreError::new)?;
            let (recorded, from, client_msg_id) = decode_by_time_key(&key)?;
            expired.push((key.to_vec(), recorded, pair_key_bytes(from, client_msg_id)));
        }
        // Decided first, written after: a failure part-way leaves the batch untouched.
        let mut removals = Vec::with_capacity(expired.len());
        for (index_key, recorded, dedup_key) in expired {
            // Only the entry this index row was written for: should the two ever disagree, a
            // newer dedup entry must not disappear with an old index row.
            let same_entry = match self.get(Table::Dedup, &dedup_key)? {
                Some(value) => decode_dedup(&value)?.1 == recorded,
                None => false,
            };
            removals.push((index_key, same_entry.then_some(dedup_key)));
        }
        let removed = removals.len();
        for (index_key, dedup_key) in removals {
            self.batch.remove(&self.ks.dedup_by_time, index_key);
            if let Some(dedup_key) = dedup_key {
                self.remove(Table::Dedup, dedup_key);
            }
        }
        Ok(removed)
    }
}
