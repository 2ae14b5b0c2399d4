//! Store traits: the only way the IM domain touches durable state.
//!
//! A backend implements [`MessageStore`]; the domain never sees tables, files or keys. Every backend
//! must pass the shared conformance suite in [`conformance`], which states the contract in code:
//! - `append_message` makes the message durable in the sender's and the recipient's streams, with
//!   the next contiguous seq of each, and records the (sender, clientMsgId) dedup entry, all in one
//!   atomic step: after a crash either all of it is there or none of it is. It returns only after
//!   the data is durable (fsync or the backend's equivalent).
//! - the same (sender, clientMsgId) again returns [`SendOutcome::Duplicate`] with the original
//!   result and changes nothing.
//! - seqs start at 1 per user and are never skipped, reused or reordered.

pub mod conformance;
pub mod extras;
pub mod groups;
pub mod log;
pub mod lsm;
pub mod redis_index;
pub mod scylla_log;
pub mod split;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use mqim_schemas::v1::{event, Event, Message};
use prost::Message as _;

/// A message accepted by the domain (validated, msgid assigned), ready to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Sending user.
    pub from: String,
    /// Receiving user. May equal `from` (a note to self): then only one event is appended.
    pub to: String,
    pub client_msg_id: String,
    pub msg_id: u64,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub ts: i64,
    pub text: Option<String>,
    pub body: Option<Bytes>,
    pub kind: Option<String>,
}

impl NewMessage {
    /// The message as the owner of a stream that calls the conversation `conversation` sees it.
    pub(crate) fn to_message(&self, conversation: String) -> Message {
        Message {
            msg_id: self.msg_id,
            conversation,
            from: self.from.clone(),
            ts: self.ts,
            client_msg_id: self.client_msg_id.clone(),
            text: self.text.clone(),
            body: self.body.clone(),
            r#type: self.kind.clone(),
            ..Message::default()
        }
    }

    /// This message as event `seq` of a stream whose owner calls the conversation `conversation`.
    pub(crate) fn event(&self, seq: u64, conversation: String) -> Event {
        Event {
            seq,
            body: Some(event::Body::Message(self.to_message(conversation))),
            group_seq: 0,
        }
    }
}

/// The placeholder event of a seq that will never hold anything.
pub(crate) fn gap_event(seq: u64) -> Event {
    Event {
        seq,
        body: Some(event::Body::Gap(mqim_schemas::v1::Gap {})),
        group_seq: 0,
    }
}

/// Event `seq`: `by` read `conversation` (as the stream's owner calls it) up to `msg_id`.
pub(crate) fn receipt_event(seq: u64, conversation: String, by: &str, msg_id: u64) -> Event {
    Event {
        seq,
        body: Some(event::Body::Read(mqim_schemas::v1::ReadReceipt {
            conversation,
            by: by.to_string(),
            msg_id,
        })),
        group_seq: 0,
    }
}

/// What the sender is told: the original `sent` result. Also what a resend gets back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentRecord {
    pub msg_id: u64,
    /// The seq of the message in the sender's stream (0: no copy there, a large group).
    pub seq: u64,
    /// The conversation as the sender sees it (`u:<to>`, `g:<group>`).
    pub conversation: String,
    pub ts: i64,
    /// Groups: the message's position in the group's log (0 for one-to-one).
    pub group_seq: u64,
}

/// The events a fresh message appended, to deliver live.
#[derive(Clone, Debug, PartialEq)]
pub struct Appended {
    pub sent: SentRecord,
    /// The sender's copy (conversation `u:<to>`), with `sent.seq`.
    pub sender_event: Event,
    /// The recipient's copy (conversation `u:<from>`); `None` when `to == from`.
    pub recipient_event: Option<Event>,
}

// Moved once per send; boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum SendOutcome {
    Fresh(Appended),
    /// A resend of a (sender, clientMsgId) already stored: nothing was written.
    Duplicate(SentRecord),
}

/// A page of a user's stream.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StreamPage {
    /// Events with seq > the requested `after_seq`, oldest first, contiguous.
    pub events: Vec<Event>,
    /// More events exist after the last one returned.
    pub has_more: bool,
}

/// A store failure. Never a client's fault: it maps to `UNAVAILABLE` at the boundary.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Durable per-user event streams, dedup entries and device cursors.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Atomically and durably: dedup check on (from, client_msg_id); append the message to both
    /// streams with their next seqs; record the dedup entry (kept at least until
    /// [`MessageStore::purge_dedup`] removes it).
    ///
    /// Ordering: the *call* enqueues the append, and appends are applied in call order (not in
    /// the order the returned futures are polled). The caller relies on this to keep msgid order
    /// and seq order in agreement. A backend that cannot take more work fails fast with
    /// [`StoreError`] instead of blocking the caller.
    fn append_message(&self, msg: NewMessage) -> BoxFuture<'static, StoreResult<SendOutcome>>;

    /// Events of `user` with seq > `after_seq`, oldest first, at most `limit`.
    async fn read_stream(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<StreamPage>;

    /// The highest seq of `user`'s stream (0 if empty).
    async fn last_seq(&self, user: &str) -> StoreResult<u64>;

    /// Move the device's acknowledged cursor forward to `seq` (never backwards, never past the
    /// stream's end). Returns the cursor after the call.
    async fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> StoreResult<u64>;

    /// The highest msg_id ever stored (0 if none), so msgids stay increasing across restarts even
    /// when the clock stepped back.
    async fn max_msg_id(&self) -> StoreResult<u64>;

    /// Remove dedup entries recorded before `before_ts_ms`. Returns how many were removed.
    async fn purge_dedup(&self, before_ts_ms: i64) -> StoreResult<usize>;
}

/// One conversation as its owner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationSummary {
    /// `u:<peer>` or `g:<group>`.
    pub id: String,
    /// Messages from others not yet read by the owner.
    pub unread: u64,
    /// The latest message in either direction, as the owner sees it.
    pub last: Option<Message>,
    /// Time of the latest message, Unix milliseconds.
    pub updated_at: i64,
    /// Groups: a message mentioning the owner is unread.
    pub mentioned: bool,
    /// Large groups: the group log's last position.
    pub last_group_seq: u64,
}

/// A page of conversations, newest activity first.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    pub has_more: bool,
}

/// A page of a conversation's messages, newest first.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// What marking a conversation read did.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ReadOutcome {
    /// Unread messages left in the conversation.
    pub unread: u64,
    /// When something was unread up to the given msgid: the receipt appended to the reader's own
    /// stream (for the reader's other devices) and the one appended to the peer's stream.
    /// `None` when the read changed nothing, so no event was appended.
    pub receipts: Option<(Event, (String, Event))>,
}

/// The per-user inbox view: unread counts, recent conversations, history, read pointers.
///
/// Contract (checked by the `inbox_*` conformance cases):
/// - `append_message` makes a message unread for its recipient (never for its sender, never a
///   note to self) and moves the conversation to the top of both users' recent lists, in the same
///   atomic step that appends it;
/// - `mark_read(user, conversation, x)` removes every unread message with msgid <= x, never
///   drives a count below zero, and is idempotent: an x not newer than the last read changes
///   nothing and appends no receipt. Like `append_message`, the call enqueues: reads apply in
///   call order relative to appends;
/// - history pages backwards by msgid without gaps or repeats.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    fn mark_read(
        &self,
        user: &str,
        conversation: &str,
        up_to_msg_id: u64,
    ) -> BoxFuture<'static, StoreResult<ReadOutcome>>;

    /// The user's conversations, newest activity first, at most `limit`.
    async fn conversations(&self, user: &str, limit: usize) -> StoreResult<ConversationPage>;

    /// Messages of `conversation` as `user` sees it, newest first, with msgid below
    /// `before_msg_id` (all if `None`), at most `limit`.
    async fn history(
        &self,
        user: &str,
        conversation: &str,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> StoreResult<HistoryPage>;
}

/// Which devices are online, across nodes, where the store is shared by several (the split
/// store keeps it in Redis). A store of one node keeps nothing: the node's own registry
/// ([`crate::presence::Presence`]) already knows.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Connection `conn_id` of this node has `device` of `user` online. Fire and forget: a
    /// failure is logged, never the device's problem.
    fn device_online(&self, _user: &str, _device: &str, _conn_id: u64) {}

    /// That connection closed (a newer connection holding the device is left alone).
    fn device_offline(&self, _user: &str, _device: &str, _conn_id: u64) {}

    /// `user`'s devices online on any node, with the node's id; `None` when the store does not
    /// share presence.
    async fn online_devices(&self, _user: &str) -> StoreResult<Option<Vec<(String, u16)>>> {
        Ok(None)
    }

    /// What other nodes sharing this store announce from now on (taken once, by the IM layer):
    /// users whose presence or whose blocks and settings changed there. `None` when no other
    /// node shares this store.
    fn node_news(&self) -> Option<tokio::sync::mpsc::Receiver<NodeNews>> {
        None
    }

    /// Tells the other nodes sharing this store `news` about a change this node made durable.
    /// Fire and forget, like presence changes.
    fn announce(&self, _news: NodeNews) {}
}

/// What another node announced ([`PresenceStore::node_news`]). News says only "look again"
/// (the receiver reads the current state from the store), but for typing, which is the live
/// event itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeNews {
    /// A device of this user came online or went offline on another node: the user's state
    /// across nodes may have changed (read it from [`PresenceStore::online_devices`]).
    Presence(String),
    /// This user's blocks or presence setting changed on another node (read them from
    /// [`extras::ExtrasLog::user_extras`]).
    Extras(String),
    /// `from` is typing (`start`) or stopped in `conversation` (as `from` names it: `u:<peer>`,
    /// `g:<group>`), through another node, which delivered it to its own devices and checked the
    /// rate; this node delivers it to the recipients connected here.
    Typing {
        from: String,
        conversation: String,
        start: bool,
    },
    /// A node stopped (its heartbeat in Redis expired) or restarted without saying goodbye:
    /// the devices it had online are offline now, and it could not say so.
    NodeLeft,
    /// News may have been missed (the subscription was down, or broke): anything may have
    /// changed.
    Resync,
}

/// Everything the IM service needs from storage.
pub trait Store:
    MessageStore + InboxStore + PresenceStore + groups::GroupStore + extras::ExtrasStore
{
}

impl<T> Store for T where
    T: MessageStore + InboxStore + PresenceStore + groups::GroupStore + extras::ExtrasStore
{
}

/// Decodes a stored event that must be a message (what the history and recency indexes point at).
pub(crate) fn decode_message(bytes: &[u8]) -> StoreResult<Message> {
    match Event::decode(bytes).map_err(StoreError::new)?.body {
        Some(event::Body::Message(m)) => Ok(m),
        _ => Err(StoreError::new(
            "an inbox index points at an event that is not a message",
        )),
    }
}

/// Opens the store `cfg` describes, with its durable data under `data_dir`.
///
/// A data dir remembers the shape it was first used with (`store-mode`): the embedded store keeps
/// its own unread and recency rows, which a split store does not maintain, so going back from a
/// split store to the embedded one would show stale counts and is refused.
pub async fn open(
    cfg: &crate::config::StoreConfig,
    data_dir: &std::path::Path,
    im: &crate::config::ImConfig,
) -> StoreResult<std::sync::Arc<dyn Store>> {
    let dedup_ttl_secs = im.dedup_ttl_secs;
    let claims = |log| -> StoreResult<Option<split::NodeClaims>> {
        Ok(Some(split::NodeClaims {
            identity: split::node_identity(data_dir)?,
            log,
        }))
    };
    let opts = |claims| split::SplitOptions {
        node_id: im.node_id,
        claims,
        ..split::SplitOptions::default()
    };
    use crate::config::StoreBackend;
    use std::sync::Arc;

    if cfg.backend == StoreBackend::RedisScylla {
        let mut scylla = cfg.scylla.clone();
        // One dedup horizon for the whole service.
        scylla.dedup_ttl_secs = u32::try_from(dedup_ttl_secs).unwrap_or(u32::MAX);
        let log = Arc::new(scylla_log::ScyllaLog::connect(&scylla).await?);
        let index = redis_index::RedisIndex::connect(&cfg.redis, dedup_ttl_secs).await?;
        let opts = opts(claims(split::LogClaim::Shared)?);
        let split = split::SplitStore::open(index, log.clone(), opts).await?;
        // Blocks and presence settings live in the ScyllaDB log (`blocks`, `hidden_presence`).
        split.set_extras_log(log);
        return Ok(Arc::new(split));
    }
    let mode_file = data_dir.join("store-mode");
    let mode = match cfg.backend {
        StoreBackend::Embedded => "embedded",
        _ => "redis+embedded",
    };
    match std::fs::read_to_string(&mode_file) {
        Ok(before) if before.trim() == "embedded" || before.trim() == mode => {}
        Ok(before) => {
            return Err(StoreError(format!(
                "{} was used with the {:?} store; its unread and recency data live there, \
                 so it cannot be opened as {mode:?}",
                data_dir.display(),
                before.trim()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::new(e)),
    }
    let log = Arc::new(lsm::LsmStore::open(data_dir)?);
    std::fs::write(&mode_file, format!("{mode}\n")).map_err(StoreError::new)?;
    if cfg.backend == StoreBackend::Embedded {
        return Ok(log);
    }
    let index = redis_index::RedisIndex::connect(&cfg.redis, dedup_ttl_secs).await?;
    let opts = opts(claims(split::LogClaim::Exclusive)?);
    let split = split::SplitStore::open(index, log.clone(), opts).await?;
    // Blocks and presence settings live in the embedded log (its `extras` keyspace).
    split.set_extras_log(log);
    Ok(Arc::new(split))
}
