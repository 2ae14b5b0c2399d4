//! One client connection, from CONNECT to close: the MQTT state machine.
//!
//! It owns the socket, the read and write buffers, packet ids, in-flight QoS 1 deliveries and the
//! connection's general-topic router link (created on first use). Claimed-tree publishes go to the
//! extension and are acknowledged in the order received, each only after the extension finished
//! with it (for IM: after the message is durable). It must not know what the claimed tree means.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use rumqttc::mqttbytes::{has_wildcards, matches, valid_filter, valid_topic};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use crate::acl::strip_share;
use crate::codec::{
    self, CodecError, ConnAckCode, DisconnectReason, Incoming, Outgoing, Publish, QoS, SubCode,
    Version, Will,
};
use crate::extension::{AuthDecision, ConnectInfo, PublishOutcome};
use crate::server::Shared;
use crate::session::{Delivery, Principal, Session};

/// Most deliveries taken from the outbox per wake-up, so one busy session cannot starve reading.
const DRAIN_BATCH: usize = 64;
/// Write buffers larger than this are released once flushed, so idle connections stay small.
const KEEP_BUFFER: usize = 16 * 1024;

/// Why the main loop ended, which decides whether the will is published.
enum End {
    /// Client sent DISCONNECT (will published only if it asked).
    Clean { with_will: bool },
    /// The server closed it (takeover, slow consumer, shutdown): the will is published.
    Server,
    /// Socket error, EOF without DISCONNECT, protocol error, keepalive timeout.
    Abnormal,
}

/// A byte stream the connection can read and write at the same time.
pub trait SplitIo: AsyncRead + AsyncWrite + Unpin + Send {
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    fn split_io(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
}

/// Plain TCP splits into borrowed halves: no allocation, no lock, for the common case.
impl SplitIo for tokio::net::TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn split_io(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
}

/// Other transports (WebSocket, TLS) use tokio's generic split.
macro_rules! generic_split {
    ($t:ty) => {
        impl SplitIo for $t {
            type Reader<'a> = tokio::io::ReadHalf<&'a mut $t>;
            type Writer<'a> = tokio::io::WriteHalf<&'a mut $t>;
            fn split_io(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
                tokio::io::split(self)
            }
        }
    };
}
generic_split!(crate::transport::WsIo);
generic_split!(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

/// Serves one client until it goes away.
pub async fn serve<S: SplitIo>(shared: Arc<Shared>, mut stream: S, peer: SocketAddr) {
    let (reader, writer) = stream.split_io();
    let mut conn = Conn {
        shared,
        reader,
        writer,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        version: Version::V311,
        peer,
    };
    // Two boxed phases: the handshake's state (connect timeout, CONNECT, authentication) is
    // freed before the session starts, so a long-lived connection holds only what it uses.
    let Some(accepted) = Box::pin(conn.handshake()).await else {
        return;
    };
    Box::pin(conn.run(accepted)).await;
}

/// What the handshake hands to the session phase.
struct Accepted {
    session: Arc<Session>,
    state: State,
    will: Option<Will>,
    keep_alive: u16,
    persistent: bool,
    restored: Option<Vec<(String, QoS)>>,
}

struct Conn<R, W> {
    shared: Arc<Shared>,
    reader: R,
    writer: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: Version,
    peer: SocketAddr,
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn read_connect(&mut self) -> Result<codec::Connect, CodecError> {
        loop {
            if let Some(v) = codec::sniff_version(&self.rbuf)? {
                self.version = v;
                match v.read(&mut self.rbuf, self.shared.limits.max_packet_size) {
                    Ok(Incoming::Connect(c)) => return Ok(*c),
                    Ok(_) => {
                        return Err(CodecError::Malformed("first packet is not CONNECT".into()))
                    }
                    Err(CodecError::Incomplete(n)) => self.rbuf.reserve(n),
                    Err(e) => {
                        if matches!(e, CodecError::UnsupportedVersion(_)) {
                            self.send_now(Outgoing::ConnAck {
                                session_present: false,
                                code: ConnAckCode::UnsupportedVersion,
                                max_packet_size: 0,
                            })
                            .await;
                        }
                        return Err(e);
                    }
                }
            }
            let n = self
                .reader
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| CodecError::Malformed(e.to_string()))?;
            if n == 0 {
                return Err(CodecError::Malformed("closed".into()));
            }
        }
    }

    /// Writes one packet and flushes it (used before the session exists and at close).
    async fn send_now(&mut self, p: Outgoing) {
        if self.version.write(p, &mut self.wbuf).is_ok() {
            let _ = self.writer.write_all(&self.wbuf).await;
            let _ = self.writer.flush().await;
        }
        self.wbuf.clear();
    }

    fn refuse(code: ConnAckCode) -> Outgoing {
        Outgoing::ConnAck {
            session_present: false,
            code,
            max_packet_size: 0,
        }
    }

    /// Reads CONNECT, authenticates, registers the session and queues CONNACK. `None` when the
    /// client was refused or went away.
    async fn handshake(&mut self) -> Option<Box<Accepted>> {
        let peer = self.peer;
        let mut connect =
            match tokio::time::timeout(self.shared.limits.connect_timeout, self.read_connect())
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "connection closed before a valid CONNECT");
                    return None;
                }
                Err(_) => {
                    debug!(%peer, "no CONNECT in time");
                    return None;
                }
            };
        let shared = self.shared.clone();
        let conn_id = shared.next_conn_id();
        let mut client_id = connect.client_id.clone();
        if client_id.is_empty() {
            if !connect.clean_start {
                self.send_now(Self::refuse(ConnAckCode::BadClientId)).await;
                return None;
            }
            client_id = format!("mqim-auto-{conn_id}");
        }
        let info = ConnectInfo {
            client_id: &client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            peer: self.peer,
        };
        let user = match shared.ext.authenticate(&info).await {
            AuthDecision::User(u) => Some(u),
            AuthDecision::Anonymous if shared.limits.allow_anonymous => None,
            AuthDecision::Anonymous => {
                info!(peer = %self.peer, %client_id, "refused: no credentials and anonymous access is off");
                self.send_now(Self::refuse(ConnAckCode::NotAuthorized))
                    .await;
                return None;
            }
            AuthDecision::Denied(why) => {
                info!(peer = %self.peer, %client_id, reason = %why, "refused: not authorized");
                self.send_now(Self::refuse(ConnAckCode::NotAuthorized))
                    .await;
                return None;
            }
        };
        let principal = Principal { user, client_id };
        let session = Arc::new(Session::new(
            conn_id,
            principal.clone(),
            self.version,
            shared.limits.outbox_limit,
        ));
        // Persistent sessions live for 3.1.1 clean_session=0, or 5.0 with a session expiry.
        let persistent = !connect.clean_start
            && (self.version == Version::V311 || connect.session_expiry.unwrap_or(0) > 0);
        let restored = shared
            .sessions
            .open(&session, connect.clean_start, persistent);
        self.version
            .write(
                Outgoing::ConnAck {
                    session_present: restored.is_some(),
                    code: ConnAckCode::Success,
                    max_packet_size: shared.limits.max_packet_size as u32,
                },
                &mut self.wbuf,
            )
            .ok();
        let keep_alive = connect.keep_alive;
        // Only the will is needed from here on; the credentials are not kept for the session.
        let will = connect.will.take();
        drop(connect.password.take());
        let state = State {
            session: session.clone(),
            link_open: false,
            next_pkid: 0,
            inflight: HashSet::new(),
            max_inflight: usize::from(connect.receive_maximum.unwrap_or(u16::MAX))
                .min(shared.limits.max_inflight),
            client_max_packet: connect.max_packet_size.map(|m| m as usize),
            qos2_in: HashSet::new(),
            acks: None,
        };
        // Boxed so the caller's future holds a pointer, not the session state.
        Some(Box::new(Accepted {
            session,
            state,
            will,
            keep_alive,
            persistent,
            restored,
        }))
    }

    async fn run(&mut self, accepted: Box<Accepted>) {
        let Accepted {
            session,
            mut state,
            will,
            keep_alive,
            persistent,
            restored,
        } = *accepted;
        let shared = self.shared.clone();
        let conn_id = session.conn_id;
        if let Some(subs) = restored {
            for (filter, qos) in subs {
                // Re-authorize: a restored subscription gets no more than a fresh one would.
                let _ = Box::pin(self.subscribe_one(&mut state, &filter, qos)).await;
            }
        }
        shared.ext.on_session_open(&session);
        debug!(conn = conn_id, user = ?session.user(), client_id = session.client_id(), "session open");

        let end = Box::pin(self.main_loop(&mut state, keep_alive)).await;

        let publish_will = match end {
            End::Clean { with_will } => with_will,
            End::Server | End::Abnormal => true,
        };
        if publish_will {
            if let Some(will) = will {
                Box::pin(self.publish_will(&session, will)).await;
            }
        }
        session.mark_closed();
        shared
            .sessions
            .close(&session, persistent.then(|| session.subscriptions()));
        if state.link_open {
            shared.router.close(conn_id);
        }
        shared.ext.on_session_close(&session);
        debug!(conn = conn_id, "session closed");
    }

    async fn main_loop(&mut self, st: &mut State, keep_alive: u16) -> End {
        let shared = self.shared.clone();
        // A client silent for 1.5 times its keepalive is gone (MQTT 3.1.2.10).
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = grace.map(|g| Instant::now() + g);
        let mut shutdown = shared.shutdown.clone();
        let mut drained = Vec::new();
        loop {
            // Decode and handle every whole packet already buffered.
            loop {
                match self
                    .version
                    .read(&mut self.rbuf, shared.limits.max_packet_size)
                {
                    Ok(packet) => {
                        if let Some(g) = grace {
                            deadline = Some(Instant::now() + g);
                        }
                        // Boxed, like every rare await below: an idle connection's task then
                        // holds only the small select state, not the largest handler's.
                        if let Some(end) = Box::pin(self.handle(st, packet)).await {
                            Box::pin(self.flush()).await;
                            return end;
                        }
                    }
                    Err(CodecError::Incomplete(n)) => {
                        self.rbuf.reserve(n);
                        break;
                    }
                    Err(CodecError::TooLarge(n)) => {
                        info!(
                            conn = st.session.conn_id,
                            size = n,
                            "packet over the maximum size: closing"
                        );
                        return Box::pin(self.close_with(DisconnectReason::PacketTooLarge)).await;
                    }
                    Err(e) => {
                        info!(conn = st.session.conn_id, error = %e, "protocol error: closing");
                        return Box::pin(self.close_with(DisconnectReason::ProtocolError)).await;
                    }
                }
            }
            if self.rbuf.is_empty() {
                // Idle connections hold no read buffer (the next read allocates a small one).
                self.rbuf = BytesMut::new();
            }
            // Move what the outbox holds into the write buffer, within the in-flight window.
            if st.inflight.len() < st.max_inflight && st.session.has_queued() {
                drained.clear();
                st.session.drain(DRAIN_BATCH, &mut drained);
                for d in drained.drain(..) {
                    if let Some(reason) = self.encode_delivery(st, d) {
                        return Box::pin(self.close_with_server(reason)).await;
                    }
                }
            }
            let pending = st.acks.as_ref().map_or(0, FuturesOrdered::len);
            let reading = pending < shared.limits.max_pending_acks;
            let can_drain = st.inflight.len() < st.max_inflight;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let reason = shared.shutdown_reason();
                    return Box::pin(self.close_with_server(reason)).await;
                }
                Some((pkid, qos, outcome)) = next_ack(&mut st.acks), if pending > 0 => {
                    let authorized = outcome == PublishOutcome::Accepted;
                    let ack = match qos {
                        QoS::AtLeastOnce => Outgoing::PubAck { pkid, authorized },
                        _ => Outgoing::PubRec { pkid, authorized },
                    };
                    let _ = self.version.write(ack, &mut self.wbuf);
                }
                r = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if r.is_err() {
                        return End::Abnormal;
                    }
                    if self.wbuf.is_empty() {
                        if self.writer.flush().await.is_err() {
                            return End::Abnormal;
                        }
                        if self.wbuf.capacity() > KEEP_BUFFER {
                            self.wbuf = BytesMut::new();
                        }
                    }
                }
                _ = st.session.wait(), if can_drain => {}
                r = self.reader.read_buf(&mut self.rbuf), if reading => {
                    match r {
                        Ok(0) | Err(_) => return End::Abnormal,
                        Ok(_) => {}
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    info!(conn = st.session.conn_id, "keepalive timeout");
                    return Box::pin(self.close_with(DisconnectReason::KeepAliveTimeout)).await;
                }
            }
        }
    }

    /// Encodes one delivery. Returns a reason if the session must close.
    fn encode_delivery(&mut self, st: &mut State, d: Delivery) -> Option<DisconnectReason> {
        match d {
            Delivery::Close(reason) => Some(reason),
            Delivery::Publish {
                topic,
                payload,
                qos,
                retain,
            } => {
                let size = topic.len() + payload.len() + 8;
                if st.client_max_packet.is_some_and(|m| size > m) {
                    // 5.0: a packet over the client's maximum is dropped (MQTT 3.1.2.11).
                    return None;
                }
                let pkid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    let id = st.alloc_pkid();
                    st.inflight.insert(id);
                    id
                };
                let p = Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    dup: false,
                    pkid,
                };
                if let Err(e) = self.version.write(Outgoing::Publish(p), &mut self.wbuf) {
                    warn!(error = %e, "could not encode a delivery");
                }
                None
            }
        }
    }

    async fn flush(&mut self) {
        if !self.wbuf.is_empty() {
            let _ = self.writer.write_all(&self.wbuf).await;
            self.wbuf.clear();
        }
        let _ = self.writer.flush().await;
    }

    /// Protocol-level close: tell a 5.0 client why, then end as abnormal (will is published).
    async fn close_with(&mut self, reason: DisconnectReason) -> End {
        self.flush().await;
        self.send_now(Outgoing::Disconnect(reason)).await;
        End::Abnormal
    }

    async fn close_with_server(&mut self, reason: DisconnectReason) -> End {
        self.flush().await;
        self.send_now(Outgoing::Disconnect(reason)).await;
        End::Server
    }

    /// Handles one packet; `Some` ends the connection.
    async fn handle(&mut self, st: &mut State, packet: Incoming) -> Option<End> {
        match packet {
            Incoming::Publish(p) => return self.on_publish(st, p).await,
            Incoming::PubAck(pkid) | Incoming::PubComp(pkid) => {
                st.inflight.remove(&pkid);
            }
            Incoming::PubRec(pkid) => {
                let _ = self.version.write(Outgoing::PubRel(pkid), &mut self.wbuf);
            }
            Incoming::PubRel(pkid) => {
                st.qos2_in.remove(&pkid);
                let _ = self.version.write(Outgoing::PubComp(pkid), &mut self.wbuf);
            }
            Incoming::Subscribe { pkid, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                for (filter, qos) in filters {
                    codes.push(self.subscribe_one(st, &filter, qos).await);
                }
                let _ = self
                    .version
                    .write(Outgoing::SubAck { pkid, codes }, &mut self.wbuf);
            }
            Incoming::Unsubscribe { pkid, filters } => {
                let count = filters.len();
                for f in filters {
                    if !st.session.remove_claimed(&f) && st.session.remove_general(&f) {
                        self.shared.router.unsubscribe(st.session.conn_id, f).await;
                    }
                }
                let _ = self
                    .version
                    .write(Outgoing::UnsubAck { pkid, count }, &mut self.wbuf);
            }
            Incoming::PingReq => {
                let _ = self.version.write(Outgoing::PingResp, &mut self.wbuf);
            }
            Incoming::Disconnect { with_will } => return Some(End::Clean { with_will }),
            Incoming::Connect(_) => {
                info!(conn = st.session.conn_id, "second CONNECT: protocol error");
                return Some(self.close_with(DisconnectReason::ProtocolError).await);
            }
            Incoming::Unexpected(what) => {
                info!(
                    conn = st.session.conn_id,
                    packet = what,
                    "unexpected packet: protocol error"
                );
                return Some(self.close_with(DisconnectReason::ProtocolError).await);
            }
        }
        None
    }

    async fn on_publish(&mut self, st: &mut State, p: Publish) -> Option<End> {
        if p.topic.is_empty() || !valid_topic(&p.topic) || has_wildcards(&p.topic) {
            info!(conn = st.session.conn_id, topic = %p.topic, "invalid topic name: closing");
            return Some(self.close_with(DisconnectReason::ProtocolError).await);
        }
        if p.qos == QoS::ExactlyOnce && !st.qos2_in.insert(p.pkid) {
            // A retransmitted QoS 2 publish we already handled: answer again, act once.
            let _ = self.version.write(
                Outgoing::PubRec {
                    pkid: p.pkid,
                    authorized: true,
                },
                &mut self.wbuf,
            );
            return None;
        }
        let shared = self.shared.clone();
        let claimed = is_claimed(&p.topic, shared.ext.claimed_prefix());
        let done: BoxFuture<'static, PublishOutcome> = if claimed {
            if st.session.user().is_none() {
                futures::future::ready(PublishOutcome::NotAuthorized).boxed()
            } else {
                shared.ext.on_publish(&st.session, &p.topic, p.payload)
            }
        } else if shared.acl.can_publish(&st.session.principal, &p.topic) {
            shared
                .router
                .publish(p.topic, p.payload, p.qos, p.retain)
                .await;
            futures::future::ready(PublishOutcome::Accepted).boxed()
        } else {
            debug!(conn = st.session.conn_id, topic = %p.topic, "publish denied by ACL");
            futures::future::ready(PublishOutcome::NotAuthorized).boxed()
        };
        if p.qos != QoS::AtMostOnce {
            let (pkid, qos) = (p.pkid, p.qos);
            st.acks
                .get_or_insert_with(FuturesOrdered::new)
                .push_back(done.map(move |o| (pkid, qos, o)).boxed());
        } else {
            tokio::spawn(done);
        }
        None
    }

    async fn subscribe_one(&mut self, st: &mut State, filter: &str, qos: QoS) -> SubCode {
        let shared = self.shared.clone();
        let granted = qos.min(QoS::AtLeastOnce);
        let inner = strip_share(filter);
        if inner.is_empty() || !valid_filter(inner) {
            return SubCode::InvalidFilter;
        }
        if is_claimed_filter(inner, shared.ext.claimed_prefix()) {
            // Claimed topics are granted exactly, never by wildcard or shared group.
            if filter != inner
                || has_wildcards(filter)
                || st.session.user().is_none()
                || !shared.ext.authorize_subscribe(&st.session, filter)
            {
                info!(conn = st.session.conn_id, %filter, "subscription denied");
                return SubCode::NotAuthorized;
            }
            st.session.add_claimed(filter.to_string(), granted);
            shared.ext.on_subscribed(&st.session, filter);
            return SubCode::Granted(granted);
        }
        if !shared.acl.can_subscribe(&st.session.principal, filter) {
            info!(conn = st.session.conn_id, %filter, "subscription denied by ACL");
            return SubCode::NotAuthorized;
        }
        if !st.link_open {
            let Some(rx) = shared.router.open(st.session.conn_id).await else {
                return SubCode::NotAuthorized;
            };
            st.link_open = true;
            let session = st.session.clone();
            tokio::spawn(crate::router::forward_loop(rx, move |f| {
                // Deliver at the lower of the publisher's QoS and the best matching subscription.
                let sub_qos = session
                    .general
                    .lock()
                    .iter()
                    .filter(|(g, _)| matches(&f.topic, strip_share(g)))
                    .map(|(_, q)| *q)
                    .max();
                let Some(sub_qos) = sub_qos else { return true };
                session.push(Delivery::Publish {
                    topic: f.topic,
                    payload: f.payload,
                    qos: f.qos.min(sub_qos),
                    retain: false,
                }) || !session.is_closed()
            }));
        }
        st.session.add_general(filter.to_string(), granted);
        shared
            .router
            .subscribe(st.session.conn_id, filter.to_string())
            .await;
        SubCode::Granted(granted)
    }

    async fn publish_will(&mut self, session: &Session, will: Will) {
        let shared = &self.shared;
        if is_claimed(&will.topic, shared.ext.claimed_prefix())
            || !valid_topic(&will.topic)
            || !shared.acl.can_publish(&session.principal, &will.topic)
        {
            debug!(conn = session.conn_id, topic = %will.topic, "will not published (not allowed)");
            return;
        }
        shared
            .router
            .publish(will.topic, will.payload, will.qos, will.retain)
            .await;
    }
}

/// Per-connection protocol state.
struct State {
    session: Arc<Session>,
    link_open: bool,
    next_pkid: u16,
    inflight: HashSet<u16>,
    max_inflight: usize,
    client_max_packet: Option<usize>,
    qos2_in: HashSet<u16>,
    /// Acknowledgements of received publishes, completed in the order received.
    /// Created on the first QoS 1/2 publish: an idle connection does not pay for it.
    acks: Acks,
}

impl State {
    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

fn is_claimed(topic: &str, prefix: &str) -> bool {
    topic.starts_with(prefix) || prefix.strip_suffix('/') == Some(topic)
}

/// A filter touches the claimed tree if its first level names it. Filters starting with a
/// wildcard are general: the router never carries claimed traffic, so they cannot read it.
fn is_claimed_filter(filter: &str, prefix: &str) -> bool {
    let root = prefix.trim_end_matches('/');
    filter.split('/').next() == Some(root)
}

type Acks = Option<FuturesOrdered<BoxFuture<'static, (u16, QoS, PublishOutcome)>>>;

async fn next_ack(acks: &mut Acks) -> Option<(u16, QoS, PublishOutcome)> {
    match acks {
        Some(a) => a.next().await,
        None => None,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
