//! Groups in the store: the types a group write carries and the [`GroupStore`] trait.
//!
//! A group's log is a stream of its own, owned by `#g:<id>` (no user id can hold `#`, so it can
//! never meet a user's stream): its seq *is* the group seq, so contiguity, gaps, the log's
//! no-overwrite rule and "counters resume above the highest durable seq" hold for groups exactly
//! as for users. Every entry (a message or a membership change) is the next event of that stream,
//! and, in the same atomic write, a copy goes to each stream the caller names in
//! [`GroupAppend::copies`]: every member's in a small group (write diffusion), only the
//! mentioned or concerned members' in a large one (read diffusion). The membership rows an entry
//! changes are written with it, so the log and the member list never disagree after a crash.
//!
//! Who is a member, and so which copies an entry has, is decided by the IM layer
//! ([`crate::groups`]); the store writes what it is handed.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use mqim_schemas::v1::{event, Event, GroupChange, Message};
use serde::{Deserialize, Serialize};

use super::{HistoryPage, SentRecord, StoreError, StoreResult, StreamPage};
use crate::conversation::Conversation;

/// The stream owner of group `group`'s log.
pub fn log_owner(group: &str) -> String {
    format!("#g:{group}")
}

/// A member's role. Owner > admin > member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// A group's settings, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub name: String,
    pub owner: String,
    pub large: bool,
    pub created_at: i64,
    pub disbanded: bool,
    pub member_count: u64,
    /// The msgid of the group's latest change (its creation included): which membership this
    /// meta and the member rows written with it reflect. The membership fence compares it
    /// (`store/split/fence.rs`); set by the IM layer when it plans a change. 0 in groups stored
    /// before it existed.
    #[serde(default)]
    pub version_id: u64,
    /// The group seq of that change, filled in by the log that writes it (0 until then).
    #[serde(default)]
    pub version_seq: u64,
}

/// One member, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub role: Role,
    pub joined_at: i64,
    /// The group seq of the entry that added them: they see the log from there on.
    pub joined_seq: u64,
    /// That entry's msgid: their history starts after it.
    pub joined_msg_id: u64,
}

/// A group with every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub meta: GroupMeta,
    pub members: BTreeMap<String, Member>,
}

/// A message to a group, as accepted by the IM layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    pub from: String,
    pub client_msg_id: String,
    pub text: Option<String>,
    pub body: Option<Bytes>,
    pub kind: Option<String>,
    pub mentions: Vec<String>,
    pub mention_all: bool,
}

/// What a group entry is.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupEntry {
    Message(GroupMessage),
    Change(GroupChange),
}

/// A copy of an entry in one user's stream, and what it does to that user's inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub owner: String,
    /// The conversation moves to the top of the owner's recent list (and into their history).
    pub recent: bool,
    /// The message is unread for the owner (never the sender's own copy).
    pub unread: bool,
    /// The message mentions the owner: `conversations` says so until they read it.
    pub mention: bool,
}

/// A member row to write with an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberWrite {
    pub user: String,
    pub role: Role,
    /// The entry adds them (their join position is the entry's); else only the role changes.
    pub joins: bool,
}

/// The membership rows an entry changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipWrite {
    /// The group's settings after the entry.
    pub meta: GroupMeta,
    pub upserts: Vec<MemberWrite>,
    pub removals: Vec<String>,
}

/// One entry of a group's log, with its copies and membership rows.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupAppend {
    pub group: String,
    pub msg_id: u64,
    pub ts: i64,
    pub large: bool,
    pub entry: GroupEntry,
    /// Member streams that get the entry (the group's own log always does).
    pub copies: Vec<Copy>,
    pub membership: Option<MembershipWrite>,
    /// The membership version the entry was planned from ([`GroupMeta::version_id`] of the
    /// group as the planner saw it; 0 for a creation). A store shared by several nodes
    /// refuses the entry with [`stale_membership`] when the group's latest change is another.
    pub basis: u64,
}

/// Which dedup record an entry has: a message's (sender, clientMsgId); a `groupCreate` given a
/// clientMsgId, (`#create:<creator>`, clientMsgId): no user id holds `#`, so a creation never
/// meets a message's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupKey {
    pub owner: String,
    pub client_msg_id: String,
    /// Who sent or created it: their own copy's seq goes into the record.
    pub actor: String,
}

impl GroupAppend {
    pub fn dedup_key(&self) -> Option<DedupKey> {
        match &self.entry {
            GroupEntry::Message(m) => Some(DedupKey {
                owner: m.from.clone(),
                client_msg_id: m.client_msg_id.clone(),
                actor: m.from.clone(),
            }),
            GroupEntry::Change(c) if c.change == "created" && !c.client_msg_id.is_empty() => {
                Some(DedupKey {
                    owner: format!("#create:{}", c.by),
                    client_msg_id: c.client_msg_id.clone(),
                    actor: c.by.clone(),
                })
            }
            GroupEntry::Change(_) => None,
        }
    }

    /// The entry as event `seq` of a stream, at group seq `group_seq`.
    pub(crate) fn event(&self, seq: u64, group_seq: u64) -> Event {
        let conversation = Conversation::Group(self.group.clone()).to_string();
        let body = match &self.entry {
            GroupEntry::Message(m) => event::Body::Message(Message {
                msg_id: self.msg_id,
                conversation,
                from: m.from.clone(),
                ts: self.ts,
                client_msg_id: m.client_msg_id.clone(),
                text: m.text.clone(),
                body: m.body.clone(),
                r#type: m.kind.clone(),
                group_seq,
                mentions: m.mentions.clone(),
                mention_all: m.mention_all,
                ..Message::default()
            }),
            GroupEntry::Change(c) => event::Body::Group(c.clone()),
        };
        Event {
            seq,
            body: Some(body),
            group_seq,
        }
    }
}

/// What a fresh group entry appended.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupAppended {
    /// For a message: what the sender is told (and a resend gets back).
    pub sent: SentRecord,
    /// The entry as the group's log holds it (`seq` = `group_seq`).
    pub log_event: Event,
    /// Each copy as written, with its owner.
    pub copies: Vec<(String, Event)>,
}

// Moved once per entry, like `SendOutcome`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum GroupOutcome {
    Fresh(GroupAppended),
    /// A resend of a (sender, clientMsgId) already stored: nothing was written.
    Duplicate(SentRecord),
}

/// A large group as one member sees it (its unread count comes from positions, not counters).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LargeGroupView {
    pub last_group_seq: u64,
    /// Messages after the member's read position.
    pub unread: u64,
    pub mentioned: bool,
    pub last: Option<Message>,
    pub updated_at: i64,
}

/// What reading a large group did.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GroupReadOutcome {
    pub unread: u64,
    /// The event appended to the reader's own stream for their other devices, if the read moved.
    pub own_receipt: Option<Event>,
}

/// How a [`stale_membership`] error starts.
const STALE_MEMBERSHIP: &str = "stale membership: ";

/// The error of a group entry planned from a membership that is not the group's latest
/// (another node changed the group): nothing was written; reload the group and plan again.
pub fn stale_membership(group: &str) -> StoreError {
    StoreError(format!(
        "{STALE_MEMBERSHIP}group {group} changed since its members were read; reload it"
    ))
}

/// Whether `e` is a [`stale_membership`] error.
pub fn is_stale_membership(e: &StoreError) -> bool {
    e.0.starts_with(STALE_MEMBERSHIP)
}

fn unsupported() -> StoreError {
    StoreError::new("groups are not available on this store shape yet (use the embedded store)")
}

/// Durable groups. The embedded store implements it; the default methods refuse, so a store
/// shape without groups answers with a clear error instead of losing anything.
///
/// Contract (checked by the `group_*` conformance cases):
/// - `append_group` writes, atomically and durably: the entry at the next seq of the group's
///   log, a copy at the next seq of each named stream, the inbox rows of each copy, the
///   membership rows, and its dedup entry if it has one ([`GroupAppend::dedup_key`]); a resend
///   of the same key writes nothing and returns the original. Call order is apply order, as for
///   `append_message`, with which it shares one order.
/// - group seqs start at 1 and are contiguous; every message entry advances the group's message
///   count, from which a large group's unread counts are computed.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Whether this store keeps groups.
    fn has_groups(&self) -> bool {
        false
    }

    fn append_group(&self, _entry: GroupAppend) -> BoxFuture<'static, StoreResult<GroupOutcome>> {
        Box::pin(async { Err(unsupported()) })
    }

    /// Every group id the store holds (disbanded ones included).
    async fn group_ids(&self) -> StoreResult<Vec<String>> {
        Err(unsupported())
    }

    /// The group with all its members; `None` if it never existed.
    async fn load_group(&self, _group: &str) -> StoreResult<Option<GroupRecord>> {
        Err(unsupported())
    }

    /// Whether other nodes change this store's groups too (a split store: its log may be
    /// shared), so that a node's in-memory copy of a group may be behind the store.
    fn groups_shared(&self) -> bool {
        false
    }

    /// The stored membership version of `group` ([`GroupMeta::version_id`] of its meta row),
    /// `None` if there is no such group. Cheap: no member is read.
    async fn group_version(&self, group: &str) -> StoreResult<Option<u64>> {
        Ok(self.load_group(group).await?.map(|g| g.meta.version_id))
    }

    /// The groups `user` is a member of, with their `large` flag.
    async fn user_groups(&self, _user: &str) -> StoreResult<Vec<(String, bool)>> {
        Err(unsupported())
    }

    /// `user`'s view of large group `group`.
    async fn large_group_view(&self, _user: &str, _group: &str) -> StoreResult<LargeGroupView> {
        Err(unsupported())
    }

    /// Moves `user`'s read position in large group `group` to the message `up_to` (or the newest
    /// one before it); never backwards. Enqueued in call order like appends.
    fn mark_group_read(
        &self,
        _user: &str,
        _group: &str,
        _up_to: u64,
    ) -> BoxFuture<'static, StoreResult<GroupReadOutcome>> {
        Box::pin(async { Err(unsupported()) })
    }

    /// Entries of the group's log after `after_group_seq`, oldest first.
    async fn group_log(
        &self,
        _group: &str,
        _after_group_seq: u64,
        _limit: usize,
    ) -> StoreResult<StreamPage> {
        Err(unsupported())
    }

    /// The group's messages with msgid below `before` (all if `None`) and above `since`, newest
    /// first.
    async fn group_history(
        &self,
        _group: &str,
        _before: Option<u64>,
        _since: u64,
        _limit: usize,
    ) -> StoreResult<HistoryPage> {
        Err(unsupported())
    }
}
