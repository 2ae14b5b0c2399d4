//! The web console in headless Chromium (Debian's `chromium`, driven by `playwright-core`; both
//! installed by `scripts/test`): `tests/browser/console.mjs` logs in, watches the overview,
//! kicks a rumqttc client from the clients table, sees the connections chart change, bans a
//! user and sends a system message; this test owns the broker and the MQTT clients and checks
//! what those clients saw. The overview screenshot is left in `target/browser/`.

mod common;

use common::admin::admin_token;
use common::browser::{run_browser_script, target_dir};
use common::{token, Broker, Device, Proto, WAIT};

#[tokio::test]
async fn an_operator_logs_in_kicks_and_bans_from_the_console() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect_with(&b, "bob", "laptop", Proto::V5).await;
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
        ],
    )
    .await;
    assert!(out.contains("step: system message sent"), "{out}");

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
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot"
    );
}
