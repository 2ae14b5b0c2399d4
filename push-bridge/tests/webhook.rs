//! The webhook provider against a local receiver that verifies the HMAC signature of the raw
//! body, the timestamp and the JSON shape; and the allow list and private-address rule.

use std::time::Duration;

use mqim_push_bridge::config::WebhookConfig;
use mqim_push_bridge::notification::{Notification, ProviderKind, Registration};
use mqim_push_bridge::provider::{Outcome, Provider};
use mqim_push_bridge::testing::{Answer, FakeServer, Mode, Recorded};
use mqim_push_bridge::webhook::{signature, Webhook};

const SECRET: &str = "webhook-test-secret";
const WAIT: Duration = Duration::from_secs(5);

fn hook(allow: &[&str]) -> Webhook {
    Webhook::new(&WebhookConfig {
        secret: SECRET.into(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap()
}

fn reg(url: String) -> Registration {
    Registration {
        provider: ProviderKind::Webhook,
        token: url,
        topic: None,
        sandbox: false,
        locale: None,
        preview: false,
    }
}

fn note(msg_id: Option<u64>) -> Notification {
    Notification {
        user: "bob".into(),
        device: "pager".into(),
        conversation: "u:alice".into(),
        seq: 3,
        msg_id,
        from: "alice".into(),
        badge: 2,
        preview: None,
    }
}

async fn receiver(status: u16) -> FakeServer {
    FakeServer::start(Mode::Plain, move |r: &Recorded| {
        // A receiver checks the signature before anything else.
        let ok =
            r.header("x-mqim-signature") == Some(signature(SECRET.as_bytes(), &r.body).as_str());
        if ok {
            Answer::status(status)
        } else {
            Answer::status(401)
        }
    })
    .await
}

#[tokio::test]
async fn posts_signed_json_the_receiver_can_verify() {
    let fake = receiver(204).await;
    let w = hook(&["http://127.0.0.1:"]);
    let url = format!("{}/hooks/push", fake.url());
    assert_eq!(w.send(&reg(url), &note(Some(99))).await, Outcome::Delivered);
    let r = fake.next(WAIT).await.unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/push");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let sig = r.header("x-mqim-signature").unwrap();
    assert!(
        sig.starts_with("sha256=") && sig[7..].chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    );
    assert_eq!(sig.len(), 7 + 64);
    let ts: u64 = r.header("x-mqim-timestamp").unwrap().parse().unwrap();
    assert!(ts > 1_700_000_000);
    assert_eq!(
        r.json(),
        serde_json::json!({"user": "bob", "device": "pager", "conversation": "u:alice",
            "seq": "3", "msgId": "99", "from": "alice", "badge": "2"})
    );
}

#[tokio::test]
async fn a_badge_only_push_has_no_msg_id() {
    let fake = receiver(200).await;
    let w = hook(&["http://127.0.0.1:"]);
    assert_eq!(
        w.send(&reg(fake.url()), &note(None)).await,
        Outcome::Delivered
    );
    let body = fake.next(WAIT).await.unwrap().json();
    assert!(body.get("msgId").is_none(), "{body}");
    assert_eq!(body["badge"], "2");
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_failure_and_gone_endpoints_are_token_gone() {
    let fake = receiver(200).await;
    let wrong = Webhook::new(&WebhookConfig {
        secret: "not-the-secret".into(),
        allow: vec!["http://127.0.0.1:".into()],
    })
    .unwrap();
    assert!(matches!(
        wrong.send(&reg(fake.url()), &note(Some(1))).await,
        Outcome::AuthFailed(_)
    ));
    let gone = receiver(410).await;
    assert!(matches!(
        hook(&["http://127.0.0.1:"])
            .send(&reg(gone.url()), &note(Some(1)))
            .await,
        Outcome::TokenGone(_)
    ));
    let busy = receiver(503).await;
    assert!(matches!(
        hook(&["http://127.0.0.1:"])
            .send(&reg(busy.url()), &note(Some(1)))
            .await,
        Outcome::Retry { .. }
    ));
}

#[tokio::test]
async fn loopback_endpoints_are_refused_unless_the_allow_list_names_them() {
    let fake = receiver(200).await;
    // "http://" allows any public host, but not loopback.
    let w = hook(&["http://"]);
    let r = reg(fake.url());
    assert!(w.check_token(&r).is_err());
    assert!(matches!(
        w.send(&r, &note(Some(1))).await,
        Outcome::Rejected(_)
    ));
    // So is a name for loopback (names are also checked where they are resolved).
    let by_name = reg(format!("http://localhost:{}/", fake.addr.port()));
    assert!(w.check_token(&by_name).is_err());
    assert!(matches!(
        w.send(&by_name, &note(Some(1))).await,
        Outcome::Rejected(_)
    ));
    assert!(
        fake.drain().await.is_empty(),
        "nothing reached the loopback receiver"
    );
    // Naming localhost in the allow list lets it through.
    let local = hook(&["http://localhost:"]);
    assert_eq!(
        local.send(&by_name, &note(Some(1))).await,
        Outcome::Delivered
    );
}
