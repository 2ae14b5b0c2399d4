//! The general-topic router: everything outside the claimed (IM) tree, with MQTT 3.1.1 / 5.0
//! semantics. mqim's own (rumqttd's router was replaced: see the README, "Architecture").
//!
//! It owns the subscription index, the retained store and the general-topic state of every
//! session that has any: its subscriptions and, while a persistent session is offline, its
//! bounded queue of QoS 1/2 messages. A connection that never subscribes to a general topic has
//! no state here (IM devices pay nothing). It never sees claimed traffic and knows nothing of the
//! ACL or of sockets: it hands [`Outbound`] messages to a live [`Session`]'s outbox.
//!
//! Files: `mod.rs` messages, sessions and the routing rules; `trie.rs` the subscription index;
//! `retained.rs` the retained store; `persist.rs` the state file that outlives a restart.
//!
//! Locks: the trie (read for publish, write for (un)subscribe), then one session's state, then
//! that session's outbox. Nothing takes the trie while holding a session's state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tracing::{debug, info};

use crate::codec::{Properties, QoS, RetainHandling, SubOptions};
use crate::session::{Delivery, Principal, Session};

mod persist;
mod retained;
mod trie;

pub(crate) use retained::topic_matches;
pub(crate) use trie::split_share;
use trie::{Sub, Trie};

/// Bumped by every change worth persisting, so the state file is rewritten only when needed.
static CHANGES: AtomicU64 = AtomicU64::new(0);

fn changed() {
    CHANGES.fetch_add(1, Ordering::Relaxed);
}

/// The change counter (see [`Router::snapshot`]).
pub fn changes() -> u64 {
    CHANGES.load(Ordering::Relaxed)
}

/// Deepest topic name or filter accepted, in levels: deeper ones are refused before they are
/// stored or matched, so nothing ever walks 65,000 levels.
pub const MAX_LEVELS: usize = 128;

/// A published message, shared by every delivery of it.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// The publisher's QoS.
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties as published, without topic alias and subscription identifiers.
    pub props: Option<Box<Properties>>,
    /// When the message expiry interval runs out.
    pub expires: Option<Instant>,
    /// Router session id of the publisher (for No Local); 0 if it has none.
    pub origin: u64,
}

impl Message {
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|e| e <= Instant::now())
    }
}

/// One delivery of a message to one session.
#[derive(Debug)]
pub struct Outbound {
    pub msg: Arc<Message>,
    /// min(publisher's QoS, the best matching subscription's).
    pub qos: QoS,
    pub retain: bool,
    /// A re-send of an unacknowledged delivery after the session resumed.
    pub dup: bool,
    /// The packet id it had before the session resumed (0: allocate one).
    pub pkid: u16,
    /// Identifiers of the matching subscriptions that have one.
    pub sub_ids: Vec<usize>,
}

/// Router settings.
#[derive(Clone, Debug)]
pub struct RouterSettings {
    /// QoS 1/2 messages kept for an offline persistent session; past it the oldest is dropped.
    pub max_queued: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
}

/// The general-topic state of one MQTT session (user + client id), live or offline.
pub struct RSession {
    /// Unique for the life of the process; never 0.
    pub id: u64,
    key: Principal,
    state: Mutex<RState>,
}

struct RState {
    live: Option<Arc<Session>>,
    subs: HashMap<String, (SubOptions, Option<usize>)>,
    queue: VecDeque<Box<Outbound>>,
    dropped: u64,
    /// How long it outlives its connection; set when the connection ends.
    expiry: Duration,
    offline_since: Option<Instant>,
    /// Bumped at every resume, so a delayed will knows its session came back.
    generation: u64,
    /// Discarded: no longer in the table or the trie.
    gone: bool,
}

impl std::fmt::Debug for RSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSession({}, {:?})", self.id, self.key)
    }
}

impl RSession {
    /// Hands `out` to the live connection, or queues it (QoS 1/2) while offline.
    fn deliver(&self, out: Box<Outbound>, max_queued: usize) {
        let mut st = self.state.lock();
        if st.gone {
            return;
        }
        if let Some(live) = st.live.as_ref().filter(|l| !l.is_closed()) {
            // A full outbox closes the connection (slow consumer); the message is lost like
            // any other in that outbox.
            live.push(Delivery::General(out));
            return;
        }
        if out.qos == QoS::AtMostOnce {
            return;
        }
        changed();
        if st.queue.len() >= max_queued {
            st.queue.pop_front();
            st.dropped += 1;
            if st.dropped == 1 {
                info!(client_id = %self.key.client_id,
                    "offline queue full: dropping the oldest messages (counted, logged once)");
            }
            crate::metrics::OFFLINE_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        st.queue.push_back(out);
    }

    /// The session expiry the connection asked for (kept when the state is saved).
    pub fn set_expiry(&self, secs: u32) {
        self.state.lock().expiry = Duration::from_secs(u64::from(secs));
        changed();
    }

    /// Times the session was resumed.
    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    fn is_live(&self) -> bool {
        self.state.lock().live.is_some()
    }
}

/// The router. One per server.
pub struct Router {
    trie: RwLock<Trie>,
    retained: retained::Retained,
    sessions: Mutex<HashMap<Principal, Arc<RSession>>>,
    next_id: AtomicU64,
    settings: RouterSettings,
}

impl Router {
    pub fn new(settings: RouterSettings) -> Router {
        Router {
            trie: RwLock::new(Trie::default()),
            retained: retained::Retained::default(),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            settings,
        }
    }

    /// Routes `msg` to every matching subscription; returns how many sessions it reached.
    pub fn publish(&self, msg: Message) -> usize {
        let msg = Arc::new(msg);
        if msg.retain {
            self.retained.set(&msg);
            changed();
        }
        // Per session: the best QoS over its matching subscriptions, their ids, and whether
        // any wants the RETAIN flag kept (MQTT-3.3.1-12/13, 3.3.4-2/3).
        let mut targets: Vec<(Arc<RSession>, QoS, bool, Vec<usize>)> = Vec::new();
        let mut groups = Vec::new();
        let trie = self.trie.read();
        trie.matches(
            &msg.topic,
            |s| {
                if s.opts.no_local && s.session.id == msg.origin {
                    return; // MQTT-3.8.3-3
                }
                let qos = msg.qos.min(s.opts.qos);
                let retain = msg.retain && s.opts.retain_as_published;
                targets.push((s.session.clone(), qos, retain, s.id.into_iter().collect()));
            },
            |g| groups.push(g),
        );
        // Merge the matches of one session (sorted by session: O(n log n) for any fan-out).
        if targets.len() > 1 {
            targets.sort_by_key(|t| t.0.id);
            let mut merged: Vec<(Arc<RSession>, QoS, bool, Vec<usize>)> =
                Vec::with_capacity(targets.len());
            for t in targets.drain(..) {
                match merged.last_mut() {
                    Some(m) if m.0.id == t.0.id => {
                        m.1 = m.1.max(t.1);
                        m.2 |= t.2;
                        m.3.extend(t.3);
                    }
                    _ => merged.push(t),
                }
            }
            targets = merged;
        }
        for g in groups {
            // One member per group gets it: the next live one, else the next one (an offline
            // persistent member queues it).
            let n = g.members.len();
            if n == 0 {
                continue;
            }
            let start = g.start();
            let pick = (0..n)
                .map(|k| &g.members[(start + k) % n])
                .find(|m| m.session.is_live())
                .unwrap_or(&g.members[start]);
            targets.push((
                pick.session.clone(),
                msg.qos.min(pick.opts.qos),
                msg.retain && pick.opts.retain_as_published,
                pick.id.into_iter().collect(),
            ));
        }
        drop(trie);
        let reached = targets.len();
        for (rs, qos, retain, sub_ids) in targets {
            let out = Box::new(Outbound {
                msg: msg.clone(),
                qos,
                retain,
                dup: false,
                pkid: 0,
                sub_ids,
            });
            rs.deliver(out, self.settings.max_queued);
        }
        reached
    }

    /// A connection opened for `key`. With clean start its old state is discarded; otherwise
    /// an existing state is resumed: its queued messages go to `live`'s outbox first.
    pub fn attach(
        &self,
        key: &Principal,
        live: &Arc<Session>,
        clean_start: bool,
    ) -> Option<Arc<RSession>> {
        let existing = self.sessions.lock().get(key).cloned();
        let rs = existing?;
        if clean_start {
            self.discard(&rs);
            return None;
        }
        let mut st = rs.state.lock();
        if st.gone {
            return None;
        }
        st.live = Some(live.clone());
        st.offline_since = None;
        st.generation += 1;
        for out in st.queue.drain(..) {
            if !out.msg.expired() {
                live.push_resumed(Delivery::General(out));
            }
        }
        st.queue.shrink_to_fit();
        drop(st);
        Some(rs)
    }

    /// The state of `live`'s session, created on its first general subscription.
    pub fn session(&self, live: &Arc<Session>) -> Arc<RSession> {
        let mut map = self.sessions.lock();
        if let Some(rs) = map.get(&live.principal) {
            let mut st = rs.state.lock();
            if !st.gone {
                if st.live.is_none() {
                    st.live = Some(live.clone());
                    st.offline_since = None;
                }
                drop(st);
                return rs.clone();
            }
        }
        let rs = Arc::new(RSession {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key: live.principal.clone(),
            state: Mutex::new(RState {
                live: Some(live.clone()),
                subs: HashMap::new(),
                queue: VecDeque::new(),
                dropped: 0,
                expiry: Duration::ZERO,
                offline_since: None,
                generation: 0,
                gone: false,
            }),
        });
        map.insert(live.principal.clone(), rs.clone());
        rs
    }

    /// Adds or replaces a subscription. It is active when this returns (so the SUBACK may go).
    /// Returns the retained messages to send for it, or `None` if the session is at its
    /// subscription limit.
    pub fn subscribe(
        &self,
        rs: &Arc<RSession>,
        filter: &str,
        opts: SubOptions,
        id: Option<usize>,
    ) -> Option<Vec<Box<Outbound>>> {
        let existed = {
            let mut st = rs.state.lock();
            if st.gone {
                return Some(Vec::new());
            }
            let existed = st.subs.contains_key(filter);
            if !existed && st.subs.len() >= self.settings.max_subscriptions {
                return None;
            }
            st.subs.insert(filter.to_string(), (opts, id));
            existed
        };
        changed();
        self.trie.write().insert(
            filter,
            Sub {
                session: rs.clone(),
                opts,
                id,
            },
        );
        let (group, inner) = split_share(filter);
        let wanted = match opts.retain_handling {
            RetainHandling::Always => true,
            RetainHandling::IfNew => !existed,
            RetainHandling::Never => false,
        };
        // Shared subscriptions get no retained messages (MQTT-3.8.4... 4.8.2).
        if group.is_some() || !wanted {
            return Some(Vec::new());
        }
        let out = self
            .retained
            .matching(inner)
            .into_iter()
            .map(|msg| {
                Box::new(Outbound {
                    qos: msg.qos.min(opts.qos),
                    // Retained messages sent for a new subscription keep RETAIN=1
                    // (MQTT-3.3.1-8, 3.3.1-9 in 3.1.1).
                    retain: true,
                    dup: false,
                    pkid: 0,
                    sub_ids: id.into_iter().collect(),
                    msg,
                })
            })
            .collect();
        Some(out)
    }

    /// Removes a subscription; false if there was none.
    pub fn unsubscribe(&self, rs: &Arc<RSession>, filter: &str) -> bool {
        let had = rs.state.lock().subs.remove(filter).is_some();
        if had {
            self.trie.write().remove(filter, rs.id);
            changed();
        }
        had
    }

    /// The connection `conn_id` of `rs` ended. With an expiry the state stays (subscriptions
    /// kept, QoS 1/2 queued, `unacked` re-sent first on resume, with DUP if it had been sent);
    /// without, it is freed.
    pub fn detach(
        &self,
        rs: &Arc<RSession>,
        conn_id: u64,
        expiry: Option<Duration>,
        unacked: Vec<Box<Outbound>>,
    ) {
        let mut st = rs.state.lock();
        match &st.live {
            Some(l) if l.conn_id == conn_id => {}
            Some(l) => {
                // Taken over: the new connection re-sends what this one had in flight.
                for mut u in unacked {
                    // DUP only on what was sent before (it has a packet id).
                    u.dup = u.pkid != 0;
                    l.push_resumed(Delivery::General(u));
                }
                return;
            }
            None => return,
        }
        st.live = None;
        changed();
        match expiry.filter(|e| !e.is_zero()) {
            Some(e) => {
                st.expiry = e;
                st.offline_since = Some(Instant::now());
                for mut u in unacked.into_iter().rev() {
                    u.dup = u.pkid != 0;
                    st.queue.push_front(u);
                }
            }
            None => {
                drop(st);
                self.discard(rs);
            }
        }
    }

    /// Frees `rs`: its subscriptions leave the trie, its queue is dropped.
    pub fn discard(&self, rs: &Arc<RSession>) {
        changed();
        let subs = {
            let mut st = rs.state.lock();
            st.gone = true;
            st.live = None;
            st.queue = VecDeque::new();
            std::mem::take(&mut st.subs)
        };
        {
            let mut map = self.sessions.lock();
            if map.get(&rs.key).is_some_and(|x| Arc::ptr_eq(x, rs)) {
                map.remove(&rs.key);
            }
        }
        if !subs.is_empty() {
            let mut trie = self.trie.write();
            for filter in subs.keys() {
                trie.remove(filter, rs.id);
            }
        }
        debug!(client_id = %rs.key.client_id, "general session state freed");
    }

    /// Frees the offline sessions whose expiry has passed.
    pub fn expire(&self) {
        let now = Instant::now();
        let due: Vec<Arc<RSession>> = self
            .sessions
            .lock()
            .values()
            .filter(|rs| {
                let st = rs.state.lock();
                st.live.is_none()
                    && st
                        .offline_since
                        .is_some_and(|at| now.duration_since(at) >= st.expiry)
            })
            .cloned()
            .collect();
        for rs in due {
            self.discard(&rs);
        }
    }

    /// Sessions with state, subscriptions, retained topics: for tests and logs.
    pub fn stats(&self) -> (usize, usize, usize) {
        (
            self.sessions.lock().len(),
            self.trie.read().len(),
            self.retained.len(),
        )
    }
}

#[cfg(test)]
mod tests;
