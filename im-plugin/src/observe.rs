//! Observation: how the broker learns what the IM layer did (requests answered, events handed to
//! live delivery), for its metrics, without the IM domain depending on a metrics library.
//!
//! The broker registers one [`Observer`] at start-up ([`crate::ImPlugin::set_observer`]). Calls
//! happen on the send path: an observer only counts (atomics), never locks for long or awaits.

use std::time::Duration;

use mqim_schemas::v1::request::Op;
use mqim_schemas::v1::ErrorCode;

/// What the broker's metrics see of the IM layer.
pub trait Observer: Send + Sync + 'static {
    /// Request `op` (its JSON name, from [`op_name`]) was answered after `elapsed`: `None` for a
    /// result, the error code otherwise.
    fn request(&self, op: &'static str, error: Option<ErrorCode>, elapsed: Duration);

    /// An event was queued to `devices` online devices of its stream's owner; `sent_at_ms` is
    /// the acceptance time (Unix ms) when the event is a message.
    fn delivered(&self, sent_at_ms: Option<i64>, devices: usize);
}

/// The JSON name of a request's operation, as in `schemas::REQUEST_OPS`. Exhaustive on purpose:
/// a new operation does not compile until it has a name here (a test checks the names).
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Send(_) => "send",
        Op::Sync(_) => "sync",
        Op::Ack(_) => "ack",
        Op::Conversations(_) => "conversations",
        Op::Read(_) => "read",
        Op::History(_) => "history",
        Op::GroupCreate(_) => "groupCreate",
        Op::GroupInfo(_) => "groupInfo",
        Op::GroupMembers(_) => "groupMembers",
        Op::GroupAdd(_) => "groupAdd",
        Op::GroupRemove(_) => "groupRemove",
        Op::GroupLeave(_) => "groupLeave",
        Op::GroupUpdate(_) => "groupUpdate",
        Op::GroupRole(_) => "groupRole",
        Op::GroupTransfer(_) => "groupTransfer",
        Op::GroupDisband(_) => "groupDisband",
        Op::GroupSync(_) => "groupSync",
        Op::PushRegister(_) => "pushRegister",
        Op::PushUnregister(_) => "pushUnregister",
        Op::Mute(_) => "mute",
        Op::Unmute(_) => "unmute",
        Op::Recall(_) => "recall",
        Op::Edit(_) => "edit",
        Op::Typing(_) => "typing",
        Op::Presence(_) => "presence",
        Op::PresenceWatch(_) => "presenceWatch",
        Op::Settings(_) => "settings",
        Op::Block(_) => "block",
        Op::Unblock(_) => "unblock",
        Op::Blocked(_) => "blocked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqim_schemas::v1::*;

    #[test]
    fn every_op_name_is_a_schema_op_name() {
        let ops = [
            Op::Send(SendRequest::default()),
            Op::Sync(SyncRequest::default()),
            Op::Ack(AckRequest::default()),
            Op::Conversations(ConversationsRequest::default()),
            Op::Read(ReadRequest::default()),
            Op::History(HistoryRequest::default()),
            Op::GroupCreate(GroupCreateRequest::default()),
            Op::GroupInfo(GroupInfoRequest::default()),
            Op::GroupMembers(GroupMembersRequest::default()),
            Op::GroupAdd(GroupAddRequest::default()),
            Op::GroupRemove(GroupRemoveRequest::default()),
            Op::GroupLeave(GroupLeaveRequest::default()),
            Op::GroupUpdate(GroupUpdateRequest::default()),
            Op::GroupRole(GroupRoleRequest::default()),
            Op::GroupTransfer(GroupTransferRequest::default()),
            Op::GroupDisband(GroupDisbandRequest::default()),
            Op::GroupSync(GroupSyncRequest::default()),
            Op::PushRegister(PushRegisterRequest::default()),
            Op::PushUnregister(PushUnregisterRequest::default()),
            Op::Mute(MuteRequest::default()),
            Op::Unmute(UnmuteRequest::default()),
            Op::Recall(RecallRequest::default()),
            Op::Edit(EditRequest::default()),
            Op::Typing(TypingRequest::default()),
            Op::Presence(PresenceRequest::default()),
            Op::PresenceWatch(PresenceWatchRequest::default()),
            Op::Settings(SettingsRequest::default()),
            Op::Block(BlockRequest::default()),
            Op::Unblock(UnblockRequest::default()),
            Op::Blocked(BlockedRequest::default()),
        ];
        let names: Vec<_> = ops.iter().map(op_name).collect();
        assert_eq!(names, mqim_schemas::REQUEST_OPS);
    }
}
