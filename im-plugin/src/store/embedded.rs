//! The embedded store: one redb file (`<dir>/mqim.redb`) on the broker's own disk.
//!
//! This file owns the on-disk layout of the embedded backend (its tables, keys and value
//! encodings) and the single writer thread that performs every write with group commit. It must
//! not know about MQTT, topics, JSON or msgid assignment: it stores what the domain hands it and
//! answers what the [`MessageStore`] contract asks, nothing more. It must not open the file from
//! more than one process (redb locks it) and must not write outside the writer thread, otherwise
//! batches would serialise behind each other's fsyncs again.
//!
//! Layout (all in one redb database, so one transaction covers every table):
//! - `events`: (user, seq) -> the protobuf-encoded [`Event`], seq filled in.
//! - `last_seq`: user -> the highest seq of the user's stream.
//! - `dedup`: (sender, client_msg_id) -> (msg_id, seq, ts, recorded_ms, conversation), the original
//!   [`SentRecord`] plus when it was recorded.
//! - `dedup_by_time`: (recorded_ms, sender, client_msg_id) -> (), so a purge walks only the expired
//!   prefix instead of every entry.
//! - `cursors`: (user, device) -> the acknowledged seq.
//! - `meta`: name -> u64 (`max_msg_id`, `schema_version`).
//! - The inbox (the unread index of IM-MECHANISMS.md, "storage structure"):
//!   - `unread`: (user, conversation, seq) -> msg_id: the unread messages of a conversation in
//!     stream order (the sorted set; seq orders exactly, as msgid does on one node);
//!   - `unread_count`: (user, conversation) -> count (the hash);
//!   - `read_upto`: (user, conversation) -> the highest msgid marked read;
//!   - `recent`: (user, conversation) -> (updated_ms, seq of the latest message) and
//!     `recent_by_time`: (user, u64::MAX - updated_ms, conversation) -> (), newest first;
//!   - `conv_index`: (user, conversation, msg_id) -> seq: the conversation's messages in the
//!     user's stream, for history.
//!
//! The "recorded" time of a dedup entry is the message's acceptance time (`NewMessage::ts`), not
//! the store's clock: the domain already owns time, and a second clock would make purges depend
//! on which of the two drifted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures::future::BoxFuture;
use mqim_schemas::v1::{self, event, Event};
use prost::Message as _;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    decode_message, Appended, ConversationPage, ConversationSummary, HistoryPage, InboxStore,
    MessageStore, NewMessage, ReadOutcome, SendOutcome, SentRecord, StoreError, StoreResult,
    StreamPage,
};

const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("last_seq");
/// (msg_id, seq, ts, recorded_ms, conversation): the original [`SentRecord`] and when it was
/// recorded, as a redb tuple so that no hand-written encoding can drift.
type DedupValue = (u64, u64, i64, i64, &'static str);
const DEDUP: TableDefinition<(&str, &str), DedupValue> = TableDefinition::new("dedup");
const DEDUP_BY_TIME: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("dedup_by_time");
const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const UNREAD: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("unread");
const UNREAD_COUNT: TableDefinition<(&str, &str), u64> = TableDefinition::new("unread_count");
const READ_UPTO: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_upto");
const RECENT: TableDefinition<(&str, &str), (i64, u64)> = TableDefinition::new("recent");
const RECENT_BY_TIME: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("recent_by_time");
const CONV_INDEX: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("conv_index");

const META_MAX_MSG_ID: &str = "max_msg_id";
const META_SCHEMA_VERSION: &str = "schema_version";
/// Bump when a table's key or value encoding changes, so an old binary refuses a newer file
/// instead of misreading it.
const SCHEMA_VERSION: u64 = 1;

/// Upper bound of requests folded into one transaction. Bounds the latency a request can wait
/// behind others and the size of one commit; 512 is far beyond what 64 concurrent senders queue.
const MAX_BATCH: usize = 512;
/// Queue depth beyond which requests fail fast with [`StoreError`] (the trait forbids blocking the
/// caller): bounded memory when the disk is slower than the senders, who get `UNAVAILABLE` and
/// resend with the same clientMsgId.
const QUEUE_CAPACITY: usize = 16 * 1024;
/// Dedup entries removed per writer request, so a large purge never holds up appends for long.
const PURGE_CHUNK: usize = 4096;

/// Counters of the writer thread, to observe how well group commit batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Write transactions attempted (one fsync each when they commit).
    pub batches: u64,
    /// Requests carried by those transactions.
    pub requests: u64,
}

/// The embedded [`MessageStore`]: a redb file plus a dedicated writer thread.
///
/// Dropping it closes the queue, waits for the writer to finish what was already queued and
/// releases the file, so the same directory can be opened again afterwards (once any in-flight
/// reads have finished too).
pub struct EmbeddedStore {
    db: Arc<Database>,
    // `Option`s only so that `Drop` can close the queue before joining the thread.
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
}

/// One write request and where its answer goes.
struct Job {
    op: Op,
    reply: oneshot::Sender<StoreResult<Output>>,
}

enum Op {
    Append(NewMessage),
    Cursor {
        user: String,
        device: String,
        seq: u64,
    },
    Purge {
        before_ts_ms: i64,
        limit: usize,
    },
    Read {
        user: String,
        conversation: String,
        up_to: u64,
    },
}

enum Output {
    // Boxed: an appended message is far larger than the other answers.
    Sent(Box<SendOutcome>),
    Cursor(u64),
    Purged(usize),
    Read(Box<ReadOutcome>),
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/mqim.redb` and starts the writer thread.
    ///
    /// Fails if the file is already open, by this or another process, or was written by a newer
    /// schema version.
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(StoreError::new)?;
        let db = Database::create(dir.join("mqim.redb")).map_err(StoreError::new)?;
        init_tables(&db)?;
        let db = Arc::new(db);
        let stats = Arc::new(Counters::default());
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = {
            let db = db.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("mqim-store-writer".into())
                .spawn(move || writer_loop(&db, rx, &stats))
                .map_err(StoreError::new)?
        };
        Ok(EmbeddedStore {
            db,
            queue: Some(queue),
            writer: Some(writer),
            stats,
        })
    }

    /// How many transactions the writer ran and how many requests they carried so far.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }

    /// Puts `op` on the writer's queue without waiting; fails fast when the queue is full so a
    /// saturated store pushes back on senders (they get `UNAVAILABLE` and resend).
    fn enqueue(&self, op: Op) -> StoreResult<oneshot::Receiver<StoreResult<Output>>> {
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| StoreError::new("the store is closed"))?;
        let (reply, answer) = oneshot::channel();
        queue.try_send(Job { op, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::new("the store is overloaded"),
            mpsc::error::TrySendError::Closed(_) => StoreError::new("the store writer has stopped"),
        })?;
        Ok(answer)
    }

    /// Enqueues `op` and waits for the transaction that carries it to commit.
    async fn submit(&self, op: Op) -> StoreResult<Output> {
        self.enqueue(op)?.await.map_err(|_| writer_gone())?
    }

    /// Runs `f` in a read transaction on the blocking pool: redb reads may touch the disk, and
    /// MVCC lets them proceed while the writer commits.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(StoreError::new)?;
            f(&txn)
        })
        .await
        .map_err(StoreError::new)?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain what is queued and exit; joining makes the file
        // lock go away with the store, so a reopen right after a drop works.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Creates every table up front so readers never meet a missing table, and checks the version.
fn init_tables(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(StoreError::new)?;
    {
        let tables = Tables::open(&txn)?;
        let mut meta = tables.meta;
        let stored = meta
            .get(META_SCHEMA_VERSION)
            .map_err(StoreError::new)?
            .map(|g| g.value());
        match stored {
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)
                    .map_err(StoreError::new)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError(format!(
                    "mqim.redb has schema version {other}, this build reads {SCHEMA_VERSION}"
                )))
            }
        }
    }
    txn.commit().map_err(StoreError::new)
}

/// The writer thread: one transaction, hence one fsync, per batch of whatever queued up while
/// the previous commit was in flight.
fn writer_loop(db: &Database, mut rx: mpsc::Receiver<Job>, stats: &Counters) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match run_batch(db, &batch) {
            Ok(outputs) => {
                for (job, output) in batch.drain(..).zip(outputs) {
                    // The caller may have gone away (cancelled); its write still stands.
                    let _ = job.reply.send(Ok(output));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError(e.0.clone())));
                }
            }
        }
    }
}

/// Applies every job in one write transaction and commits once. All or nothing: on any error the
/// transaction is aborted, so no seq is consumed by a request that is then reported as failed.
fn run_batch(db: &Database, batch: &[Job]) -> StoreResult<Vec<Output>> {
    let mut txn = db.begin_write().map_err(StoreError::new)?;
    txn.set_durability(Durability::Immediate)
        .map_err(StoreError::new)?;
    let applied = Tables::open(&txn).and_then(|mut tables| {
        batch
            .iter()
            .map(|job| tables.apply(&job.op))
            .collect::<StoreResult<Vec<_>>>()
    });
    match applied {
        Ok(outputs) => {
            txn.commit().map_err(StoreError::new)?;
            Ok(outputs)
        }
        Err(e) => {
            // Dropping would abort too; aborting explicitly documents that it is intended.
            let _ = txn.abort();
            Err(e)
        }
    }
}

/// All tables of one write transaction, opened once per batch rather than once per request.
struct Tables<'txn> {
    events: Table<'txn, (&'static str, u64), &'static [u8]>,
    last_seq: Table<'txn, &'static str, u64>,
    dedup: Table<'txn, (&'static str, &'static str), DedupValue>,
    dedup_by_time: Table<'txn, (i64, &'static str, &'static str), ()>,
    cursors: Table<'txn, (&'static str, &'static str), u64>,
    meta: Table<'txn, &'static str, u64>,
    unread: Table<'txn, (&'static str, &'static str, u64), u64>,
    unread_count: Table<'txn, (&'static str, &'static str), u64>,
    read_upto: Table<'txn, (&'static str, &'static str), u64>,
    recent: Table<'txn, (&'static str, &'static str), (i64, u64)>,
    recent_by_time: Table<'txn, (&'static str, u64, &'static str), ()>,
    conv_index: Table<'txn, (&'static str, &'static str, u64), u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> StoreResult<Self> {
        Ok(Tables {
            events: txn.open_table(EVENTS).map_err(StoreError::new)?,
            last_seq: txn.open_table(LAST_SEQ).map_err(StoreError::new)?,
            dedup: txn.open_table(DEDUP).map_err(StoreError::new)?,
            dedup_by_time: txn.open_table(DEDUP_BY_TIME).map_err(StoreError::new)?,
            cursors: txn.open_table(CURSORS).map_err(StoreError::new)?,
            meta: txn.open_table(META).map_err(StoreError::new)?,
            unread: txn.open_table(UNREAD).map_err(StoreError::new)?,
            unread_count: txn.open_table(UNREAD_COUNT).map_err(StoreError::new)?,
            read_upto: txn.open_table(READ_UPTO).map_err(StoreError::new)?,
            recent: txn.open_table(RECENT).map_err(StoreError::new)?,
            recent_by_time: txn.open_table(RECENT_BY_TIME).map_err(StoreError::new)?,
            conv_index: txn.open_table(CONV_INDEX).map_err(StoreError::new)?,
        })
    }

    fn apply(&mut self, op: &Op) -> StoreResult<Output> {
        match op {
            Op::Append(msg) => self.append(msg).map(|o| Output::Sent(Box::new(o))),
            Op::Cursor { user, device, seq } => {
                self.advance_cursor(user, device, *seq).map(Output::Cursor)
            }
            Op::Purge {
                before_ts_ms,
                limit,
            } => self.purge(*before_ts_ms, *limit).map(Output::Purged),
            Op::Read {
                user,
                conversation,
                up_to,
            } => self
                .mark_read(user, conversation, *up_to)
                .map(|o| Output::Read(Box::new(o))),
        }
    }

    fn append(&mut self, msg: &NewMessage) -> StoreResult<SendOutcome> {
        // Reads its own transaction's writes, so a resend queued in the same batch as the
        // original is still caught here.
        if let Some(original) = self.dedup_get(&msg.from, &msg.client_msg_id)? {
            return Ok(SendOutcome::Duplicate(original));
        }

        let conversation = format!("u:{}", msg.to);
        let sender_seq = self.next_seq(&msg.from)?;
        let sender_event = make_event(sender_seq, msg, conversation.clone());
        self.put_event(&msg.from, &sender_event)?;
        self.index_message(&msg.from, &conversation, msg, sender_seq)?;

        let recipient_event = if msg.to == msg.from {
            None
        } else {
            let seq = self.next_seq(&msg.to)?;
            let peer_conversation = format!("u:{}", msg.from);
            let event = make_event(seq, msg, peer_conversation.clone());
            self.put_event(&msg.to, &event)?;
            self.index_message(&msg.to, &peer_conversation, msg, seq)?;
            // Unread for the recipient only: a user's own messages are never unread.
            self.unread
                .insert(
                    (msg.to.as_str(), peer_conversation.as_str(), seq),
                    msg.msg_id,
                )
                .map_err(StoreError::new)?;
            let count = self.unread_count_of(&msg.to, &peer_conversation)?;
            self.unread_count
                .insert((msg.to.as_str(), peer_conversation.as_str()), count + 1)
                .map_err(StoreError::new)?;
            Some(event)
        };

        self.dedup
            .insert(
                (msg.from.as_str(), msg.client_msg_id.as_str()),
                (
                    msg.msg_id,
                    sender_seq,
                    msg.ts,
                    msg.ts,
                    conversation.as_str(),
                ),
            )
            .map_err(StoreError::new)?;
        self.dedup_by_time
            .insert((msg.ts, msg.from.as_str(), msg.client_msg_id.as_str()), ())
            .map_err(StoreError::new)?;

        let max = self.meta_get(META_MAX_MSG_ID)?;
        if msg.msg_id > max {
            self.meta
                .insert(META_MAX_MSG_ID, msg.msg_id)
                .map_err(StoreError::new)?;
        }

        Ok(SendOutcome::Fresh(Appended {
            sent: SentRecord {
                msg_id: msg.msg_id,
                seq: sender_seq,
                conversation,
                ts: msg.ts,
            },
            sender_event,
            recipient_event,
        }))
    }

    /// History index and recency of one copy of a message, in its owner's stream.
    fn index_message(
        &mut self,
        owner: &str,
        conversation: &str,
        msg: &NewMessage,
        seq: u64,
    ) -> StoreResult<()> {
        self.conv_index
            .insert((owner, conversation, msg.msg_id), seq)
            .map_err(StoreError::new)?;
        let previous = self
            .recent
            .get((owner, conversation))
            .map_err(StoreError::new)?
            .map(|g| g.value().0);
        if let Some(updated) = previous {
            self.recent_by_time
                .remove((owner, newest_first(updated), conversation))
                .map_err(StoreError::new)?;
        }
        // Never move a conversation back in time, should clocks disagree.
        let updated = previous.map_or(msg.ts, |p| p.max(msg.ts));
        self.recent
            .insert((owner, conversation), (updated, seq))
            .map_err(StoreError::new)?;
        self.recent_by_time
            .insert((owner, newest_first(updated), conversation), ())
            .map_err(StoreError::new)?;
        Ok(())
    }

    fn unread_count_of(&self, user: &str, conversation: &str) -> StoreResult<u64> {
        Ok(self
            .unread_count
            .get((user, conversation))
            .map_err(StoreError::new)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// Removes every unread message of the conversation with msgid <= `up_to` and, if any was
    /// removed, appends the receipts to the reader's and the peer's streams.
    fn mark_read(
        &mut self,
        user: &str,
        conversation: &str,
        up_to: u64,
    ) -> StoreResult<ReadOutcome> {
        let count = self.unread_count_of(user, conversation)?;
        let read_upto = self
            .read_upto
            .get((user, conversation))
            .map_err(StoreError::new)?
            .map(|g| g.value())
            .unwrap_or(0);
        if up_to <= read_upto {
            return Ok(ReadOutcome {
                unread: count,
                receipts: None,
            });
        }
        self.read_upto
            .insert((user, conversation), up_to)
            .map_err(StoreError::new)?;
        let mut removed = Vec::new();
        for entry in self
            .unread
            .range((user, conversation, 0)..=(user, conversation, u64::MAX))
            .map_err(StoreError::new)?
        {
            let (key, msg_id) = entry.map_err(StoreError::new)?;
            // Every entry is checked, not just a prefix: seq order and msgid order agree on one
            // node, but the index must stay right if they ever do not.
            if msg_id.value() <= up_to {
                removed.push(key.value().2);
            }
        }
        for seq in &removed {
            self.unread
                .remove((user, conversation, *seq))
                .map_err(StoreError::new)?;
        }
        let left = count.saturating_sub(removed.len() as u64);
        if left == 0 {
            self.unread_count
                .remove((user, conversation))
                .map_err(StoreError::new)?;
        } else {
            self.unread_count
                .insert((user, conversation), left)
                .map_err(StoreError::new)?;
        }
        if removed.is_empty() {
            return Ok(ReadOutcome {
                unread: left,
                receipts: None,
            });
        }
        let Some(peer) = conversation.strip_prefix("u:") else {
            return Ok(ReadOutcome {
                unread: left,
                receipts: None,
            });
        };
        let receipt = |seq: u64, conversation: String| Event {
            seq,
            body: Some(event::Body::Read(v1::ReadReceipt {
                conversation,
                by: user.to_string(),
                msg_id: up_to,
            })),
        };
        let own = receipt(self.next_seq(user)?, conversation.to_string());
        self.put_event(user, &own)?;
        let theirs = receipt(self.next_seq(peer)?, format!("u:{user}"));
        self.put_event(peer, &theirs)?;
        Ok(ReadOutcome {
            unread: left,
            receipts: Some((own, (peer.to_string(), theirs))),
        })
    }

    fn dedup_get(&self, from: &str, client_msg_id: &str) -> StoreResult<Option<SentRecord>> {
        let found = self
            .dedup
            .get((from, client_msg_id))
            .map_err(StoreError::new)?;
        Ok(found.map(|guard| {
            let (msg_id, seq, ts, _recorded, conversation) = guard.value();
            SentRecord {
                msg_id,
                seq,
                conversation: conversation.to_owned(),
                ts,
            }
        }))
    }

    fn current_seq(&self, user: &str) -> StoreResult<u64> {
        Ok(self
            .last_seq
            .get(user)
            .map_err(StoreError::new)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// Claims the user's next seq. Only ever called inside the batch transaction, so a failed
    /// commit gives the seq back with everything else.
    fn next_seq(&mut self, user: &str) -> StoreResult<u64> {
        let next = self
            .current_seq(user)?
            .checked_add(1)
            .ok_or_else(|| StoreError(format!("seq space of {user} exhausted")))?;
        self.last_seq.insert(user, next).map_err(StoreError::new)?;
        Ok(next)
    }

    fn put_event(&mut self, user: &str, event: &Event) -> StoreResult<()> {
        self.events
            .insert((user, event.seq), event.encode_to_vec().as_slice())
            .map_err(StoreError::new)?;
        Ok(())
    }

    fn meta_get(&self, name: &str) -> StoreResult<u64> {
        Ok(self
            .meta
            .get(name)
            .map_err(StoreError::new)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    fn advance_cursor(&mut self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
        let last = self.current_seq(user)?;
        let current = self
            .cursors
            .get((user, device))
            .map_err(StoreError::new)?
            .map(|g| g.value())
            .unwrap_or(0);
        let next = current.max(seq.min(last));
        if next != current {
            self.cursors
                .insert((user, device), next)
                .map_err(StoreError::new)?;
        }
        Ok(next)
    }

    fn purge(&mut self, before_ts_ms: i64, limit: usize) -> StoreResult<usize> {
        // Collected first because redb cannot remove from a table while iterating it.
        let mut expired = Vec::new();
        for entry in self
            .dedup_by_time
            .range(..(before_ts_ms, "", ""))
            .map_err(StoreError::new)?
            .take(limit)
        {
            let (key, _) = entry.map_err(StoreError::new)?;
            let (recorded, from, client_msg_id) = key.value();
            expired.push((recorded, from.to_owned(), client_msg_id.to_owned()));
        }
        for (recorded, from, client_msg_id) in &expired {
            let key = (from.as_str(), client_msg_id.as_str());
            self.dedup_by_time
                .remove((*recorded, key.0, key.1))
                .map_err(StoreError::new)?;
            // Only the entry this index row was written for: should the two ever disagree, a
            // newer dedup entry must not disappear with an old index row.
            let same_entry = self
                .dedup
                .get(key)
                .map_err(StoreError::new)?
                .is_some_and(|g| g.value().3 == *recorded);
            if same_entry {
                self.dedup.remove(key).map_err(StoreError::new)?;
            }
        }
        Ok(expired.len())
    }
}

/// Key part that sorts newer times first in a forward scan.
fn newest_first(updated_ms: i64) -> u64 {
    u64::MAX - (updated_ms.max(0) as u64)
}

fn make_event(seq: u64, msg: &NewMessage, conversation: String) -> Event {
    Event {
        seq,
        body: Some(event::Body::Message(v1::Message {
            msg_id: msg.msg_id,
            conversation,
            from: msg.from.clone(),
            ts: msg.ts,
            client_msg_id: msg.client_msg_id.clone(),
            text: msg.text.clone(),
            body: msg.body.clone(),
            r#type: msg.kind.clone(),
        })),
    }
}

/// The reply channel was dropped: the writer died mid-batch. Whether that batch committed is
/// unknown, which is exactly the case clients resolve by resending the same clientMsgId.
fn writer_gone() -> StoreError {
    StoreError::new("the store writer stopped before answering")
}

fn unexpected_output() -> StoreError {
    StoreError::new("the store writer answered a different request kind")
}

#[async_trait]
impl MessageStore for EmbeddedStore {
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
        self.read(move |txn| {
            let Some(first) = after_seq.checked_add(1) else {
                return Ok(StreamPage::default());
            };
            let events = txn.open_table(EVENTS).map_err(StoreError::new)?;
            let mut range = events
                .range((user.as_str(), first)..=(user.as_str(), u64::MAX))
                .map_err(StoreError::new)?;
            let mut page = StreamPage::default();
            for entry in range.by_ref().take(limit) {
                let (_, bytes) = entry.map_err(StoreError::new)?;
                page.events
                    .push(Event::decode(bytes.value()).map_err(StoreError::new)?);
            }
            page.has_more = range.next().is_some();
            Ok(page)
        })
        .await
    }

    async fn last_seq(&self, user: &str) -> StoreResult<u64> {
        let user = user.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(LAST_SEQ).map_err(StoreError::new)?;
            let seq = table.get(user.as_str()).map_err(StoreError::new)?;
            Ok(seq.map(|g| g.value()).unwrap_or(0))
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
        self.read(|txn| {
            let table = txn.open_table(META).map_err(StoreError::new)?;
            let max = table.get(META_MAX_MSG_ID).map_err(StoreError::new)?;
            Ok(max.map(|g| g.value()).unwrap_or(0))
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
impl InboxStore for EmbeddedStore {
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
        let user = user.to_string();
        self.read(move |txn| {
            let by_time = txn.open_table(RECENT_BY_TIME).map_err(StoreError::new)?;
            let recent = txn.open_table(RECENT).map_err(StoreError::new)?;
            let counts = txn.open_table(UNREAD_COUNT).map_err(StoreError::new)?;
            let events = txn.open_table(EVENTS).map_err(StoreError::new)?;
            let mut page = ConversationPage::default();
            for entry in by_time
                .range((user.as_str(), 0, "")..)
                .map_err(StoreError::new)?
            {
                let (key, _) = entry.map_err(StoreError::new)?;
                let (owner, _, conversation) = key.value();
                if owner != user {
                    break;
                }
                if page.conversations.len() == limit {
                    page.has_more = true;
                    break;
                }
                let (updated_at, last_seq) = recent
                    .get((owner, conversation))
                    .map_err(StoreError::new)?
                    .map(|g| g.value())
                    .unwrap_or((0, 0));
                let unread = counts
                    .get((owner, conversation))
                    .map_err(StoreError::new)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                let last = match events.get((owner, last_seq)).map_err(StoreError::new)? {
                    Some(bytes) => Some(decode_message(bytes.value())?),
                    None => None,
                };
                page.conversations.push(ConversationSummary {
                    id: conversation.to_string(),
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
        let (user, conversation) = (user.to_string(), conversation.to_string());
        self.read(move |txn| {
            let index = txn.open_table(CONV_INDEX).map_err(StoreError::new)?;
            let events = txn.open_table(EVENTS).map_err(StoreError::new)?;
            let (u, c) = (user.as_str(), conversation.as_str());
            let end = before_msg_id.unwrap_or(u64::MAX);
            let mut page = HistoryPage::default();
            for entry in index
                .range((u, c, 0)..(u, c, end))
                .map_err(StoreError::new)?
                .rev()
            {
                if page.messages.len() == limit {
                    page.has_more = true;
                    break;
                }
                let (_, seq) = entry.map_err(StoreError::new)?;
                let bytes = events
                    .get((u, seq.value()))
                    .map_err(StoreError::new)?
                    .ok_or_else(|| StoreError::new("history index points at a missing event"))?;
                page.messages.push(decode_message(bytes.value())?);
            }
            Ok(page)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::store::conformance;

    fn open_fresh() -> (TempDir, Arc<EmbeddedStore>) {
        let dir = TempDir::new().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open store");
        (dir, Arc::new(store))
    }

    /// One test per conformance case, so a failure names its case and cases run in parallel.
    macro_rules! conformance_tests {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (_dir, store) = open_fresh();
                conformance::$case(store).await;
            }
        )*};
    }

    conformance_tests!(
        seqs_start_at_one_and_are_contiguous,
        resend_returns_original_and_appends_nothing,
        concurrent_sends_are_contiguous,
        concurrent_resends_store_once,
        appends_apply_in_call_order,
        read_stream_paging,
        send_to_self_appends_one_event,
        advance_cursor_forward_only_and_clamped,
        max_msg_id_is_highest_stored,
        purge_dedup_removes_only_older,
        content_round_trips,
    );

    conformance_tests!(
        inbox_unread_counts_only_the_recipient,
        inbox_read_removes_up_to_msgid_and_is_idempotent,
        inbox_conversations_newest_first_with_paging,
        inbox_history_pages_backwards_without_gaps_or_repeats,
    );

    #[test]
    fn every_inbox_case_has_a_test_here() {
        let here = [
            "inbox_unread_counts_only_the_recipient",
            "inbox_read_removes_up_to_msgid_and_is_idempotent",
            "inbox_conversations_newest_first_with_paging",
            "inbox_history_pages_backwards_without_gaps_or_repeats",
        ];
        let all: Vec<&str> = conformance::inbox_cases()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(here.as_slice(), all.as_slice());
    }

    #[test]
    fn every_conformance_case_has_a_test_here() {
        // The macro list above is written by hand; this keeps it from falling behind `cases()`.
        let here = [
            "seqs_start_at_one_and_are_contiguous",
            "resend_returns_original_and_appends_nothing",
            "concurrent_sends_are_contiguous",
            "concurrent_resends_store_once",
            "appends_apply_in_call_order",
            "read_stream_paging",
            "send_to_self_appends_one_event",
            "advance_cursor_forward_only_and_clamped",
            "max_msg_id_is_highest_stored",
            "purge_dedup_removes_only_older",
            "content_round_trips",
        ];
        let all: Vec<&str> = conformance::cases().into_iter().map(|(n, _)| n).collect();
        assert_eq!(all, here);
    }

    fn msg(from: &str, to: &str, client_msg_id: &str, msg_id: u64) -> NewMessage {
        NewMessage {
            from: from.into(),
            to: to.into(),
            client_msg_id: client_msg_id.into(),
            msg_id,
            ts: 1_700_000_000_000 + msg_id as i64,
            text: Some(format!("#{msg_id}")),
            body: None,
            kind: None,
        }
    }

    async fn sent(store: &EmbeddedStore, m: NewMessage) -> SentRecord {
        match store.append_message(m).await.expect("append") {
            SendOutcome::Fresh(a) => a.sent,
            SendOutcome::Duplicate(s) => panic!("unexpected duplicate {s:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everything_survives_a_reopen() {
        let dir = TempDir::new().expect("temp dir");
        let (first, bob_stream, alice_stream) = {
            let store = EmbeddedStore::open(dir.path()).expect("open");
            let first = sent(&store, msg("alice", "bob", "c1", 10)).await;
            sent(&store, msg("bob", "alice", "c1", 11)).await;
            sent(&store, msg("alice", "alice", "note", 12)).await;
            sent(&store, msg("alice", "bob", "c2", 9)).await;
            assert_eq!(
                store
                    .advance_cursor("bob", "phone", 1)
                    .await
                    .expect("cursor"),
                1
            );
            let bob = store.read_stream("bob", 0, 100).await.expect("read");
            let alice = store.read_stream("alice", 0, 100).await.expect("read");
            (first, bob, alice)
            // Dropped here: the writer drains, the file is closed and unlocked.
        };

        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.read_stream("bob", 0, 100).await.expect("read"),
            bob_stream
        );
        assert_eq!(
            store.read_stream("alice", 0, 100).await.expect("read"),
            alice_stream
        );
        assert_eq!(store.last_seq("alice").await.expect("last"), 4);
        assert_eq!(store.last_seq("bob").await.expect("last"), 3);
        assert_eq!(store.max_msg_id().await.expect("max"), 12);
        assert_eq!(
            store
                .advance_cursor("bob", "phone", 0)
                .await
                .expect("cursor"),
            1,
            "cursor lost"
        );
        match store.append_message(msg("alice", "bob", "c1", 99)).await {
            Ok(SendOutcome::Duplicate(s)) => assert_eq!(s, first, "dedup entry changed"),
            other => panic!("dedup lost across reopen: {other:?}"),
        }
        let next = sent(&store, msg("bob", "alice", "c3", 13)).await;
        assert_eq!(next.seq, 4, "bob's seqs continue");
        let page = store.read_stream("alice", 4, 100).await.expect("read");
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].seq, 5, "alice's seqs continue");
    }

    #[tokio::test]
    async fn a_second_open_of_an_open_store_fails_cleanly() {
        let (dir, _store) = open_fresh();
        assert!(EmbeddedStore::open(dir.path()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits() {
        let (_dir, store) = open_fresh();
        let tasks: Vec<_> = (0..256u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let m = msg(&format!("s{}", i % 8), "r", &format!("c{i}"), i + 1);
                    store.append_message(m).await
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(
                task.await.expect("task"),
                Ok(SendOutcome::Fresh(_))
            ));
        }
        let stats = store.writer_stats();
        assert_eq!(stats.requests, 256);
        // Not a timing assertion: 256 requests queued faster than one fsync completes, so at
        // least one transaction must have carried more than one of them.
        assert!(stats.batches < stats.requests, "no batching: {stats:?}");
    }
}
