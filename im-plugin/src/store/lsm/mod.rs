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
//! - `extras`: blocks and presence settings (encodings in `extras.rs`).
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
//! docs only promise that a batch is "updated atomically"; `survives_kill_9_mid_batch` in `tests.rs` tests
//! it). A complete-looking batch whose checksum does not match fails recovery (the open errors)
//! rather than being dropped. The "recorded" time of a dedup entry is the message's acceptance time
//! (`NewMessage::ts`), as in the redb backend.

//!
//! Files: `writer.rs` (the writer thread, group commit, the batch overlay), `inbox.rs` (the
//! embedded store's writes: messages, inbox rows, reads, cursors, purges), `log_mode.rs` (the
//! message-log writes and the [`super::log::MessageLog`] implementation), `keys.rs` (key and
//! value encodings), `reads.rs` (the store traits: reads and entry points), `extras.rs` (recall,
//! edit, blocks and presence settings), `tests.rs`.

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

use super::groups::{GroupAppend, GroupOutcome, GroupReadOutcome};
use super::log::{GroupSeqs, MessageSeqs, ReceiptWrite};
use super::{
    decode_message, gap_event, receipt_event, Appended, ConversationPage, ConversationSummary,
    HistoryPage, InboxStore, MessageStore, NewMessage, ReadOutcome, SendOutcome, SentRecord,
    StoreError, StoreResult, StreamPage,
};
use crate::conversation::Conversation;

mod extras;
#[cfg(test)]
mod extras_tests;
mod group_reads;
#[cfg(test)]
mod group_tests;
mod groups;
mod inbox;
mod keys;
mod log_mode;
mod reads;
#[cfg(test)]
mod tests;
mod writer;

use keys::*;
use writer::*;

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
    group_meta: Keyspace,
    group_members: Keyspace,
    user_groups: Keyspace,
    group_head: Keyspace,
    group_ordinal: Keyspace,
    group_read: Keyspace,
    group_recalled: Keyspace,
    group_left: Keyspace,
    mentions: Keyspace,
    extras: Keyspace,
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
    GroupMembers,
    GroupHead,
    GroupRead,
    Mentions,
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
    /// A group entry (`groups.rs`).
    Group(GroupAppend),
    /// A member's read position in a large group.
    GroupRead {
        user: String,
        group: String,
        up_to: u64,
    },
    /// Log mode: a group entry at the seqs the index allocated.
    LogGroup {
        entry: GroupAppend,
        seqs: GroupSeqs,
        deadline: Instant,
    },
    /// Log mode: a large-group read position, the reader's receipt at the seq allocated.
    LogGroupRead {
        user: String,
        group: String,
        up_to: u64,
        own_seq: u64,
        deadline: Instant,
    },
    /// A recall or an edit (`extras.rs`).
    Amend(Box<crate::store::extras::Amend>),
    /// Log mode: a recall or an edit at the seqs the index allocated.
    LogAmend {
        amend: Box<crate::store::extras::Amend>,
        seqs: Vec<(String, u64)>,
        deadline: Instant,
    },
    /// A block set or lifted.
    Block {
        blocker: String,
        blocked: String,
        on: bool,
        ts: i64,
    },
    /// A presence setting.
    PresenceVisible {
        user: String,
        visible: bool,
    },
    /// When a user's last device went offline.
    LastSeen {
        user: String,
        ts: i64,
    },
}

enum Output {
    // Boxed: an appended message is far larger than the other answers.
    Sent(Box<SendOutcome>),
    Group(Box<GroupOutcome>),
    GroupRead(Box<GroupReadOutcome>),
    Amended(Box<crate::store::extras::AmendOutcome>),
    /// A write that answers nothing but success.
    Done,
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
            group_meta: keyspace("group_meta")?,
            group_members: keyspace("group_members")?,
            user_groups: keyspace("user_groups")?,
            group_head: keyspace("group_head")?,
            group_ordinal: keyspace("group_ordinal")?,
            group_read: keyspace("group_read")?,
            group_recalled: keyspace("group_recalled")?,
            group_left: keyspace("group_left")?,
            mentions: keyspace("mentions")?,
            extras: keyspace("extras")?,
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

/// The batch being built, plus an overlay of what it writes to the keyspaces the writer reads
/// back, so that every request sees the ones before it in the same batch (seqs continue, a resend
/// queued with its original is caught).
struct Pending<'a> {
    ks: &'a Keyspaces,
    batch: OwnedWriteBatch,
    overlay: HashMap<(Table, Vec<u8>), Option<Slice>>,
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
