//! Conversation extras in the store: recall and edit of a stored message ([`Amend`]), and the
//! small durable per-user state behind blocking and hidden presence ([`ExtrasLog`]).
//!
//! An amend rewrites the message in place in every stream that holds it (the content removed, or
//! replaced) and appends an event saying so at the next seq of each of those streams, in one
//! atomic write: after a crash either every copy is amended and every event is there, or nothing
//! is. Who may amend what (the sender, a group's owner and admins) and which streams can hold the
//! message is decided by the IM layer; the store checks what only it knows (the message exists,
//! its sender, its age) inside the same write, so nothing can slip between the check and it.
//!
//! On the split store the amend is planned, allocated and logged like a message ([`AmendLog`]):
//! the log says which streams hold the message (and whether the amend is allowed at all), the
//! index allocates one seq in each, and the log writes the amend at those seqs.
//!
//! Typing and presence are live only and never touch the store.
//!
//! The default methods refuse, like [`super::groups::GroupStore`]'s, so a store shape without
//! extras answers with a clear error instead of losing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use mqim_schemas::v1::{Event, Message};

use super::log::LogResult;
use super::{StoreError, StoreResult};

/// What an amend does to the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmendKind {
    /// Remove the content (text, body, type, mentions); the message stays as `recalled`.
    Recall,
    /// Replace the content.
    Edit {
        text: Option<String>,
        body: Option<Bytes>,
    },
}

/// One stream that may hold the message, and how its owner calls the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmendTarget {
    pub owner: String,
    pub conversation: String,
}

/// A recall or an edit, as accepted by the IM layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amend {
    /// Who asks.
    pub by: String,
    pub msg_id: u64,
    pub kind: AmendKind,
    /// The stream in which the message is looked up (the caller's own copy, or a group's log).
    pub home: AmendTarget,
    /// The other streams that may hold a copy (the peer, the group's members); the ones that do
    /// get the event.
    pub others: Vec<AmendTarget>,
    /// The message is a group message and the group's log is `home`: its event carries the
    /// log's next seq as its group seq, and so does every copy.
    pub group_log: bool,
    /// The caller may amend other senders' messages at any age (a group's owner or admin
    /// recalling).
    pub privileged: bool,
    /// Messages accepted before this time (Unix ms) are too old for a non-privileged caller.
    pub not_before_ms: i64,
    /// Acceptance time of the amend (Unix ms): the edit's `editedAt`.
    pub ts: i64,
}

impl Amend {
    /// Amends `m` in place as this amend says (a recall removes the content, an edit replaces
    /// it and sets `editedAt`); `false`, and `m` unchanged, if `m` is recalled already.
    pub fn apply_to(&self, m: &mut Message) -> bool {
        if m.recalled {
            return false;
        }
        match &self.kind {
            AmendKind::Recall => {
                m.text = None;
                m.body = None;
                m.r#type = None;
                m.mentions.clear();
                m.mention_all = false;
                m.recalled = true;
            }
            AmendKind::Edit { text, body } => {
                m.text = text.clone();
                m.body = body.clone();
                m.edited_at = self.ts;
            }
        }
        true
    }
}

/// What an amend did.
#[derive(Clone, Debug, PartialEq)]
pub enum AmendOutcome {
    /// Amended: the events appended, each with its stream's owner (the home stream first).
    Done(Vec<(String, Event)>),
    /// Nothing to do: the message was already recalled, or already has this content; with the
    /// time of its latest edit (0: never edited).
    Unchanged { edited_at: i64 },
    /// No such message in the caller's conversation.
    NotFound,
    /// Not the caller's message (and the caller is not privileged).
    NotYours,
    /// Older than the window.
    TooOld,
    /// A recalled message cannot be edited.
    Recalled,
}

/// Everything the IM layer keeps in memory of the extras, as loaded at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtrasState {
    /// blocker -> the users they block.
    pub blocks: BTreeMap<String, BTreeSet<String>>,
    /// Users who hide their presence.
    pub hidden: BTreeSet<String>,
}

/// The durable state of blocks, presence settings and last-seen times. The embedded store implements it (in
/// both of its roles: the whole store, and the message log under a Redis index), so the split
/// store keeps blocks in its log when the log is the embedded one.
#[async_trait]
pub trait ExtrasLog: Send + Sync + 'static {
    /// `blocker` blocks (`on`) or no longer blocks `blocked`. Durable when it returns.
    async fn set_block(&self, blocker: &str, blocked: &str, on: bool) -> StoreResult<()>;

    /// Whether `user`'s presence is shown to others. Durable when it returns.
    async fn set_presence_visible(&self, user: &str, visible: bool) -> StoreResult<()>;

    /// Every block and setting.
    async fn load_extras(&self) -> StoreResult<ExtrasState>;

    /// `user`'s blocks and setting (another node changed them): the users they block, and
    /// whether they hide their presence.
    async fn user_extras(&self, user: &str) -> StoreResult<(BTreeSet<String>, bool)>;

    /// `user`'s last device went offline at `ts` (Unix ms). Durable when it returns.
    async fn set_last_seen(&self, user: &str, ts: i64) -> StoreResult<()>;

    /// When `user`'s last device went offline, as last recorded (0: never).
    async fn last_seen(&self, user: &str) -> StoreResult<i64>;
}

/// What a message log found before an amend is allocated.
#[derive(Clone, Debug, PartialEq)]
pub enum AmendPlan {
    /// Nothing is to be written: the answer as it stands (not found, not yours, too old,
    /// recalled, unchanged; never `Done`).
    Answer(AmendOutcome),
    /// The streams holding the message, the home stream first: one seq is needed in each.
    Write(Vec<String>),
}

/// The amend half of a message log: recall and edit at seqs the index allocated.
///
/// Contract (checked through the split store by the amend conformance cases):
/// - [`AmendLog::plan_amend`] reads only: it makes the checks [`ExtrasStore::amend`] makes and
///   names the streams of `amend.home` and `amend.others` that hold a copy.
/// - [`AmendLog::log_amend`] makes the checks again and writes what [`ExtrasStore::amend`]
///   writes, atomically, with the event of each holder at its given seq (the home stream's seq
///   is the group seq of every event when `amend.group_log`). If the answer is no longer `Done`
///   (another amend got there first), it writes gaps at the given seqs and returns the answer.
///   A given seq that holds an event refuses the whole write with
///   [`super::log::LogError::Conflict`]. Deadlines as for [`super::log::MessageLog::log_message`].
#[async_trait]
pub trait AmendLog: Send + Sync + 'static {
    async fn plan_amend(&self, amend: &Amend) -> StoreResult<AmendPlan>;

    fn log_amend(
        &self,
        amend: Amend,
        seqs: Vec<(String, u64)>,
        deadline: Instant,
    ) -> BoxFuture<'static, LogResult<AmendOutcome>>;
}

fn no_amend() -> StoreError {
    StoreError::new("this store cannot recall or edit messages")
}

/// The extras a store shape offers.
pub trait ExtrasStore: Send + Sync + 'static {
    /// Whether recall and edit are available.
    fn has_amend(&self) -> bool {
        false
    }

    /// Applies `amend` atomically and durably. Enqueued in call order, like appends.
    fn amend(&self, _amend: Amend) -> BoxFuture<'static, StoreResult<AmendOutcome>> {
        Box::pin(async { Err(no_amend()) })
    }

    /// Where blocks and settings are kept; `None`: this store shape has no place for them.
    fn extras_log(&self) -> Option<&dyn ExtrasLog> {
        None
    }
}
