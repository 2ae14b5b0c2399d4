//! Unit tests of the codec: encodings the spec fixes, and frames that must be refused.

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

fn read(v: Version, bytes: &[u8]) -> (Result<Incoming, CodecError>, usize) {
    let mut b = BytesMut::from(bytes);
    let r = v.read(&mut b, 1 << 20);
    (r, b.len())
}

#[test]
fn a_v5_disconnect_without_reason_or_properties_is_normal_and_drops_the_will() {
    for bytes in [
        &[0xe0, 0x00][..],
        &[0xe0, 0x01, 0x00],
        &[0xe0, 0x02, 0x00, 0x00],
    ] {
        let (r, left) = read(Version::V5, bytes);
        assert!(
            matches!(
                r,
                Ok(Incoming::Disconnect {
                    with_will: false,
                    ..
                })
            ),
            "{bytes:02x?}: {r:?}"
        );
        assert_eq!(left, 0);
    }
    let (r, _) = read(Version::V5, &[0xe0, 0x01, 0x04]);
    assert!(matches!(
        r,
        Ok(Incoming::Disconnect {
            with_will: true,
            ..
        })
    ));
}

#[test]
fn a_property_length_truncated_inside_a_complete_frame_is_malformed_not_incomplete() {
    let (r, left) = read(Version::V5, &[0x30, 0x04, 0x00, 0x01, 0x61, 0x80]);
    assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
    assert_eq!(left, 0, "the frame is consumed");
}

#[test]
fn an_incomplete_frame_asks_for_more_bytes_and_consumes_nothing() {
    let (r, left) = read(Version::V5, &[0x30, 0x05, 0x00, 0x01, 0x61]);
    assert!(matches!(r, Err(CodecError::Incomplete(_))), "{r:?}");
    assert_eq!(left, 5);
}

#[test]
fn duplicate_topic_alias_and_a_client_subscription_id_are_protocol_errors() {
    // PUBLISH "a", properties: Topic Alias 1 twice.
    let (r, _) = read(
        Version::V5,
        &[
            0x30, 0x0a, 0x00, 0x01, 0x61, 0x06, 0x23, 0, 1, 0x23, 0, 1, b'x',
        ][..12],
    );
    assert!(matches!(r, Err(CodecError::Protocol(_))), "{r:?}");
    // PUBLISH "a", property Subscription Identifier 1.
    let (r, _) = read(
        Version::V5,
        &[0x30, 0x06, 0x00, 0x01, 0x61, 0x02, 0x0b, 0x01],
    );
    assert!(matches!(r, Err(CodecError::Protocol(_))), "{r:?}");
}

#[test]
fn subscribe_with_packet_id_0_or_reserved_flags_is_refused() {
    // SUBSCRIBE pkid 0, "a" QoS 0.
    let (r, _) = read(Version::V311, &[0x82, 0x06, 0, 0, 0, 1, b'a', 0]);
    assert!(r.is_err(), "{r:?}");
    // SUBSCRIBE with flags 0000.
    let (r, _) = read(Version::V311, &[0x80, 0x06, 0, 1, 0, 1, b'a', 0]);
    assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
}

#[test]
fn nul_and_invalid_utf8_in_a_topic_are_malformed() {
    let (r, _) = read(Version::V311, &[0x30, 0x04, 0, 2, b'a', 0]);
    assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
    let (r, _) = read(Version::V5, &[0x30, 0x05, 0, 2, 0xc3, 0x28, 0]);
    assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
}

#[test]
fn a_remaining_length_over_four_bytes_is_malformed() {
    let (r, _) = read(Version::V311, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
}

#[test]
fn a_huge_remaining_length_is_refused_from_the_header() {
    let mut b = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
    let r = Version::V311.read(&mut b, 1024);
    assert!(matches!(r, Err(CodecError::TooLarge(_))), "{r:?}");
}
