//! The admin REST API against a real broker: real MQTT clients (rumqttc 3.1.1 and 5.0, raw
//! packets for exact CONNACK codes) and real HTTP. Every response is also checked against the
//! broker's OpenAPI document (see `common::admin`).

mod common;

use std::time::Duration;

use common::admin::{admin_token, Api};
use common::raw::{ConnectOpts, Raw};
use common::{token, Broker, Device, Proto, WAIT};
use serde_json::json;

#[tokio::test]
async fn admin_endpoints_refuse_missing_ordinary_and_expired_tokens() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let cases = [
        (None, 401, "UNAUTHENTICATED"),
        (Some("not-a-jwt".to_string()), 401, "UNAUTHENTICATED"),
        (Some(admin_token("root", -10)), 401, "UNAUTHENTICATED"),
        (Some(token("alice", 3600)), 403, "PERMISSION_DENIED"),
    ];
    for (t, status, code) in cases {
        let a = api.with_token(t.clone());
        for (s, v) in [
            a.get("/api/v1/stats").await,
            a.get("/api/v1/clients").await,
            a.delete("/api/v1/clients/alice/phone").await,
            a.post("/api/v1/users/alice/ban", json!({"reason": "x"}))
                .await,
            a.post("/api/v1/messages", json!({"to": "u:alice", "text": "hi"}))
                .await,
            a.post("/api/v1/drain", json!({})).await,
        ] {
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (status, Some(code)),
                "{t:?}: {v}"
            );
        }
    }
    // Nothing of the above happened: no ban, no drain.
    let (s, v) = api.get("/api/v1/bans").await;
    assert_eq!((s, v["bans"].as_array().unwrap().len()), (200, 0));
    // Health needs no token; unknown paths are JSON 404s.
    let anon = api.with_token(None);
    assert_eq!(anon.get("/api/v1/healthz").await.0, 200);
    assert_eq!(
        anon.get("/api/v1/readyz").await,
        (200, json!({"status": "ok"}))
    );
    let (s, v) = api.get("/api/v1/nope").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("NOT_FOUND")));
}

#[tokio::test]
async fn mqim_token_admin_issues_a_token_the_admin_api_accepts() {
    let b = Broker::start();
    let out = std::process::Command::new(common::mqim_bin())
        .args(["token", "ops-anna", "--admin", "--ttl", "10m"])
        .env("MQIM_DATA_DIR", b.dir.path())
        .env("MQIM_AUTH_HS256_SECRET", common::SECRET)
        .env_remove("MQIM_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let api = Api::new(&b).await.with_token(Some(t.clone()));
    assert_eq!(api.get("/api/v1/stats").await.0, 200);
    // An admin token is no MQTT login for someone else, and the system sender cannot log in.
    assert!(Device::connect_raw(&b, "alice", "x", &t, Proto::V4)
        .await
        .is_err());
    assert!(
        Device::connect_raw(&b, "system", "x", &token("system", 60), Proto::V4)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn clients_table_shows_connected_devices_and_kick_disconnects_them() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect_with(&b, "bob", "laptop", Proto::V5).await;
    let _carol = Device::connect_with(&b, "carol", "web", Proto::Ws).await;
    alice.send("bob", "c1", "hello").await;
    bob.event().await;

    let (s, v) = api.get("/api/v1/clients").await;
    assert_eq!(s, 200, "{v}");
    let rows = v["clients"].as_array().unwrap();
    let who: Vec<_> = rows
        .iter()
        .map(|c| {
            format!(
                "{}/{} {} {}",
                c["user"].as_str().unwrap(),
                c["device"].as_str().unwrap(),
                c["protocol"].as_str().unwrap(),
                c["transport"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            "alice/phone 3.1.1 tcp",
            "bob/laptop 5.0 tcp",
            "carol/web 3.1.1 ws"
        ]
    );
    let a = &rows[0];
    assert_eq!(a["subscriptions"], json!(["im/alice/phone/down/json"]));
    assert_eq!(a["keepalive_secs"], 30);
    assert!(a["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(a["messages_in"].as_u64().unwrap() >= 1, "{a}");

    // Search by user, and paging.
    let (_, v) = api.get("/api/v1/clients?user=bob").await;
    assert_eq!(v["clients"].as_array().unwrap().len(), 1);
    let (_, p1) = api.get("/api/v1/clients?limit=2").await;
    assert_eq!(p1["clients"].as_array().unwrap().len(), 2);
    let next = p1["next"].as_str().unwrap().to_string();
    let (_, p2) = api
        .get(&format!("/api/v1/clients?limit=2&after={next}"))
        .await;
    assert_eq!(p2["clients"][0]["user"], "carol");
    assert!(p2["next"].is_null());
    // Bad input.
    for q in ["limit=0", "limit=5000", "limit=abc"] {
        let (s, v) = api.get(&format!("/api/v1/clients?{q}")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{q}"
        );
    }
    let (s, v) = api.get("/api/v1/clients/bob/laptop").await;
    assert_eq!((s, v["protocol"].as_str()), (200, Some("5.0")));
    assert_eq!(api.get("/api/v1/clients/bob/nothing").await.0, 404);
    assert_eq!(api.delete("/api/v1/clients/dave/x").await.0, 404);

    // Kick: the device is disconnected; the others stay.
    let (s, v) = api.delete("/api/v1/clients/alice/phone").await;
    assert_eq!((s, v["closed"].as_u64()), (200, Some(1)));
    assert!(
        alice.closed_by_server(WAIT).await,
        "alice was not disconnected"
    );
    let (_, v) = api.get("/api/v1/clients").await;
    assert_eq!(v["clients"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_kicked_mqtt5_client_reads_administrative_action() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let t = token("erin", 3600);
    let (mut raw, ack) = Raw::connect(
        &b,
        &ConnectOpts {
            level: 5,
            client_id: "tablet",
            clean: true,
            keep_alive: 30,
            creds: Some(("erin", &t)),
            ..ConnectOpts::default()
        },
    )
    .await;
    assert_eq!(ack[1], 0);
    let (s, _) = api.delete("/api/v1/clients/erin/tablet").await;
    assert_eq!(s, 200);
    let got = raw.until_closed().await;
    assert_eq!(
        got.last(),
        Some(&(0xe0, vec![0x98])),
        "DISCONNECT 0x98: {got:02x?}"
    );
}

/// The CONNACK reason a raw CONNECT of `user` gets (3.1.1: the return code; 5.0: the reason).
async fn connack_code(b: &Broker, user: &str, level: u8) -> u8 {
    let t = token(user, 3600);
    let (_raw, body) = Raw::connect(
        b,
        &ConnectOpts {
            level,
            client_id: "probe",
            clean: true,
            keep_alive: 30,
            creds: Some((user, &t)),
            ..ConnectOpts::default()
        },
    )
    .await;
    body[1]
}

#[tokio::test]
async fn a_ban_closes_the_users_connections_and_refuses_connect_until_lifted_across_restarts() {
    let mut b = Broker::start();
    let api = Api::new(&b).await;
    let mut mallory = Device::connect(&b, "mallory", "phone").await;
    let _alice = Device::connect(&b, "alice", "phone").await;

    // Bad input first: nothing is banned by it.
    for (path, body) in [
        ("/api/v1/users/mallory/ban", json!({})),
        ("/api/v1/users/mallory/ban", json!({"reason": ""})),
        (
            "/api/v1/users/mallory/ban",
            json!({"reason": "x", "until": 1}),
        ),
        (
            "/api/v1/users/mallory/ban",
            json!({"reason": "x", "extra": 1}),
        ),
        ("/api/v1/users/bad%2Fname/ban", json!({"reason": "x"})),
    ] {
        let (s, v) = api.post(path, body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{body}"
        );
    }
    let (s, _) = api.post_raw("/api/v1/users/mallory/ban", "{not json").await;
    assert_eq!(s, 400);
    assert_eq!(connack_code(&b, "mallory", 4).await, 0);

    let (s, v) = api
        .post("/api/v1/users/mallory/ban", json!({"reason": "spam"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["closed"].as_u64(), v["ban"]["by"].as_str()),
        (Some(1), Some("root"))
    );
    assert!(
        mallory.closed_by_server(WAIT).await,
        "mallory's connection stayed open"
    );
    assert_eq!(
        connack_code(&b, "mallory", 4).await,
        5,
        "3.1.1: not authorized"
    );
    assert_eq!(connack_code(&b, "mallory", 5).await, 0x8A, "5.0: banned");
    assert_eq!(connack_code(&b, "alice", 5).await, 0, "others still log in");
    let (_, v) = api.get("/api/v1/users/mallory").await;
    assert_eq!(v["ban"]["reason"], "spam");

    // The ban is durable: a kill -9 and a restart keep it.
    b.restart();
    let api = Api::new(&b).await;
    assert_eq!(connack_code(&b, "mallory", 5).await, 0x8A);
    let (_, v) = api.get("/api/v1/bans").await;
    assert_eq!(v["bans"][0]["user"], "mallory");

    let (s, _) = api.delete("/api/v1/users/mallory/ban").await;
    assert_eq!(s, 204);
    assert_eq!(connack_code(&b, "mallory", 5).await, 0);
    let (s, v) = api.delete("/api/v1/users/mallory/ban").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("NOT_FOUND")));

    // A ban with an end lapses by itself.
    let until = mqim_im_plugin::now_ms() + 1500;
    let (s, _) = api
        .post(
            "/api/v1/users/mallory/ban",
            json!({"reason": "cool off", "until": until}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(connack_code(&b, "mallory", 4).await, 5);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(connack_code(&b, "mallory", 4).await, 0);
}

#[tokio::test]
async fn a_system_message_is_stored_and_delivered_from_the_system_sender() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let (s, v) = api
        .post(
            "/api/v1/messages",
            json!({"to": "u:alice", "text": "maintenance at 2am"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let msg_id = v["msgId"].as_str().unwrap().to_string();
    let ev = alice.event().await;
    assert_eq!(ev["message"]["from"], "system", "{ev}");
    assert_eq!(ev["message"]["text"], "maintenance at 2am");
    assert_eq!(ev["message"]["msgId"].as_str(), Some(msg_id.as_str()));
    // Stored: it is in the stream and unread in the conversation with `system`.
    let r = alice.call(json!({"conversations": {}})).await;
    let conv = &r["conversations"]["conversations"][0];
    assert_eq!(
        (conv["id"].as_str(), conv["unread"].as_str()),
        (Some("u:system"), Some("1")),
        "{r}"
    );

    for body in [
        json!({"to": "alice", "text": "hi"}),
        json!({"to": "u:alice", "text": ""}),
        json!({"to": "u:alice"}),
        json!({"to": "u:bad/id", "text": "hi"}),
    ] {
        let (s, v) = api.post("/api/v1/messages", body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{body}"
        );
    }
    let (s, _) = api.post_raw("/api/v1/messages", "[]").await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn user_view_shows_the_stream_head_device_cursors_and_unread() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect(&b, "bob", "laptop").await;
    for i in 0..3 {
        alice.send("bob", &format!("m{i}"), "hi").await;
        bob.event().await;
    }
    let r = bob.call(json!({"ack": {"seq": "2"}})).await;
    assert!(r.get("error").is_none(), "{r}");
    let (s, v) = api.get("/api/v1/users/bob").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["head_seq"], 3);
    assert_eq!(
        v["devices"],
        json!([{"device": "laptop", "acked_seq": 2, "online": true, "node": 0}])
    );
    assert_eq!(
        v["presence"], "node",
        "the embedded store knows this node only"
    );
    assert_eq!(
        (v["unread_total"].as_u64(), v["conversations"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(v["ban"].is_null());
    let (_, v) = api.get("/api/v1/users/nobody").await;
    assert_eq!(
        (v["head_seq"].as_u64(), v["conversations"].as_u64()),
        (Some(0), Some(0))
    );
    let (s, _) = api.get("/api/v1/users/a%2Fb").await;
    assert_eq!(s, 400);
}

/// The value of the first sample line of `metric` with all of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn stats_and_metrics_count_connections_messages_and_refusals() {
    let b = Broker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect_with(&b, "bob", "laptop", Proto::V5).await;
    for i in 0..5 {
        alice.send("bob", &format!("m{i}"), "hi").await;
        bob.event().await;
    }
    let r = alice
        .call(json!({"send": {"to": "u:bob", "text": "no id"}}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT");
    assert!(Device::connect_raw(&b, "eve", "x", "wrong", Proto::V4)
        .await
        .is_err());

    let (s, v) = api.get("/api/v1/stats").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["connections_total"].as_i64(), v["users_online"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(v["messages"]["received_total"], 5);
    assert_eq!(v["messages"]["delivered_total"], 5);
    assert_eq!(v["store"], "embedded");
    assert!(v["store_commit_ms"]["p99"].as_f64().unwrap() > 0.0, "{v}");

    let (s, text) = api.with_token(None).get_text("/metrics").await;
    assert_eq!(s, 200);
    let m = |name, labels: &[&str]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in\n{text}"))
    };
    assert_eq!(
        m(
            "mqim_connections",
            &["protocol=\"3.1.1\"", "transport=\"tcp\""]
        ),
        1.0
    );
    assert_eq!(
        m(
            "mqim_connections",
            &["protocol=\"5.0\"", "transport=\"tcp\""]
        ),
        1.0
    );
    assert_eq!(m("mqim_messages_received_total", &[]), 5.0);
    assert_eq!(m("mqim_messages_delivered_total", &[]), 5.0);
    assert_eq!(
        m("mqim_requests_total", &["op=\"send\"", "result=\"ok\""]),
        5.0
    );
    assert_eq!(
        m(
            "mqim_requests_total",
            &["op=\"send\"", "result=\"INVALID_ARGUMENT\""]
        ),
        1.0
    );
    assert_eq!(m("mqim_connects_total", &["result=\"ok\""]), 2.0);
    assert_eq!(
        m("mqim_connects_total", &["result=\"not_authorized\""]),
        1.0
    );
    assert_eq!(m("mqim_store_commit_seconds_count", &[]), 5.0);
    assert_eq!(
        m("mqim_send_to_deliver_seconds_bucket", &["le=\"+Inf\""]),
        5.0
    );
    assert!(text.contains("mqim_outbox_disconnects_total 0"), "{text}");

    alice.disconnect().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = api.get("/api/v1/stats").await;
        if v["connections_total"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still counted: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_auth_requires_an_admin_token_on_metrics() {
    let b = Broker::start_with(&[("MQIM_ADMIN_METRICS_AUTH", "true")]);
    let api = Api::new(&b).await;
    assert_eq!(api.with_token(None).get_text("/metrics").await.0, 401);
    assert_eq!(
        api.with_token(Some(token("alice", 60)))
            .get_text("/metrics")
            .await
            .0,
        403
    );
    let (s, text) = api.get_text("/metrics").await;
    assert!(s == 200 && text.contains("mqim_connections"), "{s} {text}");
}

#[tokio::test]
async fn moderation_rejects_or_masks_listed_words_whatever_their_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "# the list\nbad\n").unwrap();
    let path = words.to_str().unwrap();
    let reject = Broker::start_with(&[("MQIM_MODERATION_WORDS_FILE", path)]);
    let mut alice = Device::connect(&reject, "alice", "phone").await;
    let mut bob = Device::connect(&reject, "bob", "phone").await;
    for text in ["bad", "so Ｂａｄ", "b\u{200b}ad!"] {
        let r = alice
            .call(json!({"send": {"to": "u:bob", "clientMsgId": text, "text": text}}))
            .await;
        assert_eq!(r["error"]["code"], "CONTENT_REJECTED", "{text:?}: {r}");
    }
    alice.send("bob", "ok", "good day").await;
    assert_eq!(
        bob.event().await["message"]["text"],
        "good day",
        "nothing rejected was stored"
    );
    // Reload picks up a new list.
    std::fs::write(&words, "bad\nugly\n").unwrap();
    let api = Api::new(&reject).await;
    let (s, v) = api.post("/api/v1/moderation/reload", json!({})).await;
    assert_eq!((s, v["words"].as_u64()), (200, Some(2)));
    let r = alice
        .call(json!({"send": {"to": "u:bob", "clientMsgId": "u", "text": "UGLY"}}))
        .await;
    assert_eq!(r["error"]["code"], "CONTENT_REJECTED");
    // The admin's own system messages are filtered too.
    let (s, v) = api
        .post(
            "/api/v1/messages",
            json!({"to": "u:bob", "text": "bad news"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("CONTENT_REJECTED"))
    );

    let mask = Broker::start_with(&[
        ("MQIM_MODERATION_WORDS_FILE", path),
        ("MQIM_MODERATION_ACTION", "mask"),
    ]);
    let mut alice = Device::connect(&mask, "alice", "phone").await;
    let mut bob = Device::connect(&mask, "bob", "phone").await;
    alice.send("bob", "m1", "a Ｂａｄ and ugly idea").await;
    let ev = bob.event().await;
    assert_eq!(ev["message"]["text"], "a *** and **** idea");
    let (page, _) = bob.sync(0, 10).await;
    assert_eq!(
        page[0]["message"]["text"], "a *** and **** idea",
        "stored masked"
    );
}

#[tokio::test]
async fn the_admin_listener_serves_https_with_a_configured_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let b = Broker::start_with(&[
        ("MQIM_ADMIN_TLS_CERT_FILE", cert_path.to_str().unwrap()),
        ("MQIM_ADMIN_TLS_KEY_FILE", key_path.to_str().unwrap()),
    ]);
    let port = b.admin_port.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let t = admin_token("root", 60);
    tls.write_all(
        format!("GET /api/v1/stats HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    let _ = tls.read_to_string(&mut resp).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"store\":\"embedded\""), "{resp}");
    // Plain HTTP gets no API answer there.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/healthz")).await;
    assert!(plain.is_err(), "plain HTTP was served on the TLS listener");
}
