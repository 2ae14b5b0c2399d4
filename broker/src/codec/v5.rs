//! MQTT 5.0: translation between rumqttc's `v5` packets and the neutral model. Called only with
//! one complete, already framed packet that `strict` has checked.

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::{self as m5, v5};

use super::{
    AckReason, CodecError, ConnAckCode, Connect, DisconnectReason, Frame, Incoming, Outgoing,
    Properties, Publish, QoS, RetainHandling, SubCode, SubOptions, Will,
};

fn err(e: m5::Error) -> CodecError {
    match e {
        m5::Error::InsufficientBytes(n) => CodecError::Incomplete(n),
        m5::Error::PayloadSizeLimitExceeded { pkt_size, .. } => CodecError::TooLarge(pkt_size),
        m5::Error::InvalidProtocolLevel(l) => CodecError::UnsupportedVersion(l),
        other => CodecError::Malformed(other.to_string()),
    }
}

fn qos_from(q: m5::QoS) -> QoS {
    match q {
        m5::QoS::AtMostOnce => QoS::AtMostOnce,
        m5::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m5::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to(q: QoS) -> m5::QoS {
    match q {
        QoS::AtMostOnce => m5::QoS::AtMostOnce,
        QoS::AtLeastOnce => m5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m5::QoS::ExactlyOnce,
    }
}

fn utf8(b: Bytes, what: &str) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::Malformed(format!("{what} is not UTF-8")))
}

pub(super) fn read(f: &Frame, frame: &mut BytesMut) -> Result<Incoming, CodecError> {
    // DISCONNECT may omit its reason (0x00) and its properties (MQTT 3.14.2.1): rumqttc refuses
    // the first form and waits for bytes on the second.
    if f.kind() == 14 && f.remaining < 2 {
        let reason = if f.remaining == 1 {
            frame[f.header_len]
        } else {
            0
        };
        return disconnect(reason, None);
    }
    let packet = v5::Packet::read(frame, None).map_err(err)?;
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => {
            let props = c.properties.unwrap_or_default();
            let (username, password) = match login {
                Some(l) => (Some(l.username), Some(l.password)),
                None => (None, None),
            };
            let will = match will {
                Some(w) => {
                    let wp = w.properties;
                    let delay = wp.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
                    let props = wp.map(|p| {
                        Box::new(Properties {
                            payload_format_indicator: p.payload_format_indicator,
                            message_expiry_interval: p.message_expiry_interval,
                            topic_alias: None,
                            response_topic: p.response_topic,
                            correlation_data: p.correlation_data,
                            user_properties: p.user_properties,
                            subscription_identifiers: Vec::new(),
                            content_type: p.content_type,
                        })
                    });
                    Some(Will {
                        topic: utf8(w.topic, "will topic")?,
                        payload: w.message,
                        qos: qos_from(w.qos),
                        retain: w.retain,
                        props,
                        delay,
                    })
                }
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
            qos: qos_from(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            props: p.properties.map(Box::new),
        }),
        v5::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            id: s.properties.and_then(|p| p.id),
            filters: s
                .filters
                .into_iter()
                .map(|f| {
                    let opts = SubOptions {
                        qos: qos_from(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => RetainHandling::Always,
                            v5::RetainForwardRule::OnNewSubscribe => RetainHandling::IfNew,
                            v5::RetainForwardRule::Never => RetainHandling::Never,
                        },
                    };
                    (f.path, opts)
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(d) => {
            return disconnect(d.reason_code as u8, d.properties);
        }
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Incoming::Unexpected("PINGRESP"),
    })
}

/// Only reason 0x00 (normal disconnection) discards the will (MQTT-3.1.2-10); 0x04 and the
/// error reasons a client may send keep it.
fn disconnect(reason: u8, props: Option<v5::DisconnectProperties>) -> Result<Incoming, CodecError> {
    const CLIENT_REASONS: [u8; 13] = [
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97,
    ];
    const MORE: [u8; 3] = [0x98, 0x99, 0x9A];
    if !CLIENT_REASONS.contains(&reason) && !MORE.contains(&reason) {
        return Err(CodecError::Malformed(format!(
            "DISCONNECT reason {reason:#04x} is not one a client may send"
        )));
    }
    Ok(Incoming::Disconnect {
        with_will: reason != 0x00,
        session_expiry: props.and_then(|p| p.session_expiry_interval),
    })
}

pub(super) fn write(p: Outgoing, buf: &mut BytesMut) -> Result<(), CodecError> {
    to_v5(p).write(buf, None).map(drop).map_err(err)
}

fn ack_reason(r: AckReason) -> (v5::PubAckReason, v5::PubRecReason) {
    match r {
        AckReason::Success => (v5::PubAckReason::Success, v5::PubRecReason::Success),
        AckReason::NoMatchingSubscribers => (
            v5::PubAckReason::NoMatchingSubscribers,
            v5::PubRecReason::NoMatchingSubscribers,
        ),
        AckReason::NotAuthorized => (
            v5::PubAckReason::NotAuthorized,
            v5::PubRecReason::NotAuthorized,
        ),
        AckReason::TopicNameInvalid => (
            v5::PubAckReason::TopicNameInvalid,
            v5::PubRecReason::TopicNameInvalid,
        ),
    }
}

fn to_v5(p: Outgoing) -> v5::Packet {
    match p {
        Outgoing::ConnAck(c) => {
            let properties = (c.code == ConnAckCode::Success).then(|| v5::ConnAckProperties {
                session_expiry_interval: c.session_expiry,
                receive_max: Some(c.receive_max),
                // QoS 2 is supported: Maximum QoS is absent (MQTT-3.2.2-9).
                max_qos: None,
                retain_available: None,
                max_packet_size: Some(c.max_packet_size),
                assigned_client_identifier: c.assigned_client_id.clone(),
                topic_alias_max: Some(c.topic_alias_max),
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
                session_present: c.session_present,
                code: match c.code {
                    ConnAckCode::Success => v5::ConnectReturnCode::Success,
                    ConnAckCode::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    ConnAckCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnAckCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    ConnAckCode::ServerUnavailable => v5::ConnectReturnCode::ServerUnavailable,
                    ConnAckCode::UnsupportedVersion => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    ConnAckCode::Banned => v5::ConnectReturnCode::Banned,
                },
                properties,
            })
        }
        Outgoing::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: qos_to(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: p.props.map(|b| *b),
        }),
        Outgoing::PubAck { pkid, reason } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: ack_reason(reason).0,
            properties: None,
        }),
        Outgoing::PubRec { pkid, reason } => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: ack_reason(reason).1,
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
                    SubCode::Granted(q) => v5::SubscribeReasonCode::Success(qos_to(q)),
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubCode::InvalidFilter => v5::SubscribeReasonCode::TopicFilterInvalid,
                    SubCode::QuotaExceeded => v5::SubscribeReasonCode::QuotaExceeded,
                })
                .collect(),
            properties: None,
        }),
        Outgoing::UnsubAck { pkid, existed } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: existed
                .into_iter()
                .map(|e| {
                    if e {
                        v5::UnsubAckReason::Success
                    } else {
                        v5::UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
            properties: None,
        }),
        Outgoing::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outgoing::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: match reason {
                DisconnectReason::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                DisconnectReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                DisconnectReason::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                DisconnectReason::MalformedPacket => v5::DisconnectReasonCode::MalformedPacket,
                DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                DisconnectReason::ServerShuttingDown => {
                    v5::DisconnectReasonCode::ServerShuttingDown
                }
                DisconnectReason::UseAnotherServer => v5::DisconnectReasonCode::UseAnotherServer,
                DisconnectReason::QuotaExceeded => v5::DisconnectReasonCode::QuotaExceeded,
                DisconnectReason::ReceiveMaximumExceeded => {
                    v5::DisconnectReasonCode::ReceiveMaximumExceeded
                }
                DisconnectReason::TopicAliasInvalid => v5::DisconnectReasonCode::TopicAliasInvalid,
                DisconnectReason::AdministrativeAction => {
                    v5::DisconnectReasonCode::AdministrativeAction
                }
            },
            properties: None,
        }),
        Outgoing::Redirect(server) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::UseAnotherServer,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: Some(server),
            }),
        }),
    }
}
