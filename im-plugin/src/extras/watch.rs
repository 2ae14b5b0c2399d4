//! Presence watches: which connection watches whose presence, and the debounced announcements.
//!
//! When a watched user's last device on this node goes offline, or their first comes online, or
//! another node says one of their devices did ([`crate::store::NodeNews::Presence`]), an
//! announcement is scheduled `debounce` later; it reads the user's state then (devices on this
//! node, and on every node where the store shares presence) and tells the watchers only if it
//! differs from the last one announced, so a flapping phone costs at most one event per debounce
//! interval, wherever it connects. A watch ends with its connection. Hidden users and blocked
//! pairs are never announced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mqim_schemas::v1::{event, Event, PresenceEntry};
use parking_lot::Mutex;

use crate::presence::DeviceLink;
use crate::topics::{downlink, Format};
use crate::{wire, ImPlugin};

/// Most users one connection may watch.
pub const MAX_WATCH: usize = 100;
/// Most connections with a watch list on this node.
pub const MAX_WATCHING_CONNS: usize = 100_000;

#[derive(Default)]
struct State {
    /// watched user -> connection id -> the watching connection.
    by_target: HashMap<String, HashMap<u64, Arc<dyn DeviceLink>>>,
    /// connection id -> the users it watches.
    by_conn: HashMap<u64, Vec<String>>,
    /// watched user -> the online state last announced (or reported at the watch).
    announced: HashMap<String, bool>,
    /// Watched users with an announcement scheduled.
    pending: HashSet<String>,
}

/// Every presence watch of this node.
pub struct Watchers {
    debounce: Duration,
    state: Mutex<State>,
}

impl Watchers {
    pub fn new(debounce: Duration) -> Watchers {
        Watchers {
            debounce,
            state: Mutex::default(),
        }
    }

    /// Replaces `link`'s watch list with `users` (at most [`MAX_WATCH`], checked by the caller),
    /// each with the state the caller just reported to it. False if the node's table is full.
    pub fn set(&self, link: &Arc<dyn DeviceLink>, users: Vec<(String, bool)>) -> bool {
        let mut s = self.state.lock();
        let conn = link.conn_id();
        if !s.by_conn.contains_key(&conn) && s.by_conn.len() >= MAX_WATCHING_CONNS {
            return false;
        }
        remove_conn(&mut s, conn);
        if users.is_empty() {
            return true;
        }
        for (user, online) in &users {
            s.by_target
                .entry(user.clone())
                .or_default()
                .insert(conn, link.clone());
            s.announced.entry(user.clone()).or_insert(*online);
        }
        s.by_conn
            .insert(conn, users.into_iter().map(|(u, _)| u).collect());
        true
    }

    /// The connection closed: its watches end.
    pub fn connection_closed(&self, conn: u64) {
        let mut s = self.state.lock();
        if s.by_conn.contains_key(&conn) {
            remove_conn(&mut s, conn);
        }
    }

    /// `user`'s online state may have changed (on this node, or another node said so):
    /// schedules an announcement if anyone watches them and none is scheduled.
    pub fn changed(&self, plugin: &Arc<ImPlugin>, user: &str) {
        {
            let mut s = self.state.lock();
            if !s.by_target.contains_key(user) || !s.pending.insert(user.to_string()) {
                return;
            }
        }
        let (plugin, user, wait) = (plugin.clone(), user.to_string(), self.debounce);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            plugin.extras.watch.announce(&plugin, &user).await;
        });
    }

    /// Any watched user's state may have changed (news from other nodes may have been missed):
    /// one task announces every watched user without an announcement scheduled, one at a time.
    pub fn resync(&self, plugin: &Arc<ImPlugin>) {
        let users: Vec<String> = {
            let mut s = self.state.lock();
            let users: Vec<String> = s
                .by_target
                .keys()
                .filter(|u| !s.pending.contains(*u))
                .cloned()
                .collect();
            s.pending.extend(users.iter().cloned());
            users
        };
        if users.is_empty() {
            return;
        }
        let (plugin, wait) = (plugin.clone(), self.debounce);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            for user in users {
                plugin.extras.watch.announce(&plugin, &user).await;
            }
        });
    }

    /// Tells `user`'s watchers their state if it is not the one last announced. Online means a
    /// device on this node or, where nodes share presence, on any node; if that cannot be read
    /// now, nothing is announced (the next change or resync will).
    async fn announce(&self, plugin: &ImPlugin, user: &str) {
        // A change from now on schedules another announcement.
        if !self.state.lock().pending.remove(user) {
            return;
        }
        let online = match plugin.presence.devices_of(user) > 0 {
            true => true,
            false => match plugin.store.online_devices(user).await {
                Ok(devices) => devices.is_some_and(|d| !d.is_empty()),
                Err(e) => {
                    tracing::debug!(user, error = %e, "presence not announced");
                    return;
                }
            },
        };
        let watchers: Vec<Arc<dyn DeviceLink>> = {
            let mut s = self.state.lock();
            let Some(w) = s.by_target.get(user) else {
                return;
            };
            let w = w.values().cloned().collect();
            if s.announced.insert(user.to_string(), online) == Some(online) {
                return;
            }
            w
        };
        if !plugin.extras.presence_visible(user) {
            return;
        }
        let last_seen = match online {
            true => 0,
            false => plugin
                .extras
                .last_seen_anywhere(&plugin.store, user)
                .await
                .unwrap_or_else(|_| plugin.extras.last_seen(user)),
        };
        let entry = PresenceEntry {
            user: user.to_string(),
            online,
            last_seen,
            error: None,
        };
        let d = wire::event(Event {
            seq: 0,
            body: Some(event::Body::Presence(entry)),
            group_seq: 0,
        });
        for link in watchers {
            if plugin.extras.either_blocks(link.user(), user) {
                continue;
            }
            deliver_to_link(&link, &d);
        }
    }
}

fn remove_conn(s: &mut State, conn: u64) {
    for user in s.by_conn.remove(&conn).unwrap_or_default() {
        if let Some(w) = s.by_target.get_mut(&user) {
            w.remove(&conn);
            if w.is_empty() {
                s.by_target.remove(&user);
                s.announced.remove(&user);
            }
        }
    }
}

/// Queues a live downlink on each downlink `link` subscribed to (events without a seq that
/// concern one connection only).
pub(crate) fn deliver_to_link(link: &Arc<dyn DeviceLink>, d: &mqim_schemas::v1::Downlink) {
    for format in [Format::Json, Format::Pb] {
        let topic = downlink(link.user(), link.device(), format);
        if link.is_subscribed(&topic) {
            link.deliver_live(&topic, wire::encode(format, d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Link(u64);

    impl DeviceLink for Link {
        fn conn_id(&self) -> u64 {
            self.0
        }
        fn user(&self) -> &str {
            "alice"
        }
        fn device(&self) -> &str {
            "phone"
        }
        fn is_subscribed(&self, _topic: &str) -> bool {
            false
        }
        fn deliver(&self, _topic: &str, _payload: bytes::Bytes) -> bool {
            false
        }
    }

    fn sizes(w: &Watchers) -> (usize, usize, usize) {
        let s = w.state.lock();
        (s.by_target.len(), s.by_conn.len(), s.announced.len())
    }

    #[test]
    fn a_new_list_replaces_the_old_and_a_closed_connection_leaves_nothing_behind() {
        let w = Watchers::new(Duration::from_secs(5));
        let link: Arc<dyn DeviceLink> = Arc::new(Link(1));
        assert!(w.set(&link, vec![("bob".into(), true), ("carol".into(), false)]));
        assert_eq!(sizes(&w), (2, 1, 2));
        assert!(w.set(&link, vec![("dave".into(), true)]));
        assert_eq!(sizes(&w), (1, 1, 1));
        w.connection_closed(1);
        assert_eq!(sizes(&w), (0, 0, 0));
    }

    #[test]
    fn the_node_refuses_watch_lists_beyond_its_bound() {
        let w = Watchers::new(Duration::from_secs(5));
        for conn in 0..MAX_WATCHING_CONNS as u64 {
            let link: Arc<dyn DeviceLink> = Arc::new(Link(conn));
            assert!(w.set(&link, vec![("bob".into(), true)]));
        }
        let one_more: Arc<dyn DeviceLink> = Arc::new(Link(u64::MAX));
        assert!(!w.set(&one_more, vec![("bob".into(), true)]));
        // A connection already watching may still change its list.
        let first: Arc<dyn DeviceLink> = Arc::new(Link(0));
        assert!(w.set(&first, vec![("carol".into(), true)]));
    }
}
