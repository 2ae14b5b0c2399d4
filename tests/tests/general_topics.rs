//! The general MQTT broker outside `im/`: per-user subtrees under a deny-by-default ACL, retained
//! messages, QoS 0, keepalive and wills, anonymous clients, and the wall between general
//! subscribers (even `#`) and IM traffic.

mod common;

use std::time::{Duration, Instant};

use common::{token, Broker, Device, Proto, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const GRANTED: &str = "[Success(AtLeastOnce)]";
const REFUSED_V4: &str = "[Failure]";

fn text(r: &common::Received) -> String {
    String::from_utf8_lossy(&r.payload).into_owned()
}

#[tokio::test]
async fn a_users_clients_share_their_own_subtree() {
    let b = Broker::start();
    let mut phone = Device::connect(&b, "alice", "alice-phone").await;
    let laptop = Device::connect(&b, "alice", "alice-laptop").await;
    assert_eq!(phone.subscribe("users/alice/#").await, GRANTED);

    laptop
        .publish_raw("users/alice/x", "hello from the laptop")
        .await;
    let r = phone.recv().await;
    assert_eq!(r.topic, "users/alice/x");
    assert_eq!(text(&r), "hello from the laptop");
    phone.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn qos0_publish_on_an_allowed_topic_is_delivered() {
    let b = Broker::start();
    let mut phone = Device::connect(&b, "alice", "alice-phone").await;
    let laptop = Device::connect_with(&b, "alice", "alice-laptop", Proto::V5).await;
    assert_eq!(phone.subscribe("users/alice/q0").await, GRANTED);
    laptop
        .publish_with("users/alice/q0", "fire and forget", 0, false)
        .await;
    let r = phone.recv().await;
    assert_eq!(
        (r.topic.as_str(), text(&r).as_str()),
        ("users/alice/q0", "fire and forget")
    );
}

#[tokio::test]
async fn another_user_can_neither_subscribe_to_nor_publish_into_a_users_subtree() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "alice-phone").await;
    let alice_laptop = Device::connect(&b, "alice", "alice-laptop").await;
    let mut bob = Device::connect(&b, "bob", "bob-phone").await;
    let mut bob5 = Device::connect_with(&b, "bob", "bob-desktop", Proto::V5).await;
    assert_eq!(alice.subscribe("users/alice/#").await, GRANTED);

    assert_eq!(bob.subscribe("users/alice/#").await, REFUSED_V4);
    assert_eq!(bob.subscribe("users/alice/x").await, REFUSED_V4);
    assert_eq!(bob.subscribe("users/+/x").await, REFUSED_V4);
    assert_eq!(bob5.subscribe("users/alice/#").await, "[NotAuthorized]");

    // 3.1.1 cannot say no to a publish; 5.0 gets "not authorized". Neither is delivered.
    bob.publish_raw("users/alice/x", "from bob 3.1.1").await;
    bob5.publish_raw("users/alice/x", "from bob 5.0").await;
    assert_eq!(bob5.wait_for("$puback").await, "NotAuthorized");
    // Bob's connection is fine and may still use his own subtree.
    bob5.publish_raw("users/bob/x", "mine").await;
    assert_eq!(bob5.wait_for("$puback").await, "Success");

    // Alice's subscription works: the first thing she gets is her own laptop's message.
    alice_laptop
        .publish_raw("users/alice/x", "from alice")
        .await;
    let r = alice.recv().await;
    assert_eq!(text(&r), "from alice", "alice got {} first", r.topic);
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.expect_silence(Duration::from_millis(100)).await;
}

/// Dave sends erin an IM and erin answers; both see the events.
async fn im_exchange(b: &Broker) -> (Device, Device) {
    let mut dave = Device::connect(b, "dave", "dave-phone").await;
    let mut erin = Device::connect(b, "erin", "erin-phone").await;
    let sent = dave.send("erin", "d1", "secret for erin").await;
    assert_eq!(erin.event().await["message"]["msgId"], sent["msgId"]);
    let back = erin.send("dave", "e1", "secret for dave").await;
    assert_eq!(dave.event().await["message"]["msgId"], back["msgId"]);
    (dave, erin)
}

#[tokio::test]
async fn hash_subscription_is_refused_by_the_default_acl_and_sees_no_im_traffic() {
    let b = Broker::start();
    let mut carol = Device::connect(&b, "carol", "carol-phone").await;
    for filter in [
        "#",
        "+/#",
        "im/#",
        "im/+/+/down/json",
        "+/dave/+/down/json",
        "users/#",
    ] {
        assert_eq!(carol.subscribe(filter).await, REFUSED_V4, "{filter}");
    }
    let _pair = im_exchange(&b).await;
    carol.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn with_an_acl_allowing_everything_hash_gets_general_traffic_but_never_im() {
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("mqim.toml");
    std::fs::write(
        &path,
        "[[acl]]\nuser = \"*\"\ntopic = \"#\"\naccess = \"readwrite\"\n",
    )
    .unwrap();
    let b = Broker::start_with(&[("MQIM_CONFIG", path.to_str().unwrap())]);
    let mut watcher = Device::connect(&b, "carol", "carol-watch").await;
    let mut carol5 = Device::connect_with(&b, "carol", "carol-desktop", Proto::V5).await;
    assert_eq!(watcher.subscribe("#").await, GRANTED);
    assert_eq!(watcher.subscribe("+/+/+/down/json").await, GRANTED);
    // The IM tree itself stays owner-only, whatever the ACL says.
    assert_eq!(watcher.subscribe("im/#").await, REFUSED_V4);
    assert_eq!(
        watcher.subscribe("im/erin/erin-phone/down/json").await,
        REFUSED_V4
    );

    let (_dave, mut erin) = im_exchange(&b).await;
    // A forged "downlink" publish into erin's IM topic is refused, not routed to anyone.
    carol5
        .publish_raw(
            "im/erin/erin-phone/down/json",
            r#"{"event":{"seq":"99","message":{"text":"forged"}}}"#,
        )
        .await;
    assert_eq!(carol5.wait_for("$puback").await, "NotAuthorized");

    // General traffic reaches `#`; it is the first and only thing the watcher gets.
    carol5.publish_raw("news/today", "general news").await;
    assert_eq!(carol5.wait_for("$puback").await, "Success");
    let r = watcher.recv().await;
    assert_eq!(r.topic, "news/today", "the # subscriber got {:?}", text(&r));
    assert_eq!(text(&r), "general news");
    watcher.expect_silence(Duration::from_millis(500)).await;
    erin.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn retained_status_is_delivered_to_a_later_subscriber_until_cleared() {
    let b = Broker::start();
    let mut alice = Device::connect_with(&b, "alice", "alice-phone", Proto::V5).await;
    alice
        .publish_with("users/alice/status", "online", 1, true)
        .await;
    assert_eq!(alice.wait_for("$puback").await, "Success");

    let mut later = Device::connect(&b, "alice", "alice-laptop").await;
    assert_eq!(later.subscribe("users/alice/status").await, GRANTED);
    let r = later.recv().await;
    assert_eq!(
        (r.topic.as_str(), text(&r).as_str()),
        ("users/alice/status", "online")
    );
    later.expect_silence(Duration::from_millis(300)).await;
    // A wildcard subscription gets it too.
    let mut tablet = Device::connect(&b, "alice", "alice-tablet").await;
    assert_eq!(tablet.subscribe("users/alice/+").await, GRANTED);
    assert_eq!(text(&tablet.recv().await), "online");

    // An empty retained publish clears it (MQTT 3.3.1.3): the next subscriber gets nothing.
    alice.publish_with("users/alice/status", "", 1, true).await;
    assert_eq!(alice.wait_for("$puback").await, "Success");
    let mut last = Device::connect(&b, "alice", "alice-watch").await;
    assert_eq!(last.subscribe("users/alice/status").await, GRANTED);
    last.expect_silence(Duration::from_millis(500)).await;
}

// ---- A hand-built MQTT 3.1.1 client, for what rumqttc will not do (go silent, skip creds). ----

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// CONNECT (3.1.1, clean session) with optional credentials and an optional QoS 1 will.
fn connect_packet(
    client_id: &str,
    creds: Option<(&str, &str)>,
    keep_alive: u16,
    will: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut flags = 0x02;
    if will.is_some() {
        flags |= 0x04 | (1 << 3);
    }
    if creds.is_some() {
        flags |= 0x80 | 0x40;
    }
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some((topic, msg)) = will {
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, msg.as_bytes());
    }
    if let Some((user, pass)) = creds {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
    }
    packet(0x10, &body)
}

/// Reads one packet: `Ok(None)` at EOF.
async fn read_packet(s: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let first = match s.read_u8().await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(Some((first, body)))
}

async fn expect_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    timeout(WAIT, read_packet(s))
        .await
        .expect("no packet in time")
        .expect("read")
        .expect("connection closed")
}

/// Connects raw and returns the stream and the CONNACK return code.
async fn raw_connect(b: &Broker, connect: &[u8]) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", b.mqtt_port))
        .await
        .unwrap();
    s.write_all(connect).await.unwrap();
    let (kind, body) = expect_packet(&mut s).await;
    assert_eq!(kind, 0x20, "expected CONNACK, got {kind:#x} {body:?}");
    assert_eq!(body.len(), 2);
    (s, body[1])
}

#[tokio::test]
async fn silent_client_is_dropped_after_its_keepalive_and_its_will_is_published() {
    let b = Broker::start();
    let mut watcher = Device::connect(&b, "alice", "alice-phone").await;
    assert_eq!(watcher.subscribe("users/alice/will").await, GRANTED);

    let tok = token("alice", 600);
    let connect = connect_packet(
        "alice-sensor",
        Some(("alice", &tok)),
        1,
        Some(("users/alice/will", "alice-sensor went away")),
    );
    let (mut s, code) = raw_connect(&b, &connect).await;
    assert_eq!(code, 0, "CONNACK refused");
    let t = Instant::now();
    // Not a byte more from the client: the server must give up on it after 1.5 x keepalive.
    let end = timeout(Duration::from_secs(5), read_packet(&mut s))
        .await
        .expect("still connected 5 s after a 1 s keepalive");
    let waited = t.elapsed();
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "expected the connection to close, got {end:?}"
    );
    assert!(
        waited >= Duration::from_millis(1000) && waited <= Duration::from_millis(3000),
        "disconnected after {waited:?}, expected about 1.5 s"
    );

    let r = watcher.recv().await;
    assert_eq!(r.topic, "users/alice/will");
    assert_eq!(text(&r), "alice-sensor went away");
}

#[tokio::test]
async fn pinging_client_stays_connected_and_a_clean_disconnect_sends_no_will() {
    let b = Broker::start();
    let mut watcher = Device::connect(&b, "alice", "alice-phone").await;
    assert_eq!(watcher.subscribe("users/alice/will").await, GRANTED);
    let tok = token("alice", 600);
    let connect = connect_packet(
        "alice-sensor",
        Some(("alice", &tok)),
        1,
        Some(("users/alice/will", "alice-sensor went away")),
    );
    let (mut s, code) = raw_connect(&b, &connect).await;
    assert_eq!(code, 0);
    // 3.5 s, well past 1.5 x keepalive, kept alive by PINGREQ every 500 ms.
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(&[0xC0, 0x00])
            .await
            .expect("connection dropped");
        let (kind, _) = expect_packet(&mut s).await;
        assert_eq!(kind, 0xD0, "expected PINGRESP");
    }
    s.write_all(&[0xE0, 0x00]).await.unwrap();
    let end = timeout(WAIT, read_packet(&mut s))
        .await
        .expect("not closed after DISCONNECT");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    watcher.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn anonymous_clients_are_refused_by_default() {
    let b = Broker::start();
    let (_s, code) = raw_connect(&b, &connect_packet("anon-1", None, 30, None)).await;
    assert_eq!(code, 5, "CONNACK: not authorized");
}

#[tokio::test]
async fn allowed_anonymous_clients_get_no_topics_and_never_reach_im() {
    let b = Broker::start_with(&[("MQIM_ALLOW_ANONYMOUS", "true")]);
    let mut bob = Device::connect(&b, "bob", "bob-phone").await;
    assert_eq!(bob.subscribe("users/bob/#").await, GRANTED);

    let (mut s, code) = raw_connect(&b, &connect_packet("anon-1", None, 30, None)).await;
    assert_eq!(code, 0, "anonymous connect refused although allowed");

    let mut body = vec![0x00, 0x07];
    for f in ["users/bob/#", "im/anon-1/anon-1/down/json", "#"] {
        put_str(&mut body, f.as_bytes());
        body.push(1);
    }
    s.write_all(&packet(0x82, &body)).await.unwrap();
    let (kind, body) = expect_packet(&mut s).await;
    assert_eq!(kind, 0x90, "expected SUBACK");
    assert_eq!(
        body,
        vec![0x00, 0x07, 0x80, 0x80, 0x80],
        "every filter refused"
    );

    // Publishes (QoS 1, so acknowledged) to an IM uplink and into bob's subtree go nowhere.
    let mut n = 0u16;
    for (topic, payload) in [
        (
            "im/anon-1/anon-1/up/json",
            r#"{"id":"r1","send":{"to":"u:bob","clientMsgId":"a1","text":"anon"}}"#,
        ),
        ("users/bob/inbox", "anon was here"),
    ] {
        n += 1;
        let mut body = Vec::new();
        put_str(&mut body, topic.as_bytes());
        body.extend_from_slice(&n.to_be_bytes());
        body.extend_from_slice(payload.as_bytes());
        s.write_all(&packet(0x32, &body)).await.unwrap();
        let (kind, ack) = expect_packet(&mut s).await;
        assert_eq!(
            (kind, ack),
            (0x40, n.to_be_bytes().to_vec()),
            "PUBACK for {topic}"
        );
    }
    bob.expect_silence(Duration::from_millis(500)).await;
    let (events, _) = bob.sync(0, 10).await;
    assert!(events.is_empty(), "anonymous message stored: {events:?}");
}
