//! Test support: the real `mqim` binary on ephemeral ports with a temp data dir, and IM devices
//! driven by real MQTT clients (rumqttc, 3.1.1 or 5.0, TCP or WebSocket).
#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod groups;
pub mod raw;
pub mod v5client;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The HS256 secret every test broker uses, so tests can sign any token they need.
pub const SECRET: &str = "mqim-test-secret-0123456789abcdef";
/// How long a test waits for something that should arrive.
pub const WAIT: Duration = Duration::from_secs(10);

/// Path of the `mqim` binary: `MQIM_BIN`, or built once by this test run.
pub fn mqim_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MQIM_BIN") {
            return PathBuf::from(p);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "mqim-broker", "--bin", "mqim"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building mqim failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("mqim")
    })
    .clone()
}

/// A broker on the split store: a real `redis-server` of its own (free port, no persistence) as
/// the index, the embedded log in the broker's data dir.
pub struct RedisBroker {
    pub broker: Broker,
    pub redis: mqim_im_plugin::testing::RedisServer,
}

impl RedisBroker {
    pub fn start() -> RedisBroker {
        Self::start_with(&[])
    }

    /// With more environment for the broker (config overrides).
    pub fn start_with(env: &[(&str, &str)]) -> RedisBroker {
        let redis = mqim_im_plugin::testing::RedisServer::start();
        let url = redis.url();
        let mut all = vec![
            ("MQIM_STORE_BACKEND", "redis+embedded"),
            ("MQIM_REDIS_URL", url.as_str()),
        ];
        all.extend_from_slice(env);
        let broker = Broker::start_with(&all);
        RedisBroker { broker, redis }
    }
}

/// Each scenario (an `async fn(&mut Broker)`, or `&Broker`) as a test on the embedded store
/// (`mod embedded`) and one on `redis+embedded` (`mod redis_embedded`: a real `redis-server` of
/// its own as the index, the embedded log), each broker started with the environment given
/// before the `;`, if any.
#[allow(unused_macros)] // each test file links this module; few use the macro
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        $crate::common::on_both_stores!([]; $($scenario),*);
    };
    ($env:expr; $($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut b = $crate::common::Broker::start_with(&$env);
                    super::$scenario(&mut b).await
                }
            )*
        }
        mod redis_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut rb = $crate::common::RedisBroker::start_with(&$env);
                    super::$scenario(&mut rb.broker).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_stores;

/// A running broker. Killed when dropped; the data dir lives as long as this value.
pub struct Broker {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub mqtt_port: u16,
    pub ws_port: u16,
    /// Set when the broker was started with a TLS listener.
    pub tls_port: Option<u16>,
    /// The admin HTTP listener (on unless `MQIM_ADMIN_LISTEN=off`).
    pub admin_port: Option<u16>,
    extra_env: Vec<(String, String)>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    /// Starts with extra environment variables (e.g. `MQIM_ALLOW_ANONYMOUS`).
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        let mut b = Broker {
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            mqtt_port: 0,
            ws_port: 0,
            tls_port: None,
            admin_port: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(mqim_bin());
        cmd.arg("serve")
            .env("MQIM_DATA_DIR", self.dir.path())
            .env("MQIM_MQTT_LISTEN", "127.0.0.1:0")
            .env("MQIM_WS_LISTEN", "127.0.0.1:0")
            .env("MQIM_ADMIN_LISTEN", "127.0.0.1:0")
            .env("MQIM_AUTH_HS256_SECRET", SECRET)
            // Most tests send faster than a person; the rate-limit tests turn it back on.
            .env("MQIM_MAX_SENDS_PER_SEC", "0")
            .env(
                "RUST_LOG",
                std::env::var("MQIM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mqim");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read mqim's listening line");
        // "mqim listening mqtt=127.0.0.1:PORT ws=127.0.0.1:PORT"
        let port = |key: &str| -> u16 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        self.mqtt_port = port("mqtt=");
        self.ws_port = port("ws=");
        let optional_port = |key: &str| -> Option<u16> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.trim().parse().ok())
        };
        self.tls_port = optional_port("tls=");
        self.admin_port = optional_port("admin=");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        for _ in 0..200 {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Waits up to `within` for the process to exit by itself; its exit status's success.
    pub fn wait_exit(&mut self, within: Duration) -> Option<bool> {
        let deadline = std::time::Instant::now() + within;
        let c = self.child.as_mut()?;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts again on the same data dir (new ports).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM (a clean shutdown), then starts again on the same data dir (new ports).
    pub fn restart_gracefully(&mut self) {
        assert!(self.terminate(), "mqim did not exit cleanly on SIGTERM");
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A JWT for `user` valid for `ttl_secs` (negative: already expired), signed with [`SECRET`].
pub fn token(user: &str, ttl_secs: i64) -> String {
    token_signed(user, ttl_secs, SECRET)
}

pub fn token_signed(user: &str, ttl_secs: i64, secret: &str) -> String {
    sign(json!({"sub": user}), ttl_secs, secret)
}

/// A JWT with `claims` plus an `exp` `ttl_secs` from now, signed HS256 with `secret`.
pub fn sign(mut claims: Value, ttl_secs: i64, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    claims["exp"] = json!(now + ttl_secs);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Which MQTT stack a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    V4,
    V5,
    Ws,
}

/// Something a device received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// An IM device: user + client id, connected and subscribed to its JSON downlink.
pub struct Device {
    pub user: String,
    pub id: String,
    client: Client,
    rx: mpsc::UnboundedReceiver<Received>,
    /// Anything not yet consumed by `reply`/`event`.
    backlog: Vec<Value>,
    next_req: u64,
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Device {
    /// Connects over MQTT 3.1.1 and subscribes to the JSON downlink.
    pub async fn connect(b: &Broker, user: &str, id: &str) -> Device {
        Self::connect_with(b, user, id, Proto::V4).await
    }

    pub async fn connect_with(b: &Broker, user: &str, id: &str, proto: Proto) -> Device {
        let mut d = Self::connect_raw(b, user, id, &token(user, 3600), proto)
            .await
            .expect("connect");
        let down = format!("im/{user}/{id}/down/json");
        d.subscribe(&down).await;
        d
    }

    /// Connects without subscribing; returns the CONNACK refusal as an error.
    pub async fn connect_raw(
        b: &Broker,
        user: &str,
        id: &str,
        password: &str,
        proto: Proto,
    ) -> Result<Device, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<Result<(), String>>();
        let client = match proto {
            Proto::V4 | Proto::Ws => {
                let mut o = if proto == Proto::Ws {
                    let mut o = rumqttc::MqttOptions::new(
                        id,
                        format!("ws://127.0.0.1:{}/mqtt", b.ws_port),
                        b.ws_port,
                    );
                    o.set_transport(rumqttc::Transport::Ws);
                    o
                } else {
                    rumqttc::MqttOptions::new(id, "127.0.0.1", b.mqtt_port)
                };
                o.set_credentials(user, password);
                o.set_keep_alive(Duration::from_secs(30));
                o.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
                tokio::spawn(async move {
                    loop {
                        match el.poll().await {
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                                let _ = conn_tx.send(Ok(()));
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                                let _ = tx.send(Received {
                                    topic: p.topic,
                                    payload: p.payload,
                                });
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) => {
                                let _ = tx.send(Received {
                                    topic: "$suback".into(),
                                    payload: bytes::Bytes::from(format!("{:?}", s.return_codes)),
                                });
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = conn_tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                    }
                });
                Client::V4(client)
            }
            Proto::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", b.mqtt_port);
                o.set_credentials(user, password);
                o.set_keep_alive(Duration::from_secs(30));
                let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 1000);
                tokio::spawn(async move {
                    use rumqttc::v5::mqttbytes::v5::Packet;
                    loop {
                        match el.poll().await {
                            Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(_))) => {
                                let _ = conn_tx.send(Ok(()));
                            }
                            Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                                let _ = tx.send(Received {
                                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                    payload: p.payload,
                                });
                            }
                            Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(s))) => {
                                let _ = tx.send(Received {
                                    topic: "$suback".into(),
                                    payload: bytes::Bytes::from(format!("{:?}", s.return_codes)),
                                });
                            }
                            Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(a))) => {
                                let _ = tx.send(Received {
                                    topic: "$puback".into(),
                                    payload: bytes::Bytes::from(format!("{:?}", a.reason)),
                                });
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = conn_tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                    }
                });
                Client::V5(client)
            }
        };
        match timeout(WAIT, conn_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                drop_client(&client).await;
                return Err(e);
            }
            Ok(None) | Err(_) => return Err("no CONNACK".into()),
        }
        Ok(Device {
            user: user.into(),
            id: id.into(),
            client,
            rx,
            backlog: Vec::new(),
            next_req: 0,
        })
    }

    /// Subscribes (QoS 1) and returns the SUBACK's return codes as text.
    pub async fn subscribe(&mut self, filter: &str) -> String {
        match &self.client {
            Client::V4(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap(),
            Client::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .unwrap(),
        }
        self.wait_for("$suback").await
    }

    /// Waits for the next control record (`$suback`, `$puback`), skipping nothing else.
    pub async fn wait_for(&mut self, topic: &str) -> String {
        loop {
            let r = timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{} timed out waiting for {topic}", self.id))
                .expect("connection ended");
            if r.topic == topic {
                return String::from_utf8_lossy(&r.payload).into_owned();
            }
            if !r.topic.starts_with('$') {
                self.stash(r);
            }
        }
    }

    fn stash(&mut self, r: Received) {
        if let Ok(v) = serde_json::from_slice::<Value>(&r.payload) {
            self.backlog.push(v);
        } else {
            self.backlog
                .push(json!({"raw": r.topic, "payload": String::from_utf8_lossy(&r.payload)}));
        }
    }

    /// Publishes raw bytes to a topic at QoS 1.
    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload: Vec<u8> = payload.into();
        match &self.client {
            Client::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap(),
            Client::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap(),
        }
    }

    /// Sends a request body (one op) with a fresh request id; returns the id.
    pub async fn request(&mut self, op: Value) -> String {
        self.next_req += 1;
        let id = format!("{}-{}", self.id, self.next_req);
        let mut req = op;
        req["id"] = json!(id);
        let topic = format!("im/{}/{}/up/json", self.user, self.id);
        self.publish_raw(&topic, serde_json::to_vec(&req).unwrap())
            .await;
        id
    }

    /// Sends and waits for the reply.
    pub async fn call(&mut self, op: Value) -> Value {
        let id = self.request(op).await;
        self.reply(&id).await
    }

    /// Sends a text message; returns the `sent` reply.
    pub async fn send(&mut self, to: &str, cmid: &str, text: &str) -> Value {
        let r = self
            .call(json!({"send": {"to": format!("u:{to}"), "clientMsgId": cmid, "text": text}}))
            .await;
        assert!(r.get("sent").is_some(), "send failed: {r}");
        r["sent"].clone()
    }

    /// Waits for the reply to request `id` (other traffic is kept for later).
    pub async fn reply(&mut self, id: &str) -> Value {
        let find = |b: &mut Vec<Value>| {
            let i = b.iter().position(|v| v["reply"]["id"] == json!(id))?;
            Some(b.remove(i)["reply"].clone())
        };
        loop {
            if let Some(r) = find(&mut self.backlog) {
                return r;
            }
            let r = self.recv().await;
            self.stash(r);
        }
    }

    /// Waits for the next stream event.
    pub async fn event(&mut self) -> Value {
        loop {
            if let Some(i) = self.backlog.iter().position(|v| v.get("event").is_some()) {
                return self.backlog.remove(i)["event"].clone();
            }
            let r = self.recv().await;
            self.stash(r);
        }
    }

    /// Asserts nothing IM-related arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        assert!(
            self.backlog.is_empty(),
            "{} had unexpected traffic: {:?}",
            self.id,
            self.backlog
        );
        if let Ok(Some(r)) = timeout(d, self.rx.recv()).await {
            panic!(
                "{} got unexpected {} {:?}",
                self.id,
                r.topic,
                String::from_utf8_lossy(&r.payload)
            );
        }
    }

    /// The next raw publish received (any topic).
    pub async fn recv(&mut self) -> Received {
        loop {
            let r = timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{} received nothing in time", self.id))
                .expect("connection ended");
            if !r.topic.starts_with('$') {
                return r;
            }
        }
    }

    /// Syncs after `after` and returns the events.
    pub async fn sync(&mut self, after: u64, limit: u32) -> (Vec<Value>, bool) {
        let r = self
            .call(json!({"sync": {"afterSeq": after.to_string(), "limit": limit}}))
            .await;
        let s = &r["sync"];
        assert!(s.is_object(), "sync failed: {r}");
        let events = s["events"].as_array().cloned().unwrap_or_default();
        (events, s["hasMore"].as_bool().unwrap_or(false))
    }

    pub async fn disconnect(self) {
        drop_client(&self.client).await;
    }
}

async fn drop_client(c: &Client) {
    match c {
        Client::V4(c) => {
            let _ = c.disconnect().await;
        }
        Client::V5(c) => {
            let _ = c.disconnect().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The seq of an event or reply field, as a number.
pub fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {v}"))
}

impl Device {
    /// Publishes raw bytes with an explicit QoS (0, 1 or 2) and retain flag.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: u8,
        retain: bool,
    ) {
        let payload: Vec<u8> = payload.into();
        match &self.client {
            Client::V4(c) => {
                let qos = rumqttc::qos(qos).expect("qos 0..=2");
                c.publish(topic, qos, retain, payload).await.unwrap()
            }
            Client::V5(c) => {
                let qos = rumqttc::v5::mqttbytes::qos(qos).expect("qos 0..=2");
                c.publish(topic, qos, retain, payload).await.unwrap()
            }
        }
    }

    /// The next raw publish (any topic) within `d`, or `None` if nothing came in time or the
    /// connection ended. Unlike [`Device::recv`] it never panics.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) if r.topic.starts_with('$') => continue,
                Ok(Some(r)) => return Some(r),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl Device {
    /// Waits until the server closes this device's connection; false if it stays open.
    pub async fn closed_by_server(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Reads `d`'s whole stream from the start, page by page.
pub async fn full_stream(d: &mut Device) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let (events, more) = d.sync(after, 1000).await;
        if let Some(last) = events.last() {
            after = seq(last);
        }
        let empty = events.is_empty();
        all.extend(events);
        if !more {
            return all;
        }
        assert!(
            !empty,
            "sync said hasMore but returned no events after seq {after}"
        );
    }
}

pub fn msg_str<'a>(ev: &'a Value, field: &str) -> &'a str {
    ev["message"][field]
        .as_str()
        .unwrap_or_else(|| panic!("event without message.{field}: {ev}"))
}

pub fn msg_id(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("msgId is not a decimal string: {v}"))
}

/// Records one reply (if `r` is one) into `acked` / `errors`; returns whether it was a reply.
pub fn note_reply(
    payload: &[u8],
    req_cmid: &HashMap<String, String>,
    acked: &mut HashMap<String, Value>,
    errors: &mut Vec<Value>,
) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    let Some(reply) = v.get("reply") else {
        return false;
    };
    let id = reply["id"].as_str().unwrap_or_default();
    let cmid = req_cmid
        .get(id)
        .unwrap_or_else(|| panic!("reply to an unknown request: {v}"));
    match reply.get("sent") {
        Some(sent) => {
            let old = acked.insert(cmid.clone(), sent.clone());
            assert!(old.is_none(), "two replies for {cmid}: {v}");
        }
        None => errors.push(v.clone()),
    }
    true
}

/// Calls `op` until the reply carries `want` (e.g. `sent`), as a client does after
/// `UNAVAILABLE` or a reply lost with its broker; any other error fails the test, and so does
/// no answer within 60 s. Returns what `want` holds.
pub async fn call_until(d: &mut Device, op: Value, want: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(10), d.call(op.clone())).await {
            if let Some(v) = r.get(want) {
                return v.clone();
            }
            assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{op} never answered with {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `d`'s user's unread count in `conversation`, as `conversations` says on that device
/// (proto3 JSON omits zero values: a missing count is 0).
pub async fn unread(d: &mut Device, conversation: &str) -> u64 {
    let r = d.call(json!({"conversations": {}})).await;
    let list = r["conversations"]["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.iter()
        .find(|c| c["id"] == conversation)
        .map(|c| c["unread"].as_str().unwrap_or("0").parse().unwrap())
        .unwrap_or(0)
}
