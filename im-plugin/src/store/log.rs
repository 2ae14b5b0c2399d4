//! The durable half of a split store: the message log.
//!
//! In the scale-out shape, Redis holds what must be fast and shared (seq counters, the unread
//! index, recency, the resend-dedup cache) and a [`MessageLog`] holds what must never be lost:
//! every user's event stream at the seqs the index allocated, the messages of each conversation
//! for history, the durable dedup records and device cursors. [`super::split::SplitStore`] combines
//! the two into a [`super::Store`]; the log backends are [`super::lsm::LsmStore`] (one node, on its
//! own disk) and `ScyllaLog` (ScyllaDB, shared by every node).
//!
//! A log never allocates seqs: it writes where it is told. A seq the index handed out but whose
//! write never landed is a hole; the split store turns a hole that can no longer be filled into a
//! `gap` placeholder event. Deadlines make "can no longer be filled" decidable: a write is refused
//! once its deadline has passed, so a hole older than the longest deadline stays a hole.
//!
//! The log is also the arbiter of seqs: it never overwrites. A write at a (stream, seq) that
//! already holds an event is refused whole with [`LogError::Conflict`], so an index that handed
//! out a seq twice (a Redis restored from an old snapshot, a flushed Redis, two nodes sharing a
//! counter by mistake) costs a retry, never an acknowledged message.

use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;
use mqim_schemas::v1::Event;

use super::groups::{GroupAppend, GroupMeta, GroupOutcome, GroupReadOutcome, GroupStore};
use super::{HistoryPage, NewMessage, SendOutcome, StoreError, StoreResult};

/// Why a log write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `seq` of `user`'s stream already holds an event: the index that allocated it is stale.
    /// Nothing of the write was applied.
    #[error("seq {seq} of {user} is already written")]
    Conflict { user: String, seq: u64 },
    /// The log could not be reached, the deadline passed, or the write failed: nothing of it
    /// was applied, then or later.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// The result of a log write.
pub type LogResult<T> = Result<T, LogError>;

/// A read receipt to log: `user` read `conversation` up to `up_to`; `peer` gets the receipt
/// (the other user of a one-to-one conversation; in a small group, the sender of the newest
/// message the read covers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptWrite {
    pub user: String,
    pub conversation: String,
    pub peer: String,
    pub up_to: u64,
    /// Seq of the receipt in the reader's own stream (for the reader's other devices).
    pub own_seq: u64,
    /// Seq of the receipt in the peer's stream.
    pub peer_seq: u64,
}

impl ReceiptWrite {
    /// The conversation of the peer's receipt: the group itself, or the one with the reader.
    pub fn peer_conversation(&self) -> String {
        peer_conversation(&self.conversation, &self.user)
    }
}

/// The conversation in which `peer` sees a receipt of `reader`'s read of `conversation`.
pub fn peer_conversation(conversation: &str, reader: &str) -> String {
    match crate::conversation::Conversation::parse(conversation) {
        Some(crate::conversation::Conversation::Group(_)) => conversation.to_string(),
        _ => crate::conversation::Conversation::with_user(reader),
    }
}

/// The seqs the index allocated for one group entry: the group log's, then one per copy, in
/// the order of [`GroupAppend::copies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSeqs {
    pub group_seq: u64,
    pub copies: Vec<u64>,
}

/// The seqs the index allocated for one message's copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageSeqs {
    /// The sender's copy, in the sender's stream.
    pub sender: u64,
    /// The recipient's copy, in the recipient's stream; `None` for a note to self.
    pub recipient: Option<u64>,
}

/// The durable message log. Implementations: [`super::lsm::LsmStore`] and `ScyllaLog`.
///
/// Contract (checked through [`super::split::SplitStore`] by the shared conformance suite):
/// - [`MessageLog::log_message`] writes, durably and atomically where the backend can: the
///   sender's copy at `seqs.sender` (conversation `u:<to>`), the recipient's copy at
///   `seqs.recipient` (conversation `u:<from>`), both history entries, the dedup record
///   (from, client_msg_id) -> the [`super::SentRecord`], and raises the stored max msg_id. If that
///   dedup record already exists (a resend), it writes a `gap` event at each given seq instead,
///   so the seqs do not become holes, and returns [`SendOutcome::Duplicate`] with the original.
/// - Both writes are *enqueued at the call*: writes apply in call order.
/// - A write whose `deadline` has passed before it becomes durable is refused with
///   [`super::StoreError`] and leaves nothing behind, then or later.
/// - Events are immutable once written. A write naming a seq that already holds an event is
///   refused whole with [`LogError::Conflict`] (a `gap` the write would put there is simply left
///   out: the seq is taken either way). A resend's gaps likewise go only where nothing is.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// See the trait's contract. The returned [`super::Appended`] carries the events as written.
    fn log_message(
        &self,
        msg: NewMessage,
        seqs: MessageSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<SendOutcome>>;

    /// Durably writes a `gap` placeholder at each `(owner, seq)` that holds nothing, and leaves
    /// the others as they are (the seq is not a hole either way). Same call-order and deadline
    /// rules as `log_message`; never a conflict.
    fn log_gaps(
        &self,
        gaps: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, StoreResult<()>>;

    /// Durably, atomically: raises the log's read pointer of (`user`, `conversation`) to
    /// `up_to` and writes the two receipt events at the given seqs; returns `true`. If the
    /// pointer is already at or past `up_to` (an earlier attempt of the same read landed), it
    /// writes `gap` events at both seqs instead and returns `false`. Same call-order, deadline
    /// and conflict rules as `log_message`. The pointer, not the index, decides whether a read
    /// produced its receipts, so a read retried after an ambiguous failure produces them once.
    fn log_receipts(
        &self,
        receipt: ReceiptWrite,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<bool>>;

    /// The log's read pointer of (`user`, `conversation`): the highest msgid a logged receipt
    /// of `user` covers (0 if none).
    async fn read_pointer(&self, user: &str, conversation: &str) -> StoreResult<u64>;

    /// Events of `user` with seq > `after_seq`, ascending, at most `limit`. Seqs never written are
    /// simply absent (the split store decides what a hole means).
    async fn read_events(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>>;

    /// The highest seq written in `user`'s stream (0 if none): where a lost seq counter resumes.
    async fn max_seq(&self, user: &str) -> StoreResult<u64>;

    /// The highest msg_id ever logged (0 if none).
    async fn max_msg_id(&self) -> StoreResult<u64>;

    /// Messages of `conversation` as `user` sees it, newest first, with msgid below
    /// `before_msg_id` (all if `None`), at most `limit`; `has_more` if older ones exist.
    async fn history(
        &self,
        user: &str,
        conversation: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage>;

    /// Moves the device's cursor forward to `seq` (never backwards; the caller has already
    /// clamped `seq` to the stream's end). Returns the cursor after the call.
    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64>;

    /// Whether this process is the log's only writer (an embedded log: yes; a shared database:
    /// no). Then a seq missing while this process has no write in flight for its user is dead.
    fn single_writer(&self) -> bool {
        false
    }

    /// Removes dedup records made before `before_ts_ms` (a backend with native expiry may do
    /// nothing and return 0). Returns how many were removed.
    async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize>;

    /// The log's groups, if it keeps them: without, the split store refuses groups.
    fn groups(&self) -> Option<&dyn GroupLog> {
        None
    }

    /// Recall and edit, if this log can write them.
    fn amends(&self) -> Option<&dyn super::extras::AmendLog> {
        None
    }
}

/// The group half of a message log: the group reads of [`GroupStore`] (its writing methods are
/// not used on a log), and group writes at seqs the index allocated.
///
/// Contract (checked through the split store by the `group_*` conformance cases):
/// - [`GroupLog::log_group`] writes what [`GroupStore::append_group`] writes, atomically, at the
///   given seqs: the entry at `seqs.group_seq` of the group's log and copy `i` at `seqs.copies[i]`
///   of its owner's stream, with the history rows, membership rows, group head, read positions
///   and mentions; no unread counts or recency (the index keeps those). A resend of a stored
///   (sender, clientMsgId) writes gaps at the free given seqs and returns the original. A seq
///   that holds an event refuses the whole write with [`LogError::Conflict`]. Call order,
///   deadlines: as for [`MessageLog::log_message`].
/// - [`GroupLog::log_group_read`] moves `user`'s read position in large group `group` to the
///   message `up_to` (or the newest before it) and writes the reader's own receipt at `own_seq`;
///   a read that moves nothing writes a gap there instead.
/// - [`MessageLog::log_receipts`] in a group clears the reader's mention of a message it covers.
#[async_trait]
pub trait GroupLog: GroupStore {
    fn log_group(
        &self,
        entry: GroupAppend,
        seqs: GroupSeqs,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<GroupOutcome>>;

    fn log_group_read(
        &self,
        user: &str,
        group: &str,
        up_to: u64,
        own_seq: u64,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<GroupReadOutcome>>;

    /// Whether `user` has an unread mention in `conversation`.
    async fn mentioned(&self, user: &str, conversation: &str) -> StoreResult<bool>;

    /// `user`'s read position in large group `group`: the msgid it is at, and the messages
    /// after it.
    async fn read_position(&self, user: &str, group: &str) -> StoreResult<(u64, u64)>;

    /// Whether `group` is a large one (`None`: no such group). Cheap: no member is read.
    async fn is_large(&self, group: &str) -> StoreResult<Option<bool>>;

    /// The group's meta as last written (`None`: no such group), with the version of its
    /// latest change. Cheap: no member is read.
    async fn group_meta(&self, group: &str) -> StoreResult<Option<GroupMeta>> {
        Ok(self.load_group(group).await?.map(|g| g.meta))
    }
}
