//! Identity and authorization: tokens on every connection, and no topic or wildcard through
//! which a user reads or writes another user's IM traffic.

mod common;

use std::time::Duration;

use common::{seq, token, token_signed, Broker, Device, Proto};

async fn refused(b: &Broker, user: &str, password: &str, proto: Proto) -> String {
    match Device::connect_raw(b, user, &format!("dev-{user}"), password, proto).await {
        Ok(_) => panic!("{user} was let in"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn bad_expired_and_foreign_tokens_are_refused_as_not_authorized() {
    let b = Broker::start();
    for proto in [Proto::V4, Proto::V5] {
        let e = refused(&b, "alice", "not-a-jwt", proto).await;
        assert!(e.contains("NotAuthorized"), "{proto:?}: {e}");
        let e = refused(&b, "alice", &token("alice", -10), proto).await;
        assert!(e.contains("NotAuthorized"), "{proto:?}: {e}");
        let e = refused(&b, "alice", &token("bob", 3600), proto).await;
        assert!(e.contains("NotAuthorized"), "{proto:?}: {e}");
        let e = refused(
            &b,
            "alice",
            &token_signed("alice", 3600, "some-other-secret"),
            proto,
        )
        .await;
        assert!(e.contains("NotAuthorized"), "{proto:?}: {e}");
    }
    // The right token works on both protocol versions.
    for proto in [Proto::V4, Proto::V5] {
        Device::connect_raw(&b, "alice", "ok", &token("alice", 3600), proto)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn anonymous_clients_are_refused_unless_allowed_and_never_reach_im() {
    let b = Broker::start();
    let e = refused(&b, "", "", Proto::V4).await;
    assert!(e.contains("NotAuthorized"), "{e}");

    let b = Broker::start_with(&[("MQIM_ALLOW_ANONYMOUS", "true")]);
    let mut anon = Device::connect_raw(&b, "", "anon", "", Proto::V4)
        .await
        .unwrap();
    let codes = anon.subscribe("im/bob/bp/down/json").await;
    assert!(codes.contains("Failure"), "{codes}");
}

#[tokio::test]
async fn a_device_may_subscribe_only_to_its_own_downlinks() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "ap").await;
    assert!(alice
        .subscribe("im/alice/ap/down/pb")
        .await
        .contains("Success"));
    for filter in [
        "im/bob/bp/down/json",
        "im/bob/bp/up/json",
        "im/alice/other-device/down/json",
        "im/alice/ap/up/json",
        "im/+/bp/down/json",
        "im/bob/#",
        "im/#",
        "$share/g/im/bob/bp/down/json",
    ] {
        let codes = alice.subscribe(filter).await;
        assert!(codes.contains("Failure"), "{filter} was granted: {codes}");
    }
    // 5.0 gets the specific reason code.
    let mut v5 = Device::connect_with(&b, "alice", "ap5", Proto::V5).await;
    let codes = v5.subscribe("im/bob/bp/down/json").await;
    assert!(codes.contains("NotAuthorized"), "{codes}");
}

#[tokio::test]
async fn no_wildcard_subscription_ever_sees_another_users_im_traffic() {
    let b = Broker::start();
    let mut eve = Device::connect(&b, "eve", "ep").await;
    for filter in ["#", "+/#", "+/bob/#", "im/+/+/down/json", "$share/g/#"] {
        eve.subscribe(filter).await;
    }
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "secret-1", "for bob only").await;
    bob.event().await;
    eve.expect_silence(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn publishing_to_another_users_uplink_injects_nothing() {
    let b = Broker::start();
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let mut alice = Device::connect_with(&b, "alice", "ap", Proto::V5).await;
    let forged = r#"{"id":"x","send":{"to":"u:bob","clientMsgId":"forged","text":"I am carol"}}"#;
    alice.publish_raw("im/carol/cp/up/json", forged).await;
    assert!(alice.wait_for("$puback").await.contains("NotAuthorized"));
    alice
        .publish_raw("im/alice/other-device/up/json", forged)
        .await;
    assert!(alice.wait_for("$puback").await.contains("NotAuthorized"));
    // Writing into someone's downlink is refused too.
    alice
        .publish_raw("im/bob/bp/down/json", r#"{"event":{"seq":"1"}}"#)
        .await;
    assert!(alice.wait_for("$puback").await.contains("NotAuthorized"));
    bob.expect_silence(Duration::from_millis(500)).await;
    let (events, _) = bob.sync(0, 10).await;
    assert!(events.is_empty(), "bob's stream got {events:?}");
}

#[tokio::test]
async fn two_users_with_the_same_client_id_do_not_touch_each_others_sessions() {
    let b = Broker::start();
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect(&b, "bob", "phone").await;
    let mut carol = Device::connect(&b, "carol", "c").await;
    carol.send("alice", "1", "to alice").await;
    carol.send("bob", "2", "to bob").await;
    let a = alice.event().await;
    let bb = bob.event().await;
    assert_eq!(a["message"]["text"], "to alice");
    assert_eq!(bb["message"]["text"], "to bob");
    // Both sessions are still alive: neither took the other over.
    assert_eq!(seq(&alice.send("bob", "3", "still here").await), 2);
    assert_eq!(seq(&bob.event().await), 2);
}

#[tokio::test]
async fn same_user_and_client_id_reconnecting_takes_over_the_old_session() {
    let b = Broker::start();
    let mut old = Device::connect(&b, "bob", "phone").await;
    let mut new = Device::connect(&b, "bob", "phone").await;
    let mut alice = Device::connect(&b, "alice", "ap").await;
    alice.send("bob", "1", "after takeover").await;
    assert_eq!(new.event().await["message"]["text"], "after takeover");
    // The old connection was closed by the server and got nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn tokens_from_an_external_es256_issuer_are_accepted_when_its_key_is_configured() {
    let issuer = rcgen::KeyPair::generate().expect("P-256 key");
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("issuer.pem");
    std::fs::write(&public, issuer.public_key_pem()).unwrap();
    let config = dir.path().join("mqim.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npublic_key_file = {:?}\npublic_key_algorithm = \"ES256\"\n",
            public.to_str().unwrap()
        ),
    )
    .unwrap();
    let b = Broker::start_with(&[("MQIM_CONFIG", config.to_str().unwrap())]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &serde_json::json!({"sub": sub, "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_ec_pem(issuer.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    Device::connect_raw(&b, "alice", "ap", &sign("alice"), Proto::V4)
        .await
        .expect("the issuer's token for alice lets alice in");
    let e = refused(&b, "alice", &sign("mallory"), Proto::V4).await;
    assert!(e.contains("NotAuthorized"), "{e}");
    // The broker's own HS256 tokens still work beside the external issuer.
    Device::connect_raw(&b, "bob", "bp", &token("bob", 600), Proto::V5)
        .await
        .expect("HS256 token");
}
