//! General-topic state that outlives the broker process: persistent sessions (subscriptions and
//! queued QoS 1 messages) and retained messages come back after a clean restart, and after a
//! `kill -9` once the state file has been written (every 2 s when something changed).

mod common;

use std::time::Duration;

use common::raw::open_acl_broker;
use common::v5client::{connect, persistent, topic};
use common::Broker;
use rumqttc::v5::mqttbytes::QoS;

/// A persistent session subscribed to `s/t` goes offline; a retained message and two QoS 1
/// messages are published while it is away.
async fn leave_state_behind(b: &Broker) {
    let mut dev = connect(b, "dev", persistent).await;
    dev.sub("s/t", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let publ = connect(b, "pub", |_| {}).await;
    publ.send("s/status", QoS::AtLeastOnce, true, "retained")
        .await;
    publ.send("s/t", QoS::AtLeastOnce, false, "q1").await;
    publ.send("s/t", QoS::AtLeastOnce, false, "q2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publ.disconnect().await;
}

async fn find_state(b: &Broker) {
    let mut back = connect(b, "dev", persistent).await;
    assert!(
        back.connack.session_present,
        "session present after the restart"
    );
    assert_eq!(&back.publish().await.payload[..], b"q1");
    assert_eq!(&back.publish().await.payload[..], b"q2");
    // The subscription itself came back too.
    let publ = connect(b, "pub2", |_| {}).await;
    publ.send("s/t", QoS::AtLeastOnce, false, "live").await;
    assert_eq!(&back.publish().await.payload[..], b"live");

    let mut late = connect(b, "late", |_| {}).await;
    late.sub("s/status", QoS::AtLeastOnce).await;
    let r = late.publish().await;
    assert_eq!((topic(&r).as_str(), r.retain), ("s/status", true));
}

#[tokio::test]
async fn persistent_sessions_and_retained_messages_survive_a_clean_restart() {
    let (mut b, _c) = open_acl_broker("");
    leave_state_behind(&b).await;
    b.restart_gracefully();
    find_state(&b).await;
}

#[tokio::test]
async fn persistent_sessions_and_retained_messages_survive_kill_9_once_saved() {
    let (mut b, _c) = open_acl_broker("");
    leave_state_behind(&b).await;
    // The state file is rewritten within 2 s of a change.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.restart();
    find_state(&b).await;
}

#[tokio::test]
async fn with_persistence_off_a_restart_starts_empty() {
    let (mut b, _c) = open_acl_broker("[mqtt]\npersistence = false\n");
    leave_state_behind(&b).await;
    b.restart_gracefully();
    let back = connect(&b, "dev", persistent).await;
    assert!(!back.connack.session_present);
}
