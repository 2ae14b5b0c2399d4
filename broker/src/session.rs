//! A live client session as the rest of the server sees it: who it is, what it subscribed to in
//! the claimed tree, and its outbox.
//!
//! The outbox is the only way anything reaches a connection. It is bounded: a client that does not
//! read fast enough is disconnected rather than allowed to grow the server's memory (IM clients
//! then re-sync from their last seq, so nothing is lost). It owns no socket; the connection task
//! drains it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::{DisconnectReason, QoS, Version};
use crate::router::Outbound;

/// What the server hands a connection to send.
#[derive(Debug)]
pub enum Delivery {
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    },
    /// A general-topic message from the router.
    General(Box<Outbound>),
    /// Send DISCONNECT (5.0) with this reason and close.
    Close(DisconnectReason),
}

/// Who is connected: the authenticated user (None for anonymous) and the client id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub user: Option<String>,
    pub client_id: String,
}

/// The byte transport a client connected over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    Ws,
    Tls,
}

impl TransportKind {
    /// The name the admin API and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Ws => "ws",
            TransportKind::Tls => "tls",
        }
    }
}

/// What an operator sees of a connection besides its identity.
#[derive(Clone, Copy, Debug)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    pub transport: TransportKind,
    pub keep_alive: u16,
    /// Unix ms.
    pub connected_at: i64,
}

/// A session shared between its connection task, the server's session table and the extension.
#[derive(Debug)]
pub struct Session {
    /// Internal connection number; unique for the life of the process.
    pub conn_id: u64,
    pub principal: Principal,
    pub version: Version,
    claimed: Mutex<Vec<(String, QoS)>>,
    queue: Mutex<VecDeque<Delivery>>,
    notify: Notify,
    closed: AtomicBool,
    overflowed: AtomicBool,
    limit: usize,
    /// Set once, before the session is registered (None only in unit tests).
    meta: Option<ConnMeta>,
    /// Publishes received from the client, and sent to it.
    pub(crate) msgs_in: AtomicU64,
    pub(crate) msgs_out: AtomicU64,
}

impl Session {
    pub(crate) fn new(conn_id: u64, principal: Principal, version: Version, limit: usize) -> Self {
        Session {
            conn_id,
            principal,
            version,
            claimed: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            limit,
            meta: None,
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
        }
    }

    /// The session with its connection's details.
    pub(crate) fn with_meta(mut self, meta: ConnMeta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// The connection's details (peer, transport, keepalive, connect time).
    pub fn meta(&self) -> Option<&ConnMeta> {
        self.meta.as_ref()
    }

    /// Publishes received from the client and sent to it so far.
    pub fn message_counts(&self) -> (u64, u64) {
        (
            self.msgs_in.load(Ordering::Relaxed),
            self.msgs_out.load(Ordering::Relaxed),
        )
    }

    /// Deliveries waiting in the outbox.
    pub fn outbox_depth(&self) -> usize {
        self.queue.lock().len()
    }

    /// The topics the client subscribed to in the claimed tree.
    pub fn claimed_topics(&self) -> Vec<String> {
        self.claimed.lock().iter().map(|(t, _)| t.clone()).collect()
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.principal.user.as_deref()
    }

    /// The MQTT client id (the device id in IM terms).
    pub fn client_id(&self) -> &str {
        &self.principal.client_id
    }

    /// True if the client subscribed to exactly this claimed topic.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.claimed.lock().iter().any(|(t, _)| t == topic)
    }

    /// Delivers a publish on a claimed topic the client subscribed to, at the subscription's QoS.
    /// Returns false if the client is not subscribed to it or the session is closed or full.
    pub fn deliver(&self, topic: &str, payload: Bytes) -> bool {
        self.deliver_at_most(topic, payload, QoS::ExactlyOnce)
    }

    /// Like [`Session::deliver`], at no more than `cap` (the publication's own QoS: the
    /// delivery is at the lower of it and the subscription's, MQTT 3.1.1 §3.8.4, 5.0 §3.8.4).
    pub fn deliver_at_most(&self, topic: &str, payload: Bytes, cap: QoS) -> bool {
        let qos = {
            let claimed = self.claimed.lock();
            match claimed.iter().find(|(t, _)| t == topic) {
                Some((_, q)) => (*q).min(cap),
                None => return false,
            }
        };
        self.push(Delivery::Publish {
            topic: topic.to_string(),
            payload,
            qos,
            retain: false,
        })
    }

    /// Asks the connection to close with `reason`.
    pub fn close(&self, reason: DisconnectReason) {
        self.push_unbounded(Delivery::Close(reason));
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn push(&self, d: Delivery) -> bool {
        if self.is_closed() {
            return false;
        }
        {
            let mut q = self.queue.lock();
            if q.len() >= self.limit {
                drop(q);
                // Logged once per connection (the state change); later overflows are counted.
                if !self.overflowed.swap(true, Ordering::AcqRel) {
                    tracing::warn!(conn = self.conn_id, client_id = %self.principal.client_id,
                        "outbox full: disconnecting a client that does not read");
                    self.close(DisconnectReason::QuotaExceeded);
                    crate::metrics::get().outbox_disconnects.inc();
                }
                crate::metrics::OUTBOX_OVERFLOWS.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            q.push_back(d);
        }
        self.notify.notify_one();
        true
    }

    /// Queues what a resumed session had pending (bounded by the router's offline queue and
    /// the in-flight window, not by the outbox limit).
    pub(crate) fn push_resumed(&self, d: Delivery) {
        self.push_unbounded(d);
    }

    fn push_unbounded(&self, d: Delivery) {
        self.queue.lock().push_back(d);
        self.notify.notify_one();
    }

    pub(crate) fn add_claimed(&self, topic: String, qos: QoS) {
        let mut c = self.claimed.lock();
        if let Some(e) = c.iter_mut().find(|(t, _)| *t == topic) {
            e.1 = qos;
        } else {
            // Most devices hold one or two subscriptions: grow one at a time, not by four.
            c.reserve_exact(1);
            c.push((topic, qos));
        }
    }

    pub(crate) fn remove_claimed(&self, topic: &str) -> bool {
        let mut c = self.claimed.lock();
        let before = c.len();
        c.retain(|(t, _)| t != topic);
        c.len() != before
    }

    /// The claimed-tree subscriptions, to carry over to a resumed session (the router keeps
    /// the general ones).
    pub(crate) fn subscriptions(&self) -> Vec<(String, QoS)> {
        self.claimed.lock().clone()
    }

    /// Takes up to `max` queued deliveries.
    pub(crate) fn drain(&self, max: usize, into: &mut Vec<Delivery>) {
        let mut q = self.queue.lock();
        let n = q.len().min(max);
        into.extend(q.drain(..n));
        if q.is_empty() && q.capacity() > 64 {
            // Idle connections should not keep a burst's worth of memory.
            q.shrink_to_fit();
        }
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.lock().is_empty()
    }

    pub(crate) async fn wait(&self) {
        self.notify.notified().await
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
