//! `typing {conversation, state}`: live only, never stored, no seq. The peer's online devices
//! (in a small group: every other member's) get `{"typing": {conversation, user, state}}`, at
//! most one per user per conversation per `im.typing_interval_ms` (plus the `stop` ending a
//! `start`; more are dropped silently). A blocker never sees a blocked user typing. The
//! caller's reply is `{}` whether or not the event went out, so the rate is not observable.
//! Where nodes share a store, an event let through is also passed to the other nodes
//! ([`NodeNews::Typing`]), each of which delivers it to the recipients connected to it.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use mqim_schemas::v1::{event, reply, Event, Typing, TypingReply, TypingRequest};

use super::{parse_any_conversation, OpFuture};
use crate::conversation::Conversation;
use crate::error::ImError;
use crate::groups::policy;
use crate::presence::DeviceLink;
use crate::store::NodeNews;
use crate::ImPlugin;

pub fn start(plugin: &Arc<ImPlugin>, link: &Arc<dyn DeviceLink>, req: TypingRequest) -> OpFuture {
    let conversation = req.conversation.clone();
    super::with_current_group(plugin, link, &conversation, move |p, l| {
        futures::future::ready(run(p, l.user(), req)).boxed()
    })
}

fn run(plugin: &ImPlugin, me: &str, req: TypingRequest) -> Result<reply::Result, ImError> {
    let start = match req.state.as_str() {
        "start" => true,
        "stop" => false,
        _ => return Err(ImError::invalid("`state` must be \"start\" or \"stop\"")),
    };
    let conversation = parse_any_conversation(&req.conversation)?;
    // Who would see it, decided before the rate is spent.
    let (seen_as, recipients) = recipients(plugin, me, &conversation, &req.conversation)?;
    let every = Duration::from_millis(plugin.cfg.typing_interval_ms);
    if !recipients.is_empty()
        && plugin
            .extras
            .typing
            .allow(me, &req.conversation, start, every)
    {
        deliver(plugin, me, seen_as, &recipients, start);
        // The recipients connected to other nodes get it from theirs.
        plugin.store.announce(NodeNews::Typing {
            from: me.to_string(),
            conversation: req.conversation,
            start,
        });
    }
    Ok(reply::Result::Typing(TypingReply {}))
}

/// Another node let `from`'s typing event in `conversation` through: the recipients connected
/// here get it, as this node's own rules say (blocks, membership).
pub(crate) fn deliver_from_another_node(
    plugin: &ImPlugin,
    from: &str,
    conversation: &str,
    start: bool,
) {
    let Ok(parsed) = parse_any_conversation(conversation) else {
        return;
    };
    if let Ok((seen_as, recipients)) = recipients(plugin, from, &parsed, conversation) {
        deliver(plugin, from, seen_as, &recipients, start);
    }
}

/// How the recipients name the conversation, and who they are: the peer unless they block
/// `me`; a small group's other members but those who block `me`.
fn recipients(
    plugin: &ImPlugin,
    me: &str,
    conversation: &Conversation,
    as_named: &str,
) -> Result<(String, Vec<String>), ImError> {
    Ok(match conversation {
        Conversation::User(peer) => (
            Conversation::with_user(me),
            match peer == me || plugin.extras.blocks(peer, me) {
                true => Vec::new(),
                false => vec![peer.clone()],
            },
        ),
        Conversation::Group(id) => {
            let g = plugin.groups.for_member(id, me)?;
            if g.meta.large {
                return Err(policy::precondition("typing is not shown in large groups"));
            }
            let others = g
                .members
                .keys()
                .filter(|m| *m != me && !plugin.extras.blocks(m, me))
                .cloned()
                .collect();
            (as_named.to_string(), others)
        }
    })
}

/// Queues the event on the recipients' devices connected to this node.
fn deliver(plugin: &ImPlugin, me: &str, seen_as: String, recipients: &[String], start: bool) {
    if recipients.is_empty() {
        return;
    }
    let ev = Event {
        seq: 0,
        body: Some(event::Body::Typing(Typing {
            conversation: seen_as,
            user: me.to_string(),
            state: if start { "start" } else { "stop" }.to_string(),
        })),
        group_seq: 0,
    };
    plugin
        .presence
        .deliver_to_many(recipients.iter().map(String::as_str), ev, None);
}
