//! The LSM store: a fjall database (`<dir>/lsm/`) on the broker's own disk, an alternative to the
//! redb-backed [`super::embedded::EmbeddedStore`] with the same [`MessageStore`] semantics.
//!
//! This file owns the on-disk layout of the LSM backend (its keyspaces, key and value encodings)
//! and the single writer thread that performs every write with group commit. It must not know
//! about MQTT, topics, JSON or msgid assignment: it stores what the domain hands it and answers
//! what the [`MessageStore`] contract asks, nothing more. It must not open the database from more
//! than one process (fjall locks the folder) and must not write outside the writer thread: the
//! writer reads its own state without locks, which is only right while it is the only writer.
//!
//! Why an LSM: redb rewrites every dirty B-tree page of every touched table at each commit; a
//! fjall commit appends the batch's logical bytes to one write-ahead journal and syncs that one
//! file. Memtables are flushed to sorted tables in the background, off the commit path.
//!
//! Layout (keyspaces of one fjall database, so one write batch covers all of them atomically):
//! - `events`: `lp(user) ++ seq_be` -> the protobuf-encoded [`Event`], seq filled in. Big-endian
//!   seqs under a length-prefixed user make a user's events one contiguous range, in seq order.
//! - `last_seq`: `user` -> `seq_be`, the highest seq of the user's stream.
//! - `dedup`: `lp(sender) ++ client_msg_id` -> `msg_id_be ++ seq_be ++ ts_be ++ recorded_be ++
//!   conversation`, the original [`SentRecord`] plus when it was recorded.
//! - `dedup_by_time`: `ordered(recorded) ++ lp(sender) ++ client_msg_id` -> empty, so a purge walks
//!   only the expired prefix instead of every entry.
//! - `cursors`: `lp(user) ++ device` -> `seq_be`, the acknowledged seq.
//! - `meta`: name -> `u64_be` (`max_msg_id`, `schema_version`).
//!
//! `lp(s)` is `len(s)` as a big-endian u32 followed by the bytes of `s`: every component but the
//! last of a key is length-prefixed, so no user id or clientMsgId, whatever bytes it holds, can
//! make two keys collide or one user's range reach into another's. `ordered(t)` is the i64 with
//! its sign bit flipped, big-endian, so byte order is numeric order for negative times too.
//!
//! Durability and atomicity: the writer folds whatever queued up into one fjall write batch and
//! commits it with `PersistMode::SyncAll` (fsync of the journal) before anyone is answered. fjall
//! writes a batch to the journal between a start marker (with the item count) and an end marker
//! (with a checksum of the items), syncs it, and only then applies it to the memtables and makes
//! it visible to readers. On recovery a trailing batch without its end marker is truncated away,
//! so after a crash a batch is either wholly there or not at all, and readers never see data that
//! is not yet durable (checked in fjall 3.1's `batch/mod.rs` and `journal/batch_reader.rs`; its
//! docs only promise that a batch is "updated atomically"; `survives_kill_9_mid_batch` below tests
//! it). A complete-looking batch whose checksum does not match fails recovery (the open errors)
//! rather than being dropped. The "recorded" time of a dedup entry is the message's acceptance time
//! (`NewMessage::ts`), as in the redb backend.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Slice};
use futures::future::BoxFuture;
use mqim_schemas::v1::Event;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::log::{MessageSeqs, ReceiptWrite};
use super::{
    decode_message, receipt_event, Appended, ConversationPage, ConversationSummary, HistoryPage,
    InboxStore, MessageStore, NewMessage, ReadOutcome, SendOutcome, SentRecord, StoreError,
    StoreResult, StreamPage,
};
use crate::conversation::Conversation;

mod log_mode;

const META_MAX_MSG_ID: &[u8] = b"max_msg_id";
const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// Bump when a key or value encoding changes, so an old binary refuses a newer database instead of
/// misreading it.
const SCHEMA_VERSION: u64 = 1;

/// Upper bound of requests folded into one commit (as in the redb backend).
const MAX_BATCH: usize = 512;
/// Queue depth beyond which requests fail fast with [`StoreError`] (the trait forbids blocking the
/// caller).
const QUEUE_CAPACITY: usize = 16 * 1024;
/// Dedup entries removed per writer request, so a large purge never holds up appends for long.
const PURGE_CHUNK: usize = 4096;
/// fjall's journal stores a key's length as a u16: a longer key would corrupt it, so such a
/// request is refused before it reaches the batch.
const MAX_KEY_LEN: usize = u16::MAX as usize;
/// The journal stores a value's length as a u32.
const MAX_VALUE_LEN: usize = u32::MAX as usize;
/// Length of the fixed part of a dedup value (msg_id, seq, ts, recorded).
const DEDUP_FIXED_LEN: usize = 32;

/// How a commit is made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fsync` of the journal: data and metadata. The default.
    #[default]
    All,
    /// `fdatasync` of the journal. fjall documents it only as "use if you know that fdatasync is
    /// sufficient for your file system"; kept for measurements.
    Data,
}

impl SyncMode {
    fn persist_mode(self) -> PersistMode {
        match self {
            SyncMode::All => PersistMode::SyncAll,
            SyncMode::Data => PersistMode::SyncData,
        }
    }
}

/// Counters of the writer thread, to observe how well group commit batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Commits attempted (one journal sync each when they carry writes).
    pub batches: u64,
    /// Requests carried by those commits.
    pub requests: u64,
    /// Time spent inside those commits (journal write, sync, memtable insert), in microseconds.
    pub commit_micros: u64,
}

/// The LSM [`MessageStore`]: a fjall database plus a dedicated writer thread.
///
/// Dropping it closes the queue, waits for the writer to finish what was already queued and
/// releases the database, so the same directory can be opened again afterwards (once any
/// in-flight reads have finished too).
pub struct LsmStore {
    ks: Arc<Keyspaces>,
    // `Option`s only so that `Drop` can close the queue before joining the thread.
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Counters>,
}

/// The database and its keyspaces (cheap handles, shared with the writer and the readers).
struct Keyspaces {
    db: Database,
    events: Keyspace,
    last_seq: Keyspace,
    dedup: Keyspace,
    dedup_by_time: Keyspace,
    cursors: Keyspace,
    meta: Keyspace,
    unread: Keyspace,
    unread_count: Keyspace,
    read_upto: Keyspace,
    recent: Keyspace,
    recent_by_time: Keyspace,
    conv_index: Keyspace,
    persist: PersistMode,
}

/// The keyspaces the writer reads back while building a batch (the others it only writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Table {
    Events,
    ReadUpto,
    LastSeq,
    Dedup,
    Cursors,
    Meta,
    UnreadCount,
    Recent,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    commit_micros: AtomicU64,
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
    /// Log mode ([`MessageLog`]): a message at seqs the index allocated.
    LogMessage {
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    },
    /// Log mode: gap placeholders where seqs the index allocated hold nothing.
    LogGaps {
        gaps: Vec<(String, u64)>,
        deadline: Instant,
    },
    /// Log mode: a read receipt pair and the read pointer.
    LogReceipts {
        receipt: ReceiptWrite,
        deadline: Instant,
    },
}

enum Output {
    // Boxed: an appended message is far larger than the other answers.
    Sent(Box<SendOutcome>),
    Cursor(u64),
    Purged(usize),
    Read(Box<ReadOutcome>),
    /// Log mode: written (`true`), or a receipt whose read had already landed (`false`).
    Logged(bool),
    /// Log mode: a seq the write names already holds an event; nothing was written.
    Conflict {
        user: String,
        seq: u64,
    },
}

impl LsmStore {
    /// Opens (creating if needed) the database in `dir/lsm/` with [`SyncMode::All`] and starts the
    /// writer thread.
    ///
    /// Fails if the database is already open, by this or another process, or was written by a
    /// newer schema version.
    pub fn open(dir: &Path) -> StoreResult<LsmStore> {
        Self::open_with(dir, SyncMode::All)
    }

    /// Like [`LsmStore::open`], with the given way of syncing commits.
    pub fn open_with(dir: &Path, sync: SyncMode) -> StoreResult<LsmStore> {
        let path = dir.join("lsm");
        std::fs::create_dir_all(&path).map_err(StoreError::new)?;
        let db = Database::builder(&path).open().map_err(StoreError::new)?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(StoreError::new)
        };
        let ks = Keyspaces {
            events: keyspace("events")?,
            last_seq: keyspace("last_seq")?,
            dedup: keyspace("dedup")?,
            dedup_by_time: keyspace("dedup_by_time")?,
            cursors: keyspace("cursors")?,
            meta: keyspace("meta")?,
            unread: keyspace("unread")?,
            unread_count: keyspace("unread_count")?,
            read_upto: keyspace("read_upto")?,
            recent: keyspace("recent")?,
            recent_by_time: keyspace("recent_by_time")?,
            conv_index: keyspace("conv_index")?,
            db,
            persist: sync.persist_mode(),
        };
        check_schema(&ks)?;
        let ks = Arc::new(ks);
        let stats = Arc::new(Counters::default());
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = {
            let ks = ks.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("mqim-lsm-writer".into())
                .spawn(move || writer_loop(&ks, rx, &stats))
                .map_err(StoreError::new)?
        };
        Ok(LsmStore {
            ks,
            queue: Some(queue),
            writer: Some(writer),
            stats,
        })
    }

    /// How many commits the writer ran, how many requests they carried and how long they took.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
            commit_micros: self.stats.commit_micros.load(Ordering::Relaxed),
        }
    }

    /// Puts `op` on the writer's queue without waiting; fails fast when the queue is full.
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

    /// Enqueues `op` and waits for the commit that carries it.
    async fn submit(&self, op: Op) -> StoreResult<Output> {
        self.enqueue(op)?.await.map_err(|_| writer_gone())?
    }

    /// Runs `f` on the blocking pool: a read may have to load blocks from disk.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Keyspaces) -> StoreResult<T> + Send + 'static,
    {
        let ks = self.ks.clone();
        tokio::task::spawn_blocking(move || f(&ks))
            .await
            .map_err(StoreError::new)?
    }
}

impl Drop for LsmStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain what is queued and exit; joining makes the
        // folder lock go away with the store (once in-flight reads drop their handles too).
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Checks the schema version, recording it (durably) in a new database.
fn check_schema(ks: &Keyspaces) -> StoreResult<()> {
    match ks.meta.get(META_SCHEMA_VERSION).map_err(StoreError::new)? {
        None => {
            let mut batch = ks.db.batch().durability(Some(ks.persist));
            batch.insert(
                &ks.meta,
                META_SCHEMA_VERSION,
                SCHEMA_VERSION.to_be_bytes().to_vec(),
            );
            batch.commit().map_err(StoreError::new)
        }
        Some(stored) => match decode_u64(&stored, "schema version")? {
            SCHEMA_VERSION => Ok(()),
            other => Err(StoreError(format!(
                "the lsm store has schema version {other}, this build reads {SCHEMA_VERSION}"
            ))),
        },
    }
}

/// The writer thread: one commit, hence one journal sync, per batch of whatever queued up while
/// the previous commit was in flight.
fn writer_loop(ks: &Keyspaces, mut rx: mpsc::Receiver<Job>, stats: &Counters) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut segment = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A purge or a read scans committed rows, which the batch overlay does not cover: it
        // runs in a commit of its own, after what was queued before it and before what was
        // queued after.
        for job in jobs.drain(..) {
            if matches!(job.op, Op::Purge { .. } | Op::Read { .. }) {
                commit_segment(ks, &mut segment, stats);
                segment.push(job);
                commit_segment(ks, &mut segment, stats);
            } else {
                segment.push(job);
            }
        }
        commit_segment(ks, &mut segment, stats);
    }
}

/// Applies `segment`'s jobs to one write batch in order, commits it durably, then answers them.
///
/// A request that fails before writing anything (a read error, an oversized key) is answered
/// with its error and leaves no trace in the batch; the others go on. A failed commit fails every
/// request of the batch, and none of its writes are visible.
fn commit_segment(ks: &Keyspaces, segment: &mut Vec<Job>, stats: &Counters) {
    if segment.is_empty() {
        return;
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .requests
        .fetch_add(segment.len() as u64, Ordering::Relaxed);
    let mut pending = Pending::new(ks);
    let outputs: Vec<StoreResult<Output>> =
        segment.iter().map(|job| pending.apply(&job.op)).collect();
    let started = Instant::now();
    let committed = pending.commit();
    stats
        .commit_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    for (job, output) in segment.drain(..).zip(outputs) {
        let answer = match &committed {
            Ok(()) => output,
            Err(e) => Err(StoreError(e.0.clone())),
        };
        // The caller may have gone away (cancelled); its write still stands.
        let _ = job.reply.send(answer);
    }
}

/// The batch being built, plus an overlay of what it writes to the keyspaces the writer reads
/// back, so that every request sees the ones before it in the same batch (seqs continue, a resend
/// queued with its original is caught).
struct Pending<'a> {
    ks: &'a Keyspaces,
    batch: OwnedWriteBatch,
    overlay: HashMap<(Table, Vec<u8>), Option<Slice>>,
}

impl<'a> Pending<'a> {
    fn new(ks: &'a Keyspaces) -> Self {
        Pending {
            ks,
            batch: ks.db.batch().durability(Some(ks.persist)),
            overlay: HashMap::new(),
        }
    }

    fn commit(self) -> StoreResult<()> {
        // An empty batch commits nothing and syncs nothing: its answers only read durable data.
        self.batch.commit().map_err(StoreError::new)
    }

    fn keyspace(&self, table: Table) -> &'a Keyspace {
        let ks: &'a Keyspaces = self.ks;
        match table {
            Table::Events => &ks.events,
            Table::ReadUpto => &ks.read_upto,
            Table::LastSeq => &ks.last_seq,
            Table::Dedup => &ks.dedup,
            Table::Cursors => &ks.cursors,
            Table::Meta => &ks.meta,
            Table::UnreadCount => &ks.unread_count,
            Table::Recent => &ks.recent,
        }
    }

    /// The value as of this batch's writes so far.
    fn get(&self, table: Table, key: &[u8]) -> StoreResult<Option<Slice>> {
        if let Some(value) = self.overlay.get(&(table, key.to_vec())) {
            return Ok(value.clone());
        }
        self.keyspace(table).get(key).map_err(StoreError::new)
    }

    fn get_u64(&self, table: Table, key: &[u8], what: &str) -> StoreResult<u64> {
        match self.get(table, key)? {
            Some(value) => decode_u64(&value, what),
            None => Ok(0),
        }
    }

    fn put(&mut self, table: Table, key: Vec<u8>, value: Slice) {
        self.batch
            .insert(self.keyspace(table), key.clone(), value.clone());
        self.overlay.insert((table, key), Some(value));
    }

    fn remove(&mut self, table: Table, key: Vec<u8>) {
        self.batch.remove(self.keyspace(table), key.clone());
        self.overlay.insert((table, key), None);
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
            Op::LogMessage {
                msg,
                seqs,
                deadline,
            } => {
                check_deadline(*deadline)?;
                self.log_message(msg, *seqs)
            }
            Op::LogGaps { gaps, deadline } => {
                check_deadline(*deadline)?;
                self.log_gaps(gaps)
            }
            Op::LogReceipts { receipt, deadline } => {
                check_deadline(*deadline)?;
                self.log_receipts(receipt)
            }
        }
    }

    /// Everything that can fail (reads, decoding, key checks) happens before the first write, so
    /// a failed append leaves nothing behind in the batch.
    fn append(&mut self, msg: &NewMessage) -> StoreResult<SendOutcome> {
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
                msg_id: msg.msg_id,
                seq: sender_seq,
                conversation: conversation.clone(),
                ts: msg.ts,
            },
            msg.ts,
        ))?;
        let max = self.get_u64(Table::Meta, META_MAX_MSG_ID, "max msg_id")?;
        let sender_inbox = self.inbox_update(&msg.from, &conversation, msg, sender_seq)?;
        let recipient_inbox = match &recipient {
            Some((seq, _, _)) => {
                let peer_conversation = Conversation::with_user(&msg.from);
                let update = self.inbox_update(&msg.to, &peer_conversation, msg, *seq)?;
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
    fn inbox_update(
        &self,
        owner: &str,
        conversation: &str,
        msg: &NewMessage,
        seq: u64,
    ) -> StoreResult<InboxUpdate> {
        let key = checked_key(user_conv_key(owner, conversation))?;
        let previous = match self.get(Table::Recent, &key)? {
            Some(value) => Some(decode_recent(&value)?.0),
            None => None,
        };
        // Never move a conversation back in time, should clocks disagree.
        let updated = previous.map_or(msg.ts, |p| p.max(msg.ts));
        let mut index_key = key.clone();
        index_key.extend_from_slice(&msg.msg_id.to_be_bytes());
        Ok(InboxUpdate {
            old_by_time: previous.map(|p| recent_by_time_key(owner, p, conversation)),
            new_by_time: checked_key(recent_by_time_key(owner, updated, conversation))?,
            recent_value: encode_recent(updated, seq),
            recent_key: key,
            index_key,
            seq,
        })
    }

    fn write_inbox(&mut self, u: InboxUpdate) {
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
    fn mark_read(
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
        let peer = Conversation::peer(conversation).filter(|_| !removed.is_empty());
        let receipts = match peer {
            Some(peer) => {
                let own = receipt_event(self.next_seq(user)?, conversation.into(), user, up_to);
                let theirs = receipt_event(
                    self.next_seq(peer)?,
                    Conversation::with_user(user),
                    user,
                    up_to,
                );
                let rows = (event_row(user, &own)?, event_row(peer, &theirs)?);
                Some((own, peer.to_string(), theirs, rows))
            }
            None => None,
        };

        // Writes: nothing below can fail.
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

    fn ks_put_read_upto(&mut self, key: Vec<u8>, up_to: u64) {
        self.batch.insert(&self.ks.read_upto, key, u64_value(up_to));
    }

    /// The user's next seq, not yet claimed: the caller writes it back with its other writes.
    fn next_seq(&self, user: &str) -> StoreResult<u64> {
        checked_key(user.as_bytes().to_vec())?;
        self.get_u64(Table::LastSeq, user.as_bytes(), "last seq")?
            .checked_add(1)
            .ok_or_else(|| StoreError(format!("seq space of {user} exhausted")))
    }

    fn advance_cursor(&mut self, user: &str, device: &str, seq: u64) -> StoreResult<u64> {
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
    fn purge(&mut self, before_ts_ms: i64, limit: usize) -> StoreResult<usize> {
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

// ---------------------------------------------------------------------------------------------
// Encodings

/// Appends `lp(s)`: the length as a big-endian u32, then the bytes.
fn push_lp(buf: &mut Vec<u8>, s: &[u8]) {
    // A component longer than u32::MAX cannot be a key anyway (`checked_key` refuses it); the
    // saturated length only keeps this function total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s);
}

/// `lp(first) ++ rest`: the key of the dedup and cursor keyspaces.
fn pair_key(first: &str, rest: &[u8]) -> Vec<u8> {
    pair_key_bytes(first.as_bytes(), rest)
}

fn pair_key_bytes(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + first.len() + rest.len());
    push_lp(&mut key, first);
    key.extend_from_slice(rest);
    key
}

/// `lp(user) ++ seq_be`.
fn event_key(user: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + user.len() + 8);
    push_lp(&mut key, user.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `lp(user) ++ lp(conversation)`: the key of the per-conversation keyspaces, and the prefix of
/// the unread and history rows.
fn user_conv_key(user: &str, conversation: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + user.len() + conversation.len());
    push_lp(&mut key, user.as_bytes());
    push_lp(&mut key, conversation.as_bytes());
    key
}

/// `lp(user) ++ newest_first(updated) ++ conversation`: a forward scan of a user's prefix lists
/// the newest activity first.
fn recent_by_time_key(user: &str, updated_ms: i64, conversation: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + user.len() + 8 + conversation.len());
    push_lp(&mut key, user.as_bytes());
    key.extend_from_slice(&(u64::MAX - (updated_ms.max(0) as u64)).to_be_bytes());
    key.extend_from_slice(conversation.as_bytes());
    key
}

/// (updated_ms, seq of the latest message in the owner's stream).
fn encode_recent(updated_ms: i64, seq: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&updated_ms.to_be_bytes());
    v[8..].copy_from_slice(&seq.to_be_bytes());
    v
}

fn decode_recent(value: &[u8]) -> StoreResult<(i64, u64)> {
    let v = <[u8; 16]>::try_from(value).map_err(|_| StoreError::new("corrupt recent value"))?;
    let (ts, seq) = v.split_at(8);
    let ts = <[u8; 8]>::try_from(ts).map_err(|_| StoreError::new("corrupt recent value"))?;
    let seq = <[u8; 8]>::try_from(seq).map_err(|_| StoreError::new("corrupt recent value"))?;
    Ok((i64::from_be_bytes(ts), u64::from_be_bytes(seq)))
}

/// The writes one copy of a message makes to the inbox keyspaces, decided before writing.
struct InboxUpdate {
    index_key: Vec<u8>,
    seq: u64,
    recent_key: Vec<u8>,
    recent_value: [u8; 16],
    old_by_time: Option<Vec<u8>>,
    new_by_time: Vec<u8>,
}

/// An i64 whose big-endian bytes sort like the number.
fn ordered_ts(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn by_time_key(recorded: i64, from: &str, client_msg_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 4 + from.len() + client_msg_id.len());
    key.extend_from_slice(&ordered_ts(recorded));
    push_lp(&mut key, from.as_bytes());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// (recorded, sender, client_msg_id) of a `dedup_by_time` key.
fn decode_by_time_key(key: &[u8]) -> StoreResult<(i64, &[u8], &[u8])> {
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

fn u64_value(n: u64) -> Slice {
    Slice::from(&n.to_be_bytes()[..])
}

fn decode_u64(bytes: &[u8], what: &str) -> StoreResult<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError(format!("corrupt {what}: {} bytes", bytes.len())))
}

fn encode_dedup(sent: &SentRecord, recorded: i64) -> Vec<u8> {
    let mut value = Vec::with_capacity(DEDUP_FIXED_LEN + sent.conversation.len());
    value.extend_from_slice(&sent.msg_id.to_be_bytes());
    value.extend_from_slice(&sent.seq.to_be_bytes());
    value.extend_from_slice(&sent.ts.to_be_bytes());
    value.extend_from_slice(&recorded.to_be_bytes());
    value.extend_from_slice(sent.conversation.as_bytes());
    value
}

/// The original [`SentRecord`] and the time it was recorded.
fn decode_dedup(value: &[u8]) -> StoreResult<(SentRecord, i64)> {
    let corrupt = || StoreError::new("corrupt dedup value");
    let (fixed, conversation) = value
        .split_first_chunk::<DEDUP_FIXED_LEN>()
        .ok_or_else(corrupt)?;
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
    };
    Ok((sent, i64::from_be_bytes(field(3)?)))
}

fn checked_key(key: Vec<u8>) -> StoreResult<Vec<u8>> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError(format!(
            "key of {} bytes exceeds the store's limit of {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(key)
}

fn checked_value(value: Vec<u8>) -> StoreResult<Vec<u8>> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError(format!(
            "value of {} bytes exceeds the store's limit of {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(value)
}

/// The checked (key, value) of an event row.
fn event_row(user: &str, event: &Event) -> StoreResult<(Vec<u8>, Slice)> {
    let key = checked_key(event_key(user, event.seq))?;
    let value = checked_value(event.encode_to_vec())?;
    Ok((key, Slice::from(value)))
}

/// Refuses a log write whose deadline has passed: the index may already treat its seqs as holes.
/// Checked as the batch is built; the commit that follows takes milliseconds, far inside the
/// margin the split store keeps between the deadline and calling a hole a gap.
fn check_deadline(deadline: Instant) -> StoreResult<()> {
    if Instant::now() >= deadline {
        return Err(StoreError::new(
            "the log write's deadline passed before it could be written",
        ));
    }
    Ok(())
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
                page.conversations.push(ConversationSummary {
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
        self.read(move |ks| {
            let prefix = user_conv_key(&user, &conversation);
            let mut end = prefix.clone();
            end.extend_from_slice(&before_msg_id.unwrap_or(u64::MAX).to_be_bytes());
            let mut page = HistoryPage::default();
            for entry in ks.conv_index.range(prefix.clone()..end).rev() {
                if page.messages.len() == limit {
                    page.has_more = true;
                    break;
                }
                let seq = decode_u64(&entry.value().map_err(StoreError::new)?, "history seq")?;
                let bytes = ks
                    .events
                    .get(event_key(&user, seq))
                    .map_err(StoreError::new)?
                    .ok_or_else(|| StoreError::new("history index points at a missing event"))?;
                page.messages.push(decode_message(&bytes)?);
            }
            Ok(page)
        })
        .await
    }
}

/// One node: its own registry knows who is online.
impl super::PresenceStore for LsmStore {}

#[cfg(test)]
mod tests {
    use mqim_schemas::v1::event;
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::Duration;

    use tempfile::TempDir;

    use super::*;
    use crate::store::conformance;

    fn open_fresh() -> (TempDir, Arc<LsmStore>) {
        let dir = TempDir::new().expect("temp dir");
        let store = LsmStore::open(dir.path()).expect("open store");
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

    conformance::for_each_case!(conformance_tests);

    /// The whole suite through `run_all`, as another crate would run it, each case in a directory
    /// of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_all_passes() {
        let root = TempDir::new().expect("temp dir");
        let base = root.path().to_path_buf();
        conformance::run_all(|name| {
            let dir = base.join(name);
            async move {
                let store: Arc<dyn MessageStore> =
                    Arc::new(LsmStore::open(&dir).expect("open store"));
                store
            }
        })
        .await;
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

    async fn sent(store: &LsmStore, m: NewMessage) -> SentRecord {
        match store.append_message(m).await.expect("append") {
            SendOutcome::Fresh(a) => a.sent,
            SendOutcome::Duplicate(s) => panic!("unexpected duplicate {s:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everything_survives_a_reopen() {
        let dir = TempDir::new().expect("temp dir");
        let (first, bob_stream, alice_stream) = {
            let store = LsmStore::open(dir.path()).expect("open");
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
            // Dropped here: the writer drains, the database is closed and unlocked.
        };
        assert!(
            dir.path().join("lsm").is_dir(),
            "the store lives in dir/lsm"
        );

        let store = LsmStore::open(dir.path()).expect("reopen");
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
        assert!(LsmStore::open(dir.path()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits() {
        let (_dir, store) = open_fresh();
        // Every call enqueues at once (the trait's ordering contract); only then are they awaited.
        let pending: Vec<_> = (0..256u64)
            .map(|i| {
                store.append_message(msg(&format!("s{}", i % 8), "r", &format!("c{i}"), i + 1))
            })
            .collect();
        for (i, answer) in pending.into_iter().enumerate() {
            match answer.await {
                Ok(SendOutcome::Fresh(a)) => {
                    assert_eq!(a.recipient_event.map(|e| e.seq), Some(i as u64 + 1));
                }
                other => panic!("append {i}: {other:?}"),
            }
        }
        let stats = store.writer_stats();
        assert_eq!(stats.requests, 256);
        // All 256 were queued before the first answer was awaited, far faster than 256 syncs, so
        // commits must have carried several of them each.
        assert!(stats.batches < stats.requests, "no batching: {stats:?}");
        assert_eq!(store.last_seq("r").await.expect("last"), 256);
    }

    /// Length prefixes keep components apart: a user whose id extends another's has a stream of
    /// its own, and (sender, clientMsgId) pairs that concatenate alike are different messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_are_unambiguous() {
        let (_dir, store) = open_fresh();
        sent(&store, msg("a", "ab", "bc", 1)).await;
        sent(&store, msg("ab", "a", "c", 2)).await;
        sent(&store, msg("a\u{1}", "a", "x", 3)).await;
        assert_eq!(store.last_seq("a").await.expect("last"), 3);
        assert_eq!(store.last_seq("ab").await.expect("last"), 2);
        assert_eq!(store.last_seq("a\u{1}").await.expect("last"), 1);
        let a = store.read_stream("a", 0, 100).await.expect("read");
        assert_eq!(
            a.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(!a.has_more);
        let ab = store.read_stream("ab", 0, 100).await.expect("read");
        assert_eq!(ab.events.len(), 2);
        // Cursors of ("a", "bc") and ("ab", "c") are different rows.
        assert_eq!(store.advance_cursor("a", "bc", 3).await.expect("c"), 3);
        assert_eq!(store.advance_cursor("ab", "c", 1).await.expect("c"), 1);
        assert_eq!(store.advance_cursor("a", "bc", 0).await.expect("c"), 3);
    }

    /// A request the store refuses fails alone: the others of its batch are stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_append_does_not_fail_its_batch() {
        let (_dir, store) = open_fresh();
        let huge = "x".repeat(MAX_KEY_LEN + 1);
        let before = store.append_message(msg("alice", "bob", "c1", 1));
        let refused = store.append_message(msg("alice", "bob", &huge, 2));
        let after = store.append_message(msg("alice", "bob", "c3", 3));
        assert!(refused.await.is_err(), "an oversized key was accepted");
        let seqs: Vec<u64> = [before.await, after.await]
            .into_iter()
            .map(|r| match r {
                Ok(SendOutcome::Fresh(a)) => a.sent.seq,
                other => panic!("a valid append of the batch failed: {other:?}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2], "the refused append consumed a seq");
        assert_eq!(store.last_seq("bob").await.expect("last"), 2);
    }

    /// A purge queued between appends applies between them: the append before it is purged (its
    /// ts is old), the resend after it is a new message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_applies_in_queue_order() {
        let (_dir, store) = open_fresh();
        let original = store.append_message(msg("alice", "bob", "c1", 1));
        let purge = store.purge_dedup(i64::MAX);
        tokio::pin!(purge);
        // The first poll enqueues the purge's first chunk behind the original.
        assert!(futures::poll!(&mut purge).is_pending());
        let resend = store.append_message(msg("alice", "bob", "c1", 2));
        let original = original.await.expect("append");
        assert_eq!(purge.await.expect("purge"), 1);
        match (original, resend.await.expect("append")) {
            (SendOutcome::Fresh(a), SendOutcome::Fresh(b)) => {
                assert_eq!((a.sent.seq, b.sent.seq), (1, 2));
            }
            other => panic!("expected two fresh appends, got {other:?}"),
        }
    }

    #[test]
    fn dedup_values_and_by_time_keys_round_trip() {
        let sent = SentRecord {
            msg_id: u64::MAX,
            seq: 7,
            conversation: "u:bob".into(),
            ts: -5,
        };
        assert_eq!(
            decode_dedup(&encode_dedup(&sent, i64::MIN)).expect("decode"),
            (sent, i64::MIN)
        );
        assert!(decode_dedup(&[0; 31]).is_err());
        let key = by_time_key(-1, "a/b", "c\0d");
        let (ts, from, cmid) = decode_by_time_key(&key).expect("decode");
        assert_eq!((ts, from, cmid), (-1, &b"a/b"[..], &b"c\0d"[..]));
        assert!(decode_by_time_key(&key[..10]).is_err());
        // Byte order is time order, across zero too.
        let times = [i64::MIN, -2, -1, 0, 1, i64::MAX];
        for pair in times.windows(2) {
            assert!(ordered_ts(pair[0]) < ordered_ts(pair[1]), "{pair:?}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // kill -9

    /// Set only in the child process of [`survives_kill_9_mid_batch`].
    const CRASH_DIR_ENV: &str = "MQIM_LSM_CRASH_CHILD_DIR";
    const CRASH_SENDERS: u64 = 32;
    const CRASH_RECIPIENTS: u64 = 4;

    /// The child of [`survives_kill_9_mid_batch`]: appends as fast as it can and prints one line
    /// per acknowledged append, until it is killed (or, as a bound, after 60 s). Does nothing in
    /// an ordinary test run.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let store = Arc::new(LsmStore::open(Path::new(&dir)).expect("open in child"));
            let deadline = Instant::now() + Duration::from_secs(60);
            let tasks: Vec<_> = (0..CRASH_SENDERS)
                .map(|s| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let from = format!("s{s}");
                        let to = format!("r{}", s % CRASH_RECIPIENTS);
                        // A sender's stream holds only its own sends: k-th send has seq k + 1.
                        let mut k = store.last_seq(&from).await.expect("last seq");
                        while Instant::now() < deadline {
                            let m = NewMessage {
                                text: Some(format!("{from} #{k} {}", "x".repeat(200))),
                                ..crash_msg(&from, &to, s, k)
                            };
                            match store.append_message(m).await {
                                Ok(SendOutcome::Fresh(a)) => {
                                    println!("ACK {from} {k} {}", a.sent.seq)
                                }
                                other => panic!("child append failed: {other:?}"),
                            }
                            k += 1;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("sender task");
            }
        });
    }

    fn crash_msg(from: &str, to: &str, s: u64, k: u64) -> NewMessage {
        NewMessage {
            from: from.into(),
            to: to.into(),
            client_msg_id: format!("{from}-{k}"),
            msg_id: ((s + 1) << 32) | k,
            ts: 1_700_000_000_000 + k as i64,
            text: None,
            body: None,
            kind: Some("text".into()),
        }
    }

    /// kill -9 of a process in the middle of appending: every acknowledged append is there after
    /// recovery, and every message is either wholly there (both streams, dedup entry, max msg_id)
    /// or not at all. A process crash, not a power cut: what the child wrote but had not synced
    /// is still in the page cache, so this checks fjall's journal recovery (torn trailing batches
    /// included: a batch is larger than the journal's 8 KiB write buffer), not the disk.
    #[test]
    fn survives_kill_9_mid_batch() {
        let dir = TempDir::new().expect("temp dir");
        let exe = std::env::current_exe().expect("test binary");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // Highest acknowledged k per sender, over all rounds.
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        for round in 0..4u64 {
            let mut child = Command::new(&exe)
                .args(["--exact", "store::lsm::tests::crash_child", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(CRASH_DIR_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the child");
            let stdout = child.stdout.take().expect("child stdout");
            let target = 500 + round * 377;
            let mut count = 0;
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("child output");
                let Some(ack) = line.strip_prefix("ACK ") else {
                    continue;
                };
                let fields: Vec<&str> = ack.split(' ').collect();
                let [from, k, seq] = fields[..] else {
                    panic!("bad ack line {line:?}");
                };
                let k: u64 = k.parse().expect("k");
                assert_eq!(seq.parse::<u64>().expect("seq"), k + 1, "{line}");
                let best = acked.entry(from.to_owned()).or_default();
                *best = (*best).max(k + 1);
                count += 1;
                if count >= target {
                    break;
                }
            }
            child.kill().expect("kill -9 the child");
            child.wait().expect("reap the child");
            assert!(
                count >= target,
                "round {round}: the child stopped after {count} acks"
            );
            rt.block_on(verify_after_crash(dir.path(), &acked));
        }
    }

    async fn verify_after_crash(dir: &Path, acked: &BTreeMap<String, u64>) {
        let store = LsmStore::open(dir).expect("reopen after kill -9");
        let mut by_recipient: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        let mut max_id = 0;
        for s in 0..CRASH_SENDERS {
            let from = format!("s{s}");
            let to = format!("r{}", s % CRASH_RECIPIENTS);
            let n = store.last_seq(&from).await.expect("last seq");
            let stream = read_all(&store, &from).await;
            assert_eq!(
                stream.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (1..=n).collect::<Vec<_>>(),
                "{from}'s stream is not 1..=last_seq"
            );
            for (k, event) in stream.iter().enumerate() {
                let Some(event::Body::Message(m)) = &event.body else {
                    panic!("{from}: event {} has no message", event.seq);
                };
                assert_eq!(m.client_msg_id, format!("{from}-{k}"), "{from}'s order");
                max_id = max_id.max(m.msg_id);
                by_recipient
                    .entry(to.clone())
                    .or_default()
                    .insert((from.clone(), m.client_msg_id.clone()));
            }
            let acked_n = acked.get(&from).copied().unwrap_or(0);
            assert!(n >= acked_n, "{from}: {acked_n} acknowledged, {n} stored");
            if n > 0 {
                // The last stored message has its dedup entry...
                let k = n - 1;
                match store.append_message(crash_msg(&from, &to, s, k)).await {
                    Ok(SendOutcome::Duplicate(sent)) => assert_eq!(sent.seq, n),
                    other => panic!("{from}-{k}: dedup entry lost: {other:?}"),
                }
            }
            // ...and the first unstored one has none (nor a seq claimed in its name).
            match store.append_message(crash_msg(&from, &to, s, n)).await {
                Ok(SendOutcome::Fresh(a)) => {
                    assert_eq!(a.sent.seq, n + 1, "{from}: seq after recovery");
                    max_id = max_id.max(a.sent.msg_id);
                    by_recipient
                        .entry(to.clone())
                        .or_default()
                        .insert((from.clone(), a.sent_cmid()));
                }
                other => panic!("{from}-{n}: a message that is not stored deduplicates: {other:?}"),
            }
        }
        for (to, want) in &by_recipient {
            let n = store.last_seq(to).await.expect("last seq");
            let stream = read_all(&store, to).await;
            assert_eq!(
                stream.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (1..=n).collect::<Vec<_>>(),
                "{to}'s stream is not 1..=last_seq"
            );
            let got: BTreeSet<(String, String)> = stream
                .iter()
                .filter_map(|e| match &e.body {
                    Some(event::Body::Message(m)) => {
                        Some((m.from.clone(), m.client_msg_id.clone()))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(got.len(), stream.len(), "{to}: a message stored twice");
            assert_eq!(&got, want, "{to}'s copies differ from the senders' streams");
        }
        assert_eq!(store.max_msg_id().await.expect("max"), max_id, "max msg_id");
    }

    trait SentCmid {
        fn sent_cmid(&self) -> String;
    }

    impl SentCmid for Appended {
        fn sent_cmid(&self) -> String {
            match &self.sender_event.body {
                Some(event::Body::Message(m)) => m.client_msg_id.clone(),
                _ => String::new(),
            }
        }
    }

    async fn read_all(store: &LsmStore, user: &str) -> Vec<Event> {
        let mut all: Vec<Event> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e.seq);
            let page = store.read_stream(user, after, 1000).await.expect("read");
            all.extend(page.events);
            if !page.has_more {
                return all;
            }
        }
    }
}
