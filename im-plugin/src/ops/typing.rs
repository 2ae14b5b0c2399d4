//! `typing {conversation, state}`: live only, never stored, no seq. The peer's online devices
//! (in a small group: every other member's) get `{"typing": {conversation, user, state}}`, at
//! most one per user per conversation per `im.typing_interval_ms` (plus the `stop` ending a
//! `start`; more are dropped silently). A blocker never sees a blocked user typing. The
//! caller's reply is `{}` whether or not the event went out, so the rate is not observable.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use mqim_schemas::v1::{event, reply, Event, Typing, TypingReply, TypingRequest};

use super::{parse_any_conversation, OpFuture};
use crate::conversation::Conversation;
use crate::error::ImError;
use crate::groups::policy;
use crate::presence::DeviceLink;
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
    let (seen_as, recipients) = match &conversation {
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
            (req.conversation.clone(), others)
        }
    };
    let every = Duration::from_millis(plugin.cfg.typing_interval_ms);
    if !recipients.is_empty()
        && plugin
            .extras
            .typing
            .allow(me, &req.conversation, start, every)
    {
        let ev = Event {
            seq: 0,
            body: Some(event::Body::Typing(Typing {
                conversation: seen_as,
                user: me.to_string(),
                state: req.state,
            })),
            group_seq: 0,
        };
        plugin
            .presence
            .deliver_to_many(recipients.iter().map(String::as_str), ev, None);
    }
    Ok(reply::Result::Typing(TypingReply {}))
}
