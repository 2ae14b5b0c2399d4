//! Push notifications end to end: the real broker, real MQTT clients (rumqttc), and local fake
//! push services (a signed-webhook receiver that verifies the HMAC; an h2c APNs) that the
//! broker's `[push]` base URLs point at.

mod common;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mqim_bin, Broker, Device};
use mqim_push_bridge::testing::{Answer, FakeServer, Mode, Recorded};
use mqim_push_bridge::webhook::signature;
use serde_json::{json, Value};

const SECRET: &str = "e2e-webhook-secret";

/// A webhook receiver answering from a script, then `status` (shared, changeable).
struct Receiver {
    fake: FakeServer,
    script: Arc<Mutex<VecDeque<Answer>>>,
    status: Arc<Mutex<u16>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let status = Arc::new(Mutex::new(200u16));
        let (s, st) = (script.clone(), status.clone());
        let fake = FakeServer::start(Mode::Plain, move |r: &Recorded| {
            if r.header("x-mqim-signature") != Some(signature(SECRET.as_bytes(), &r.body).as_str())
            {
                return Answer::status(401);
            }
            s.lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Answer::status(*st.lock().unwrap()))
        })
        .await;
        Receiver {
            fake,
            script,
            status,
        }
    }

    fn url(&self, device: &str) -> String {
        format!("{}/push/{device}", self.fake.url())
    }

    /// The next push (signature checked), or None within `wait`.
    async fn next(&self, wait: Duration) -> Option<Value> {
        let r = self.fake.next(wait).await?;
        assert_eq!(
            r.header("x-mqim-signature"),
            Some(signature(SECRET.as_bytes(), &r.body).as_str()),
            "every push is signed"
        );
        assert!(r.header("x-mqim-timestamp").is_some());
        Some(r.json())
    }

    /// Every push arriving within `wait`.
    async fn collect(&self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
            match self.next(left).await {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }
}

fn push_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("MQIM_PUSH_WEBHOOK_SECRET", SECRET),
        ("MQIM_PUSH_WEBHOOK_ALLOW", "http://127.0.0.1:"),
        ("MQIM_PUSH_MIN_INTERVAL_MS", "1000"),
    ];
    env.extend_from_slice(extra);
    env
}

/// Registers `d` with the webhook at `url` and checks the reply.
async fn register(d: &mut Device, url: &str) {
    let r = d
        .call(json!({"pushRegister": {"provider": "webhook", "token": url}}))
        .await;
    assert!(r.get("pushRegister").is_some(), "pushRegister failed: {r}");
}

/// Registers `d` with the webhook at `url`, asking for message previews.
async fn register_with_preview(d: &mut Device, url: &str) {
    let r = d
        .call(json!({"pushRegister": {"provider": "webhook", "token": url, "preview": true}}))
        .await;
    assert!(r.get("pushRegister").is_some(), "pushRegister failed: {r}");
}

/// Disconnects and gives the broker a moment to see the session close.
async fn go_offline(d: Device) {
    d.disconnect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn offline_phone_gets_coalesced_pushes_with_the_unread_badge_and_online_gets_none() {
    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;

    let mut alice = Device::connect(&b, "alice", "ap").await;
    let mut last = Value::Null;
    for i in 0..3 {
        last = alice
            .send("bob", &format!("m{i}"), &format!("hello {i}"))
            .await;
    }
    let pushes = rx.collect(Duration::from_secs(3)).await;
    assert!(
        (1..=2).contains(&pushes.len()),
        "a burst of 3 is coalesced (one push per second at most): {pushes:?}"
    );
    let p = pushes.last().unwrap();
    assert_eq!(str_of(p, "badge"), "3", "badge = bob's unread total: {p}");
    assert_eq!(p["msgId"], last["msgId"], "the latest message: {p}");
    assert_eq!(str_of(p, "from"), "alice");
    assert_eq!(str_of(p, "conversation"), "u:alice");
    assert_eq!(str_of(p, "user"), "bob");
    assert_eq!(str_of(p, "device"), "phone");
    assert!(
        p.get("preview").is_none(),
        "no preview unless registered with preview"
    );

    // The phone comes back: an online device gets nothing from the bridge.
    let mut phone = Device::connect(&b, "bob", "phone").await;
    alice.send("bob", "m3", "are you there?").await;
    phone.event().await;
    assert!(rx.next(Duration::from_secs(2)).await.is_none());
}

#[tokio::test]
async fn reading_on_the_laptop_sends_the_phone_a_badge_only_push_with_zero() {
    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[("MQIM_PUSH_MIN_INTERVAL_MS", "100")]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register_with_preview(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;
    let mut laptop = Device::connect(&b, "bob", "laptop").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let sent = alice.send("bob", "x1", "lunch?").await;
    laptop.event().await;
    let p = rx.next(common::WAIT).await.expect("a push for the message");
    assert_eq!(str_of(&p, "badge"), "1");
    assert_eq!(
        str_of(&p, "preview"),
        "lunch?",
        "registered with preview: true"
    );

    let r = laptop
        .call(json!({"read": {"conversation": "u:alice", "msgId": sent["msgId"]}}))
        .await;
    assert!(r["read"].is_object(), "{r}");
    let p = rx.next(common::WAIT).await.expect("a badge-only push");
    assert_eq!(str_of(&p, "badge"), "0", "{p}");
    assert!(p.get("msgId").is_none(), "badge-only: {p}");
}

/// A recalled message is never pushed: the push after the recall is badge-only, with the badge
/// the recall lowered, and no push ever names the recalled message or carries its text.
#[tokio::test]
async fn a_recalled_message_is_never_pushed_and_the_badge_drops() {
    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register_with_preview(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let first = alice.send("bob", "r0", "see you at noon").await;
    let oops = alice.send("bob", "r1", "my password is hunter2").await;
    let r = alice
        .call(json!({"recall": {"conversation": "u:bob", "msgId": oops["msgId"]}}))
        .await;
    assert!(r.get("recall").is_some(), "{r}");
    // One push per second at most: the first push, then the coalesced one after the recall.
    let pushes = rx.collect(Duration::from_secs(3)).await;
    assert!(!pushes.is_empty(), "bob's phone was pushed");
    for p in &pushes {
        assert_ne!(
            p["msgId"], oops["msgId"],
            "the recalled message is never pushed: {p}"
        );
        assert!(!p.to_string().contains("hunter2"), "{p}");
    }
    let last = pushes.last().unwrap();
    assert_eq!(
        str_of(last, "badge"),
        "1",
        "only the first message is unread: {last}"
    );
    assert!(
        last.get("msgId").is_none() || last["msgId"] == first["msgId"],
        "{last}"
    );
}

#[tokio::test]
async fn a_muted_conversation_pushes_nothing_and_others_still_push() {
    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    let r = phone
        .call(json!({"mute": {"conversation": "u:alice"}}))
        .await;
    assert!(r.get("mute").is_some(), "{r}");
    go_offline(phone).await;

    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "a1", "muted").await;
    assert!(rx.next(Duration::from_secs(2)).await.is_none(), "muted");
    let mut carol = Device::connect(&b, "carol", "cp").await;
    carol.send("bob", "c1", "not muted").await;
    let p = rx.next(common::WAIT).await.expect("carol's message pushes");
    assert_eq!(str_of(&p, "from"), "carol");
    assert_eq!(
        str_of(&p, "badge"),
        "2",
        "the muted message still counts as unread"
    );

    // Unmuted (from another device of bob's), alice's next message pushes again.
    let mut laptop = Device::connect(&b, "bob", "laptop").await;
    let r = laptop
        .call(json!({"unmute": {"conversation": "u:alice"}}))
        .await;
    assert!(r.get("unmute").is_some(), "{r}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    alice.send("bob", "a2", "unmuted").await;
    let p = rx.next(common::WAIT).await.expect("unmuted: a push");
    assert_eq!(str_of(&p, "from"), "alice");
    assert_eq!(str_of(&p, "badge"), "3");
}

#[tokio::test]
async fn a_gone_endpoint_loses_its_registration_and_the_push_log_says_why() {
    let rx = Receiver::start().await;
    *rx.status.lock().unwrap() = 410;
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "g1", "one").await;
    assert!(rx.next(common::WAIT).await.is_some());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    alice.send("bob", "g2", "two").await;
    assert!(
        rx.next(Duration::from_secs(2)).await.is_none(),
        "the registration is gone"
    );
    let out = Command::new(mqim_bin())
        .args(["push-log", "bob"])
        .env("MQIM_DATA_DIR", b.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("bob/phone: not registered"), "{log}");
    assert!(
        log.contains("token_gone") && log.contains("HTTP 410"),
        "{log}"
    );
    assert!(log.contains("registered"), "{log}");
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_retries_then_the_push() {
    let rx = Receiver::start().await;
    rx.script
        .lock()
        .unwrap()
        .extend([Answer::status(503), Answer::Drop]);
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let sent = alice.send("bob", "r1", "retry me").await;
    let mut seen = Vec::new();
    // 503, then a dropped connection, then 200: backoff 1 s, then 2 s.
    for _ in 0..3 {
        seen.push(rx.next(Duration::from_secs(10)).await.expect("a (re)try"));
    }
    assert!(seen.iter().all(|p| p["msgId"] == sent["msgId"]), "{seen:?}");
    assert!(
        rx.next(Duration::from_secs(2)).await.is_none(),
        "delivered once, then quiet"
    );
}

#[tokio::test]
async fn a_push_pending_at_a_crash_is_sent_after_the_restart() {
    let rx = Receiver::start().await;
    *rx.status.lock().unwrap() = 503;
    let mut b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let sent = alice.send("bob", "k1", "survive").await;
    assert!(
        rx.next(common::WAIT).await.is_some(),
        "first try fails with 503"
    );
    alice.disconnect().await;
    b.kill9();
    rx.fake.drain().await;
    *rx.status.lock().unwrap() = 200;
    b.restart();
    let p = rx
        .next(common::WAIT)
        .await
        .expect("resumed from the durable cursor");
    assert_eq!(p["msgId"], sent["msgId"]);
    assert_eq!(str_of(&p, "badge"), "1");
}

#[tokio::test]
async fn registering_with_a_provider_that_is_off_is_invalid_argument() {
    let b = Broker::start();
    let mut phone = Device::connect(&b, "bob", "phone").await;
    let r = phone
        .call(json!({"pushRegister": {"provider": "apns", "token": "ab".repeat(32)}}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{r}"
    );
    let r = phone
        .call(json!({"pushRegister": {"provider": "pigeon", "token": "x"}}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT", "{r}");
}

#[tokio::test]
async fn webhook_endpoints_outside_the_allow_list_are_refused() {
    let b = Broker::start_with(&push_env(&[(
        "MQIM_PUSH_WEBHOOK_ALLOW",
        "https://push.example.com/",
    )]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    for url in [
        "http://127.0.0.1:9/x",
        "https://evil.example.net/",
        "http://10.0.0.1/",
    ] {
        let r = phone
            .call(json!({"pushRegister": {"provider": "webhook", "token": url}}))
            .await;
        assert_eq!(r["error"]["code"], "INVALID_ARGUMENT", "{url}: {r}");
    }
}

#[tokio::test]
async fn an_offline_iphone_gets_an_apns_push_over_http2() {
    let fake = FakeServer::start(Mode::Plain, |_: &Recorded| Answer::status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../push-bridge/tests/fixtures/apns-test-key.p8");
    let cfg = dir.path().join("mqim.toml");
    std::fs::write(
        &cfg,
        format!(
            "[push.apns]\nkey_file = {key:?}\nkey_id = \"KEYID12345\"\nteam_id = \"TEAMID6789\"\n\
             topic = \"com.example.chat\"\nbase_url = \"{0}\"\nsandbox_url = \"{0}\"\n",
            fake.url()
        ),
    )
    .unwrap();
    let b = Broker::start_with(&[("MQIM_CONFIG", cfg.to_str().unwrap())]);
    let token = "0f".repeat(32);
    let mut phone = Device::connect(&b, "bob", "iphone").await;
    let r = phone
        .call(json!({"pushRegister": {"provider": "apns", "token": token}}))
        .await;
    assert!(r.get("pushRegister").is_some(), "{r}");
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let sent = alice.send("bob", "i1", "hi").await;
    let r = fake.next(common::WAIT).await.expect("an APNs request");
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.path, format!("/3/device/{token}"));
    assert_eq!(r.header("apns-topic"), Some("com.example.chat"));
    assert_eq!(r.header("apns-collapse-id"), Some("u:alice"));
    let body = r.json();
    assert_eq!(body["aps"]["badge"], 1);
    assert_eq!(body["msgId"], sent["msgId"]);
}

#[tokio::test]
async fn a_token_registered_on_another_device_moves_there() {
    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[]));
    let url = rx.url("shared-phone");
    let mut old = Device::connect(&b, "bob", "phone").await;
    register(&mut old, &url).await;
    go_offline(old).await;
    // The phone changes hands: carol registers the same endpoint.
    let mut new = Device::connect(&b, "carol", "phone").await;
    register(&mut new, &url).await;
    go_offline(new).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "t1", "for bob").await;
    assert!(
        rx.next(Duration::from_secs(2)).await.is_none(),
        "bob no longer holds the token"
    );
    alice.send("carol", "t2", "for carol").await;
    let p = rx.next(common::WAIT).await.expect("carol's push");
    assert_eq!(str_of(&p, "user"), "carol");
}

/// Two nodes need a log they share: `redis+scylla` (a second `redis+embedded` node on one Redis
/// is refused at start). Runs when `SCYLLA_URI` is set, reported as ignored otherwise.
#[tokio::test]
#[cfg_attr(
    not(scylla_available),
    ignore = "two nodes need a shared log: set SCYLLA_URI=host:9042 when building and running"
)]
async fn on_the_redis_store_a_device_online_on_another_node_gets_no_push() {
    let rx = Receiver::start().await;
    let redis = mqim_im_plugin::testing::RedisServer::start();
    let url = redis.url();
    let scylla = std::env::var("SCYLLA_URI").unwrap_or_default();
    let keyspace = format!("mqim_push_{}", std::process::id());
    let store = [
        ("MQIM_STORE_BACKEND", "redis+scylla"),
        ("MQIM_REDIS_URL", url.as_str()),
        ("MQIM_SCYLLA_NODES", scylla.as_str()),
        ("MQIM_SCYLLA_KEYSPACE", keyspace.as_str()),
    ];
    let node = |id| {
        let mut env = store.to_vec();
        env.push(("MQIM_NODE_ID", id));
        Broker::start_with(&push_env(&env))
    };
    let (a, b) = (node("1"), node("2"));
    let mut phone = Device::connect(&a, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    go_offline(phone).await;
    // The phone is online on node B; node A handles alice's send.
    let on_b = Device::connect(&b, "bob", "phone").await;
    // Presence reaches Redis asynchronously.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut alice = Device::connect(&a, "alice", "ap").await;
    alice.send("bob", "n1", "you are on B").await;
    assert!(
        rx.next(Duration::from_secs(2)).await.is_none(),
        "online on another node: no push"
    );
    go_offline(on_b).await;
    let sent = alice.send("bob", "n2", "now offline").await;
    let p = rx
        .next(common::WAIT)
        .await
        .expect("offline everywhere: a push");
    assert_eq!(p["msgId"], sent["msgId"]);
    assert_eq!(str_of(&p, "badge"), "2");
}

#[tokio::test]
async fn an_offline_android_phone_gets_an_fcm_v1_message() {
    let fake = FakeServer::start(Mode::Plain, |r: &Recorded| {
        if r.path == "/token" {
            Answer::json(200, json!({"access_token": "ya29.e2e", "expires_in": 3599}))
        } else {
            Answer::json(200, json!({"name": "projects/p/messages/1"}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../push-bridge/tests/fixtures/fcm-test-key.pem");
    let sa = dir.path().join("sa.json");
    std::fs::write(
        &sa,
        json!({
            "client_email": "push@p.iam.gserviceaccount.com",
            "private_key": std::fs::read_to_string(key).unwrap(),
            "private_key_id": "k1",
            "token_uri": format!("{}/token", fake.url()),
        })
        .to_string(),
    )
    .unwrap();
    let cfg = dir.path().join("mqim.toml");
    std::fs::write(
        &cfg,
        format!(
            "[push.fcm]\nservice_account_file = {sa:?}\nproject_id = \"p\"\nbase_url = \"{}\"\n",
            fake.url()
        ),
    )
    .unwrap();
    let b = Broker::start_with(&[("MQIM_CONFIG", cfg.to_str().unwrap())]);
    let mut phone = Device::connect(&b, "bob", "android").await;
    let r = phone
        .call(json!({"pushRegister": {"provider": "fcm", "token": "fcm-token-1"}}))
        .await;
    assert!(r.get("pushRegister").is_some(), "{r}");
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let sent = alice.send("bob", "f1", "hi").await;
    let token = fake.next(common::WAIT).await.expect("a token request");
    assert_eq!(token.path, "/token");
    let send = fake.next(common::WAIT).await.expect("an FCM send");
    assert_eq!(send.path, "/v1/projects/p/messages:send");
    assert_eq!(send.header("authorization"), Some("Bearer ya29.e2e"));
    let m = &send.json()["message"];
    assert_eq!(m["token"], "fcm-token-1");
    assert_eq!(m["android"]["collapse_key"], "u:alice");
    assert_eq!(m["data"]["msgId"], sent["msgId"]);
    assert_eq!(m["data"]["badge"], "1");
}

#[tokio::test]
async fn the_admin_api_shows_a_users_registrations_mutes_and_last_outcomes() {
    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    let url = rx.url("phone");
    register(&mut phone, &url).await;
    phone
        .call(json!({"mute": {"conversation": "u:mallory"}}))
        .await;
    go_offline(phone).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "p1", "ping").await;
    rx.next(common::WAIT).await.expect("a push");

    let api = common::admin::Api::new(&b).await;
    // The outcome is logged after the provider answered; give the bridge a moment.
    let mut view = Value::Null;
    for _ in 0..50 {
        let (s, v) = api.get("/api/v1/push/bob").await;
        assert_eq!(s, 200, "{v}");
        view = v;
        if view["devices"][0]["outcomes"]
            .as_array()
            .is_some_and(|o| !o.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = &view["devices"][0];
    assert_eq!(d["device"], "phone", "{view}");
    assert_eq!(d["provider"], "webhook");
    let hint = d["tokenHint"].as_str().unwrap();
    assert_eq!(hint.len(), 6, "only the token's end is shown: {view}");
    assert!(url.ends_with(hint));
    assert!(
        !view.to_string().contains(&url),
        "the whole token never leaves: {view}"
    );
    assert!(!d["outcomes"].as_array().unwrap().is_empty(), "{view}");
    assert_eq!(view["mutes"][0]["conversation"], "u:mallory");
    // An ordinary user's token gets nothing; a bad user id is a 400.
    let (s, _) = api
        .with_token(Some(common::token("bob", 60)))
        .get("/api/v1/push/bob")
        .await;
    assert_eq!(s, 403);
    let (s, v) = api.get("/api/v1/push/a+b").await;
    assert_eq!(s, 400, "{v}");
}

/// Group messages push like one-to-one ones wherever they are in the member's own stream: an
/// offline member of a small group is pushed with the group's conversation; in a large group
/// (read diffusion) only a message that mentions them is, since nothing else reaches their
/// stream.
#[tokio::test]
async fn an_offline_group_member_is_pushed_for_small_group_messages_and_large_group_mentions() {
    use common::groups::create;

    let rx = Receiver::start().await;
    let b = Broker::start_with(&push_env(&[]));
    let mut phone = Device::connect(&b, "bob", "phone").await;
    register(&mut phone, &rx.url("phone")).await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    let small = create(&mut alice, "Small", &["bob"], false).await;
    let large = create(&mut alice, "Large", &["bob"], true).await;
    go_offline(phone).await;

    let sent = alice
        .call(json!({"send": {"to": small, "clientMsgId": "s1", "text": "to the small group"}}))
        .await;
    let p = rx
        .next(Duration::from_secs(5))
        .await
        .expect("a push for the small group");
    assert_eq!(str_of(&p, "conversation"), small, "{p}");
    assert_eq!(str_of(&p, "from"), "alice");
    assert_eq!(p["msgId"], sent["sent"]["msgId"], "{p}");

    tokio::time::sleep(Duration::from_millis(1100)).await; // past the per-device interval
    alice
        .call(json!({"send": {"to": large, "clientMsgId": "l1", "text": "to everyone"}}))
        .await;
    assert!(
        rx.next(Duration::from_secs(2)).await.is_none(),
        "a large group's message without a mention pushes nobody"
    );
    let mention = alice
        .call(json!({"send": {"to": large, "clientMsgId": "l2", "text": "@bob look", "mentions": ["bob"]}}))
        .await;
    let p = rx
        .next(Duration::from_secs(5))
        .await
        .expect("a push for the mention");
    assert_eq!(str_of(&p, "conversation"), large, "{p}");
    assert_eq!(p["msgId"], mention["sent"]["msgId"], "{p}");
}
