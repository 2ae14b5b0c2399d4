//! MQTT framing for 3.1.1 and 5.0, behind one protocol-neutral packet model.
//!
//! The byte-level codecs are rumqttc's `mqttbytes` (the rumqtt project's, with public fields, both
//! directions). This module only translates between them and [`Incoming`] / [`Outgoing`], so the
//! connection logic is written once for both protocol versions. It owns no state but the version.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};

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
        filters: Vec<(String, QoS)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// `true` when the client asked for its will to be published (5.0 reason 0x04).
    Disconnect {
        with_will: bool,
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
}

/// Per-filter SUBACK outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubCode {
    Granted(QoS),
    NotAuthorized,
    InvalidFilter,
}

/// DISCONNECT reasons the server sends (5.0 only; 3.1.1 just closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    SessionTakenOver,
    KeepAliveTimeout,
    PacketTooLarge,
    ProtocolError,
    ServerShuttingDown,
    UseAnotherServer,
    QuotaExceeded,
}

/// A packet the server sends.
#[derive(Clone, Debug)]
pub enum Outgoing {
    ConnAck {
        session_present: bool,
        code: ConnAckCode,
        max_packet_size: u32,
    },
    Publish(Publish),
    /// `authorized == false` answers a denied publish (5.0: 0x87; 3.1.1 can only ack).
    PubAck {
        pkid: u16,
        authorized: bool,
    },
    PubRec {
        pkid: u16,
        authorized: bool,
    },
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pkid: u16,
        codes: Vec<SubCode>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    Disconnect(DisconnectReason),
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not a whole packet yet; at least this many more bytes are needed.
    #[error("need {0} more bytes")]
    Incomplete(usize),
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
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

impl Version {
    /// Reads one packet from the front of `buf`. Packets larger than `max_size` are rejected
    /// from their fixed header, before their bytes arrive.
    pub fn read(self, buf: &mut BytesMut, max_size: usize) -> Result<Incoming, CodecError> {
        match self {
            Version::V311 => read_v4(buf, max_size),
            Version::V5 => read_v5(buf, max_size),
        }
    }

    /// Appends the encoding of `packet` to `buf`.
    pub fn write(self, packet: Outgoing, buf: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Version::V311 => match to_v4(packet) {
                Some(p) => p.write(buf, usize::MAX).map(drop).map_err(malformed4),
                None => Ok(()),
            },
            Version::V5 => to_v5(packet).write(buf, None).map(drop).map_err(malformed5),
        }
    }
}

fn malformed4(e: m4::Error) -> CodecError {
    match e {
        m4::Error::InsufficientBytes(n) => CodecError::Incomplete(n),
        m4::Error::PayloadSizeLimitExceeded(n) => CodecError::TooLarge(n),
        m4::Error::InvalidProtocolLevel(l) => CodecError::UnsupportedVersion(l),
        other => CodecError::Malformed(other.to_string()),
    }
}

fn malformed5(e: m5::Error) -> CodecError {
    match e {
        m5::Error::InsufficientBytes(n) => CodecError::Incomplete(n),
        m5::Error::PayloadSizeLimitExceeded { pkt_size, .. } => CodecError::TooLarge(pkt_size),
        m5::Error::InvalidProtocolLevel(l) => CodecError::UnsupportedVersion(l),
        other => CodecError::Malformed(other.to_string()),
    }
}

fn qos_from4(q: m4::QoS) -> QoS {
    match q {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to4(q: QoS) -> m4::QoS {
    match q {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

fn qos_from5(q: m5::QoS) -> QoS {
    match q {
        m5::QoS::AtMostOnce => QoS::AtMostOnce,
        m5::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m5::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to5(q: QoS) -> m5::QoS {
    match q {
        QoS::AtMostOnce => m5::QoS::AtMostOnce,
        QoS::AtLeastOnce => m5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m5::QoS::ExactlyOnce,
    }
}

fn read_v4(buf: &mut BytesMut, max_size: usize) -> Result<Incoming, CodecError> {
    let packet = v4::Packet::read(buf, max_size).map_err(malformed4)?;
    Ok(match packet {
        v4::Packet::Connect(c) => {
            let (username, password) = match c.login {
                Some(l) => (Some(l.username), Some(l.password)),
                None => (None, None),
            };
            Incoming::Connect(Box::new(Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_start: c.clean_session,
                username: username.filter(|u| !u.is_empty()),
                password,
                will: c.last_will.map(|w| Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: qos_from4(w.qos),
                    retain: w.retain,
                }),
                receive_maximum: None,
                max_packet_size: None,
                session_expiry: None,
            }))
        }
        v4::Packet::Publish(p) => Incoming::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: qos_from4(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
        }),
        v4::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos_from4(f.qos)))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect { with_will: false },
        v4::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Incoming::Unexpected("PINGRESP"),
    })
}

fn utf8(b: Bytes, what: &str) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::Malformed(format!("{what} is not UTF-8")))
}

fn read_v5(buf: &mut BytesMut, max_size: usize) -> Result<Incoming, CodecError> {
    let max = u32::try_from(max_size).unwrap_or(u32::MAX);
    let packet = v5::Packet::read(buf, Some(max)).map_err(malformed5)?;
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => {
            let props = c.properties.unwrap_or_default();
            let (username, password) = match login {
                Some(l) => (Some(l.username), Some(l.password)),
                None => (None, None),
            };
            let will = match will {
                Some(w) => Some(Will {
                    topic: utf8(w.topic, "will topic")?,
                    payload: w.message,
                    qos: qos_from5(w.qos),
                    retain: w.retain,
                }),
                None => None,
            };
            Incoming::Connect(Box::new(Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_start: c.clean_start,
                username: username.filter(|u| !u.is_empty()),
                password,
                will,
                receive_maximum: props.receive_maximum,
                max_packet_size: props.max_packet_size,
                session_expiry: props.session_expiry_interval,
            }))
        }
        v5::Packet::Publish(p) => Incoming::Publish(Publish {
            topic: utf8(p.topic, "topic")?,
            payload: p.payload,
            qos: qos_from5(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
        }),
        v5::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos_from5(f.qos)))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Incoming::Unexpected("PINGRESP"),
    })
}

/// 3.1.1 has no DISCONNECT from the server: `None` means "just close".
fn to_v4(p: Outgoing) -> Option<v4::Packet> {
    Some(match p {
        Outgoing::ConnAck {
            session_present,
            code,
            ..
        } => v4::Packet::ConnAck(v4::ConnAck {
            session_present,
            code: match code {
                ConnAckCode::Success => v4::ConnectReturnCode::Success,
                ConnAckCode::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                ConnAckCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnAckCode::ServerUnavailable => v4::ConnectReturnCode::ServiceUnavailable,
                ConnAckCode::UnsupportedVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
            },
        }),
        Outgoing::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to4(p.qos),
            retain: p.retain,
            topic: p.topic,
            pkid: p.pkid,
            payload: p.payload,
        }),
        // 3.1.1 has no negative PUBACK: a denied QoS 1 publish is acked and dropped.
        Outgoing::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck { pkid }),
        Outgoing::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec { pkid }),
        Outgoing::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel { pkid }),
        Outgoing::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp { pkid }),
        Outgoing::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck {
            pkid,
            return_codes: codes
                .into_iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v4::SubscribeReasonCode::Success(qos_to4(q)),
                    // 0x80, the only failure code 3.1.1 knows.
                    SubCode::NotAuthorized | SubCode::InvalidFilter => {
                        v4::SubscribeReasonCode::Failure
                    }
                })
                .collect(),
        }),
        Outgoing::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck { pkid }),
        Outgoing::PingResp => v4::Packet::PingResp,
        Outgoing::Disconnect(_) => return None,
    })
}

fn to_v5(p: Outgoing) -> v5::Packet {
    match p {
        Outgoing::ConnAck {
            session_present,
            code,
            max_packet_size,
        } => {
            let properties = (code == ConnAckCode::Success).then(|| v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: None,
                // QoS 2 is accepted from clients, but the server delivers at most QoS 1.
                max_qos: Some(1),
                retain_available: None,
                max_packet_size: Some(max_packet_size),
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            });
            v5::Packet::ConnAck(v5::ConnAck {
                session_present,
                code: match code {
                    ConnAckCode::Success => v5::ConnectReturnCode::Success,
                    ConnAckCode::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    ConnAckCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnAckCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    ConnAckCode::ServerUnavailable => v5::ConnectReturnCode::ServerUnavailable,
                    ConnAckCode::UnsupportedVersion => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                },
                properties,
            })
        }
        Outgoing::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: qos_to5(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        Outgoing::PubAck { pkid, authorized } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: if authorized {
                v5::PubAckReason::Success
            } else {
                v5::PubAckReason::NotAuthorized
            },
            properties: None,
        }),
        Outgoing::PubRec { pkid, authorized } => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: if authorized {
                v5::PubRecReason::Success
            } else {
                v5::PubRecReason::NotAuthorized
            },
            properties: None,
        }),
        Outgoing::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel {
            pkid,
            reason: v5::PubRelReason::Success,
            properties: None,
        }),
        Outgoing::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp {
            pkid,
            reason: v5::PubCompReason::Success,
            properties: None,
        }),
        Outgoing::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: codes
                .into_iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v5::SubscribeReasonCode::Success(qos_to5(q)),
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubCode::InvalidFilter => v5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect(),
            properties: None,
        }),
        Outgoing::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: vec![v5::UnsubAckReason::Success; count],
            properties: None,
        }),
        Outgoing::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outgoing::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: match reason {
                DisconnectReason::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                DisconnectReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                DisconnectReason::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                DisconnectReason::ServerShuttingDown => {
                    v5::DisconnectReasonCode::ServerShuttingDown
                }
                DisconnectReason::UseAnotherServer => v5::DisconnectReasonCode::UseAnotherServer,
                DisconnectReason::QuotaExceeded => v5::DisconnectReasonCode::QuotaExceeded,
            },
            properties: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suback_failure_is_0x80_in_311_and_0x87_in_5() {
        let mut b = BytesMut::new();
        Version::V311
            .write(
                Outgoing::SubAck {
                    pkid: 1,
                    codes: vec![SubCode::NotAuthorized],
                },
                &mut b,
            )
            .unwrap();
        assert_eq!(b.last(), Some(&0x80));
        let mut b = BytesMut::new();
        Version::V5
            .write(
                Outgoing::SubAck {
                    pkid: 1,
                    codes: vec![SubCode::NotAuthorized],
                },
                &mut b,
            )
            .unwrap();
        assert_eq!(b.last(), Some(&0x87));
    }

    #[test]
    fn sniff_tells_versions_apart_and_waits_for_bytes() {
        // CONNECT, remaining length 10, "MQTT", level 4.
        let v4 = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        assert_eq!(sniff_version(&v4).unwrap(), Some(Version::V311));
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(sniff_version(&v5).unwrap(), Some(Version::V5));
        assert_eq!(sniff_version(&v4[..5]).unwrap(), None);
        let mut bad = v4;
        bad[8] = 9;
        assert!(matches!(
            sniff_version(&bad),
            Err(CodecError::UnsupportedVersion(9))
        ));
        assert!(sniff_version(&[0x30, 0]).is_err());
    }
}
