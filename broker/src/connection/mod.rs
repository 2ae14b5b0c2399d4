//! One client connection, from CONNECT to close: the MQTT state machine.
//!
//! It owns the socket, the read and write buffers, packet ids, in-flight deliveries (QoS 1 until
//! PUBACK, QoS 2 until PUBCOMP), client topic aliases and the connection's handle on its
//! general-topic session in the router (taken on first use or on resume). Claimed-tree
//! publishes go to the extension and are acknowledged in the order received, each only after
//! the extension finished with it (for IM: after the message is durable). It must not know what
//! the claimed tree means.
//!
//! Files: `mod.rs` the connection's state and the main loop; `connect.rs` the handshake (CONNECT,
//! authentication, session takeover or resume, CONNACK); `publish.rs` publishes in both directions
//! and the will; `subscribe.rs` SUBSCRIBE and UNSUBSCRIBE; `close.rs` closing (the DISCONNECT
//! sent, and answering the publishes in progress before a server-side close).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};

use crate::codec::{
    self, AckReason, CodecError, DisconnectReason, Incoming, Outgoing, QoS, Version,
};
use crate::router::{Outbound, RSession};
use crate::server::Shared;
use crate::session::{Session, TransportKind};

mod close;
mod connect;
mod publish;
mod subscribe;

pub use connect::valid_client_id;
use connect::Accepted;

/// Most deliveries taken from the outbox per wake-up, so one busy session cannot starve reading.
const DRAIN_BATCH: usize = 64;
/// Write buffers larger than this are released once flushed, so idle connections stay small.
const KEEP_BUFFER: usize = 16 * 1024;
/// Highest topic alias a 5.0 client may use (announced in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 32;
/// Longest client id accepted, in bytes; the README's rule for device ids.
pub const MAX_CLIENT_ID: usize = 128;

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
pub async fn serve<S: SplitIo>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    transport: TransportKind,
) {
    let (reader, writer) = stream.split_io();
    let mut conn = Conn {
        shared,
        reader,
        writer,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        version: Version::V311,
        peer,
        transport,
    };
    // Two boxed phases: the handshake's state (connect timeout, CONNECT, authentication) is
    // freed before the session starts, so a long-lived connection holds only what it uses.
    let Some(accepted) = Box::pin(conn.handshake()).await else {
        return;
    };
    Box::pin(conn.run(accepted)).await;
}

struct Conn<R, W> {
    shared: Arc<Shared>,
    reader: R,
    writer: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: Version,
    peer: SocketAddr,
    transport: TransportKind,
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Writes one packet and flushes it (used before the session exists and at close).
    async fn send_now(&mut self, p: Outgoing) {
        if self.version.write(p, &mut self.wbuf).is_ok() {
            let _ = self.writer.write_all(&self.wbuf).await;
            let _ = self.writer.flush().await;
        }
        self.wbuf.clear();
    }

    async fn run(&mut self, accepted: Box<Accepted>) {
        let Accepted {
            session,
            mut state,
            will,
            keep_alive,
            restored,
        } = *accepted;
        let shared = self.shared.clone();
        let conn_id = session.conn_id;
        if let Some(subs) = restored {
            for (filter, qos) in subs {
                // Re-authorize: a restored subscription gets no more than a fresh one would.
                let opts = codec::SubOptions::qos(qos);
                let _ = Box::pin(self.subscribe_one(&mut state, &filter, opts, None)).await;
            }
        }
        shared.ext.on_session_open(&session);
        debug!(conn = conn_id, user = ?session.user(), client_id = session.client_id(), "session open");
        let gauge = crate::metrics::get()
            .connections
            .get_or_create(&[
                ("protocol", self.version.as_str()),
                ("transport", self.transport.as_str()),
            ])
            .clone();
        gauge.inc();

        let end = Box::pin(self.main_loop(&mut state, keep_alive)).await;
        gauge.dec();

        let publish_will = match end {
            End::Clean { with_will } => with_will,
            End::Server | End::Abnormal => true,
        };
        session.mark_closed();
        let persistent = state.expiry > 0;
        shared
            .sessions
            .close(&session, persistent.then(|| session.subscriptions()));
        let generation = state.general.as_ref().map(|g| g.generation());
        if let Some(rs) = state.general.take() {
            // In flight first, then what was still waiting in the outbox (QoS 1/2 only).
            let mut unacked = state.take_unacked();
            let mut waiting = Vec::new();
            session.drain(usize::MAX, &mut waiting);
            unacked.extend(waiting.into_iter().filter_map(|d| match d {
                crate::session::Delivery::General(o) if o.qos != QoS::AtMostOnce => Some(o),
                _ => None,
            }));
            let expiry = Duration::from_secs(u64::from(state.expiry));
            shared.router.detach(&rs, conn_id, Some(expiry), unacked);
            if publish_will {
                if let Some(will) = will {
                    self.publish_will(
                        &session,
                        *will,
                        Some((rs, generation.unwrap_or(0))),
                        state.expiry,
                    );
                }
            }
        } else if publish_will {
            if let Some(will) = will {
                self.publish_will(&session, *will, None, state.expiry);
            }
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
            // Decode and handle the whole packets already buffered, while the connection has
            // room for more publishes in progress (the rest wait in the read buffer).
            loop {
                let full = st.acks.as_ref().map_or(0, FuturesOrdered::len)
                    >= shared.limits.max_pending_acks;
                // A 5.0 QoS 1/2 publish is still decoded: past our receive maximum it gets
                // DISCONNECT 0x93 rather than silence.
                let qos_publish = self
                    .rbuf
                    .first()
                    .is_some_and(|b| b >> 4 == 3 && b & 0x06 != 0);
                if full && !(self.version == Version::V5 && qos_publish) {
                    break;
                }
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
                        // Never reserve more than the largest packet allowed.
                        self.rbuf.reserve(n.min(shared.limits.max_packet_size));
                        break;
                    }
                    Err(e) => {
                        crate::metrics::PROTOCOL_ERRORS
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        debug!(conn = st.session.conn_id, error = %e, "bad packet: closing");
                        return Box::pin(self.close_with(e.reason())).await;
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
                let room = st.max_inflight - st.inflight.len();
                st.session.drain(DRAIN_BATCH.min(room), &mut drained);
                for d in drained.drain(..) {
                    if let Some(reason) = self.encode_delivery(st, d) {
                        if matches!(
                            reason,
                            DisconnectReason::UseAnotherServer
                                | DisconnectReason::ServerShuttingDown
                        ) {
                            // A drain: requests in progress are answered first.
                            Box::pin(self.finish_pending(st)).await;
                        }
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
                    Box::pin(self.finish_pending(st)).await;
                    return Box::pin(self.close_with_server(reason)).await;
                }
                Some((pkid, qos, reason)) = next_ack(&mut st.acks), if pending > 0 => {
                    self.write_ack(st, pkid, qos, reason);
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

    async fn flush(&mut self) {
        if !self.wbuf.is_empty() {
            let _ = self.writer.write_all(&self.wbuf).await;
            self.wbuf.clear();
        }
        let _ = self.writer.flush().await;
    }

    /// Handles one packet; `Some` ends the connection.
    async fn handle(&mut self, st: &mut State, packet: Incoming) -> Option<End> {
        match packet {
            Incoming::Publish(p) => return self.on_publish(st, p).await,
            Incoming::PubAck(pkid) | Incoming::PubComp(pkid) => {
                st.inflight.remove(&pkid);
            }
            Incoming::PubRec(pkid) => {
                // QoS 2, step 2: the message is the client's now; only PUBREL/PUBCOMP remain.
                if let Some(f) = st.inflight.get_mut(&pkid) {
                    *f = Inflight::Released;
                }
                let _ = self.version.write(Outgoing::PubRel(pkid), &mut self.wbuf);
            }
            Incoming::PubRel(pkid) => {
                st.qos2_in.remove(&pkid);
                let _ = self.version.write(Outgoing::PubComp(pkid), &mut self.wbuf);
            }
            Incoming::Subscribe { pkid, filters, id } => {
                self.on_subscribe(st, pkid, filters, id).await;
            }
            Incoming::Unsubscribe { pkid, filters } => {
                let existed = filters
                    .iter()
                    .map(|f| self.unsubscribe_one(st, f))
                    .collect();
                let _ = self
                    .version
                    .write(Outgoing::UnsubAck { pkid, existed }, &mut self.wbuf);
            }
            Incoming::PingReq => {
                let _ = self.version.write(Outgoing::PingResp, &mut self.wbuf);
            }
            Incoming::Disconnect {
                with_will,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if st.expiry == 0 && e > 0 {
                        // MQTT-3.14.2-2: a session that was to end cannot be kept at DISCONNECT.
                        return Some(self.close_with(DisconnectReason::ProtocolError).await);
                    }
                    let max = u32::try_from(self.shared.limits.session_expiry.as_secs())
                        .unwrap_or(u32::MAX);
                    st.expiry = e.min(max);
                    if let Some(g) = &st.general {
                        g.set_expiry(st.expiry);
                    }
                }
                return Some(End::Clean { with_will });
            }
            Incoming::Connect(_) => {
                debug!(conn = st.session.conn_id, "second CONNECT: protocol error");
                return Some(self.close_with(DisconnectReason::ProtocolError).await);
            }
            Incoming::Unexpected(what) => {
                debug!(
                    conn = st.session.conn_id,
                    packet = what,
                    "unexpected packet: protocol error"
                );
                return Some(self.close_with(DisconnectReason::ProtocolError).await);
            }
        }
        None
    }
}

/// One unacknowledged delivery.
enum Inflight {
    /// An IM delivery: not re-sent (IM clients catch up with `sync`).
    Claimed,
    /// A general message, kept to be re-sent if the session resumes.
    General(Box<Outbound>),
    /// QoS 2 after PUBREC: waiting for PUBCOMP.
    Released,
}

/// Per-connection protocol state.
struct State {
    session: Arc<Session>,
    /// The session's general-topic state in the router, once it has any.
    general: Option<Arc<RSession>>,
    next_pkid: u16,
    inflight: HashMap<u16, Inflight>,
    max_inflight: usize,
    client_max_packet: Option<usize>,
    qos2_in: HashSet<u16>,
    /// Handling of received publishes, completed in the order received (QoS 0 ones included,
    /// so every request counts against `max_pending_acks`). Created on the first publish: an
    /// idle connection does not pay for it.
    acks: Acks,
    /// QoS 1/2 publishes received and not yet acknowledged (5.0 receive maximum).
    qos_pending: u32,
    /// 5.0 topic aliases the client set (boxed: most clients set none, and an unboxed map
    /// would add its 48 bytes to every connection's task).
    #[allow(clippy::box_collection)]
    aliases: Option<Box<HashMap<u16, String>>>,
    /// Session expiry interval in seconds (0: the session ends with the connection).
    expiry: u32,
}

impl State {
    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// The general messages still unacknowledged, in the order they were sent.
    fn take_unacked(&mut self) -> Vec<Box<Outbound>> {
        let mut v: Vec<(u16, Box<Outbound>)> = self
            .inflight
            .drain()
            .filter_map(|(id, f)| match f {
                Inflight::General(mut o) => {
                    o.pkid = id;
                    Some((id, o))
                }
                _ => None,
            })
            .collect();
        v.sort_by_key(|(id, _)| id.wrapping_sub(self.next_pkid));
        v.into_iter().map(|(_, o)| o).collect()
    }
}

type Acks = Option<FuturesOrdered<BoxFuture<'static, (u16, QoS, AckReason)>>>;

async fn next_ack(acks: &mut Acks) -> Option<(u16, QoS, AckReason)> {
    match acks {
        Some(a) => a.next().await,
        None => None,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
