//! System messages: text from the reserved sender `system`, stored and delivered like any
//! message. To a user (`u:<user>`) it takes the one-to-one send operation a client's send takes;
//! to a group (`g:<id>`) it is the next entry of the group's log through the commit sequence
//! every group entry goes through ([`crate::groups::commit::commit`]), with a copy for every
//! member (small group) or a live event to every online member (large group), exactly as a
//! member's message. `system` is a member of no group: this file is the only way it writes to
//! one, and it is not reachable by an MQTT client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use mqim_schemas::v1::{reply, ErrorCode, SendRequest};

use crate::conversation::Conversation;
use crate::error::ImError;
use crate::groups::commit::{commit, Planned};
use crate::presence::DeviceLink;
use crate::store::groups::{Copy, GroupAppend, GroupEntry, GroupMessage, GroupOutcome};
use crate::store::SentRecord;
use crate::ImPlugin;

/// The reserved sender of system messages; no client may log in as it.
pub const SYSTEM_SENDER: &str = "system";

/// The connection id of the system sender: connection ids start at 1, so 0 leaves no real
/// device out of a live copy.
const NO_CONNECTION: u64 = 0;

/// A stored system message: the `sent` result of its send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemMessage {
    pub msg_id: u64,
    pub ts: i64,
    /// The message's group seq (0 for a one-to-one message).
    pub group_seq: u64,
}

impl From<SentRecord> for SystemMessage {
    fn from(r: SentRecord) -> Self {
        SystemMessage {
            msg_id: r.msg_id,
            ts: r.ts,
            group_seq: r.group_seq,
        }
    }
}

/// A clientMsgId no admin has to invent: unique on this node (time + counter), so no two
/// system messages are taken for resends of each other.
fn next_client_msg_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("sys-{}-{n}", crate::now_ms())
}

impl ImPlugin {
    /// Sends `text` from [`SYSTEM_SENDER`] to conversation `to` (`u:<user>` or `g:<group>`),
    /// stored and delivered like any message (validation, moderation, ordering).
    ///
    /// To a group: NOT_FOUND for an unknown group, FAILED_PRECONDITION for a disbanded one or
    /// on a store shape without groups.
    pub async fn send_system_message(
        self: &Arc<Self>,
        to: &str,
        text: String,
    ) -> Result<SystemMessage, ImError> {
        match Conversation::parse(to) {
            Some(Conversation::Group(g)) => self.send_system_group_message(g, text).await,
            _ => self.send_system_user_message(to, text).await,
        }
    }

    async fn send_system_user_message(
        self: &Arc<Self>,
        to: &str,
        text: String,
    ) -> Result<SystemMessage, ImError> {
        let req = SendRequest {
            to: to.to_string(),
            client_msg_id: next_client_msg_id(),
            text: Some(text),
            ..SendRequest::default()
        };
        let link: Arc<dyn DeviceLink> = Arc::new(SystemLink);
        match crate::ops::send::start(self, &link, req).await? {
            reply::Result::Sent(s) => Ok(SystemMessage {
                msg_id: s.msg_id,
                ts: s.ts,
                group_seq: s.group_seq,
            }),
            _ => Err(ImError::new(
                ErrorCode::Internal,
                "send returned something other than `sent`",
            )),
        }
    }

    async fn send_system_group_message(
        self: &Arc<Self>,
        group: String,
        text: String,
    ) -> Result<SystemMessage, ImError> {
        if !crate::ops::valid_group_id(&group) {
            return Err(ImError::invalid(
                "`to` must be `u:<user id>` or `g:<group id>`",
            ));
        }
        self.groups.check_enabled()?;
        if text.len() > self.cfg.max_body_bytes {
            return Err(ImError::new(
                ErrorCode::TooLarge,
                format!(
                    "message content is {} bytes; the limit is {}",
                    text.len(),
                    self.cfg.max_body_bytes
                ),
            ));
        }
        // The same checks a member's group send passes, in the same order: rate, then words.
        if !self.send_limit.allow(SYSTEM_SENDER) {
            return Err(ImError::new(
                ErrorCode::RateLimited,
                "too many system messages; slow down",
            ));
        }
        let text = self.moderation.apply_text(Some(text))?;
        let message = GroupMessage {
            from: SYSTEM_SENDER.to_string(),
            client_msg_id: next_client_msg_id(),
            text,
            body: None,
            kind: None,
            mentions: Vec::new(),
            mention_all: false,
        };
        let target = group.clone();
        let committed = commit(self, Some(&target), NO_CONNECTION, move |g, msg_id, ts| {
            let g = g.ok_or_else(|| ImError::invalid("no group"))?;
            // Small group: a copy in every member's stream, unread for all (no member sent
            // it). Large group: stored once in the log; the commit's fan-out tells every
            // online member live, as for a member's message without mentions.
            let copies = match g.meta.large {
                true => Vec::new(),
                false => g
                    .members
                    .keys()
                    .map(|m| Copy {
                        owner: m.clone(),
                        recent: true,
                        unread: true,
                        mention: false,
                    })
                    .collect(),
            };
            Ok(Planned {
                append: GroupAppend {
                    group,
                    msg_id,
                    ts,
                    large: g.meta.large,
                    entry: GroupEntry::Message(message),
                    copies,
                    basis: 0,
                    membership: None,
                },
                after: None,
            })
        });
        // The registry answers PERMISSION_DENIED for a disbanded group: what a member may not
        // do. For the operator it is a state of the group, not a matter of rights.
        let outcome = committed.await.map_err(|e| match e.code {
            ErrorCode::PermissionDenied => ImError::new(
                ErrorCode::FailedPrecondition,
                format!("group {target}: {}", e.message),
            ),
            _ => e,
        })?;
        Ok(match outcome {
            GroupOutcome::Fresh(a) => a.sent.into(),
            GroupOutcome::Duplicate(original) => original.into(),
        })
    }
}

/// The sender of one-to-one system messages: a device that is never connected.
struct SystemLink;

impl DeviceLink for SystemLink {
    fn conn_id(&self) -> u64 {
        NO_CONNECTION
    }
    fn user(&self) -> &str {
        SYSTEM_SENDER
    }
    fn device(&self) -> &str {
        "admin"
    }
    fn is_subscribed(&self, _topic: &str) -> bool {
        false
    }
    fn deliver(&self, _topic: &str, _payload: Bytes) -> bool {
        false
    }
}
