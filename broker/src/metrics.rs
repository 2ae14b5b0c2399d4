//! Process-wide counters of events that are logged once and counted after that, so abuse cannot
//! flood the log. Read with [`snapshot`]; the server logs them when they change.

use std::sync::atomic::{AtomicU64, Ordering};

/// Deliveries refused because a client's outbox was full.
pub static OUTBOX_OVERFLOWS: AtomicU64 = AtomicU64::new(0);
/// QoS 1/2 messages dropped from full offline queues of persistent sessions.
pub static OFFLINE_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Connections closed for a malformed packet or a protocol error.
pub static PROTOCOL_ERRORS: AtomicU64 = AtomicU64::new(0);

/// (outbox overflows, offline drops, protocol errors).
pub fn snapshot() -> (u64, u64, u64) {
    (
        OUTBOX_OVERFLOWS.load(Ordering::Relaxed),
        OFFLINE_DROPPED.load(Ordering::Relaxed),
        PROTOCOL_ERRORS.load(Ordering::Relaxed),
    )
}
