//! Live delivery in commit order.
//!
//! Stores apply appends in the order of the calls that enqueue them (the `MessageStore`
//! contract), but the tasks awaiting the commits wake in any order. So each append takes a slot
//! in this FIFO at call time, under the same lock that fixes its msgid; its task fills the slot
//! after the commit; one task drains the FIFO head first. Every device therefore sees a user's
//! events in seq order, and a sender's messages in the order they were sent. A slot whose append
//! failed or was a duplicate is closed empty and skipped.
//!
//! A large group's entry is one event for up to 100,000 members: the drain task hands it to a
//! fan-out worker of its own (in commit order, through a bounded queue), so a big fan-out never
//! holds up anyone else's delivery. Each member's outbox bounds what one slow member can cost;
//! should fan-outs ever queue up beyond the queue, the live copies are dropped (counted and
//! logged): members see the gap in `groupSeq` and fetch it with `groupSync`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqim_schemas::v1::Event;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::hooks::Hooks;
use crate::presence::Presence;
use crate::store::groups::GroupRecord;

/// One event for one user's online devices, except the connection that caused it.
#[derive(Debug)]
pub struct Delivery {
    pub user: String,
    pub event: Event,
    pub exclude_conn: Option<u64>,
}

/// One event for every member of a large group online on this node (no stream seq).
#[derive(Debug)]
pub struct FanOut {
    pub members: Arc<GroupRecord>,
    /// Members that got the entry in their stream already (mentions, concerned members).
    pub skip: std::collections::HashSet<String>,
    pub event: Event,
    pub exclude_conn: Option<u64>,
}

/// What one commit delivers.
#[derive(Debug, Default)]
pub struct Batch {
    pub each: Vec<Delivery>,
    pub fan_out: Option<FanOut>,
}

impl From<Vec<Delivery>> for Batch {
    fn from(each: Vec<Delivery>) -> Self {
        Batch {
            each,
            fan_out: None,
        }
    }
}

/// The acceptance time of a message event (for the send-to-deliver histogram).
fn message_ts(event: &Event) -> Option<i64> {
    match &event.body {
        Some(mqim_schemas::v1::event::Body::Message(m)) => Some(m.ts),
        _ => None,
    }
}

/// The sending side of a slot: fill it with what the commit produced, or drop it.
pub type Slot = oneshot::Sender<Batch>;

/// Fan-outs waiting for the worker beyond which their live copies are dropped.
const FAN_OUT_QUEUE: usize = 1024;

/// Live copies of large-group entries dropped because fan-outs queued up.
pub static FAN_OUTS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// The FIFO of slots, in commit order.
#[derive(Clone)]
pub struct DeliveryQueue {
    tx: mpsc::UnboundedSender<oneshot::Receiver<Batch>>,
}

impl DeliveryQueue {
    /// Starts the draining task.
    pub fn start(presence: Arc<Presence>) -> DeliveryQueue {
        Self::start_with_hooks(presence, Arc::default())
    }

    /// Starts the draining task; every delivered stream event is also reported to `hooks`
    /// (after live delivery, in the same commit order).
    pub fn start_with_hooks(presence: Arc<Presence>, hooks: Arc<Hooks>) -> DeliveryQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Receiver<Batch>>();
        let (fan_tx, mut fan_rx) = mpsc::channel::<FanOut>(FAN_OUT_QUEUE);
        let fan_presence = presence.clone();
        let fan_hooks = hooks.clone();
        tokio::spawn(async move {
            while let Some(f) = fan_rx.recv().await {
                let sent_at = message_ts(&f.event);
                let members = f
                    .members
                    .members
                    .keys()
                    .map(String::as_str)
                    .filter(|m| !f.skip.contains(*m));
                let n = fan_presence.deliver_to_many(members, f.event, f.exclude_conn);
                if let Some(o) = fan_hooks.observer() {
                    o.delivered(sent_at, n);
                }
            }
        });
        tokio::spawn(async move {
            while let Some(slot) = rx.recv().await {
                let Ok(batch) = slot.await else { continue };
                for d in batch.each {
                    hooks.event_committed(&d.user, &d.event);
                    let sent_at = message_ts(&d.event);
                    let n = presence.deliver(&d.user, d.event, d.exclude_conn);
                    if let Some(o) = hooks.observer() {
                        o.delivered(sent_at, n);
                    }
                }
                if let Some(f) = batch.fan_out {
                    if fan_tx.try_send(f).is_err() {
                        let n = FAN_OUTS_DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            warn!(dropped = n, "large-group fan-outs queued up; live copies dropped (members catch up with groupSync)");
                        }
                    }
                }
            }
        });
        DeliveryQueue { tx }
    }

    /// Takes the next slot. Call it where the store order is fixed (under the order lock).
    /// The queue holds at most one slot per append in flight, which the store bounds.
    pub fn reserve(&self) -> Slot {
        let (slot, rx) = oneshot::channel();
        // If the drain task is gone the runtime is shutting down; dropping the slot is fine.
        let _ = self.tx.send(rx);
        slot
    }
}
