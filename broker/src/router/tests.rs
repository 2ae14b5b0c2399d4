//! Unit tests of the routing rules, against sessions with real outboxes.

use super::*;
use crate::codec::Version;

fn live(conn: u64, client: &str) -> Arc<Session> {
    Arc::new(Session::new(
        conn,
        Principal {
            user: Some("u".into()),
            client_id: client.into(),
        },
        Version::V5,
        100,
    ))
}

fn router() -> Router {
    Router::new(RouterSettings {
        max_queued: 3,
        max_subscriptions: 10,
    })
}

fn msg(topic: &str, qos: QoS, retain: bool) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"x"),
        qos,
        retain,
        props: None,
        expires: None,
        origin: 0,
    }
}

fn take(s: &Session) -> Vec<Box<Outbound>> {
    let mut v = Vec::new();
    s.drain(1000, &mut v);
    v.into_iter()
        .filter_map(|d| match d {
            Delivery::General(o) => Some(o),
            _ => None,
        })
        .collect()
}

fn opts(qos: QoS) -> SubOptions {
    SubOptions::qos(qos)
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos_with_every_id() {
    let r = router();
    let s = live(1, "a");
    let rs = r.session(&s);
    r.subscribe(&rs, "a/+", opts(QoS::AtMostOnce), Some(1))
        .unwrap();
    r.subscribe(&rs, "a/#", opts(QoS::ExactlyOnce), Some(2))
        .unwrap();
    assert_eq!(r.publish(msg("a/b", QoS::ExactlyOnce, false)), 1);
    let got = take(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    let mut ids = got[0].sub_ids.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn no_local_skips_the_publishers_own_session() {
    let r = router();
    let s = live(1, "a");
    let rs = r.session(&s);
    let mut o = opts(QoS::AtLeastOnce);
    o.no_local = true;
    r.subscribe(&rs, "t", o, None).unwrap();
    let mut m = msg("t", QoS::AtLeastOnce, false);
    m.origin = rs.id;
    assert_eq!(r.publish(m), 0);
    assert!(take(&s).is_empty());
}

#[test]
fn shared_group_members_take_turns() {
    let r = router();
    let (a, b) = (live(1, "a"), live(2, "b"));
    for s in [&a, &b] {
        let rs = r.session(s);
        r.subscribe(&rs, "$share/g/jobs/#", opts(QoS::AtLeastOnce), None)
            .unwrap();
    }
    for _ in 0..4 {
        r.publish(msg("jobs/1", QoS::AtLeastOnce, false));
    }
    assert_eq!((take(&a).len(), take(&b).len()), (2, 2));
}

#[test]
fn an_offline_persistent_session_queues_qos1_up_to_its_bound_and_resumes() {
    let r = router();
    let s = live(1, "a");
    let rs = r.session(&s);
    r.subscribe(&rs, "t", opts(QoS::AtLeastOnce), None).unwrap();
    r.detach(&rs, 1, Some(Duration::from_secs(60)), Vec::new());
    r.publish(msg("t", QoS::AtMostOnce, false));
    for _ in 0..5 {
        r.publish(msg("t", QoS::AtLeastOnce, false));
    }
    let s2 = live(2, "a");
    let back = r.attach(&s2.principal, &s2, false).expect("resumed");
    assert_eq!(back.id, rs.id);
    // QoS 0 is not queued; the queue keeps the newest 3.
    assert_eq!(take(&s2).len(), 3);
}

#[test]
fn a_session_that_ends_frees_its_subscriptions() {
    let r = router();
    let s = live(1, "a");
    let rs = r.session(&s);
    for i in 0..10 {
        r.subscribe(&rs, &format!("f/{i}"), opts(QoS::AtMostOnce), None)
            .unwrap();
    }
    assert!(r
        .subscribe(&rs, "f/x", opts(QoS::AtMostOnce), None)
        .is_none());
    assert_eq!(r.stats(), (1, 10, 0));
    r.detach(&rs, 1, None, Vec::new());
    assert_eq!(r.stats(), (0, 0, 0));
}

#[test]
fn retained_messages_come_with_retain_set_and_empty_payload_clears_them() {
    let r = router();
    r.publish(msg("s/1", QoS::AtLeastOnce, true));
    let s = live(1, "a");
    let rs = r.session(&s);
    let got = r
        .subscribe(&rs, "s/+", opts(QoS::ExactlyOnce), None)
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    let mut clear = msg("s/1", QoS::AtLeastOnce, true);
    clear.payload = Bytes::new();
    r.publish(clear);
    assert_eq!(r.stats().2, 0);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let r = router();
    let s = live(1, "a");
    let rs = r.session(&s);
    r.subscribe(&rs, "#", opts(QoS::AtMostOnce), None).unwrap();
    r.subscribe(&rs, "+/x", opts(QoS::AtMostOnce), None)
        .unwrap();
    assert_eq!(r.publish(msg("$SYS/x", QoS::AtMostOnce, false)), 0);
    assert_eq!(r.publish(msg("a/x", QoS::AtMostOnce, false)), 1);
}
