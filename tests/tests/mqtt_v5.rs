//! The general broker as an MQTT 5.0 application sees it, through rumqttc's v5 client:
//! properties forwarded unchanged, QoS 2 end to end, granted QoS, retained messages and their
//! options, subscription identifiers, No Local, message expiry, persistent sessions with their
//! offline queue and re-sent in-flight messages, will delay, shared subscriptions, receive
//! maximum, and ACL deny rules. A few 3.1.1 counterparts use rumqttc's v4 client.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::open_acl_broker;
use common::v5client::{connect, persistent, topic, C};
use common::{Broker, WAIT};
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, PublishProperties, RetainForwardRule,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::time::timeout;

#[tokio::test]
async fn publish_properties_reach_the_subscriber_unchanged_mqtt_3_3_2_3() {
    let (b, _c) = open_acl_broker("");
    let mut sub = connect(&b, "sub", |_| {}).await;
    assert_eq!(
        sub.sub("req/#", QoS::AtLeastOnce).await,
        "[Success(AtLeastOnce)]"
    );
    let publ = connect(&b, "pub", |_| {}).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: Some("resp/pub".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02corr")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        subscription_identifiers: Vec::new(),
        content_type: Some("application/json".into()),
    };
    publ.client
        .publish_with_properties("req/x", QoS::AtLeastOnce, false, "{}", props.clone())
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!(
        p.properties,
        Some(props),
        "properties as published, in order"
    );
}

#[tokio::test]
async fn qos2_is_delivered_as_qos2_and_the_granted_qos_is_the_minimum() {
    let (b, _c) = open_acl_broker("");
    let mut two = connect(&b, "two", |_| {}).await;
    let mut one = connect(&b, "one", |_| {}).await;
    assert_eq!(
        two.sub("q/t", QoS::ExactlyOnce).await,
        "[Success(ExactlyOnce)]"
    );
    assert_eq!(
        one.sub("q/t", QoS::AtLeastOnce).await,
        "[Success(AtLeastOnce)]"
    );
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("q/t", QoS::ExactlyOnce, false, "exactly").await;
    assert_eq!(two.publish().await.qos, QoS::ExactlyOnce);
    assert_eq!(one.publish().await.qos, QoS::AtLeastOnce);
    // rumqttc completes PUBREC/PUBREL/PUBCOMP; a second message still flows.
    publ.send("q/t", QoS::ExactlyOnce, false, "again").await;
    assert_eq!(&two.publish().await.payload[..], b"again");
    publ.send("q/t", QoS::AtMostOnce, false, "zero").await;
    assert_eq!(two.publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn an_empty_qos1_publish_is_delivered_at_qos1() {
    let (b, _c) = open_acl_broker("");
    let mut sub = connect(&b, "sub", |_| {}).await;
    sub.sub("e/t", QoS::ExactlyOnce).await;
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("e/t", QoS::AtLeastOnce, false, "").await;
    let p = sub.publish().await;
    assert_eq!((p.qos, p.payload.len()), (QoS::AtLeastOnce, 0));
}

#[tokio::test]
async fn retained_messages_reach_a_new_5_0_subscriber_with_retain_1() {
    let (b, _c) = open_acl_broker("");
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("r/status", QoS::AtLeastOnce, true, "on").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sub = connect(&b, "sub", |_| {}).await;
    sub.sub("r/+", QoS::AtLeastOnce).await;
    let p = sub.publish().await;
    assert!(p.retain, "RETAIN must be 1");
    assert_eq!(&p.payload[..], b"on");
    // A live message on a topic with a retained value is forwarded with RETAIN 0
    // (MQTT-3.3.1-12: retain as published is off).
    publ.send("r/status", QoS::AtLeastOnce, true, "off").await;
    assert!(!sub.publish().await.retain);
}

#[tokio::test]
async fn retained_messages_reach_a_3_1_1_subscriber_with_retain_1_mqtt_3_3_1_8() {
    let (b, _c) = open_acl_broker("");
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("r/v4", QoS::AtLeastOnce, true, "kept").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut o = rumqttc::MqttOptions::new("v4sub", "127.0.0.1", b.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
    client
        .subscribe("r/v4", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let p = timeout(WAIT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = el.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("retained message");
    assert!(p.retain);
    assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
}

#[tokio::test]
async fn retain_handling_1_sends_retained_only_for_a_new_subscription_and_2_never() {
    let (b, _c) = open_acl_broker("");
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("rh/a", QoS::AtLeastOnce, true, "ret").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sub = connect(&b, "sub", |_| {}).await;
    let mut f = Filter::new("rh/a", QoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    sub.sub_with(f.clone(), None).await;
    assert!(sub.publish().await.retain);
    sub.sub_with(f, None).await;
    sub.no_publish(Duration::from_millis(300)).await;

    let mut never = connect(&b, "never", |_| {}).await;
    let mut f = Filter::new("rh/a", QoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    never.sub_with(f, None).await;
    never.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages_mqtt_3_3_1_13() {
    let (b, _c) = open_acl_broker("");
    let mut sub = connect(&b, "sub", |_| {}).await;
    let mut f = Filter::new("rap/t", QoS::AtLeastOnce);
    f.preserve_retain = true;
    sub.sub_with(f, None).await;
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("rap/t", QoS::AtLeastOnce, true, "r").await;
    assert!(sub.publish().await.retain);
    publ.send("rap/t", QoS::AtLeastOnce, false, "n").await;
    assert!(!sub.publish().await.retain);
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_message_at_the_best_qos_with_both_ids() {
    let (b, _c) = open_acl_broker("");
    let mut sub = connect(&b, "sub", |_| {}).await;
    sub.sub_with(Filter::new("o/+", QoS::AtMostOnce), Some(7))
        .await;
    sub.sub_with(Filter::new("o/#", QoS::ExactlyOnce), Some(9))
        .await;
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("o/x", QoS::ExactlyOnce, false, "both").await;
    let p = sub.publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort();
    // MQTT-3.3.4-3: the identifiers of every matching subscription.
    assert_eq!(ids, vec![7, 9]);
    sub.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it_mqtt_3_8_3_3() {
    let (b, _c) = open_acl_broker("");
    let mut me = connect(&b, "me", |_| {}).await;
    let mut f = Filter::new("nl/t", QoS::AtLeastOnce);
    f.nolocal = true;
    me.sub_with(f, None).await;
    me.send("nl/t", QoS::AtLeastOnce, false, "mine").await;
    me.no_publish(Duration::from_millis(300)).await;
    let other = connect(&b, "other", |_| {}).await;
    other.send("nl/t", QoS::AtLeastOnce, false, "theirs").await;
    assert_eq!(&me.publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn an_expired_retained_message_is_not_delivered_and_the_interval_counts_down_mqtt_3_3_2_5() {
    let (b, _c) = open_acl_broker("");
    let publ = connect(&b, "pub", |_| {}).await;
    let props = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    publ.client
        .publish_with_properties("x/short", QoS::AtLeastOnce, true, "s", props(1))
        .await
        .unwrap();
    publ.client
        .publish_with_properties("x/long", QoS::AtLeastOnce, true, "l", props(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut sub = connect(&b, "sub", |_| {}).await;
    sub.sub("x/+", QoS::AtLeastOnce).await;
    let p = sub.publish().await;
    assert_eq!(topic(&p), "x/long");
    let left = p.properties.and_then(|p| p.message_expiry_interval);
    // MQTT-3.3.2-6: the remaining lifetime, not the original one.
    assert!(matches!(left, Some(n) if n < 100), "{left:?}");
    sub.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_offline_persistent_session_gets_its_qos1_messages_on_return() {
    let (b, _c) = open_acl_broker("");
    let mut dev = connect(&b, "dev", persistent).await;
    assert!(!dev.connack.session_present);
    dev.sub("p/t", QoS::AtLeastOnce).await;
    dev.disconnect().await;

    let publ = connect(&b, "pub", |_| {}).await;
    for i in 0..3 {
        publ.send("p/t", QoS::AtLeastOnce, false, &format!("m{i}"))
            .await;
    }
    publ.send("p/t", QoS::AtMostOnce, false, "q0 is not kept")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut back = connect(&b, "dev", persistent).await;
    assert!(back.connack.session_present, "MQTT-3.2.2-2");
    for i in 0..3 {
        assert_eq!(
            &back.publish().await.payload[..],
            format!("m{i}").as_bytes()
        );
    }
    back.no_publish(Duration::from_millis(300)).await;
    // The subscription survived too.
    publ.send("p/t", QoS::AtLeastOnce, false, "live").await;
    assert_eq!(&back.publish().await.payload[..], b"live");
}

#[tokio::test]
async fn a_clean_start_discards_the_old_session() {
    let (b, _c) = open_acl_broker("");
    let mut dev = connect(&b, "dev", persistent).await;
    dev.sub("cs/t", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("cs/t", QoS::AtLeastOnce, false, "old").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fresh = connect(&b, "dev", |o| {
        o.set_clean_start(true);
    })
    .await;
    assert!(!fresh.connack.session_present);
    publ.send("cs/t", QoS::AtLeastOnce, false, "new").await;
    fresh.no_publish(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_sent_again_with_dup_on_reconnect_mqtt_4_4_0_1() {
    let (b, _c) = open_acl_broker("");
    let mut dev = connect(&b, "dev", |o| {
        persistent(o);
        o.set_manual_acks(true);
    })
    .await;
    dev.sub("d/t", QoS::AtLeastOnce).await;
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("d/t", QoS::AtLeastOnce, false, "ack me").await;
    let first = dev.publish().await;
    assert!(!first.dup);
    dev.crash();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut back = connect(&b, "dev", persistent).await;
    let again = back.publish().await;
    assert_eq!(&again.payload[..], b"ack me");
    assert!(again.dup, "DUP on a re-sent delivery");
    assert_eq!(again.pkid, first.pkid, "same packet identifier");
}

async fn will_client(b: &Broker, delay: u32) -> C {
    connect(b, "willer", |o| {
        persistent(o);
        o.set_last_will(LastWill {
            topic: Bytes::from_static(b"w/t"),
            message: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Some(LastWillProperties {
                delay_interval: Some(delay),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: Some("text/plain".into()),
                response_topic: None,
                correlation_data: None,
                user_properties: vec![("why".into(), "test".into())],
            }),
        });
    })
    .await
}

#[tokio::test]
async fn a_delayed_will_is_published_after_its_delay_with_its_properties() {
    let (b, _c) = open_acl_broker("");
    let mut w = connect(&b, "watch", |_| {}).await;
    w.sub("w/t", QoS::AtLeastOnce).await;
    will_client(&b, 1).await.crash();
    // Not before the delay...
    w.no_publish(Duration::from_millis(600)).await;
    // ...but after it.
    let p = w.publish().await;
    assert_eq!(&p.payload[..], b"gone");
    let props = p.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.user_properties, vec![("why".into(), "test".into())]);
}

#[tokio::test]
async fn a_client_back_within_the_will_delay_cancels_its_will() {
    let (b, _c) = open_acl_broker("");
    let mut w = connect(&b, "watch", |_| {}).await;
    w.sub("w/t", QoS::AtLeastOnce).await;
    will_client(&b, 2).await.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _back = connect(&b, "willer", persistent).await;
    w.no_publish(Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn each_message_to_a_shared_subscription_goes_to_one_member() {
    let (b, _c) = open_acl_broker("");
    let mut m1 = connect(&b, "m1", |_| {}).await;
    let mut m2 = connect(&b, "m2", |_| {}).await;
    m1.sub("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    m2.sub("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    let publ = connect(&b, "pub", |_| {}).await;
    for i in 0..10 {
        publ.send("jobs/a", QoS::AtLeastOnce, false, &format!("{i}"))
            .await;
    }
    let mut got = Vec::new();
    let (mut n1, mut n2) = (0, 0);
    while got.len() < 10 {
        tokio::select! {
            p = m1.publish() => { n1 += 1; got.push(p.payload) }
            p = m2.publish() => { n2 += 1; got.push(p.payload) }
        }
    }
    m1.no_publish(Duration::from_millis(200)).await;
    m2.no_publish(Duration::from_millis(200)).await;
    assert!(n1 > 0 && n2 > 0, "both members work: {n1} / {n2}");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 10, "each message exactly once");
}

#[tokio::test]
async fn a_slow_consumer_with_receive_maximum_2_gets_everything_in_order() {
    let (b, _c) = open_acl_broker("");
    let mut slow = connect(&b, "slow", |o| {
        o.set_receive_maximum(Some(2));
    })
    .await;
    slow.sub("slow/t", QoS::AtLeastOnce).await;
    let publ = connect(&b, "pub", |_| {}).await;
    for i in 0..50 {
        publ.send("slow/t", QoS::AtLeastOnce, false, &format!("{i:03}"))
            .await;
    }
    for i in 0..50 {
        let p = slow.publish().await;
        assert_eq!(&p.payload[..], format!("{i:03}").as_bytes());
    }
}

#[tokio::test]
async fn a_message_over_the_clients_maximum_packet_size_is_not_sent_to_it_mqtt_3_1_2_25() {
    let (b, _c) = open_acl_broker("");
    let mut small = connect(&b, "small", |o| {
        o.set_max_packet_size(Some(200));
    })
    .await;
    small.sub("big/t", QoS::AtLeastOnce).await;
    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("big/t", QoS::AtLeastOnce, false, &"x".repeat(500))
        .await;
    publ.send("big/t", QoS::AtLeastOnce, false, "small").await;
    assert_eq!(&small.publish().await.payload[..], b"small");
}

#[tokio::test]
async fn acl_deny_rules_refuse_a_filter_and_hide_its_topics_from_wider_ones() {
    let (b, _c) = open_acl_broker(
        "[[acl]]\nuser = \"*\"\ntopic = \"test/nosubscribe\"\naccess = \"readwrite\"\ndeny = true\n",
    );
    let mut tok_user = connect(&b, "u1", |o| {
        o.set_credentials("carol", common::token("carol", 600));
    })
    .await;
    assert_eq!(
        tok_user.sub("test/nosubscribe", QoS::AtLeastOnce).await,
        "[NotAuthorized]"
    );
    assert_eq!(
        tok_user.sub("test/#", QoS::AtLeastOnce).await,
        "[Success(AtLeastOnce)]"
    );
    let publ = connect(&b, "pub", |o| {
        o.set_credentials("dave", common::token("dave", 600));
    })
    .await;
    publ.send("test/nosubscribe", QoS::AtLeastOnce, false, "hidden")
        .await;
    publ.send("test/ok", QoS::AtLeastOnce, false, "seen").await;
    let p = tok_user.publish().await;
    assert_eq!(topic(&p), "test/ok");
    tok_user.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_3_1_1_persistent_session_gets_its_qos1_messages_on_return() {
    let (b, _c) = open_acl_broker("");
    let opts = || {
        let mut o = rumqttc::MqttOptions::new("v4dev", "127.0.0.1", b.mqtt_port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(false);
        o
    };
    let (client, mut el) = rumqttc::AsyncClient::new(opts(), 10);
    client
        .subscribe("v4p/t", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    timeout(WAIT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = el.poll().await {
                return;
            }
        }
    })
    .await
    .unwrap();
    client.disconnect().await.unwrap();
    let _ = timeout(Duration::from_secs(1), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    drop(el);

    let publ = connect(&b, "pub", |_| {}).await;
    publ.send("v4p/t", QoS::AtLeastOnce, false, "while away")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_client, mut el) = rumqttc::AsyncClient::new(opts(), 10);
    let p = timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                    assert!(c.session_present)
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("queued message");
    assert_eq!(&p.payload[..], b"while away");
}

#[tokio::test]
async fn subscriptions_past_max_subscriptions_get_quota_exceeded_and_ending_frees_them() {
    let (b, _c) = open_acl_broker("[mqtt]\nmax_subscriptions = 2\n");
    let mut dev = connect(&b, "dev", |_| {}).await;
    assert_eq!(
        dev.sub("a/1", QoS::AtMostOnce).await,
        "[Success(AtMostOnce)]"
    );
    assert_eq!(
        dev.sub("a/2", QoS::AtMostOnce).await,
        "[Success(AtMostOnce)]"
    );
    // Re-subscribing to a filter it holds is not a new subscription.
    assert_eq!(
        dev.sub("a/2", QoS::AtLeastOnce).await,
        "[Success(AtLeastOnce)]"
    );
    assert_eq!(dev.sub("a/3", QoS::AtMostOnce).await, "[QuotaExceeded]");
    dev.disconnect().await;
    // The session ended with its connection: a new one starts from nothing.
    let mut again = connect(&b, "dev", |_| {}).await;
    assert!(!again.connack.session_present);
    assert_eq!(
        again.sub("a/3", QoS::AtMostOnce).await,
        "[Success(AtMostOnce)]"
    );
}
