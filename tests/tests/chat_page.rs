//! The demo chat page on the WebSocket listener: served at `/` (and off with
//! `MQIM_DEMO_PAGE=false`), and used in headless Chromium by two people (tests/browser/chat.mjs):
//! alice sends, bob sees it with an unread count, opens it, alice sees it read.

mod common;

use common::browser::run_browser_script;
use common::{token, Broker, Device};

async fn get(port: u16, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .expect("GET");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn the_chat_page_is_served_beside_mqtt_over_websocket_and_can_be_turned_off() {
    let b = Broker::start();
    let (s, html) = get(b.ws_port, "/").await;
    assert!(s == 200 && html.contains("mqim chat"), "{s} {html}");
    let (s, js) = get(b.ws_port, "/chat/mqtt.js").await;
    assert!(s == 200 && js.contains("class Mqtt"), "{s}");
    // MQTT over WebSocket still works on the same port.
    let _d = Device::connect_with(&b, "alice", "ws", common::Proto::Ws).await;

    let off = Broker::start_with(&[("MQIM_DEMO_PAGE", "false")]);
    let r = reqwest::get(format!("http://127.0.0.1:{}/", off.ws_port)).await;
    assert!(
        r.map_or(true, |r| r.status().as_u16() != 200),
        "the page is still served"
    );
}

#[tokio::test]
async fn two_people_chat_in_the_browser_with_unread_counts_and_read_receipts() {
    let b = Broker::start();
    let out = run_browser_script(
        "chat.mjs",
        &[
            ("CHAT_URL", format!("http://127.0.0.1:{}/", b.ws_port)),
            ("ALICE_TOKEN", token("alice", 600)),
            ("BOB_TOKEN", token("bob", 600)),
        ],
    )
    .await;
    assert!(
        out.contains("step: history is there after a new login"),
        "{out}"
    );
    // The message the page sent is an ordinary stored message.
    let mut bob = Device::connect(&b, "bob", "phone").await;
    let (events, _) = bob.sync(0, 10).await;
    assert_eq!(events[0]["message"]["text"], "hi bob, from the browser");
    assert_eq!(events[0]["message"]["from"], "alice");
}
