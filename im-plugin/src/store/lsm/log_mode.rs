//! Log mode: the LSM store as the durable half of a [`crate::store::split::SplitStore`] on one
//! node (Redis keeps the seq counters and the inbox index). It writes at the seqs it is given and
//! keeps none of the unread or recency rows; one data dir is used in one mode only.
//!
//! This file owns the log-mode writes of the batch builder ([`Pending`]) and the [`MessageLog`]
//! implementation. The writer thread is the log's only writer, so "is this seq free?" asked while
//! building a batch (committed rows plus the batch's own overlay) is the truth: a write naming a
//! taken seq is refused whole ([`Output::Conflict`]), never applied over the event there.
//!
//! Layout it adds to the embedded one: the `read_upto` keyspace (`lp(user) ++ conversation` ->
//! msgid) holds the log's read pointers, raised only together with the receipts they produce.

use std::time::Instant;

use async_trait::async_trait;
use fjall::Slice;
use futures::future::BoxFuture;
use mqim_schemas::v1::Event;

use super::{
    by_time_key, checked_key, checked_value, decode_dedup, decode_u64, encode_dedup, event_key,
    event_row, pair_key, u64_value, unexpected_output, user_conv_key, writer_gone, LsmStore, Op,
    Output, Pending, Table, META_MAX_MSG_ID,
};
use crate::conversation::Conversation;
use crate::store::groups::{GroupAppend, GroupMeta, GroupOutcome, GroupReadOutcome};
use crate::store::log::{
    GroupLog, GroupSeqs, LogError, LogResult, MessageLog, MessageSeqs, ReceiptWrite,
};
use crate::store::{
    gap_event, receipt_event, Appended, HistoryPage, InboxStore, MessageStore, NewMessage,
    SendOutcome, SentRecord, StoreError, StoreResult,
};

impl Pending<'_> {
    /// Whether `seq` of `user` holds an event, committed or earlier in this batch.
    pub(super) fn taken(&self, user: &str, seq: u64) -> StoreResult<bool> {
        Ok(self
            .get(Table::Events, &checked_key(event_key(user, seq))?)?
            .is_some())
    }

    /// The first of `seqs` (owner, seq) that is taken, as the conflict to report.
    pub(super) fn first_taken<'s>(
        &self,
        seqs: impl IntoIterator<Item = (&'s str, u64)>,
    ) -> StoreResult<Option<Output>> {
        for (user, seq) in seqs {
            if self.taken(user, seq)? {
                return Ok(Some(Output::Conflict {
                    user: user.to_string(),
                    seq,
                }));
            }
        }
        Ok(None)
    }

    /// An event row of the log, visible to the rest of the batch, and the stream's last seq.
    pub(super) fn put_event(
        &mut self,
        owner: &str,
        row: (Vec<u8>, Slice),
        seq: u64,
    ) -> StoreResult<()> {
        let last = self.get_u64(Table::LastSeq, owner.as_bytes(), "last seq")?;
        if seq > last {
            self.put(Table::LastSeq, owner.as_bytes().to_vec(), u64_value(seq));
        }
        self.put(Table::Events, row.0, row.1);
        Ok(())
    }

    /// The message's copies at the given seqs, its history rows and dedup entry; or, for a
    /// resend, gap placeholders at those of the seqs that are free. No unread or recency rows:
    /// the index keeps those.
    pub(super) fn log_message(
        &mut self,
        msg: &NewMessage,
        seqs: MessageSeqs,
    ) -> StoreResult<Output> {
        let dedup_key = checked_key(pair_key(&msg.from, msg.client_msg_id.as_bytes()))?;
        let copies: Vec<(&str, u64, String)> = std::iter::once((
            msg.from.as_str(),
            seqs.sender,
            Conversation::with_user(&msg.to),
        ))
        .chain(
            seqs.recipient
                .filter(|_| msg.to != msg.from)
                .map(|seq| (msg.to.as_str(), seq, Conversation::with_user(&msg.from))),
        )
        .collect();
        if let Some(original) = self.get(Table::Dedup, &dedup_key)? {
            let original = decode_dedup(&original)?.0;
            let gaps: Vec<(String, Event)> = copies
                .iter()
                .map(|(owner, seq, _)| (owner.to_string(), gap_event(*seq)))
                .collect();
            self.write_free(&gaps)?;
            return Ok(Output::Sent(Box::new(SendOutcome::Duplicate(original))));
        }
        if let Some(conflict) = self.first_taken(copies.iter().map(|(o, s, _)| (*o, *s)))? {
            return Ok(conflict);
        }
        let by_time_key = checked_key(by_time_key(msg.ts, &msg.from, &msg.client_msg_id))?;
        let mut rows = Vec::with_capacity(copies.len());
        for (owner, seq, conversation) in &copies {
            let event = msg.event(*seq, conversation.clone());
            let row = event_row(owner, &event)?;
            let mut index_key = checked_key(user_conv_key(owner, conversation))?;
            index_key.extend_from_slice(&msg.msg_id.to_be_bytes());
            rows.push((*owner, event, row, index_key));
        }
        let sent = SentRecord {
            group_seq: 0,
            msg_id: msg.msg_id,
            seq: seqs.sender,
            conversation: copies[0].2.clone(),
            ts: msg.ts,
        };
        let dedup_value = checked_value(encode_dedup(&sent, msg.ts))?;
        let max = self.get_u64(Table::Meta, META_MAX_MSG_ID, "max msg_id")?;
        // Reads done; from here on only the last-seq lookups, which cannot fail after the
        // checks above read the same rows.
        let mut events = Vec::with_capacity(rows.len());
        for (owner, event, row, index_key) in rows {
            self.put_event(owner, row, event.seq)?;
            self.batch
                .insert(&self.ks.conv_index, index_key, u64_value(event.seq));
            events.push(event);
        }
        self.put(Table::Dedup, dedup_key, Slice::from(dedup_value));
        self.batch
            .insert(&self.ks.dedup_by_time, by_time_key, Vec::new());
        if msg.msg_id > max {
            self.put(Table::Meta, META_MAX_MSG_ID.to_vec(), u64_value(msg.msg_id));
        }
        let mut events = events.into_iter();
        Ok(Output::Sent(Box::new(SendOutcome::Fresh(Appended {
            sent,
            sender_event: events.next().unwrap_or_default(),
            recipient_event: events.next(),
        }))))
    }

    /// A gap at each (owner, seq) that holds nothing.
    pub(super) fn log_gaps(&mut self, gaps: &[(String, u64)]) -> StoreResult<Output> {
        let events: Vec<(String, Event)> = gaps
            .iter()
            .map(|(owner, seq)| (owner.clone(), gap_event(*seq)))
            .collect();
        self.write_free(&events)?;
        Ok(Output::Logged(true))
    }

    /// Writes each event whose seq is free; skips the others.
    pub(super) fn write_free(&mut self, events: &[(String, Event)]) -> StoreResult<()> {
        let mut rows = Vec::with_capacity(events.len());
        for (owner, event) in events {
            if !self.taken(owner, event.seq)? {
                rows.push((owner, event_row(owner, event)?, event.seq));
            }
        }
        for (owner, row, seq) in rows {
            self.put_event(owner, row, seq)?;
        }
        Ok(())
    }

    /// The receipts of a read and the raised read pointer; gaps at their seqs if the pointer is
    /// already there (an earlier attempt of this read landed).
    pub(super) fn log_receipts(&mut self, r: &ReceiptWrite) -> StoreResult<Output> {
        let key = checked_key(user_conv_key(&r.user, &r.conversation))?;
        let pointer = match self.get(Table::ReadUpto, &key)? {
            Some(v) => decode_u64(&v, "read pointer")?,
            None => 0,
        };
        if pointer >= r.up_to {
            self.write_free(&[
                (r.user.clone(), gap_event(r.own_seq)),
                (r.peer.clone(), gap_event(r.peer_seq)),
            ])?;
            return Ok(Output::Logged(false));
        }
        let own = receipt_event(r.own_seq, r.conversation.clone(), &r.user, r.up_to);
        let theirs = receipt_event(r.peer_seq, r.peer_conversation(), &r.user, r.up_to);
        let at = [(r.user.as_str(), r.own_seq), (r.peer.as_str(), r.peer_seq)];
        if let Some(conflict) = self.first_taken(at)? {
            return Ok(conflict);
        }
        let mention = match self.get(Table::Mentions, &key)? {
            Some(v) => decode_u64(&v, "mention")? <= r.up_to,
            None => false,
        };
        self.write_free(&[(r.user.clone(), own), (r.peer.clone(), theirs)])?;
        if mention {
            self.remove(Table::Mentions, key.clone());
        }
        self.put(Table::ReadUpto, key, u64_value(r.up_to));
        Ok(Output::Logged(true))
    }
}

/// What a log-mode write answered, as the [`MessageLog`] contract says it.
fn logged<T>(output: Output, take: impl FnOnce(Output) -> Option<T>) -> LogResult<T> {
    match output {
        Output::Conflict { user, seq } => Err(LogError::Conflict { user, seq }),
        other => take(other).ok_or_else(|| unexpected_output().into()),
    }
}

impl LsmStore {
    pub(super) fn submit_log<T: Send + 'static>(
        &self,
        op: Op,
        take: impl FnOnce(Output) -> Option<T> + Send + 'static,
    ) -> BoxFuture<'static, LogResult<T>> {
        let answer = self.enqueue(op);
        Box::pin(async move {
            let output = answer?.await.map_err(|_| writer_gone())??;
            logged(output, take)
        })
    }
}

#[async_trait]
impl MessageLog for LsmStore {
    fn log_message(
        &self,
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<SendOutcome>> {
        let op = Op::LogMessage {
            msg,
            seqs,
            deadline,
        };
        self.submit_log(op, |o| match o {
            Output::Sent(outcome) => Some(*outcome),
            _ => None,
        })
    }

    fn log_gaps(
        &self,
        gaps: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, StoreResult<()>> {
        let done = self.submit_log(Op::LogGaps { gaps, deadline }, |o| match o {
            Output::Logged(_) => Some(()),
            _ => None,
        });
        Box::pin(async move {
            done.await.map_err(|e| match e {
                LogError::Unavailable(e) => e,
                conflict => StoreError::new(conflict),
            })
        })
    }

    fn log_receipts(
        &self,
        receipt: ReceiptWrite,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<bool>> {
        self.submit_log(Op::LogReceipts { receipt, deadline }, |o| match o {
            Output::Logged(written) => Some(written),
            _ => None,
        })
    }

    async fn read_pointer(&self, user: &str, conversation: &str) -> StoreResult<u64> {
        let key = checked_key(user_conv_key(user, conversation))?;
        self.read(
            move |ks| match ks.read_upto.get(&key).map_err(StoreError::new)? {
                Some(v) => decode_u64(&v, "read pointer"),
                None => Ok(0),
            },
        )
        .await
    }

    async fn read_events(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        Ok(MessageStore::read_stream(self, user, after_seq, limit)
            .await?
            .events)
    }

    async fn max_seq(&self, user: &str) -> StoreResult<u64> {
        MessageStore::last_seq(self, user).await
    }

    async fn max_msg_id(&self) -> StoreResult<u64> {
        MessageStore::max_msg_id(self).await
    }

    async fn history(
        &self,
        user: &str,
        conversation: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        InboxStore::history(self, user, conversation, before_msg_id, limit).await
    }

    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
        MessageStore::advance_cursor(self, user, device, seq).await
    }

    async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize> {
        MessageStore::purge_dedup(self, before_ts_ms).await
    }

    /// fjall locks its folder: no other process can write this log.
    fn single_writer(&self) -> bool {
        true
    }

    fn groups(&self) -> Option<&dyn GroupLog> {
        Some(self)
    }

    fn amends(&self) -> Option<&dyn crate::store::extras::AmendLog> {
        Some(self)
    }
}

#[async_trait]
impl GroupLog for LsmStore {
    fn log_group(
        &self,
        entry: GroupAppend,
        seqs: GroupSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<GroupOutcome>> {
        let op = Op::LogGroup {
            entry,
            seqs,
            deadline,
        };
        self.submit_log(op, |o| match o {
            Output::Group(outcome) => Some(*outcome),
            _ => None,
        })
    }

    fn log_group_read(
        &self,
        user: &str,
        group: &str,
        up_to: u64,
        own_seq: u64,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<GroupReadOutcome>> {
        let op = Op::LogGroupRead {
            user: user.to_string(),
            group: group.to_string(),
            up_to,
            own_seq,
            deadline,
        };
        self.submit_log(op, |o| match o {
            Output::GroupRead(outcome) => Some(*outcome),
            _ => None,
        })
    }

    async fn mentioned(&self, user: &str, conversation: &str) -> StoreResult<bool> {
        let key = checked_key(user_conv_key(user, conversation))?;
        self.read(move |ks| Ok(ks.mentions.get(&key).map_err(StoreError::new)?.is_some()))
            .await
    }

    async fn read_position(&self, user: &str, group: &str) -> StoreResult<(u64, u64)> {
        let conversation = Conversation::Group(group.to_string()).to_string();
        let key = checked_key(user_conv_key(user, &conversation))?;
        let group = group.to_owned();
        self.read(move |ks| {
            let head = match ks
                .group_head
                .get(group.as_bytes())
                .map_err(StoreError::new)?
            {
                Some(v) => super::groups::decode_head(&v)?,
                None => super::groups::Head::default(),
            };
            let (ordinal, msg_id) = match ks.group_read.get(&key).map_err(StoreError::new)? {
                Some(v) => super::groups::decode_read(&v)?,
                None => (0, 0),
            };
            Ok((
                msg_id,
                super::groups::large_unread(ks, &group, &head, ordinal)?,
            ))
        })
        .await
    }

    async fn is_large(&self, group: &str) -> StoreResult<Option<bool>> {
        Ok(self.group_meta(group).await?.map(|m| m.large))
    }

    async fn group_meta(&self, group: &str) -> StoreResult<Option<GroupMeta>> {
        let group = group.to_owned();
        self.read(move |ks| {
            match ks
                .group_meta
                .get(group.as_bytes())
                .map_err(StoreError::new)?
            {
                Some(v) => Ok(Some(super::groups::from_json::<GroupMeta>(
                    &v,
                    "group meta",
                )?)),
                None => Ok(None),
            }
        })
        .await
    }
}
