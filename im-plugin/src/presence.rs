//! Which devices of which users are online on this node, and live delivery to them.
//!
//! Live delivery is ordered per user: events are handed over in seq order even when the sends
//! that produced them complete on different tasks. An event that arrives ahead of a missing
//! lower seq waits (bounded) until the gap fills; the gap always fills because every committed
//! event is delivered by a task that runs to completion. If the bound is hit, what waits is
//! flushed in order and the device's own gap detection (`sync`) covers the rest.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use bytes::Bytes;
use mqim_schemas::v1::Event;
use parking_lot::Mutex;

use crate::topics::{downlink, Format};
use crate::wire;

/// A connected device, as the IM layer sees it. Implemented by the connection layer.
pub trait DeviceLink: Send + Sync + 'static {
    /// Unique per connection for the life of the process.
    fn conn_id(&self) -> u64;
    fn user(&self) -> &str;
    fn device(&self) -> &str;
    /// True if the device subscribed to this (its own downlink) topic.
    fn is_subscribed(&self, topic: &str) -> bool;
    /// Queues a publish on `topic` if subscribed; false if not delivered.
    fn deliver(&self, topic: &str, payload: Bytes) -> bool;
}

/// Events parked while an earlier seq of the same user is still on its way.
const MAX_PARKED: usize = 256;
const SHARDS: usize = 64;

#[derive(Default)]
struct UserEntry {
    devices: Vec<Arc<dyn DeviceLink>>,
    /// The seq expected next for live delivery; 0 = unknown (deliver whatever comes first).
    next_seq: u64,
    parked: BTreeMap<u64, (Event, Option<u64>)>,
}

/// The online-device registry, sharded to keep lock contention low.
pub struct Presence {
    shards: Vec<Mutex<HashMap<String, UserEntry>>>,
    hasher: RandomState,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Presence {
    fn shard(&self, user: &str) -> &Mutex<HashMap<String, UserEntry>> {
        let i = (self.hasher.hash_one(user) as usize) % SHARDS;
        &self.shards[i]
    }

    pub fn add(&self, link: Arc<dyn DeviceLink>) {
        let mut shard = self.shard(link.user()).lock();
        shard
            .entry(link.user().to_string())
            .or_default()
            .devices
            .push(link);
    }

    pub fn remove(&self, user: &str, conn_id: u64) {
        let mut shard = self.shard(user).lock();
        if let Some(e) = shard.get_mut(user) {
            e.devices.retain(|d| d.conn_id() != conn_id);
            if e.devices.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Number of online devices of `user` on this node.
    pub fn devices_of(&self, user: &str) -> usize {
        self.shard(user)
            .lock()
            .get(user)
            .map_or(0, |e| e.devices.len())
    }

    /// Delivers `event` of `user`'s stream to every online device of the user except
    /// `exclude_conn`, in seq order.
    pub fn deliver(&self, user: &str, event: Event, exclude_conn: Option<u64>) {
        let mut shard = self.shard(user).lock();
        let Some(e) = shard.get_mut(user) else {
            return;
        };
        if e.next_seq != 0 && event.seq > e.next_seq {
            e.parked.insert(event.seq, (event, exclude_conn));
            if e.parked.len() > MAX_PARKED {
                let parked = std::mem::take(&mut e.parked);
                for (_, (ev, ex)) in parked {
                    e.next_seq = ev.seq + 1;
                    send_to_devices(user, &e.devices, ev, ex);
                }
            }
            return;
        }
        if event.seq >= e.next_seq {
            e.next_seq = event.seq + 1;
        }
        send_to_devices(user, &e.devices, event, exclude_conn);
        while let Some(entry) = e.parked.first_entry() {
            if *entry.key() != e.next_seq {
                break;
            }
            let (ev, ex) = entry.remove();
            e.next_seq = ev.seq + 1;
            send_to_devices(user, &e.devices, ev, ex);
        }
    }
}

fn send_to_devices(
    user: &str,
    devices: &[Arc<dyn DeviceLink>],
    event: Event,
    exclude: Option<u64>,
) {
    let downlink_msg = wire::event(event);
    let mut encoded: [Option<Bytes>; 2] = [None, None];
    for d in devices {
        if Some(d.conn_id()) == exclude {
            continue;
        }
        for (i, format) in [Format::Json, Format::Pb].into_iter().enumerate() {
            let topic = downlink(user, d.device(), format);
            if d.is_subscribed(&topic) {
                let payload = encoded[i]
                    .get_or_insert_with(|| wire::encode(format, &downlink_msg))
                    .clone();
                d.deliver(&topic, payload);
            }
        }
    }
}
