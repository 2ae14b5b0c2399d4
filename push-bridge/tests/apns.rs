//! The APNs provider against a local fake APNs (h2c, and HTTP/2 over TLS with ALPN h2): the
//! request shape Apple documents, the ES256 provider token verified with the test key's public
//! half and reused across requests, and every scripted answer classified.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqim_push_bridge::apns::Apns;
use mqim_push_bridge::config::ApnsConfig;
use mqim_push_bridge::notification::{Notification, ProviderKind, Registration};
use mqim_push_bridge::provider::{Outcome, Provider};
use mqim_push_bridge::testing::{Answer, FakeServer, Mode, Recorded};
use serde_json::json;

const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const WAIT: Duration = Duration::from_secs(5);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cfg(base: &str) -> ApnsConfig {
    ApnsConfig {
        key_file: fixture("apns-test-key.p8"),
        key_id: "KEYID12345".into(),
        team_id: "TEAMID6789".into(),
        topic: "com.example.chat".into(),
        base_url: base.into(),
        sandbox_url: format!("{base}/sandbox"),
    }
}

fn reg() -> Registration {
    Registration {
        provider: ProviderKind::Apns,
        token: TOKEN.into(),
        topic: None,
        sandbox: false,
        locale: None,
        preview: false,
    }
}

fn note(msg_id: Option<u64>, badge: u64) -> Notification {
    Notification {
        user: "bob".into(),
        device: "phone".into(),
        conversation: "u:alice".into(),
        seq: 7,
        msg_id,
        from: if msg_id.is_some() {
            "alice".into()
        } else {
            String::new()
        },
        badge,
        preview: None,
    }
}

/// A fake that answers from `script` (then 200) and a provider pointed at it.
async fn setup(script: Vec<Answer>) -> (FakeServer, Apns) {
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let fake = FakeServer::start(Mode::Plain, move |_: &Recorded| {
        script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::status(200))
    })
    .await;
    let c = cfg(&fake.url());
    let client = Apns::client_for(&c).unwrap();
    let apns = Apns::new(&c, client, Duration::from_secs(86400)).unwrap();
    (fake, apns)
}

/// Verifies the bearer token's ES256 signature and claims; returns the token.
fn verify_provider_token(r: &Recorded) -> String {
    let auth = r.header("authorization").expect("authorization header");
    let jwt = auth
        .strip_prefix("bearer ")
        .or_else(|| auth.strip_prefix("Bearer "))
        .unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("KEYID12345"));
    let key = jsonwebtoken::DecodingKey::from_ec_pem(
        &std::fs::read(fixture("apns-test-key.pub.pem")).unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
        .expect("the provider token verifies with the key's public half")
        .claims;
    assert_eq!(claims["iss"], "TEAMID6789");
    let iat = claims["iat"].as_u64().expect("iat");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat <= now && now - iat < 3600);
    jwt.to_string()
}

fn assert_apns_shape(r: &Recorded) {
    assert_eq!(r.version, "HTTP/2.0", "APNs is HTTP/2 only");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/3/device/{TOKEN}"));
    assert_eq!(r.header("apns-topic"), Some("com.example.chat"));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-collapse-id"), Some("u:alice"));
    let exp: u64 = r.header("apns-expiration").unwrap().parse().unwrap();
    assert!(exp > 1_700_000_000);
    assert!(r.body.len() <= 4096);
}

#[tokio::test]
async fn alert_push_has_apples_headers_a_verified_es256_token_and_the_badge() {
    let (fake, apns) = setup(vec![]).await;
    assert_eq!(
        apns.send(&reg(), &note(Some(42), 3)).await,
        Outcome::Delivered
    );
    let r = fake.next(WAIT).await.unwrap();
    assert_apns_shape(&r);
    assert_eq!(r.header("apns-priority"), Some("10"));
    verify_provider_token(&r);
    let body = r.json();
    assert_eq!(body["aps"]["badge"], 3);
    assert_eq!(body["aps"]["mutable-content"], 1);
    assert_eq!(body["aps"]["alert"]["title"], "alice");
    assert_eq!(
        body["aps"]["alert"]["body"], "New message",
        "no preview unless asked"
    );
    assert_eq!(body["msgId"], "42");
    assert_eq!(body["seq"], "7");
    assert_eq!(body["conversation"], "u:alice");
}

#[tokio::test]
async fn badge_only_push_is_low_priority_and_carries_no_alert() {
    let (fake, apns) = setup(vec![]).await;
    assert_eq!(apns.send(&reg(), &note(None, 0)).await, Outcome::Delivered);
    let r = fake.next(WAIT).await.unwrap();
    assert_apns_shape(&r);
    assert_eq!(r.header("apns-priority"), Some("5"));
    let body = r.json();
    assert_eq!(body["aps"], json!({"badge": 0}));
    assert!(body.get("msgId").is_none());
}

#[tokio::test]
async fn one_provider_token_serves_many_requests() {
    let (fake, apns) = setup(vec![]).await;
    let mut jwts = HashSet::new();
    for i in 0..5 {
        assert_eq!(
            apns.send(&reg(), &note(Some(i + 1), i)).await,
            Outcome::Delivered
        );
        jwts.insert(verify_provider_token(&fake.next(WAIT).await.unwrap()));
    }
    assert_eq!(jwts.len(), 1, "never re-signed per request");
}

#[tokio::test]
async fn scripted_answers_are_classified_and_an_expired_token_is_replaced() {
    let reason = |r: &str| json!({ "reason": r });
    let (fake, apns) = setup(vec![
        Answer::json(410, reason("Unregistered")),
        Answer::json(400, reason("BadDeviceToken")),
        Answer::json(403, reason("ExpiredProviderToken")),
        Answer::status(429),
        Answer::json(503, reason("ServiceUnavailable")).with_header("retry-after", "7"),
        Answer::Drop,
        Answer::json(400, reason("PayloadEmpty")),
        Answer::json(403, reason("InvalidProviderToken")),
    ])
    .await;
    let n = note(Some(1), 1);
    assert!(
        matches!(apns.send(&reg(), &n).await, Outcome::TokenGone(r) if r.contains("Unregistered"))
    );
    assert!(
        matches!(apns.send(&reg(), &n).await, Outcome::TokenGone(r) if r.contains("BadDeviceToken"))
    );
    let first = verify_provider_token(&fake.next(WAIT).await.unwrap());
    fake.next(WAIT).await.unwrap();
    assert!(matches!(apns.send(&reg(), &n).await, Outcome::Retry { .. }));
    fake.next(WAIT).await.unwrap();
    assert!(matches!(apns.send(&reg(), &n).await, Outcome::Retry { .. }));
    let after_expiry = verify_provider_token(&fake.next(WAIT).await.unwrap());
    assert_ne!(
        first, after_expiry,
        "ExpiredProviderToken makes a fresh token"
    );
    assert_eq!(
        apns.send(&reg(), &n).await,
        Outcome::Retry {
            after: Some(Duration::from_secs(7)),
            reason: "HTTP 503 ServiceUnavailable".into()
        }
    );
    assert!(
        matches!(apns.send(&reg(), &n).await, Outcome::Retry { reason, .. } if reason.starts_with("transport"))
    );
    assert!(
        matches!(apns.send(&reg(), &n).await, Outcome::Rejected(r) if r.contains("PayloadEmpty"))
    );
    assert!(
        matches!(apns.send(&reg(), &n).await, Outcome::AuthFailed(r) if r.contains("InvalidProviderToken"))
    );
    assert_eq!(apns.send(&reg(), &n).await, Outcome::Delivered);
}

#[tokio::test]
async fn sandbox_registrations_use_the_sandbox_endpoint() {
    let (fake, apns) = setup(vec![]).await;
    let r = Registration {
        sandbox: true,
        topic: Some("com.example.chat.dev".into()),
        ..reg()
    };
    assert_eq!(apns.send(&r, &note(Some(1), 1)).await, Outcome::Delivered);
    let got = fake.next(WAIT).await.unwrap();
    assert_eq!(got.path, format!("/sandbox/3/device/{TOKEN}"));
    assert_eq!(got.header("apns-topic"), Some("com.example.chat.dev"));
}

#[tokio::test]
async fn device_tokens_must_be_hex() {
    let (_fake, apns) = setup(vec![]).await;
    assert!(apns.check_token(&reg()).is_ok());
    let bad = Registration {
        token: "not-a-token".into(),
        ..reg()
    };
    assert!(apns.check_token(&bad).is_err());
}

#[tokio::test]
async fn works_over_tls_with_alpn_h2() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let fake = FakeServer::start(
        Mode::H2Tls {
            cert_der: cert.cert.der().to_vec(),
            key_der: cert.signing_key.serialize_der(),
        },
        |_: &Recorded| Answer::status(200),
    )
    .await;
    let c = cfg(&fake.url());
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(cert.cert.der()).unwrap()])
        .build()
        .unwrap();
    let apns = Apns::new(&c, client, Duration::from_secs(3600)).unwrap();
    assert_eq!(
        apns.send(&reg(), &note(Some(9), 2)).await,
        Outcome::Delivered
    );
    let r = fake.next(WAIT).await.unwrap();
    assert_apns_shape(&r);
    verify_provider_token(&r);
}
