//! Groups in the admin API against a real broker: groups made by real members (rumqttc over
//! MQTT 3.1.1, 5.0 and WebSocket), a system message to a group (`POST /api/v1/messages` with
//! `to: "g:<id>"`) reaching every member like a member's message, with the group seq, and
//! `GET /api/v1/groups/{id}` and its members. Every response is checked against the OpenAPI
//! document (see `common::admin`).

mod common;

use std::time::Duration;

use common::admin::Api;
use common::{seq, token, Broker, Device, Proto};
use serde_json::{json, Value};

/// Creates a group as `d`'s user; returns its id (`g:<n>`).
async fn create(d: &mut Device, name: &str, members: &[&str], large: bool) -> String {
    let r = d
        .call(json!({"groupCreate": {"name": name, "members": members, "large": large}}))
        .await;
    r["groupCreate"]["group"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("groupCreate failed: {r}"))
        .to_string()
}

/// The next event of `d` that is a message (skipping group changes).
async fn next_message(d: &mut Device) -> Value {
    loop {
        let ev = d.event().await;
        if ev.get("message").is_some() {
            return ev;
        }
    }
}

async fn conversation(d: &mut Device, id: &str) -> Value {
    let r = d.call(json!({"conversations": {}})).await;
    r["conversations"]["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_system_message_to_a_small_group_reaches_every_member_in_group_seq_order() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect_with(&b, "bob", "laptop", Proto::V5).await;
    let mut carol = Device::connect_with(&b, "carol", "web", Proto::Ws).await;
    let g = create(&mut alice, "Climbing", &["bob", "carol"], false).await;
    let r = alice
        .call(json!({"send": {"to": g, "clientMsgId": "m1", "text": "hi all"}}))
        .await;
    assert_eq!(r["sent"]["groupSeq"], "2", "{r}");

    let (s, v) = api
        .post(
            "/api/v1/messages",
            json!({"to": g, "text": "the wall closes at 9"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["groupSeq"], 3, "the group's next entry: {v}");
    let msg_id = v["msgId"].as_str().unwrap().to_string();

    for d in [&mut bob, &mut carol] {
        let member = next_message(d).await;
        assert_eq!(member["message"]["text"], "hi all", "{}", d.user);
    }
    // alice's device sent "hi all" (its reply carried it): the system message is its next.
    for d in [&mut alice, &mut bob, &mut carol] {
        let ev = next_message(d).await;
        let m = &ev["message"];
        assert_eq!(
            (m["from"].as_str(), m["conversation"].as_str()),
            (Some("system"), Some(g.as_str())),
            "{}: {ev}",
            d.user
        );
        assert_eq!(m["text"], "the wall closes at 9");
        assert_eq!(m["msgId"].as_str(), Some(msg_id.as_str()));
        assert_eq!(m["groupSeq"], "3");
        assert_eq!(seq(&ev), 3, "{}'s stream copy is its next event", d.user);
    }
    // Stored like a member's message: in the members' streams and unread for all of them,
    // the sender of the earlier message included.
    let (events, _) = carol.sync(2, 10).await;
    assert_eq!(events[0]["message"]["from"], "system", "{events:?}");
    let c = conversation(&mut alice, &g).await;
    assert_eq!(
        (c["unread"].as_str(), c["last"]["text"].as_str()),
        (Some("1"), Some("the wall closes at 9")),
        "{c}"
    );
    // A member's next message follows it in the group's order.
    let r = bob
        .call(json!({"send": {"to": g, "clientMsgId": "b1", "text": "ok"}}))
        .await;
    assert_eq!(r["sent"]["groupSeq"], "4", "{r}");
    let (_, v) = api.get(&format!("/api/v1/groups/{g}")).await;
    assert_eq!(v["last_group_seq"], 4, "{v}");
}

#[tokio::test]
async fn a_system_message_to_a_large_group_is_heard_live_and_read_from_the_log() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect_with(&b, "bob", "laptop", Proto::V5).await;
    let g = create(&mut alice, "Announcements", &["bob"], true).await;
    let (s, v) = api
        .post("/api/v1/messages", json!({"to": g, "text": "welcome"}))
        .await;
    assert_eq!((s, v["groupSeq"].as_u64()), (200, Some(2)), "{v}");
    for d in [&mut alice, &mut bob] {
        let ev = next_message(d).await;
        assert_eq!(ev["message"]["from"], "system", "{ev}");
        assert_eq!(ev["groupSeq"], "2");
        assert_eq!(
            ev.get("seq"),
            None,
            "a large group's live event has no stream seq"
        );
    }
    let log = bob
        .call(json!({"groupSync": {"group": g, "afterGroupSeq": "1"}}))
        .await;
    let entries = log["groupSync"]["events"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["message"]["text"], "welcome");
    assert_eq!(conversation(&mut bob, &g).await["unread"], "1");
}

#[tokio::test]
async fn system_messages_to_unknown_disbanded_or_malformed_groups_are_refused() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect(&b, "bob", "phone").await;
    let g = create(&mut alice, "Short-lived", &["bob"], false).await;
    let r = alice.call(json!({"groupDisband": {"group": g}})).await;
    assert_eq!(r["groupDisband"], json!({}), "{r}");
    for (to, status, code) in [
        ("g:987654321".to_string(), 404, "NOT_FOUND"),
        (g.clone(), 409, "FAILED_PRECONDITION"),
        ("g:staff".to_string(), 400, "INVALID_ARGUMENT"),
        ("g:".to_string(), 400, "INVALID_ARGUMENT"),
    ] {
        let (s, v) = api
            .post("/api/v1/messages", json!({"to": to, "text": "hello?"}))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{to}: {v}"
        );
    }
    // Nothing was stored or delivered: bob heard of the creation and the disband only.
    let (events, _) = bob.sync(0, 10).await;
    let changes: Vec<&str> = events
        .iter()
        .map(|e| e["group"]["change"].as_str().unwrap_or("a message"))
        .collect();
    assert_eq!(changes, ["created", "disbanded"], "{events:?}");
    for _ in 0..2 {
        assert!(bob.event().await.get("group").is_some());
    }
    bob.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn group_view_shows_settings_and_pages_through_members() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut olga = Device::connect(&b, "olga", "phone").await;
    let members = ["adam", "bea", "carl", "dora", "emil"];
    let g = create(&mut olga, "Book club", &members, false).await;
    let r = olga
        .call(json!({"groupRole": {"group": g, "member": "bea", "role": "admin"}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");

    let digits = g.trim_start_matches("g:");
    for path in [
        format!("/api/v1/groups/{g}"),
        format!("/api/v1/groups/{digits}"),
    ] {
        let (s, v) = api.get(&path).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["id"].as_str(), v["name"].as_str(), v["owner"].as_str()),
            (Some(g.as_str()), Some("Book club"), Some("olga"))
        );
        assert_eq!(
            (v["member_count"].as_u64(), v["large"].as_bool()),
            (Some(6), Some(false))
        );
        assert_eq!(v["disbanded"], false);
        assert_eq!(v["last_group_seq"], 2, "created, then bea's role: {v}");
    }

    let (s, p1) = api
        .get(&format!("/api/v1/groups/{g}/members?limit=4"))
        .await;
    assert_eq!(s, 200, "{p1}");
    let users = |p: &Value| -> Vec<String> {
        p["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{} {}",
                    m["user"].as_str().unwrap(),
                    m["role"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        users(&p1),
        ["adam member", "bea admin", "carl member", "dora member"]
    );
    assert_eq!(p1["members"][0]["joined_seq"], 1);
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = api
        .get(&format!("/api/v1/groups/{g}/members?limit=4&after={next}"))
        .await;
    assert_eq!(users(&p2), ["emil member", "olga owner"]);
    assert!(p2["next"].is_null(), "{p2}");

    // Bad input and unknown groups.
    for (path, status, code) in [
        ("/api/v1/groups/424242".to_string(), 404, "NOT_FOUND"),
        (
            "/api/v1/groups/424242/members".to_string(),
            404,
            "NOT_FOUND",
        ),
        ("/api/v1/groups/staff".to_string(), 400, "INVALID_ARGUMENT"),
        (
            format!("/api/v1/groups/{g}/members?limit=0"),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            format!("/api/v1/groups/{g}/members?limit=x"),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            format!("/api/v1/groups/{g}/members?after=a%2Fb"),
            400,
            "INVALID_ARGUMENT",
        ),
    ] {
        let (s, v) = api.get(&path).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {v}"
        );
    }
    // Admin tokens only: a member's own token gets nothing.
    for (t, status) in [(None, 401), (Some(token("olga", 60)), 403)] {
        let a = api.with_token(t);
        assert_eq!(a.get(&format!("/api/v1/groups/{g}")).await.0, status);
        assert_eq!(
            a.get(&format!("/api/v1/groups/{g}/members")).await.0,
            status
        );
    }

    // A disbanded group is still shown, as disbanded.
    let r = olga.call(json!({"groupDisband": {"group": g}})).await;
    assert_eq!(r["groupDisband"], json!({}), "{r}");
    let (_, v) = api.get(&format!("/api/v1/groups/{g}")).await;
    assert_eq!(v["disbanded"], true, "{v}");
}
