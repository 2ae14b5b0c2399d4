//! Live delivery in commit order.
//!
//! Stores apply appends in the order of the calls that enqueue them (the `MessageStore`
//! contract), but the tasks awaiting the commits wake in any order. So each append takes a slot
//! in this FIFO at call time, under the same lock that fixes its msgid; its task fills the slot
//! after the commit; one task drains the FIFO head first. Every device therefore sees a user's
//! events in seq order, and a sender's messages in the order they were sent. A slot whose append
//! failed or was a duplicate is closed empty and skipped.

use std::sync::Arc;

use mqim_schemas::v1::Event;
use tokio::sync::{mpsc, oneshot};

use crate::hooks::Hooks;
use crate::presence::Presence;

/// One event for one user's online devices, except the connection that caused it.
#[derive(Debug)]
pub struct Delivery {
    pub user: String,
    pub event: Event,
    pub exclude_conn: Option<u64>,
}

/// The sending side of a slot: fill it with what the commit produced, or drop it.
pub type Slot = oneshot::Sender<Vec<Delivery>>;

/// The FIFO of slots, in commit order.
#[derive(Clone)]
pub struct DeliveryQueue {
    tx: mpsc::UnboundedSender<oneshot::Receiver<Vec<Delivery>>>,
}

impl DeliveryQueue {
    /// Starts the draining task.
    pub fn start(presence: Arc<Presence>) -> DeliveryQueue {
        Self::start_with_hooks(presence, Arc::default())
    }

    /// Starts the draining task; every delivered event is also reported to `hooks` (after
    /// live delivery, in the same commit order).
    pub fn start_with_hooks(presence: Arc<Presence>, hooks: Arc<Hooks>) -> DeliveryQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Receiver<Vec<Delivery>>>();
        tokio::spawn(async move {
            while let Some(slot) = rx.recv().await {
                if let Ok(deliveries) = slot.await {
                    for d in deliveries {
                        hooks.event_committed(&d.user, &d.event);
                        let sent_at = match &d.event.body {
                            Some(mqim_schemas::v1::event::Body::Message(m)) => Some(m.ts),
                            _ => None,
                        };
                        let n = presence.deliver(&d.user, d.event, d.exclude_conn);
                        if let Some(o) = hooks.observer() {
                            o.delivered(sent_at, n);
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
