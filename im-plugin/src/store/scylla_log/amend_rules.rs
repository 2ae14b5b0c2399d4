//! What an amend does, with no request made: whose streams hold the message (from its copy
//! map), the checks that refuse it (the embedded log's, in its order), the rewrite of a
//! message, the event each holder gets, and a copy set to what history holds. The requests
//! are in `amends.rs`.

use mqim_schemas::v1::{Edited, Message, Recalled};

use super::groups::GROUP_HISTORY_PEER;
use super::*;
use crate::store::extras::{Amend, AmendKind, AmendOutcome, AmendTarget};
use crate::store::groups::log_owner;

/// The history key of the conversation `t` names: the pair, or the group's (`#g:<g>`, `#`).
pub(super) fn scope(t: &AmendTarget) -> StoreResult<(String, String)> {
    match Conversation::parse(&t.conversation) {
        Some(Conversation::Group(g)) => Ok((log_owner(&g), GROUP_HISTORY_PEER.to_string())),
        Some(Conversation::User(peer)) => {
            let (a, b) = pair(&t.owner, &peer);
            Ok((a.to_string(), b.to_string()))
        }
        None => Err(StoreError::new(format!(
            "an amend in {:?}, which is not a conversation",
            t.conversation
        ))),
    }
}

/// A stream the copy map names for the amend: its owner, how it calls the conversation, and
/// the seq of its copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) owner: String,
    pub(super) conversation: String,
    pub(super) copy_seq: u64,
}

/// The streams holding the message, home first (who they are: `amends.rs`); `None` if the
/// copy map does not name the home stream.
pub(super) fn holders(a: &Amend, copies: &[(String, u64)]) -> Option<Vec<Holder>> {
    let seq_of = |owner: &str| copies.iter().find(|(o, _)| o == owner).map(|(_, s)| *s);
    let mut out = vec![Holder {
        owner: a.home.owner.clone(),
        conversation: a.home.conversation.clone(),
        copy_seq: seq_of(&a.home.owner)?,
    }];
    for t in &a.others {
        if out.iter().any(|h| h.owner == t.owner) {
            continue;
        }
        if let Some(copy_seq) = seq_of(&t.owner) {
            out.push(Holder {
                owner: t.owner.clone(),
                conversation: t.conversation.clone(),
                copy_seq,
            });
        }
    }
    if a.group_log {
        // Mention copies and members who left since: the caller cannot name them.
        for (owner, copy_seq) in copies {
            if !out.iter().any(|h| h.owner == *owner) {
                out.push(Holder {
                    owner: owner.clone(),
                    conversation: a.home.conversation.clone(),
                    copy_seq: *copy_seq,
                });
            }
        }
    }
    Some(out)
}

/// The answer when nothing is to be written: the embedded log's checks, in its order.
pub(super) fn refusal(a: &Amend, m: &Message) -> Option<AmendOutcome> {
    if m.recalled {
        return Some(match a.kind {
            AmendKind::Recall => AmendOutcome::Unchanged {
                edited_at: m.edited_at,
            },
            AmendKind::Edit { .. } => AmendOutcome::Recalled,
        });
    }
    let privileged = a.privileged && a.kind == AmendKind::Recall;
    if !privileged {
        if m.from != a.by {
            return Some(AmendOutcome::NotYours);
        }
        if m.ts < a.not_before_ms {
            return Some(AmendOutcome::TooOld);
        }
    }
    if let AmendKind::Edit { text, body } = &a.kind {
        if m.text == *text && m.body == *body {
            return Some(AmendOutcome::Unchanged {
                edited_at: m.edited_at,
            });
        }
    }
    None
}

/// The event telling `holder`'s owner of the amend, at `seq`.
pub(super) fn amend_event(a: &Amend, conversation: &str, seq: u64, group_seq: u64) -> Event {
    let body = match &a.kind {
        AmendKind::Recall => event::Body::Recalled(Recalled {
            conversation: conversation.to_string(),
            msg_id: a.msg_id,
            by: a.by.clone(),
        }),
        AmendKind::Edit { text, body } => event::Body::Edited(Edited {
            conversation: conversation.to_string(),
            msg_id: a.msg_id,
            text: text.clone(),
            body: body.clone(),
            edited_at: a.ts,
        }),
    };
    Event {
        seq,
        body: Some(body),
        group_seq,
    }
}

/// The copy `after` (an event of `owner` at `seq`) with the content history holds now.
pub(super) fn settled_copy(
    owner: &str,
    seq: i64,
    after: &[u8],
    now: &Message,
) -> StoreResult<Vec<u8>> {
    let mut event = decode_event(owner, seq, after)?;
    let Some(event::Body::Message(m)) = event.body.as_mut() else {
        return Err(StoreError::new("the rewritten copy is not a message"));
    };
    *m = Message {
        conversation: std::mem::take(&mut m.conversation),
        group_seq: m.group_seq,
        ..now.clone()
    };
    Ok(event.encode_to_vec())
}
