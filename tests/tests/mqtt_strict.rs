//! The wire as the spec fixes it, byte by byte: CONNECT outcomes (protocol level, client ids,
//! assigned ids), DISCONNECT forms and the will, malformed packets answered with DISCONNECT
//! 0x81/0x82 (5.0) or a close (3.1.1), topic aliases, and the order SUBACK / delivery.

mod common;

use std::time::Duration;

use common::raw::{
    connect_packet, open_acl_broker, packet, publish_packet, put_str, subscribe_packet,
    ConnectOpts, Raw,
};
use common::Broker;

fn v5<'a>(client_id: &'a str) -> ConnectOpts<'a> {
    ConnectOpts {
        level: 5,
        client_id,
        clean: true,
        keep_alive: 30,
        ..Default::default()
    }
}

fn v4<'a>(client_id: &'a str) -> ConnectOpts<'a> {
    ConnectOpts {
        level: 4,
        ..v5(client_id)
    }
}

/// 5.0 CONNACK properties as (id, raw value bytes).
fn connack_props(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut i = 2;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = body[i];
        i += 1;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let end = i + len;
    let mut out = Vec::new();
    while i < end {
        let id = body[i];
        i += 1;
        let n = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A | 0x17 | 0x19 | 0x01 => 1,
            0x21 | 0x22 | 0x13 => 2,
            0x11 | 0x27 => 4,
            0x12 | 0x1A | 0x1C | 0x1F | 0x15 => {
                2 + usize::from(u16::from_be_bytes([body[i], body[i + 1]]))
            }
            other => panic!("unexpected CONNACK property {other:#x}"),
        };
        out.push((id, body[i..i + n].to_vec()));
        i += n;
    }
    out
}

/// A watcher subscribed to `topic` (3.1.1, QoS 1).
async fn watcher(b: &Broker, topic: &str) -> Raw {
    let (mut w, ack) = Raw::connect(b, &v4("watcher")).await;
    assert_eq!(ack, vec![0, 0]);
    w.send(&subscribe_packet(false, 1, topic, 1)).await;
    let (kind, _) = w.expect().await;
    assert_eq!(kind, 0x90);
    w
}

#[tokio::test]
async fn protocol_level_9_gets_connack_0x01_mqtt_3_1_2_2() {
    let b = Broker::start();
    let mut r = Raw::open(&b).await;
    let mut o = v4("x");
    o.level = 9;
    r.send(&connect_packet(&o)).await;
    let got = r.until_closed().await;
    assert_eq!(got, vec![(0x20, vec![0x00, 0x01])]);
}

#[tokio::test]
async fn an_empty_client_id_gets_an_assigned_client_identifier_in_5_0_mqtt_3_2_2_3_7() {
    let (b, _c) = open_acl_broker("");
    let mut o = v5("");
    o.clean = false;
    let (_r, ack) = Raw::connect(&b, &o).await;
    assert_eq!(ack[1], 0x00, "CONNACK reason");
    let props = connack_props(&ack);
    let id = props
        .iter()
        .find(|(id, _)| *id == 0x12)
        .expect("assigned id");
    assert!(id.1.len() > 2, "empty assigned id");
    // Maximum QoS is absent: QoS 2 is supported (MQTT-3.2.2-9).
    assert!(!props.iter().any(|(id, _)| *id == 0x24), "{props:?}");
}

#[tokio::test]
async fn an_empty_client_id_with_clean_session_0_is_refused_in_3_1_1_mqtt_3_1_3_8() {
    let (b, _c) = open_acl_broker("");
    let mut o = v4("");
    o.clean = false;
    let (_r, ack) = Raw::connect(&b, &o).await;
    assert_eq!(ack, vec![0x00, 0x02]);
    let (_r, ack) = Raw::connect(&b, &v4("")).await;
    assert_eq!(
        ack,
        vec![0x00, 0x00],
        "clean session 1 may have an empty id"
    );
}

#[tokio::test]
async fn client_ids_with_slash_plus_hash_or_over_128_bytes_are_refused() {
    let (b, _c) = open_acl_broker("");
    let long = "x".repeat(129);
    for id in ["a/b", "a+b", "a#", long.as_str()] {
        let (_r, ack) = Raw::connect(&b, &v4(id)).await;
        assert_eq!(ack, vec![0x00, 0x02], "3.1.1 {id}");
        let (_r, ack) = Raw::connect(&b, &v5(id)).await;
        assert_eq!(ack[1], 0x85, "5.0 {id}");
    }
}

async fn will_after_disconnect(disconnect: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (b, _c) = open_acl_broker("");
    let mut w = watcher(&b, "will/t").await;
    let mut o = v5("dev");
    o.will = Some(("will/t", "gone", 0));
    let (mut r, ack) = Raw::connect(&b, &o).await;
    assert_eq!(ack[1], 0);
    r.send(disconnect).await;
    let closed = r.until_closed().await;
    assert!(
        closed.is_empty(),
        "server answered DISCONNECT with {closed:02x?}"
    );
    w.try_expect(Duration::from_millis(500)).await
}

#[tokio::test]
async fn a_5_0_disconnect_of_remaining_length_0_is_normal_and_sends_no_will_mqtt_3_14_2_1() {
    assert_eq!(will_after_disconnect(&[0xe0, 0x00]).await, None);
}

#[tokio::test]
async fn a_5_0_disconnect_with_reason_0_and_no_properties_is_normal_and_closes() {
    assert_eq!(will_after_disconnect(&[0xe0, 0x01, 0x00]).await, None);
}

#[tokio::test]
async fn disconnect_with_will_message_0x04_publishes_the_will() {
    let got = will_after_disconnect(&[0xe0, 0x01, 0x04]).await;
    let (kind, body) = got.expect("will published");
    assert_eq!(kind & 0xf0, 0x30);
    assert!(body.ends_with(b"gone"));
}

/// Connects 5.0, sends `bytes`, and returns what the server sent before closing.
async fn v5_answer(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (b, _c) = open_acl_broker("");
    let (mut r, ack) = Raw::connect(&b, &v5("dev")).await;
    assert_eq!(ack[1], 0);
    r.send(bytes).await;
    r.until_closed().await
}

#[tokio::test]
async fn a_publish_whose_property_length_is_cut_inside_its_frame_gets_disconnect_0x81() {
    let got = v5_answer(&[0x30, 0x04, 0x00, 0x01, 0x61, 0x80]).await;
    assert_eq!(got, vec![(0xe0, vec![0x81])]);
}

#[tokio::test]
async fn a_connect_whose_property_length_is_cut_is_closed_at_once() {
    let (b, _c) = open_acl_broker("");
    let mut r = Raw::open(&b).await;
    // CONNECT 5.0, flags clean, keepalive 30, property length byte 0x80 and nothing after.
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 30, 0x80]);
    let t = std::time::Instant::now();
    r.send(&packet(0x10, &body)).await;
    r.until_closed().await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "waited for the connect timeout"
    );
}

#[tokio::test]
async fn a_duplicate_topic_alias_and_a_client_subscription_identifier_get_disconnect_0x82() {
    let dup = publish_packet("a", 0, 0, Some(&[0x23, 0, 1, 0x23, 0, 1]), b"x");
    assert_eq!(v5_answer(&dup).await, vec![(0xe0, vec![0x82])]);
    let subid = publish_packet("a", 0, 0, Some(&[0x0b, 1]), b"x");
    assert_eq!(v5_answer(&subid).await, vec![(0xe0, vec![0x82])]);
}

#[tokio::test]
async fn topic_alias_0_gets_disconnect_0x94_mqtt_3_3_2_8() {
    let p = publish_packet("a", 1, 1, Some(&[0x23, 0, 0]), b"x");
    assert_eq!(v5_answer(&p).await, vec![(0xe0, vec![0x94])]);
}

#[tokio::test]
async fn a_topic_alias_set_once_names_the_topic_of_later_publishes() {
    let (b, _c) = open_acl_broker("");
    let mut w = watcher(&b, "alias/t").await;
    let (mut r, _) = Raw::connect(&b, &v5("dev")).await;
    r.send(&publish_packet(
        "alias/t",
        0,
        0,
        Some(&[0x23, 0, 7]),
        b"one",
    ))
    .await;
    r.send(&publish_packet("", 0, 0, Some(&[0x23, 0, 7]), b"two"))
        .await;
    for want in [&b"one"[..], b"two"] {
        let (_, body) = w.expect().await;
        assert!(body.ends_with(want), "{body:02x?}");
        assert!(body.starts_with(b"\x00\x07alias/t"));
    }
}

#[tokio::test]
async fn nul_in_a_topic_subscribe_with_packet_id_0_or_flags_0000_close_a_3_1_1_connection() {
    for bad in [
        publish_packet("a\0b", 0, 0, None, b"x"),
        vec![0x82, 0x06, 0, 0, 0, 1, b'a', 0],
        vec![0x80, 0x06, 0, 1, 0, 1, b'a', 0],
        // Server-only packets from a client.
        vec![0x20, 0x02, 0, 0],
        vec![0x90, 0x03, 0, 1, 0],
        // A second CONNECT.
        connect_packet(&v4("dev")),
    ] {
        let (b, _c) = open_acl_broker("");
        let (mut r, _) = Raw::connect(&b, &v4("dev")).await;
        r.send(&bad).await;
        assert_eq!(r.until_closed().await, vec![], "{bad:02x?}");
    }
}

#[tokio::test]
async fn the_subscription_is_active_before_its_suback_mqtt_3_8_4() {
    let (b, _c) = open_acl_broker("");
    let (mut r, _) = Raw::connect(&b, &v4("dev")).await;
    // SUBSCRIBE and a PUBLISH to the same topic in one write: the publish is handled after
    // the subscription, so it must come back.
    let mut both = subscribe_packet(false, 1, "order/t", 0);
    both.extend(publish_packet("order/t", 0, 0, None, b"right after"));
    r.send(&both).await;
    let (kind, _) = r.expect().await;
    assert_eq!(kind, 0x90, "SUBACK first");
    let (kind, body) = r.expect().await;
    assert_eq!(kind, 0x30);
    assert!(body.ends_with(b"right after"));
}

#[tokio::test]
async fn a_filter_of_65000_levels_is_refused_and_the_connection_lives() {
    let (b, _c) = open_acl_broker("[mqtt]\nmax_packet_size = 262144\n");
    let (mut r, _) = Raw::connect(&b, &v4("dev")).await;
    // 65,000 separators: 65,001 (empty) levels in one 65,000-byte string.
    let deep = "/".repeat(65_000);
    r.send(&subscribe_packet(false, 1, &deep, 0)).await;
    assert_eq!(r.expect().await, (0x90, vec![0, 1, 0x80]));
    r.send(&[0xc0, 0x00]).await;
    assert_eq!(r.expect().await.0, 0xd0, "PINGRESP");
}

#[tokio::test]
async fn a_5_0_client_past_our_receive_maximum_gets_disconnect_0x93_mqtt_3_3_4_9() {
    let (b, _c) = open_acl_broker("[mqtt]\nmax_pending_acks = 2\n");
    let (mut r, ack) = Raw::connect(&b, &v5("dev")).await;
    // CONNACK announces Receive Maximum 2 (property 0x21).
    assert!(
        connack_props(&ack).contains(&(0x21, vec![0, 2])),
        "{ack:02x?}"
    );
    // Three QoS 1 publishes in one write: the third exceeds it.
    let mut three = Vec::new();
    for id in 1..=3u16 {
        three.extend(publish_packet("rm/t", 1, id, Some(&[]), b"x"));
    }
    r.send(&three).await;
    let got = r.until_closed().await;
    assert_eq!(got.last(), Some(&(0xe0, vec![0x93])), "{got:02x?}");
}

#[tokio::test]
async fn a_packet_announced_over_the_maximum_size_closes_at_once_without_waiting_for_it() {
    for (opts, answer) in [(v4("dev"), vec![]), (v5("dev"), vec![(0xe0, vec![0x95])])] {
        let (b, _c) = open_acl_broker("");
        let (mut r, _) = Raw::connect(&b, &opts).await;
        // A PUBLISH of 256 MB, of which nothing more is sent.
        r.send(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
        assert_eq!(r.until_closed().await, answer);
    }
}
