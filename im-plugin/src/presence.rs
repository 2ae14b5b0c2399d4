//! Which devices of which users are online on this node, and live delivery to them.
//!
//! It does not order anything: callers hand it events in seq order (see `delivery.rs`).

use std::collections::HashMap;
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
    /// Queues a live-only event (no stream seq: a large group's live copy, typing, presence),
    /// which needs no acknowledgement: the connection layer sends it at QoS 0. A device that
    /// misses one catches up from the group's log (`groupSync`, by `groupSeq`) or not at all
    /// (typing, presence are momentary).
    fn deliver_live(&self, topic: &str, payload: Bytes) -> bool {
        self.deliver(topic, payload)
    }
}

const SHARDS: usize = 64;

#[derive(Default)]
struct UserEntry {
    devices: Vec<Arc<dyn DeviceLink>>,
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
        let devices = &mut shard.entry(link.user().to_string()).or_default().devices;
        // Typically one or two devices per user: grow one at a time, not by four.
        devices.reserve_exact(1);
        devices.push(link);
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

    /// Is `device` of `user` connected to this node?
    pub fn is_online(&self, user: &str, device: &str) -> bool {
        self.shard(user)
            .lock()
            .get(user)
            .is_some_and(|e| e.devices.iter().any(|d| d.device() == device))
    }

    /// Delivers `event` of `user`'s stream to every online device of the user except
    /// `exclude_conn`. Returns to how many devices it was queued.
    pub fn deliver(&self, user: &str, event: Event, exclude_conn: Option<u64>) -> usize {
        let shard = self.shard(user).lock();
        match shard.get(user) {
            Some(e) => send_to_devices(user, &e.devices, event, exclude_conn),
            None => 0,
        }
    }

    /// The devices of `user` online on this node: (device id, connection id).
    pub fn devices(&self, user: &str) -> Vec<(String, u64)> {
        self.shard(user)
            .lock()
            .get(user)
            .map_or_else(Vec::new, |e| {
                e.devices
                    .iter()
                    .map(|d| (d.device().to_string(), d.conn_id()))
                    .collect()
            })
    }
}

impl Presence {
    /// Delivers one live-only event that is the same for every recipient (a large group's live
    /// copy, typing: no stream seq) to the online devices of each of `users`, encoding it once
    /// per format, through [`DeviceLink::deliver_live`].
    /// Returns to how many downlinks it was queued.
    pub fn deliver_to_many<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
        event: Event,
        exclude_conn: Option<u64>,
    ) -> usize {
        let downlink_msg = wire::event(event);
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        let mut queued = 0;
        for user in users {
            let shard = self.shard(user).lock();
            if let Some(e) = shard.get(user) {
                queued += send_encoded(
                    user,
                    &e.devices,
                    &downlink_msg,
                    &mut encoded,
                    exclude_conn,
                    true,
                );
            }
        }
        queued
    }
}

fn send_to_devices(
    user: &str,
    devices: &[Arc<dyn DeviceLink>],
    event: Event,
    exclude: Option<u64>,
) -> usize {
    let downlink_msg = wire::event(event);
    let mut encoded: [Option<Bytes>; 2] = [None, None];
    send_encoded(user, devices, &downlink_msg, &mut encoded, exclude, false)
}

/// Queues `downlink_msg` on each subscribed downlink of `devices` but `exclude`, encoding it at
/// most once per format (`live`: as a live-only event); returns to how many downlinks it was
/// queued.
fn send_encoded(
    user: &str,
    devices: &[Arc<dyn DeviceLink>],
    downlink_msg: &mqim_schemas::v1::Downlink,
    encoded: &mut [Option<Bytes>; 2],
    exclude: Option<u64>,
    live: bool,
) -> usize {
    let mut queued = 0;
    for d in devices {
        if Some(d.conn_id()) == exclude {
            continue;
        }
        for (i, format) in [Format::Json, Format::Pb].into_iter().enumerate() {
            let topic = downlink(user, d.device(), format);
            if d.is_subscribed(&topic) {
                let payload = encoded[i]
                    .get_or_insert_with(|| wire::encode(format, downlink_msg))
                    .clone();
                let delivered = match live {
                    true => d.deliver_live(&topic, payload),
                    false => d.deliver(&topic, payload),
                };
                if delivered {
                    queued += 1;
                }
            }
        }
    }
    queued
}
