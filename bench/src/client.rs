//! The load-generating MQTT client: a hand-rolled, minimal MQTT 3.1.1 client.
//!
//! This file owns the wire codec (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PINGREQ, DISCONNECT out;
//! CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP in), the connect/subscribe handshake with a
//! classification of why a connection attempt failed (refused, rejected, timed out, ...), frame
//! reading with a small growable buffer, and a batching writer task.
//!
//! Why not rumqttc: its `EventLoop` keeps per-client read/write buffers, a request channel and a
//! pending queue, and it hides why a connection attempt failed behind its own retry loop. Scenario 1
//! holds up to 100,000 idle connections in one process and scenario 4 has to count refused attempts
//! precisely, so each connection here is just a `TcpStream` (plus a buffer that is dropped once the
//! connection goes idle) owned by one small tokio task.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// MQTT control packet types (upper nibble of the fixed header).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;

/// Largest packet we accept from a broker (the bench never sends anything near this).
const MAX_PACKET: usize = 1 << 20;

/// What a CONNECT says.
pub struct ConnectOptions<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub keep_alive_secs: u16,
}

/// Why a connection attempt (TCP connect + CONNECT/CONNACK + SUBSCRIBE/SUBACK) failed.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connection refused: nothing listens on the port (yet).
    Refused,
    /// The broker answered CONNACK with this non-zero return code.
    Rejected(u8),
    /// The broker answered SUBACK with 0x80 (failure).
    SubscribeRejected,
    /// No answer within the handshake timeout.
    Timeout,
    /// The broker closed or reset the connection during the handshake.
    Closed,
    /// Any other socket error.
    Io(io::Error),
    /// The broker sent something that is not valid MQTT at this point.
    Protocol(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => write!(f, "TCP connection refused"),
            ConnectError::Rejected(code) => write!(f, "CONNACK return code {code}"),
            ConnectError::SubscribeRejected => write!(f, "SUBACK failure (0x80)"),
            ConnectError::Timeout => write!(f, "handshake timed out"),
            ConnectError::Closed => write!(f, "connection closed during handshake"),
            ConnectError::Io(e) => write!(f, "I/O error: {e}"),
            ConnectError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ConnectError::Closed,
            _ => ConnectError::Io(e),
        }
    }
}

/// One received MQTT packet: its first header byte and its body (variable header + payload).
pub struct Frame {
    pub header: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// Decodes a PUBLISH: (topic, packet id if QoS > 0, payload).
    pub fn publish(&self) -> Option<(Bytes, Option<u16>, Bytes)> {
        if self.kind() != PUBLISH {
            return None;
        }
        let qos = (self.header >> 1) & 0b11;
        let mut b = self.body.clone();
        if b.len() < 2 {
            return None;
        }
        let tlen = b.get_u16() as usize;
        if b.len() < tlen {
            return None;
        }
        let topic = b.split_to(tlen);
        let pkid = if qos > 0 {
            if b.len() < 2 {
                return None;
            }
            Some(b.get_u16())
        } else {
            None
        };
        Some((topic, pkid, b))
    }
}

/// Reads whole MQTT frames from a byte stream, with a buffer that starts small and grows only as
/// needed.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// Returns the next frame, `None` on a clean end of stream.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.try_parse()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(4096);
            }
            let n = rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Returns a frame if one is already complete in the buffer (no I/O).
    pub fn try_parse(&mut self) -> io::Result<Option<Frame>> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = 1;
        loop {
            if i >= b.len() {
                return Ok(None);
            }
            if i > 4 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad remaining length",
                ));
            }
            let byte = b[i];
            len |= ((byte & 0x7f) as usize) << shift;
            shift += 7;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "packet too large",
            ));
        }
        if b.len() < i + len {
            self.buf.reserve(i + len - b.len());
            return Ok(None);
        }
        let header = b[0];
        self.buf.advance(i);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Frame { header, body }))
    }

    /// Frees the buffer (used when a connection goes idle).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

pub(crate) fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// Appends a CONNECT (MQTT 3.1.1, clean session).
pub fn encode_connect(buf: &mut BytesMut, o: &ConnectOptions<'_>) {
    let mut flags = 0b0000_0010u8; // clean session
    let mut len = 10 + 2 + o.client_id.len();
    if let Some(u) = o.username {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = o.password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    buf.put_u8(0x10);
    put_remaining_length(buf, len);
    put_str(buf, b"MQTT");
    buf.put_u8(4);
    buf.put_u8(flags);
    buf.put_u16(o.keep_alive_secs);
    put_str(buf, o.client_id.as_bytes());
    if let Some(u) = o.username {
        put_str(buf, u.as_bytes());
    }
    if let Some(p) = o.password {
        put_str(buf, p.as_bytes());
    }
}

/// Appends a SUBSCRIBE for one topic filter.
pub fn encode_subscribe(buf: &mut BytesMut, pkid: u16, topic: &str, qos: u8) {
    buf.put_u8(0x82);
    put_remaining_length(buf, 2 + 2 + topic.len() + 1);
    buf.put_u16(pkid);
    put_str(buf, topic.as_bytes());
    buf.put_u8(qos);
}

/// Appends a QoS 1 PUBLISH.
pub fn encode_publish_qos1(buf: &mut BytesMut, topic: &str, pkid: u16, payload: &[u8]) {
    buf.put_u8(0x32);
    put_remaining_length(buf, 2 + topic.len() + 2 + payload.len());
    put_str(buf, topic.as_bytes());
    buf.put_u16(pkid);
    buf.put_slice(payload);
}

/// Appends a PUBACK.
pub fn encode_puback(buf: &mut BytesMut, pkid: u16) {
    buf.put_u8(0x40);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

pub const PINGREQ_BYTES: [u8; 2] = [0xc0, 0];
pub const DISCONNECT_BYTES: [u8; 2] = [0xe0, 0];

/// Next packet id after `id`, skipping 0.
pub fn next_pkid(id: u16) -> u16 {
    if id == u16::MAX {
        1
    } else {
        id + 1
    }
}

/// An established MQTT connection that has subscribed to its topic.
pub struct Connection {
    pub stream: TcpStream,
    pub reader: FrameReader,
}

async fn tcp_connect(addr: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP connect (optionally from source address `src`), CONNECT, wait for CONNACK, SUBSCRIBE QoS 1
/// to `topic`, wait for SUBACK; all within `timeout`.
pub async fn connect_and_subscribe(
    addr: SocketAddr,
    src: Option<IpAddr>,
    opts: &ConnectOptions<'_>,
    topic: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    connect_and_subscribe_at(addr, src, opts, topic, 1, timeout).await
}

/// [`connect_and_subscribe`] with the subscription's QoS (0 or 1).
pub async fn connect_and_subscribe_at(
    addr: SocketAddr,
    src: Option<IpAddr>,
    opts: &ConnectOptions<'_>,
    topic: &str,
    qos: u8,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    match tokio::time::timeout(timeout, handshake(addr, src, opts, topic, qos)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn handshake(
    addr: SocketAddr,
    src: Option<IpAddr>,
    opts: &ConnectOptions<'_>,
    topic: &str,
    qos: u8,
) -> Result<Connection, ConnectError> {
    let mut connect = BytesMut::with_capacity(128 + opts.password.map_or(0, str::len));
    encode_connect(&mut connect, opts);
    let mut subscribe = BytesMut::with_capacity(16 + topic.len());
    encode_subscribe(&mut subscribe, 1, topic, qos);
    // 3.1.1: CONNACK's return code is its second byte, SUBACK's after the packet id.
    let codes = Answers {
        connack: |b| b.get(1).copied(),
        suback: |b| b.get(2).copied(),
    };
    exchange(addr, src, &connect, &subscribe, &codes).await
}

/// Where a protocol level keeps the result codes of CONNACK and SUBACK (None: too short).
pub(crate) struct Answers {
    pub connack: fn(&[u8]) -> Option<u8>,
    pub suback: fn(&[u8]) -> Option<u8>,
}

/// The handshake of any protocol level: TCP connect, `connect`, CONNACK, `subscribe`, SUBACK
/// (a SUBACK code of 0x80 or above is a refusal).
pub(crate) async fn exchange(
    addr: SocketAddr,
    src: Option<IpAddr>,
    connect: &[u8],
    subscribe: &[u8],
    answers: &Answers,
) -> Result<Connection, ConnectError> {
    let mut stream = tcp_connect(addr, src).await?;
    stream.write_all(connect).await?;
    let mut reader = FrameReader::default();
    let frame = reader
        .next(&mut stream)
        .await?
        .ok_or(ConnectError::Closed)?;
    let code = (frame.kind() == CONNACK)
        .then(|| (answers.connack)(&frame.body))
        .flatten();
    match code {
        Some(0) => {}
        Some(code) => return Err(ConnectError::Rejected(code)),
        None => {
            return Err(ConnectError::Protocol(format!(
                "expected CONNACK, got packet type {}",
                frame.kind()
            )))
        }
    }
    stream.write_all(subscribe).await?;
    loop {
        let frame = reader
            .next(&mut stream)
            .await?
            .ok_or(ConnectError::Closed)?;
        match frame.kind() {
            SUBACK => match (answers.suback)(&frame.body) {
                None => return Err(ConnectError::Protocol("short SUBACK".into())),
                Some(c) if c >= 0x80 => return Err(ConnectError::SubscribeRejected),
                Some(_) => {
                    reader.shrink();
                    return Ok(Connection { stream, reader });
                }
            },
            // A retained or queued message may come before the SUBACK; nothing else should.
            PUBLISH | PINGRESP => continue,
            k => {
                return Err(ConnectError::Protocol(format!(
                    "expected SUBACK, got packet type {k}"
                )))
            }
        }
    }
}

impl Connection {
    /// Holds an idle connection: answers nothing, sends a PINGREQ every `ping_every`, and returns
    /// when the broker closes the connection (or on any socket error).
    pub async fn hold_idle(mut self, ping_every: Duration) {
        self.reader.shrink();
        drop(self.reader);
        let mut scratch = [0u8; 64];
        let mut next_ping = tokio::time::Instant::now() + ping_every;
        loop {
            tokio::select! {
                r = self.stream.read(&mut scratch) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(next_ping) => {
                    if self.stream.write_all(&PINGREQ_BYTES).await.is_err() {
                        return;
                    }
                    next_ping += ping_every;
                }
            }
        }
    }
}

/// Spawns a writer task that owns the write half and writes whatever is sent on the returned
/// channel, coalescing everything already queued into one `write_all`. Ends when every sender is
/// dropped or the socket fails.
pub fn spawn_writer(mut wr: OwnedWriteHalf) -> mpsc::UnboundedSender<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let mut batch = BytesMut::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&batch).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(&DISCONNECT_BYTES).await;
        let _ = wr.shutdown().await;
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_roundtrip() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 1_000_000] {
            let mut buf = BytesMut::new();
            buf.put_u8(0x30);
            put_remaining_length(&mut buf, len);
            buf.extend_from_slice(&vec![7u8; len]);
            let mut r = FrameReader { buf };
            let f = r.try_parse().unwrap().unwrap();
            assert_eq!(f.body.len(), len);
        }
    }

    #[test]
    fn publish_roundtrip() {
        let mut buf = BytesMut::new();
        encode_publish_qos1(&mut buf, "im/a/b/down/json", 42, b"hello");
        encode_puback(&mut buf, 7);
        let mut r = FrameReader { buf };
        let f = r.try_parse().unwrap().unwrap();
        let (topic, pkid, payload) = f.publish().unwrap();
        assert_eq!(&topic[..], b"im/a/b/down/json");
        assert_eq!(pkid, Some(42));
        assert_eq!(&payload[..], b"hello");
        let f = r.try_parse().unwrap().unwrap();
        assert_eq!(f.kind(), PUBACK);
        assert_eq!(&f.body[..], &[0, 7]);
        assert!(r.try_parse().unwrap().is_none());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut full = BytesMut::new();
        encode_publish_qos1(&mut full, "t", 1, &[1u8; 300]);
        let mut r = FrameReader::default();
        r.buf.extend_from_slice(&full[..1]);
        assert!(r.try_parse().unwrap().is_none());
        r.buf.extend_from_slice(&full[1..100]);
        assert!(r.try_parse().unwrap().is_none());
        r.buf.extend_from_slice(&full[100..]);
        assert!(r.try_parse().unwrap().is_some());
    }
}
