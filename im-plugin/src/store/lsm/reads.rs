//! The store traits' reads and their entry points: every write is queued for the writer thread,
//! every read runs on a blocking thread against committed data.

use super::*;

#[async_trait]
impl MessageStore for LsmStore {
    fn append_message(&self, msg: NewMessage) -> BoxFuture<'static, StoreResult<SendOutcome>> {
        // Enqueue now, in call order (the trait's ordering contract); only the wait is deferred.
        let answer = self.enqueue(Op::Append(msg));
        Box::pin(async move {
            match answer?.await.map_err(|_| writer_gone())?? {
                Output::Sent(outcome) => Ok(*outcome),
                _ => Err(unexpected_output()),
            }
        })
    }

    async fn read_stream(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage> {
        let user = user.to_owned();
        self.read(move |ks| {
            let Some(first) = after_seq.checked_add(1) else {
                return Ok(StreamPage::default());
            };
            // One iterator reads one snapshot: the page is consistent even while batches commit.
            let mut range = ks
                .events
                .range(event_key(&user, first)..=event_key(&user, u64::MAX));
            let mut page = StreamPage::default();
            for entry in range.by_ref().take(limit) {
                let bytes = entry.value().map_err(StoreError::new)?;
                page.events
                    .push(Event::decode(&*bytes).map_err(StoreError::new)?);
            }
            page.has_more = range.next().is_some();
            Ok(page)
        })
        .await
    }

    async fn last_seq(&self, user: &str) -> StoreResult<u64> {
        let user = user.to_owned();
        self.read(move |ks| match ks.last_seq.get(user.as_bytes()) {
            Ok(Some(value)) => decode_u64(&value, "last seq"),
            Ok(None) => Ok(0),
            Err(e) => Err(StoreError::new(e)),
        })
        .await
    }

    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
        let op = Op::Cursor {
            user: user.to_owned(),
            device: device.to_owned(),
            seq,
        };
        match self.submit(op).await? {
            Output::Cursor(cursor) => Ok(cursor),
            _ => Err(unexpected_output()),
        }
    }

    async fn max_msg_id(&self) -> StoreResult<u64> {
        self.read(|ks| match ks.meta.get(META_MAX_MSG_ID) {
            Ok(Some(value)) => decode_u64(&value, "max msg_id"),
            Ok(None) => Ok(0),
            Err(e) => Err(StoreError::new(e)),
        })
        .await
    }

    async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize> {
        let mut total = 0;
        loop {
            let op = Op::Purge {
                before_ts_ms,
                limit: PURGE_CHUNK,
            };
            let removed = match self.submit(op).await? {
                Output::Purged(n) => n,
                _ => return Err(unexpected_output()),
            };
            total += removed;
            if removed < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl InboxStore for LsmStore {
    fn mark_read(
        &self,
        user: &str,
        conversation: &str,
        up_to_msg_id: u64,
    ) -> BoxFuture<'static, StoreResult<ReadOutcome>> {
        // Enqueued now, like appends, so reads and appends apply in call order.
        let answer = self.enqueue(Op::Read {
            user: user.to_string(),
            conversation: conversation.to_string(),
            up_to: up_to_msg_id,
        });
        Box::pin(async move {
            match answer?.await.map_err(|_| writer_gone())?? {
                Output::Read(outcome) => Ok(*outcome),
                _ => Err(unexpected_output()),
            }
        })
    }

    async fn conversations(&self, user: &str, limit: usize) -> StoreResult<ConversationPage> {
        let user = user.to_owned();
        self.read(move |ks| {
            let mut prefix = Vec::with_capacity(4 + user.len());
            push_lp(&mut prefix, user.as_bytes());
            let mut page = ConversationPage::default();
            for entry in ks.recent_by_time.prefix(&prefix) {
                if page.conversations.len() == limit {
                    page.has_more = true;
                    break;
                }
                let key = entry.key().map_err(StoreError::new)?;
                let conversation = key
                    .get(prefix.len() + 8..)
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .ok_or_else(|| StoreError::new("corrupt recent_by_time key"))?
                    .to_string();
                let ckey = user_conv_key(&user, &conversation);
                let (updated_at, last_seq) = match ks.recent.get(&ckey).map_err(StoreError::new)? {
                    Some(v) => decode_recent(&v)?,
                    None => (0, 0),
                };
                let unread = match ks.unread_count.get(&ckey).map_err(StoreError::new)? {
                    Some(v) => decode_u64(&v, "unread count")?,
                    None => 0,
                };
                let last = match ks
                    .events
                    .get(event_key(&user, last_seq))
                    .map_err(StoreError::new)?
                {
                    Some(bytes) => Some(decode_message(&bytes)?),
                    None => None,
                };
                let mentioned = ks.mentions.get(&ckey).map_err(StoreError::new)?.is_some();
                page.conversations.push(ConversationSummary {
                    mentioned,
                    last_group_seq: 0,
                    id: conversation,
                    unread,
                    last,
                    updated_at,
                });
            }
            Ok(page)
        })
        .await
    }

    async fn history(
        &self,
        user: &str,
        conversation: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage> {
        let (user, conversation) = (user.to_owned(), conversation.to_owned());
        self.read(move |ks| read_history(ks, &user, &conversation, before_msg_id, 0, limit))
            .await
    }
}

/// Messages of `conversation` in `owner`'s stream with `since < msgid < before`, newest first.
pub(super) fn read_history(
    ks: &Keyspaces,
    owner: &str,
    conversation: &str,
    before_msg_id: Option<u64>,
    since: u64,
    limit: usize,
) -> StoreResult<HistoryPage> {
    let prefix = user_conv_key(owner, conversation);
    let mut start = prefix.clone();
    start.extend_from_slice(&since.saturating_add(1).to_be_bytes());
    let mut end = prefix;
    end.extend_from_slice(&before_msg_id.unwrap_or(u64::MAX).to_be_bytes());
    let mut page = HistoryPage::default();
    if start >= end {
        return Ok(page);
    }
    for entry in ks.conv_index.range(start..end).rev() {
        if page.messages.len() == limit {
            page.has_more = true;
            break;
        }
        let seq = decode_u64(&entry.value().map_err(StoreError::new)?, "history seq")?;
        let bytes = ks
            .events
            .get(event_key(owner, seq))
            .map_err(StoreError::new)?
            .ok_or_else(|| StoreError::new("history index points at a missing event"))?;
        page.messages.push(decode_message(&bytes)?);
    }
    Ok(page)
}

/// One node: its own registry knows who is online.
impl crate::store::PresenceStore for LsmStore {}
