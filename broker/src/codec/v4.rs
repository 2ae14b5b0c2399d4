//! MQTT 3.1.1: translation between rumqttc's `v4` packets and the neutral model. Called only
//! with one complete, already framed packet.

use bytes::BytesMut;
use rumqttc::mqttbytes::{self as m4, v4};

use super::{
    CodecError, ConnAckCode, Connect, Incoming, Outgoing, Publish, QoS, SubCode, SubOptions, Will,
};

fn err(e: m4::Error) -> CodecError {
    match e {
        m4::Error::InsufficientBytes(n) => CodecError::Incomplete(n),
        m4::Error::PayloadSizeLimitExceeded(n) => CodecError::TooLarge(n),
        m4::Error::InvalidProtocolLevel(l) => CodecError::UnsupportedVersion(l),
        other => CodecError::Malformed(other.to_string()),
    }
}

fn qos_from(q: m4::QoS) -> QoS {
    match q {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to(q: QoS) -> m4::QoS {
    match q {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

pub(super) fn read(frame: &mut BytesMut) -> Result<Incoming, CodecError> {
    let packet = v4::Packet::read(frame, usize::MAX).map_err(err)?;
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
                    qos: qos_from(w.qos),
                    retain: w.retain,
                    props: None,
                    delay: 0,
                }),
                receive_maximum: None,
                max_packet_size: None,
                session_expiry: None,
            }))
        }
        v4::Packet::Publish(p) => Incoming::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: qos_from(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            props: None,
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
                .map(|f| (f.path, SubOptions::qos(qos_from(f.qos))))
                .collect(),
            id: None,
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        v4::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Incoming::Unexpected("PINGRESP"),
    })
}

pub(super) fn write(p: Outgoing, buf: &mut BytesMut) -> Result<(), CodecError> {
    match to_v4(p) {
        Some(p) => p.write(buf, usize::MAX).map(drop).map_err(err),
        None => Ok(()),
    }
}

/// 3.1.1 has no DISCONNECT from the server: `None` means "just close".
fn to_v4(p: Outgoing) -> Option<v4::Packet> {
    Some(match p {
        Outgoing::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: match c.code {
                ConnAckCode::Success => v4::ConnectReturnCode::Success,
                ConnAckCode::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                ConnAckCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                ConnAckCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnAckCode::ServerUnavailable => v4::ConnectReturnCode::ServiceUnavailable,
                ConnAckCode::UnsupportedVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
                ConnAckCode::Banned => v4::ConnectReturnCode::NotAuthorized,
            },
        }),
        Outgoing::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to(p.qos),
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
                    SubCode::Granted(q) => v4::SubscribeReasonCode::Success(qos_to(q)),
                    // 0x80, the only failure code 3.1.1 knows.
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        Outgoing::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck { pkid }),
        Outgoing::PingResp => v4::Packet::PingResp,
        Outgoing::Disconnect(_) | Outgoing::Redirect(_) => return None,
    })
}
