//! Entry points for the fuzz targets (`fuzz/`) and for replaying their corpus and the
//! malformed-input regression file under a plain `cargo test`. Each takes arbitrary bytes and
//! panics only if the codec breaks one of its promises; the panics are the findings.

use bytes::{Bytes, BytesMut};

use super::{CodecError, Incoming, Outgoing, Properties, Publish, QoS, Version};

/// The largest packet the probes allow (small, so huge remaining lengths are refused early).
pub const PROBE_MAX: usize = 64 * 1024;

/// How one input ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte was decoded into packets.
    Packets,
    /// A packet was not complete yet.
    Incomplete,
    Malformed,
    Protocol,
    TooLarge,
    UnsupportedVersion,
}

/// Decodes packets from `data` until it runs out or fails, checking that a decoded or refused
/// frame is consumed whole and that "need more bytes" consumes nothing.
pub fn decode_all(v: Version, data: &[u8]) -> Verdict {
    let mut buf = BytesMut::from(data);
    loop {
        if buf.is_empty() {
            return Verdict::Packets;
        }
        let before = buf.len();
        let frame_len = super::frame(&buf, PROBE_MAX).ok().map(|f| f.len());
        match v.read(&mut buf, PROBE_MAX) {
            Ok(_) => {
                assert_eq!(Some(before - buf.len()), frame_len, "a packet is one frame");
            }
            Err(CodecError::Incomplete(n)) => {
                assert_eq!(buf.len(), before, "incomplete consumed bytes");
                assert!(n > 0, "incomplete asks for no bytes");
                return Verdict::Incomplete;
            }
            Err(e) => {
                if let Some(len) = frame_len {
                    assert_eq!(before - buf.len(), len, "a refused frame is consumed whole");
                }
                return match e {
                    CodecError::Malformed(_) => Verdict::Malformed,
                    CodecError::Protocol(_) => Verdict::Protocol,
                    CodecError::TooLarge(_) => Verdict::TooLarge,
                    CodecError::UnsupportedVersion(_) => Verdict::UnsupportedVersion,
                    CodecError::Incomplete(_) => unreachable!(),
                };
            }
        }
    }
}

/// Builds a PUBLISH from `data`, encodes it as the server would for each version and decodes it
/// as a client's: what comes back must be what went in.
pub fn publish_round_trip(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(4));
    let b = |i: usize| head.get(i).copied().unwrap_or(0);
    let split = usize::from(b(0)).min(rest.len());
    let topic: String = String::from_utf8_lossy(&rest[..split])
        .chars()
        .filter(|c| !matches!(c, '+' | '#' | '\0'))
        .collect();
    let topic = if topic.is_empty() { "t".into() } else { topic };
    let qos = match b(1) % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let props = (b(2) & 1 == 1).then(|| {
        Box::new(Properties {
            payload_format_indicator: Some(b(2) >> 7),
            message_expiry_interval: Some(u32::from(b(3))),
            topic_alias: None,
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::copy_from_slice(&rest[split..])),
            user_properties: vec![("k".into(), topic.clone())],
            subscription_identifiers: Vec::new(),
            content_type: Some("c".into()),
        })
    });
    for v in [Version::V311, Version::V5] {
        let p = Publish {
            topic: topic.clone(),
            payload: Bytes::copy_from_slice(&rest[split..]),
            qos,
            retain: b(2) & 2 != 0,
            dup: qos != QoS::AtMostOnce && b(2) & 4 != 0,
            pkid: if qos == QoS::AtMostOnce {
                0
            } else {
                u16::from(b(3)).max(1)
            },
            props: if v == Version::V5 {
                props.clone()
            } else {
                None
            },
        };
        let mut buf = BytesMut::new();
        if topic.len() > usize::from(u16::MAX) {
            return;
        }
        v.write(Outgoing::Publish(p.clone()), &mut buf)
            .expect("encode");
        match v.read(&mut buf, usize::MAX) {
            Ok(Incoming::Publish(q)) => {
                assert_eq!(
                    (&q.topic, &q.payload, q.qos, q.retain, q.dup, q.pkid),
                    (&p.topic, &p.payload, p.qos, p.retain, p.dup, p.pkid)
                );
                assert_eq!(q.props, p.props);
            }
            other => panic!("{v:?}: {p:?} came back as {other:?}"),
        }
        assert!(buf.is_empty());
    }
}
