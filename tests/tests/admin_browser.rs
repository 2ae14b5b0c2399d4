//! The web console in headless Chromium (Debian's `chromium`, driven by `playwright-core`; both
//! installed by `scripts/test`): `tests/browser/console.mjs` logs in, watches the overview,
//! kicks a rumqttc client from the clients table, sees the connections chart change, bans a
//! user, opens a group made by real clients (info, members paged) and a user's push page (a
//! registration made by a real client's `pushRegister`, its last outcome from a real push to a
//! local webhook receiver), and sends system messages to a user and to the group; this test owns
//! the broker and the MQTT clients and checks what those clients saw. The overview screenshot is
//! left in `target/browser/`.

mod common;

use common::admin::{admin_token, Api};
use common::browser::{run_browser_script, target_dir};
use common::{token, Broker, Device, Proto, WAIT};
use mqim_push_bridge::testing::{Answer, FakeServer, Mode};
use serde_json::json;

/// Members of the console's group besides its owner alice: more than the console's page of 50.
fn group_members() -> Vec<String> {
    let mut m = vec!["bob".to_string(), "erin".to_string()];
    m.extend((0..57).map(|i| format!("m{i:02}")));
    m
}

#[tokio::test]
async fn an_operator_logs_in_kicks_bans_and_reads_groups_and_push_from_the_console() {
    let hook = FakeServer::start(Mode::Plain, |_| Answer::status(200)).await;
    let b = Broker::start_with(&[
        ("MQIM_PUSH_WEBHOOK_SECRET", "console-test-secret"),
        ("MQIM_PUSH_WEBHOOK_ALLOW", "http://127.0.0.1:"),
    ]);
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect_with(&b, "bob", "laptop", Proto::V5).await;
    let mut erin = Device::connect_with(&b, "erin", "web", Proto::Ws).await;
    let r = alice
        .call(json!({"groupCreate": {"name": "Ops room", "members": group_members(), "large": false}}))
        .await;
    let group = r["groupCreate"]["group"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("groupCreate: {r}"))
        .to_string();
    assert_eq!(erin.event().await["group"]["change"], "created");

    // dora's tablet registers for push, mutes a conversation and goes offline; a message to her
    // is pushed to the webhook receiver.
    let mut dora = Device::connect(&b, "dora", "tablet").await;
    let push_url = format!("{}/push/dora-tablet-xyz123", hook.url());
    let r = dora
        .call(json!({"pushRegister": {"provider": "webhook", "token": push_url}}))
        .await;
    assert!(r.get("pushRegister").is_some(), "pushRegister: {r}");
    let r = dora
        .call(json!({"mute": {"conversation": "u:mallory"}}))
        .await;
    assert!(r.get("error").is_none(), "mute: {r}");
    dora.disconnect().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    alice.send("dora", "to-dora", "are you there?").await;
    hook.next(WAIT).await.expect("a push to dora's tablet");
    // The outcome is logged once the receiver answered: wait for it, as the page will show it.
    let api = Api::new(&b).await;
    let mut delivered = false;
    for _ in 0..50 {
        let (_, v) = api.get("/api/v1/push/dora").await;
        let outcomes = v["devices"][0]["outcomes"].as_array().cloned();
        if outcomes.is_some_and(|o| o.last().is_some_and(|l| l["status"] == "delivered")) {
            delivered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(delivered, "the push outcome was never logged");

    let shots = target_dir().join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("console-overview.png");
    let _ = std::fs::remove_file(&shot);
    let out = run_browser_script(
        "console.mjs",
        &[
            (
                "CONSOLE_URL",
                format!("http://127.0.0.1:{}/", b.admin_port.unwrap()),
            ),
            ("ADMIN_TOKEN", admin_token("root", 600)),
            ("SCREENSHOT", shot.display().to_string()),
            ("GROUP", group.clone()),
            ("PUSH_USER", "dora".to_string()),
            ("TOKEN_HINT", "xyz123".to_string()),
        ],
    )
    .await;
    for step in [
        "group page shows 60 members over two pages",
        "push page shows dora's webhook registration",
        "system message sent to the group",
    ] {
        assert!(out.contains(&format!("step: {step}")), "{step}:\n{out}");
    }

    // What the MQTT side saw.
    assert!(
        alice.closed_by_server(WAIT).await,
        "the kicked client is still connected"
    );
    assert!(
        bob.closed_by_server(WAIT).await,
        "the banned user is still connected"
    );
    let refused = Device::connect_raw(&b, "bob", "laptop", &token("bob", 60), Proto::V5).await;
    assert!(
        refused.is_err_and(|e| e.contains("Banned")),
        "bob's CONNECT was not refused as banned"
    );
    let mut carol = Device::connect(&b, "carol", "phone").await;
    let (events, _) = carol.sync(0, 10).await;
    assert_eq!(events[0]["message"]["text"], "hello from the console");
    // erin, a group member, got the console's group message live, from `system`.
    let ev = erin.event().await;
    let m = &ev["message"];
    assert_eq!(
        (m["from"].as_str(), m["conversation"].as_str()),
        (Some("system"), Some(group.as_str())),
        "{ev}"
    );
    assert_eq!(m["text"], "hello, ops room");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot"
    );
}
