//! The FCM HTTP v1 provider against a local fake Google: the token endpoint verifies the RS256
//! service-account assertion and issues an access token; the send endpoint checks the bearer,
//! the path and the message shape; the access token is cached; UNREGISTERED and 503 scripted.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqim_push_bridge::config::FcmConfig;
use mqim_push_bridge::fcm::Fcm;
use mqim_push_bridge::notification::{Notification, ProviderKind, Registration};
use mqim_push_bridge::provider::{Outcome, Provider};
use mqim_push_bridge::testing::{Answer, FakeServer, Mode, Recorded};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);
const EMAIL: &str = "push@example-project.iam.gserviceaccount.com";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Checks the assertion posted to the token endpoint.
fn verify_assertion(r: &Recorded, token_uri: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = url_decode(&r.body);
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        get("grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let jwt = get("assertion");
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("key-1"));
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(
        &std::fs::read(fixture("fcm-test-key.pub.pem")).unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[token_uri]);
    v.set_issuer(&[EMAIL]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &v)
        .expect("the assertion verifies with the service account's public key")
        .claims;
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
}

fn url_decode(body: &[u8]) -> Vec<(String, String)> {
    let s = String::from_utf8_lossy(body);
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

struct Setup {
    fake: FakeServer,
    fcm: Fcm,
    token_requests: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

/// A fake Google (token endpoint + FCM) answering sends from `script` (then 200).
async fn setup(script: Vec<Answer>) -> Setup {
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let token_requests = Arc::new(AtomicUsize::new(0));
    let counter = token_requests.clone();
    let fake = FakeServer::start(Mode::Plain, move |r: &Recorded| {
        if r.path == "/token" {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            return Answer::json(
                200,
                json!({"access_token": format!("ya29.test-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
            );
        }
        script.lock().unwrap().pop_front().unwrap_or(Answer::json(
            200,
            json!({"name": "projects/example-project/messages/0:1"}),
        ))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.json");
    let token_uri = format!("{}/token", fake.url());
    std::fs::write(
        &key_file,
        json!({
            "type": "service_account",
            "project_id": "example-project",
            "private_key_id": "key-1",
            "private_key": std::fs::read_to_string(fixture("fcm-test-key.pem")).unwrap(),
            "client_email": EMAIL,
            "token_uri": token_uri,
        })
        .to_string(),
    )
    .unwrap();
    let cfg = FcmConfig {
        service_account_file: key_file,
        project_id: "example-project".into(),
        base_url: fake.url(),
    };
    let fcm = Fcm::new(&cfg, reqwest::Client::new()).unwrap();
    Setup {
        fake,
        fcm,
        token_requests,
        _dir: dir,
    }
}

fn reg() -> Registration {
    Registration {
        provider: ProviderKind::Fcm,
        token: "fcm-registration-token-1".into(),
        topic: None,
        sandbox: false,
        locale: None,
        preview: true,
    }
}

fn note() -> Notification {
    Notification {
        user: "bob".into(),
        device: "android".into(),
        conversation: "u:alice".into(),
        seq: 12,
        msg_id: Some(383027645203349504),
        from: "alice".into(),
        badge: 4,
        preview: Some("Hi Bob!".into()),
    }
}

#[tokio::test]
async fn sends_a_v1_message_with_an_access_token_from_a_verified_assertion() {
    let s = setup(vec![]).await;
    assert_eq!(s.fcm.send(&reg(), &note()).await, Outcome::Delivered);
    let token_req = s.fake.next(WAIT).await.unwrap();
    assert_eq!(token_req.path, "/token");
    verify_assertion(&token_req, &format!("{}/token", s.fake.url()));

    let send = s.fake.next(WAIT).await.unwrap();
    assert_eq!(send.method, "POST");
    assert_eq!(send.path, "/v1/projects/example-project/messages:send");
    assert_eq!(send.header("authorization"), Some("Bearer ya29.test-0"));
    let m = &send.json()["message"];
    assert_eq!(m["token"], "fcm-registration-token-1");
    assert_eq!(m["android"]["priority"], "high");
    assert_eq!(m["android"]["collapse_key"], "u:alice");
    let data = m["data"].as_object().unwrap();
    assert!(
        data.values().all(|v| v.is_string()),
        "FCM data values are strings: {data:?}"
    );
    assert_eq!(data["msgId"], "383027645203349504");
    assert_eq!(data["badge"], "4");
    assert_eq!(data["seq"], "12");
    assert_eq!(data["preview"], "Hi Bob!");
}

#[tokio::test]
async fn the_access_token_is_cached_across_sends() {
    let s = setup(vec![]).await;
    for _ in 0..4 {
        assert_eq!(s.fcm.send(&reg(), &note()).await, Outcome::Delivered);
    }
    assert_eq!(s.token_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unregistered_removes_and_503_retries_with_retry_after() {
    let s = setup(vec![
        Answer::json(
            404,
            json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
            ]}}),
        ),
        Answer::json(503, json!({"error": {"code": 503, "status": "UNAVAILABLE"}}))
            .with_header("retry-after", "30"),
        Answer::json(400, json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}
        ]}})),
    ])
    .await;
    assert!(
        matches!(s.fcm.send(&reg(), &note()).await, Outcome::TokenGone(r) if r.contains("UNREGISTERED"))
    );
    assert_eq!(
        s.fcm.send(&reg(), &note()).await,
        Outcome::Retry {
            after: Some(Duration::from_secs(30)),
            reason: "HTTP 503 UNAVAILABLE".into()
        }
    );
    assert!(matches!(
        s.fcm.send(&reg(), &note()).await,
        Outcome::Rejected(_)
    ));
    assert_eq!(s.fcm.send(&reg(), &note()).await, Outcome::Delivered);
}
