//! MQTT framing for 3.1.1 and 5.0, behind one protocol-neutral packet model.
//!
//! The byte-level codecs are rumqttc's `mqttbytes` (the rumqtt project's, with public fields, both
//! directions). This module frames packets itself (so a complete frame is never answered with
//! "need more bytes"), checks what rumqttc lets through (`strict`), and translates between
//! rumqttc's types and [`Incoming`] / [`Outgoing`] (`v4`, `v5`), so the connection logic is
//! written once for both protocol versions. It owns no state but the version.
//!
//! Files: `mod.rs` the model, framing and dispatch; `v4.rs` and `v5.rs` the translations;
//! `strict.rs` the checks on raw frames that rumqttc does not make; `probe.rs` the entry points
//! of the fuzz targets and of their corpus replay.

use bytes::{Buf, Bytes, BytesMut};

pub mod probe;
mod strict;
mod v4;
mod v5;

/// The MQTT 5.0 publish properties, carried unchanged from publisher to subscriber (topic alias
/// and subscription identifiers excepted: those are per connection).
pub use rumqttc::v5::mqttbytes::v5::PublishProperties as Properties;

/// Quality of service, as both versions define it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// A will message from CONNECT.
#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 will properties, as publish properties (the delay is in `delay`).
    pub props: Option<Box<Properties>>,
    /// 5.0 will delay interval, seconds.
    pub delay: u32,
}

/// The parts of CONNECT the server acts on.
#[derive(Clone, Debug)]
pub struct Connect {
    pub client_id: String,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    /// 5.0: how many QoS 1/2 publishes the client accepts in flight.
    pub receive_maximum: Option<u16>,
    /// 5.0: the largest packet the client accepts.
    pub max_packet_size: Option<u32>,
    /// 5.0: session expiry interval in seconds.
    pub session_expiry: Option<u32>,
}

/// Retain handling of a 5.0 subscription (MQTT 3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetainHandling {
    /// Send retained messages at every subscribe (0; 3.1.1 always).
    Always,
    /// Only when the subscription did not exist (1).
    IfNew,
    /// Never (2).
    Never,
}

/// One filter of a SUBSCRIBE with its options (3.1.1 has only the QoS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    /// The options a 3.1.1 subscription has.
    pub fn qos(qos: QoS) -> Self {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::Always,
        }
    }
}

/// A packet received from a client, after CONNECT.
#[derive(Clone, Debug)]
pub enum Incoming {
    Connect(Box<Connect>),
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, SubOptions)>,
        /// 5.0 subscription identifier.
        id: Option<usize>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// `true` when the client asked for its will to be published (5.0 reason 0x04).
        with_will: bool,
        /// 5.0: a new session expiry interval.
        session_expiry: Option<u32>,
    },
    /// A packet a server never expects from a client (CONNACK, SUBACK, AUTH, ...).
    Unexpected(&'static str),
}

/// A PUBLISH in either direction.
#[derive(Clone, Debug)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// 5.0 properties; `None` when there are none (and always for 3.1.1).
    pub props: Option<Box<Properties>>,
}

/// CONNACK outcomes the server uses; each maps to the right code per version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnAckCode {
    Success,
    BadCredentials,
    NotAuthorized,
    BadClientId,
    ServerUnavailable,
    UnsupportedVersion,
    /// 5.0 0x8A; 3.1.1 has no such code and gets "not authorized".
    Banned,
}

/// What a successful CONNACK announces (5.0 properties; 3.1.1 sends only the flag and code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnAckCode,
    pub max_packet_size: u32,
    /// The id the server chose for a client that sent an empty one (5.0 property 0x12).
    pub assigned_client_id: Option<String>,
    /// How many QoS 1/2 publishes the server accepts unacknowledged.
    pub receive_max: u16,
    /// Highest topic alias the client may use.
    pub topic_alias_max: u16,
    /// The session expiry the server applies, when it differs from the client's.
    pub session_expiry: Option<u32>,
}

impl ConnAck {
    /// A refusal.
    pub fn refuse(code: ConnAckCode) -> Self {
        ConnAck {
            session_present: false,
            code,
            max_packet_size: 0,
            assigned_client_id: None,
            receive_max: 0,
            topic_alias_max: 0,
            session_expiry: None,
        }
    }
}

/// Per-filter SUBACK outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubCode {
    Granted(QoS),
    NotAuthorized,
    InvalidFilter,
    /// 5.0 0x97: the session holds as many subscriptions as it may.
    QuotaExceeded,
}

/// PUBACK / PUBREC reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckReason {
    Success,
    /// 5.0 0x10: accepted, but nobody subscribes to it.
    NoMatchingSubscribers,
    /// 5.0 0x87 (3.1.1 can only ack).
    NotAuthorized,
    /// 5.0 0x90.
    TopicNameInvalid,
}

/// DISCONNECT reasons the server sends (5.0 only; 3.1.1 just closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    SessionTakenOver,
    KeepAliveTimeout,
    PacketTooLarge,
    MalformedPacket,
    ProtocolError,
    ServerShuttingDown,
    UseAnotherServer,
    QuotaExceeded,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    /// 0x98: an admin closed the connection (kick, ban).
    AdministrativeAction,
}

/// A packet the server sends.
#[derive(Clone, Debug)]
pub enum Outgoing {
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck {
        pkid: u16,
        reason: AckReason,
    },
    PubRec {
        pkid: u16,
        reason: AckReason,
    },
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pkid: u16,
        codes: Vec<SubCode>,
    },
    UnsubAck {
        pkid: u16,
        /// Per filter: was there such a subscription?
        existed: Vec<bool>,
    },
    PingResp,
    Disconnect(DisconnectReason),
    /// 5.0 DISCONNECT 0x9C "use another server" with this Server Reference (3.1.1: nothing).
    Redirect(String),
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not a whole packet yet; at least this many more bytes are needed.
    #[error("need {0} more bytes")]
    Incomplete(usize),
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    /// The bytes do not form a valid packet (5.0: DISCONNECT 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet the protocol does not allow here (5.0: DISCONNECT 0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

impl CodecError {
    /// The 5.0 DISCONNECT reason that answers this error.
    pub fn reason(&self) -> DisconnectReason {
        match self {
            CodecError::TooLarge(_) => DisconnectReason::PacketTooLarge,
            CodecError::Protocol(_) => DisconnectReason::ProtocolError,
            _ => DisconnectReason::MalformedPacket,
        }
    }
}

/// The fixed header of a frame: first byte, header length, remaining length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub byte1: u8,
    pub header_len: usize,
    pub remaining: usize,
}

impl Frame {
    pub fn len(&self) -> usize {
        self.header_len + self.remaining
    }
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }
}

/// Parses the fixed header at the front of `buf`. Rejects a packet over `max_size` from its
/// header, before its bytes arrive, and a remaining length of more than four bytes.
pub(crate) fn frame(buf: &[u8], max_size: usize) -> Result<Frame, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Err(CodecError::Incomplete(2));
    };
    let mut remaining = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Err(CodecError::Incomplete(1));
        };
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(CodecError::Malformed(
                "remaining length over four bytes".into(),
            ));
        }
    }
    let f = Frame {
        byte1,
        header_len: i,
        remaining,
    };
    if f.len() > max_size {
        return Err(CodecError::TooLarge(f.len()));
    }
    if buf.len() < f.len() {
        return Err(CodecError::Incomplete(f.len() - buf.len()));
    }
    Ok(f)
}

/// Reads the protocol level of a CONNECT at the start of `buf` without consuming it, so the right
/// codec can be chosen. `Ok(None)` means more bytes are needed.
pub fn sniff_version(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    if byte1 >> 4 != 1 {
        return Err(CodecError::Malformed("first packet is not CONNECT".into()));
    }
    // Skip the remaining-length varint (1 to 4 bytes).
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(CodecError::Malformed("bad remaining length".into()));
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(i), buf.get(i + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    let Some(&level) = buf.get(i + 2 + name_len) else {
        return Ok(None);
    };
    match level {
        3 | 4 => Ok(Some(Version::V311)),
        5 => Ok(Some(Version::V5)),
        other => Err(CodecError::UnsupportedVersion(other)),
    }
}

/// The answer to a CONNECT whose protocol level the server does not speak: a 3.1.1 CONNACK with
/// return code 0x01 (MQTT-3.1.2-2), which every version's client can read.
pub const UNSUPPORTED_VERSION_CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

impl Version {
    /// `3.1.1` or `5.0`, as the admin API and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5.0",
        }
    }

    /// Reads one packet from the front of `buf`. Packets larger than `max_size` are rejected
    /// from their fixed header, before their bytes arrive. A complete frame is consumed whatever
    /// it holds: it is either a packet or an error, never "need more bytes".
    pub fn read(self, buf: &mut BytesMut, max_size: usize) -> Result<Incoming, CodecError> {
        let f = frame(buf, max_size)?;
        let mut bytes = buf.split_to(f.len());
        strict::check(self, &f, &bytes)?;
        let packet = match self {
            Version::V311 => v4::read(&mut bytes),
            Version::V5 => v5::read(&f, &mut bytes),
        };
        match packet {
            Err(CodecError::Incomplete(_)) => Err(CodecError::Malformed(
                "a field runs past the end of its packet".into(),
            )),
            other => other,
        }
    }

    /// Appends the encoding of `packet` to `buf`.
    pub fn write(self, packet: Outgoing, buf: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Version::V311 => v4::write(packet, buf),
            Version::V5 => v5::write(packet, buf),
        }
    }
}

/// Skips `n` bytes of `b`, or fails if it has fewer.
pub(crate) fn skip(b: &mut &[u8], n: usize) -> Result<(), CodecError> {
    if b.remaining() < n {
        return Err(CodecError::Malformed(
            "field past the end of the packet".into(),
        ));
    }
    b.advance(n);
    Ok(())
}

#[cfg(test)]
mod tests;
