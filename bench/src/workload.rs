//! Sender/receiver pairs: the messaging workload shared by the throughput and latency scenarios.
//!
//! This file owns how a 1:1 message is expressed to each broker and how it is counted:
//! - mqim: the sender device publishes a `send` request (QoS 1) to `im/S/S-d/up/json`; the send is
//!   acknowledged by the `sent` reply on the sender's downlink; it is delivered when the receiver's
//!   downlink `im/R/R-d/down/json` gets the event.
//! - Mosquitto: the sender publishes the very same JSON bytes (QoS 1) straight to the receiver's
//!   downlink topic; the send is acknowledged by the PUBACK; delivered when the receiver gets it.
//!
//! The `clientMsgId` of every message is `<seq>-<scheduled send time in µs since the bench
//! started>`, so the receiver measures latency from the *scheduled* send time and detects
//! duplicates and reordering per pair.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::brokers::{down_topic, up_topic, Broker, Kind};
use crate::client::{self, ConnectOptions, FrameReader, PUBACK, PUBLISH};

/// The origin of every timestamp the workload embeds in messages.
static BASE: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench's time origin.
pub fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

pub fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// `t` as microseconds since the bench's time origin.
pub fn instant_us(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_micros() as u64
}

/// The 256 bytes of text every message carries.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let pattern = "The quick brown fox jumps over the lazy dog; mqim-bench payload. ";
        pattern.chars().cycle().take(256).collect()
    })
}

/// A fresh latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Which seqs a receiver has seen (bitset), to count unique deliveries and duplicates.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    max: Option<u64>,
}

impl Seen {
    /// Marks `seq`; returns (first time?, arrived after a higher seq?).
    fn mark(&mut self, seq: u64) -> (bool, bool) {
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        let late = self.max.is_some_and(|m| seq < m);
        if self.max.is_none_or(|m| seq > m) {
            self.max = Some(seq);
        }
        (fresh, late)
    }
}

/// Counters of one pair, updated by its reader tasks.
pub struct PairStats {
    /// Sends written to the sender's socket.
    pub published: AtomicU64,
    /// Sends the broker accepted: mqim `sent` replies, Mosquitto PUBACKs.
    pub acked: AtomicU64,
    /// mqim error replies.
    pub errors: AtomicU64,
    /// MQTT PUBACKs for the sender's publishes (informational for mqim).
    pub pubacks: AtomicU64,
    /// Events on the sender's own downlink (mqim's sender-side copy of the message).
    pub own_events: AtomicU64,
    /// Unique messages the receiver got.
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub reordered: AtomicU64,
    /// mqim events whose stream `seq` was lower than that of an event received before.
    pub seq_regressions: AtomicU64,
    last_event_seq: AtomicU64,
    /// Receiver payloads without a parsable clientMsgId.
    pub unparsable: AtomicU64,
    /// A connection of this pair ended while the scenario ran.
    pub connection_lost: AtomicBool,
    /// Un-acked sends allowed (throughput scenario).
    pub window: Semaphore,
    seen: Mutex<Seen>,
    pub histogram: Mutex<Histogram<u64>>,
    pub first_error: Mutex<Option<String>>,
}

/// The sending side of a pair: encodes sends and hands them to the sender's writer task.
pub struct SendHalf {
    pub stats: Arc<PairStats>,
    tx: mpsc::UnboundedSender<Bytes>,
    publish_topic: String,
    to: String,
    next_pkid: u16,
    scratch: Vec<u8>,
}

impl SendHalf {
    /// Encodes send number `seq`, scheduled at `sched_us`, as a QoS 1 PUBLISH appended to `out`.
    pub fn encode_send(&mut self, out: &mut BytesMut, seq: u64, sched_us: u64) {
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            r#"{{"id":"{seq}","send":{{"to":"{to}","clientMsgId":"{seq}-{sched_us}","text":"{text}"}}}}"#,
            to = self.to,
            text = text()
        );
        client::encode_publish_qos1(out, &self.publish_topic, self.next_pkid, &self.scratch);
        self.next_pkid = client::next_pkid(self.next_pkid);
    }

    /// Hands bytes to the sender's writer task; false if the connection is gone.
    pub fn write(&self, bytes: Bytes) -> bool {
        self.tx.send(bytes).is_ok()
    }
}

/// One sender device and one receiver device on a broker.
pub struct Pair {
    pub stats: Arc<PairStats>,
    sender: Option<SendHalf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pair {
    /// Takes the sending side (once).
    pub fn take_sender(&mut self) -> SendHalf {
        self.sender.take().expect("sender taken twice")
    }

    /// Disconnects both devices.
    pub fn close(&mut self) {
        self.sender = None;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sums over all pairs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub published: u64,
    pub acked: u64,
    pub errors: u64,
    pub pubacks: u64,
    pub own_events: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub seq_regressions: u64,
    pub unparsable: u64,
    pub connections_lost: u64,
}

pub fn totals(pairs: &[Pair]) -> Totals {
    let mut t = Totals::default();
    for p in pairs {
        let s = &p.stats;
        t.published += s.published.load(Ordering::Relaxed);
        t.acked += s.acked.load(Ordering::Relaxed);
        t.errors += s.errors.load(Ordering::Relaxed);
        t.pubacks += s.pubacks.load(Ordering::Relaxed);
        t.own_events += s.own_events.load(Ordering::Relaxed);
        t.delivered += s.delivered.load(Ordering::Relaxed);
        t.duplicates += s.duplicates.load(Ordering::Relaxed);
        t.reordered += s.reordered.load(Ordering::Relaxed);
        t.seq_regressions += s.seq_regressions.load(Ordering::Relaxed);
        t.unparsable += s.unparsable.load(Ordering::Relaxed);
        t.connections_lost += s.connection_lost.load(Ordering::Relaxed) as u64;
    }
    t
}

/// All pairs' latency histograms merged.
pub fn merged_histogram(pairs: &[Pair]) -> Histogram<u64> {
    let mut h = new_histogram();
    for p in pairs {
        let ph = p.stats.histogram.lock().unwrap();
        let _ = h.add(&*ph);
    }
    h
}

/// The first error reply any pair saw.
pub fn first_error(pairs: &[Pair]) -> Option<String> {
    pairs
        .iter()
        .find_map(|p| p.stats.first_error.lock().unwrap().clone())
}

/// Waits (at most `timeout`) until every send has been answered and every accepted send delivered.
/// Returns how long it waited.
pub async fn drain(pairs: &[Pair], timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let t = totals(pairs);
        let settled = t.acked + t.errors >= t.published && t.delivered >= t.acked;
        if settled || t0.elapsed() >= timeout {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finds `"clientMsgId":"<seq>-<sched_us>"` in a payload.
pub fn parse_client_msg_id(payload: &[u8]) -> Option<(u64, u64)> {
    const KEY: &[u8] = br#""clientMsgId":""#;
    let start = find(payload, KEY)? + KEY.len();
    let rest = &payload[start..];
    let end = rest.iter().position(|&b| b == b'"')?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    let (seq, sched) = id.split_once('-')?;
    Some((seq.parse().ok()?, sched.parse().ok()?))
}

/// The stream `seq` of an mqim event (`{"event":{"seq":"<n>",...`), if the payload is one.
pub fn parse_event_seq(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""seq":""#;
    let head = &payload[..payload.len().min(48)];
    find(head, br#""event""#)?;
    let start = find(head, KEY)? + KEY.len();
    let rest = &payload[start..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(off) => {
                i += off;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// What an mqim downlink payload is.
#[derive(Debug, PartialEq, Eq)]
pub enum Downlink {
    Sent,
    Error(String),
    OtherReply,
    Event,
    Unknown,
}

pub fn classify_downlink(payload: &[u8]) -> Downlink {
    let head = &payload[..payload.len().min(24)];
    if find(head, br#""reply""#).is_some() {
        if find(payload, br#""sent""#).is_some() {
            Downlink::Sent
        } else if find(payload, br#""error""#).is_some() {
            Downlink::Error(String::from_utf8_lossy(&payload[..payload.len().min(300)]).into())
        } else {
            Downlink::OtherReply
        }
    } else if find(head, br#""event""#).is_some() {
        Downlink::Event
    } else {
        Downlink::Unknown
    }
}

fn puback_bytes(pkid: u16) -> Bytes {
    let mut b = BytesMut::with_capacity(4);
    client::encode_puback(&mut b, pkid);
    b.freeze()
}

fn pair_users(i: usize) -> (String, String, String, String) {
    (
        format!("s{i}"),
        format!("s{i}-d"),
        format!("r{i}"),
        format!("r{i}-d"),
    )
}

async fn open(
    broker: &Broker,
    user: &str,
    device: &str,
) -> Result<(
    tokio::net::tcp::OwnedReadHalf,
    FrameReader,
    mpsc::UnboundedSender<Bytes>,
)> {
    let (u, p) = broker.spec.auth.credentials(user);
    let opts = ConnectOptions {
        client_id: device,
        username: u.as_deref(),
        password: p.as_deref(),
        keep_alive_secs: 120,
    };
    let conn = client::connect_and_subscribe(
        broker.addr(),
        None,
        &opts,
        &down_topic(user, device),
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("connecting {user}/{device} to {}", broker.spec.kind))?;
    let (rd, wr) = conn.stream.into_split();
    Ok((rd, conn.reader, client::spawn_writer(wr)))
}

/// Connects `n` pairs (receivers first) and starts their reader tasks.
pub async fn setup(broker: &Broker, n: usize, window: usize) -> Result<Vec<Pair>> {
    let kind = broker.spec.kind;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let (su, sd, ru, rd_) = pair_users(i);
        let stats = Arc::new(PairStats {
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pubacks: AtomicU64::new(0),
            own_events: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            seq_regressions: AtomicU64::new(0),
            last_event_seq: AtomicU64::new(0),
            unparsable: AtomicU64::new(0),
            connection_lost: AtomicBool::new(false),
            window: Semaphore::new(window),
            seen: Mutex::new(Seen::default()),
            histogram: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        });
        let (r_rd, r_reader, r_tx) = open(broker, &ru, &rd_).await?;
        let recv_task = tokio::spawn(receiver_loop(r_rd, r_reader, r_tx, stats.clone()));
        let (s_rd, s_reader, s_tx) = open(broker, &su, &sd).await?;
        let send_task = tokio::spawn(sender_reader_loop(
            kind,
            s_rd,
            s_reader,
            s_tx.clone(),
            stats.clone(),
        ));
        let publish_topic = match kind {
            Kind::Mqim => up_topic(&su, &sd),
            Kind::Mosquitto => down_topic(&ru, &rd_),
        };
        pairs.push(Pair {
            stats: stats.clone(),
            sender: Some(SendHalf {
                stats,
                tx: s_tx,
                publish_topic,
                to: format!("u:{ru}"),
                next_pkid: 1,
                scratch: Vec::with_capacity(512),
            }),
            tasks: vec![recv_task, send_task],
        });
    }
    Ok(pairs)
}

async fn receiver_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut reader: FrameReader,
    tx: mpsc::UnboundedSender<Bytes>,
    stats: Arc<PairStats>,
) {
    loop {
        let frame = match reader.next(&mut rd).await {
            Ok(Some(f)) => f,
            _ => break,
        };
        if frame.kind() != PUBLISH {
            continue;
        }
        let Some((_topic, pkid, payload)) = frame.publish() else {
            continue;
        };
        if let Some(pkid) = pkid {
            let _ = tx.send(puback_bytes(pkid));
        }
        let now = now_us();
        if let Some(seq) = parse_event_seq(&payload) {
            if seq < stats.last_event_seq.swap(seq, Ordering::Relaxed) {
                stats.seq_regressions.fetch_add(1, Ordering::Relaxed);
            }
        }
        match parse_client_msg_id(&payload) {
            Some((seq, sched)) => {
                let (fresh, late) = stats.seen.lock().unwrap().mark(seq);
                if fresh {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    stats
                        .histogram
                        .lock()
                        .unwrap()
                        .saturating_record(now.saturating_sub(sched).max(1));
                } else {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if late {
                    stats.reordered.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                stats.unparsable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats.connection_lost.store(true, Ordering::Relaxed);
}

async fn sender_reader_loop(
    kind: Kind,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut reader: FrameReader,
    tx: mpsc::UnboundedSender<Bytes>,
    stats: Arc<PairStats>,
) {
    loop {
        let frame = match reader.next(&mut rd).await {
            Ok(Some(f)) => f,
            _ => break,
        };
        match frame.kind() {
            PUBACK => {
                stats.pubacks.fetch_add(1, Ordering::Relaxed);
                if kind == Kind::Mosquitto {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    stats.window.add_permits(1);
                }
            }
            PUBLISH => {
                let Some((_topic, pkid, payload)) = frame.publish() else {
                    continue;
                };
                if let Some(pkid) = pkid {
                    let _ = tx.send(puback_bytes(pkid));
                }
                match classify_downlink(&payload) {
                    Downlink::Sent => {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        stats.window.add_permits(1);
                    }
                    Downlink::Error(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        stats.window.add_permits(1);
                        stats.first_error.lock().unwrap().get_or_insert(e);
                    }
                    Downlink::Event => {
                        stats.own_events.fetch_add(1, Ordering::Relaxed);
                    }
                    Downlink::OtherReply | Downlink::Unknown => {}
                }
            }
            _ => {}
        }
    }
    stats.connection_lost.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_256_bytes() {
        assert_eq!(text().len(), 256);
    }

    #[test]
    fn client_msg_id_is_found_in_requests_and_events() {
        let req = br#"{"id":"7","send":{"to":"u:r0","clientMsgId":"7-123456","text":"x"}}"#;
        assert_eq!(parse_client_msg_id(req), Some((7, 123456)));
        let ev = br#"{"event":{"seq":"3","message":{"msgId":"1","conversation":"u:s0","from":"s0","ts":"1","clientMsgId":"12-99","text":"x"}}}"#;
        assert_eq!(parse_client_msg_id(ev), Some((12, 99)));
        assert_eq!(parse_client_msg_id(b"{}"), None);
        assert_eq!(parse_event_seq(ev), Some(3));
        assert_eq!(parse_event_seq(req), None);
    }

    #[test]
    fn downlinks_are_classified() {
        let sent = br#"{"reply":{"id":"1","sent":{"msgId":"5","seq":"1","conversation":"u:bob","ts":"1"}}}"#;
        assert_eq!(classify_downlink(sent), Downlink::Sent);
        let err = br#"{"reply":{"id":"1","error":{"code":"RATE_LIMITED","message":"slow down"}}}"#;
        assert!(matches!(classify_downlink(err), Downlink::Error(_)));
        let ev = br#"{"event":{"seq":"1","message":{}}}"#;
        assert_eq!(classify_downlink(ev), Downlink::Event);
    }

    #[test]
    fn seen_counts_duplicates_and_reordering() {
        let mut s = Seen::default();
        assert_eq!(s.mark(0), (true, false));
        assert_eq!(s.mark(5), (true, false));
        assert_eq!(s.mark(3), (true, true));
        assert_eq!(s.mark(5), (false, false));
        assert_eq!(s.mark(200), (true, false));
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abd"), None);
        assert_eq!(find(b"xxab", b"ab"), Some(2));
    }
}
