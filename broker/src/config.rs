//! The `mqim` binary's configuration: one typed struct with a default for every field, read from
//! an optional TOML file and then overridden by `MQIM_*` environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mqim_im_plugin::config::{AuthConfig, ImConfig, StoreConfig};
use mqim_push_bridge::config::PushConfig;
use serde::{Deserialize, Serialize};

use crate::acl::{Access, Rule};
use crate::server::{Limits, Listeners};

/// Everything `mqim` can be told. See `config/mqim.toml` for the commented defaults.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded store and the generated token secret live.
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    pub im: ImConfig,
    /// Embedded store (default) or Redis index + message log.
    pub store: StoreConfig,
    /// Push notifications to devices that are not connected (no provider on by default).
    pub push: PushConfig,
    /// The admin HTTP server: REST API, console, `/metrics`.
    pub admin: AdminConfig,
    /// The sensitive-word filter on sends.
    pub moderation: mqim_im_plugin::moderation::ModerationConfig,
    /// This node among others.
    pub cluster: ClusterConfig,
    /// Access rules for topics outside `im/` (deny by default).
    pub acl: Vec<Rule>,
}

/// Listeners and protocol limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT over TCP.
    pub listen: String,
    /// MQTT over WebSocket on path `/mqtt`; empty disables it.
    pub ws_listen: String,
    /// Serve the demo chat page at `/` on the WebSocket listener.
    pub demo_page: bool,
    pub max_packet_size: usize,
    pub max_connections: usize,
    pub outbox_limit: usize,
    pub max_inflight: usize,
    pub max_pending_acks: usize,
    pub allow_anonymous: bool,
    pub connect_timeout_secs: u64,
    pub session_expiry_secs: u64,
    /// QoS 1/2 messages queued per offline persistent session (oldest dropped past it).
    pub max_queued_messages: usize,
    /// General-topic subscriptions per session.
    pub max_subscriptions: usize,
    /// Keep persistent sessions and retained messages in `<data_dir>/general-state` across
    /// restarts.
    pub persistence: bool,
    pub shutdown_grace_secs: u64,
    /// New connections one IP address may open per second (0: unlimited); bursts of twice that.
    pub max_connects_per_ip_per_sec: u32,
    /// MQTT over TLS; off unless configured.
    pub tls: Option<TlsConfig>,
}

/// The admin HTTP server (`[admin]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`, or `off`. Keep it on a private address: it is the operator's.
    pub listen: String,
    /// Require an admin token on `/metrics` too.
    pub metrics_auth: bool,
    /// Connections a drain closes per second.
    pub drain_rate: u32,
    /// Exit once a drain has closed every connection (false: stay up, drained).
    pub exit_after_drain: bool,
    /// Serve HTTPS with this certificate (PEM); off unless configured.
    pub tls: Option<AdminTlsConfig>,
}

/// The admin listener's certificate (`[admin.tls]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:18083".into(),
            metrics_auth: false,
            drain_rate: 500,
            exit_after_drain: true,
            tls: None,
        }
    }
}

/// This node among others (`[cluster]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port` a drain sends MQTT 5 clients to (DISCONNECT 0x9C with Server Reference) when
    /// the drain request names none.
    pub redirect: Option<String>,
}

/// The TLS listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./mqim-data"),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            im: ImConfig::default(),
            store: StoreConfig::default(),
            push: PushConfig::default(),
            admin: AdminConfig::default(),
            moderation: Default::default(),
            cluster: ClusterConfig::default(),
            acl: vec![Rule {
                user: "*".into(),
                topic: "users/%u/#".into(),
                access: Access::ReadWrite,
                deny: false,
            }],
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "0.0.0.0:1883".into(),
            ws_listen: "0.0.0.0:8083".into(),
            demo_page: true,
            max_packet_size: 256 * 1024,
            max_connections: 200_000,
            outbox_limit: 1024,
            max_inflight: 256,
            max_pending_acks: 256,
            allow_anonymous: false,
            connect_timeout_secs: 10,
            session_expiry_secs: 24 * 3600,
            max_queued_messages: 1000,
            max_subscriptions: 1000,
            persistence: true,
            shutdown_grace_secs: 10,
            max_connects_per_ip_per_sec: 100,
            tls: None,
        }
    }
}

impl Config {
    /// Reads `path` (if any), then applies the environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = get("MQIM_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("MQIM_MQTT_LISTEN") {
            self.mqtt.listen = v;
        }
        if let Some(v) = get("MQIM_WS_LISTEN") {
            self.mqtt.ws_listen = v;
        }
        if let Some(v) = get("MQIM_AUTH_HS256_SECRET") {
            self.auth.hs256_secret = Some(v);
        }
        if let Some(v) = get("MQIM_NODE_ID") {
            self.im.node_id = v.parse().context("MQIM_NODE_ID")?;
        }
        if let Some(v) = get("MQIM_ALLOW_ANONYMOUS") {
            self.mqtt.allow_anonymous = flag(&v);
        }
        if let (Some(listen), Some(cert), Some(key)) = (
            get("MQIM_TLS_LISTEN"),
            get("MQIM_TLS_CERT_FILE"),
            get("MQIM_TLS_KEY_FILE"),
        ) {
            self.mqtt.tls = Some(TlsConfig {
                listen,
                cert_file: cert.into(),
                key_file: key.into(),
            });
        }
        if let Some(v) = get("MQIM_MAX_CONNECTS_PER_IP") {
            self.mqtt.max_connects_per_ip_per_sec =
                v.parse().context("MQIM_MAX_CONNECTS_PER_IP")?;
        }
        if let Some(v) = get("MQIM_MAX_SENDS_PER_SEC") {
            self.im.max_sends_per_sec = v.parse().context("MQIM_MAX_SENDS_PER_SEC")?;
        }
        if let Some(v) = get("MQIM_SEND_BURST") {
            self.im.send_burst = v.parse().context("MQIM_SEND_BURST")?;
        }
        if let Some(v) = get("MQIM_RECALL_WINDOW_SECS") {
            self.im.recall_window_secs = v.parse().context("MQIM_RECALL_WINDOW_SECS")?;
        }
        if let Some(v) = get("MQIM_EDIT_WINDOW_SECS") {
            self.im.edit_window_secs = v.parse().context("MQIM_EDIT_WINDOW_SECS")?;
        }
        if let Some(v) = get("MQIM_PRESENCE_DEBOUNCE_MS") {
            self.im.presence_debounce_ms = v.parse().context("MQIM_PRESENCE_DEBOUNCE_MS")?;
        }
        if let Some(v) = get("MQIM_STORE_BACKEND") {
            self.store.backend = v
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))
                .context("MQIM_STORE_BACKEND")?;
        }
        if let Some(v) = get("MQIM_REDIS_URL") {
            self.store.redis.url = v;
        }
        if let Some(v) = get("MQIM_SCYLLA_NODES") {
            self.store.scylla.nodes = v.split(',').map(|n| n.trim().to_string()).collect();
        }
        if let Some(v) = get("MQIM_SCYLLA_KEYSPACE") {
            self.store.scylla.keyspace = v;
        }
        if let Some(v) = get("MQIM_SCYLLA_USERNAME") {
            self.store.scylla.username = Some(v);
        }
        if let Some(v) = get("MQIM_SCYLLA_PASSWORD") {
            self.store.scylla.password = Some(v);
        }
        if let Some(v) = get("MQIM_MAX_PACKET_SIZE") {
            self.mqtt.max_packet_size = v.parse().context("MQIM_MAX_PACKET_SIZE")?;
        }
        if let Some(v) = get("MQIM_DEMO_PAGE") {
            self.mqtt.demo_page = flag(&v);
        }
        if let Some(v) = get("MQIM_ADMIN_LISTEN") {
            self.admin.listen = v;
        }
        if let Some(v) = get("MQIM_MODERATION_WORDS_FILE") {
            self.moderation.words_file = Some(v.into());
        }
        if let Some(v) = get("MQIM_MODERATION_ACTION") {
            self.moderation.action = v
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))
                .context("MQIM_MODERATION_ACTION")?;
        }
        if let Some(v) = get("MQIM_CLUSTER_REDIRECT") {
            self.cluster.redirect = Some(v);
        }
        if let (Some(cert), Some(key)) = (
            get("MQIM_ADMIN_TLS_CERT_FILE"),
            get("MQIM_ADMIN_TLS_KEY_FILE"),
        ) {
            self.admin.tls = Some(AdminTlsConfig {
                cert_file: cert.into(),
                key_file: key.into(),
            });
        }
        if let Some(v) = get("MQIM_ADMIN_METRICS_AUTH") {
            self.admin.metrics_auth = flag(&v);
        }
        if let Some(v) = get("MQIM_EXIT_AFTER_DRAIN") {
            self.admin.exit_after_drain = flag(&v);
        }
        self.push.apply_env(&get)?;
        Ok(())
    }

    /// The admin listener's TLS acceptor, when `[admin.tls]` is set.
    pub fn admin_tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        match &self.admin.tls {
            Some(t) => Ok(Some(crate::tls::acceptor(&t.cert_file, &t.key_file)?)),
            None => Ok(None),
        }
    }

    /// The admin listener's address, `None` when it is off.
    pub fn admin_listen(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.admin.listen.as_str() {
            "" | "off" => Ok(None),
            s => Ok(Some(s.parse().with_context(|| {
                format!("admin.listen {s:?} is not host:port")
            })?)),
        }
    }

    pub fn listeners(&self) -> anyhow::Result<Listeners> {
        let mqtt: SocketAddr = self
            .mqtt
            .listen
            .parse()
            .with_context(|| format!("mqtt.listen {:?} is not host:port", self.mqtt.listen))?;
        let ws = match self.mqtt.ws_listen.as_str() {
            "" | "off" => None,
            s => Some(
                s.parse()
                    .with_context(|| format!("mqtt.ws_listen {s:?} is not host:port"))?,
            ),
        };
        let tls = match &self.mqtt.tls {
            Some(t) => {
                let addr = t
                    .listen
                    .parse()
                    .with_context(|| format!("mqtt.tls.listen {:?} is not host:port", t.listen))?;
                Some((addr, crate::tls::acceptor(&t.cert_file, &t.key_file)?))
            }
            None => None,
        };
        Ok(Listeners { mqtt, ws, tls })
    }

    pub fn limits(&self) -> Limits {
        let m = &self.mqtt;
        Limits {
            max_packet_size: m.max_packet_size,
            outbox_limit: m.outbox_limit,
            max_inflight: m.max_inflight.max(1),
            max_pending_acks: m.max_pending_acks.max(1),
            allow_anonymous: m.allow_anonymous,
            connect_timeout: Duration::from_secs(m.connect_timeout_secs),
            max_connections: m.max_connections,
            session_expiry: Duration::from_secs(m.session_expiry_secs),
            max_queued_messages: m.max_queued_messages,
            max_subscriptions: m.max_subscriptions,
            state_file: m.persistence.then(|| self.data_dir.join("general-state")),
            connects_per_ip_per_sec: m.max_connects_per_ip_per_sec,
            demo_page: m.demo_page,
        }
    }

    /// The effective settings for the start-up log, secrets masked.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        if c.auth.hs256_secret.is_some() {
            c.auth.hs256_secret = Some("***".into());
        }
        c.store.redis.url = redact_url_password(&c.store.redis.url);
        if c.store.scylla.password.is_some() {
            c.store.scylla.password = Some("***".into());
        }
        c.push = c.push.redacted();
        toml::to_string(&c).unwrap_or_default()
    }
}

/// An on/off environment value: `1`, `true` or `yes` is on.
fn flag(v: &str) -> bool {
    matches!(v, "1" | "true" | "yes")
}

/// `redis://user:secret@host/` -> `redis://user:***@host/`.
fn redact_url_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.find(':') {
                Some(colon) => {
                    format!("{}{}:***{}", &url[..scheme + 3], &auth[..colon], &url[at..])
                }
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_store_urls_are_not_logged() {
        assert_eq!(
            redact_url_password("redis://app:s3cret@10.0.0.1:6379/0"),
            "redis://app:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url_password("redis://10.0.0.1/"),
            "redis://10.0.0.1/"
        );
    }

    #[test]
    fn shipped_config_file_parses_to_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mqim.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let file: Config = toml::from_str(&text).unwrap();
        assert_eq!(
            toml::to_string(&file).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "MQIM_DATA_DIR" => Some("/tmp/x".into()),
            "MQIM_MQTT_LISTEN" => Some("127.0.0.1:0".into()),
            "MQIM_WS_LISTEN" => Some("off".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let l = c.listeners().unwrap();
        assert_eq!(l.mqtt.port(), 0);
        assert!(l.ws.is_none());
    }

    #[test]
    fn push_environment_overrides_and_the_webhook_secret_is_masked() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "MQIM_PUSH_WEBHOOK_SECRET" => Some("hunter2-secret".into()),
            "MQIM_PUSH_WEBHOOK_ALLOW" => {
                Some("https://push.example.com/, http://127.0.0.1:".into())
            }
            "MQIM_PUSH_MIN_INTERVAL_MS" => Some("250".into()),
            _ => None,
        })
        .unwrap();
        let w = c.push.webhook.as_ref().unwrap();
        assert_eq!(w.allow, ["https://push.example.com/", "http://127.0.0.1:"]);
        assert_eq!(c.push.min_interval_ms, 250);
        let shown = c.redacted();
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("[push.webhook]"), "{shown}");
    }

    #[test]
    fn unknown_settings_are_an_error_not_silently_ignored() {
        assert!(toml::from_str::<Config>("[mqtt]\nlisten_port = 1").is_err());
    }
}
