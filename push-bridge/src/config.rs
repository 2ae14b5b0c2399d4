//! The `[push]` section of `mqim.toml`: timing, bounds and one optional section per provider.
//! A provider without its section is off. Secrets never reach the log ([`PushConfig::redacted`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Push settings. Every field has a default; no provider is on by default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// At most one push per device per this many milliseconds; a burst in between is coalesced
    /// into one push carrying the latest badge. Also `MQIM_PUSH_MIN_INTERVAL_MS`.
    pub min_interval_ms: u64,
    /// How long a push that keeps failing is retried (e.g. "24h"); older events are not pushed.
    pub give_up_after: String,
    /// Users with pending push work held in memory at most; past it, signals are dropped and
    /// picked up again from the durable cursors at the next signal or restart.
    pub queue: usize,
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub webhook: Option<WebhookConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            min_interval_ms: 1000,
            give_up_after: "24h".into(),
            queue: 10_000,
            apns: None,
            fcm: None,
            webhook: None,
        }
    }
}

/// Apple Push Notification service, token-based authentication (a `.p8` signing key).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` key file from the Apple developer account (PEM, PKCS#8 P-256).
    pub key_file: PathBuf,
    /// The key's 10-character Key ID (the JWT `kid`).
    pub key_id: String,
    /// The 10-character Team ID (the JWT `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`), unless a registration names its own topic.
    pub topic: String,
    /// Production endpoint.
    #[serde(default = "apns_production")]
    pub base_url: String,
    /// Endpoint for registrations made with `sandbox: true` (development builds).
    #[serde(default = "apns_sandbox")]
    pub sandbox_url: String,
}

fn apns_production() -> String {
    "https://api.push.apple.com".into()
}
fn apns_sandbox() -> String {
    "https://api.sandbox.push.apple.com".into()
}

/// Firebase Cloud Messaging, HTTP v1 API with a service-account key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key file (`client_email`, `private_key`, `token_uri`).
    pub service_account_file: PathBuf,
    /// The Firebase project id.
    pub project_id: String,
    #[serde(default = "fcm_base")]
    pub base_url: String,
}

fn fcm_base() -> String {
    "https://fcm.googleapis.com".into()
}

/// A generic signed webhook: the registration's token is the endpoint URL.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The HMAC-SHA256 key of `X-Mqim-Signature`. Also `MQIM_PUSH_WEBHOOK_SECRET`.
    pub secret: String,
    /// URL prefixes an endpoint must start with. A private or loopback address is refused
    /// unless the matching prefix names it literally (e.g. "http://127.0.0.1:").
    /// Also `MQIM_PUSH_WEBHOOK_ALLOW` (comma-separated).
    pub allow: Vec<String>,
}

impl PushConfig {
    /// Applies the `MQIM_PUSH_*` environment overrides through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = get("MQIM_PUSH_MIN_INTERVAL_MS") {
            self.min_interval_ms = v
                .parse()
                .map_err(|e| anyhow::anyhow!("MQIM_PUSH_MIN_INTERVAL_MS: {e}"))?;
        }
        if let Some(v) = get("MQIM_PUSH_WEBHOOK_SECRET") {
            self.webhook.get_or_insert_with(Default::default).secret = v;
        }
        if let Some(v) = get("MQIM_PUSH_WEBHOOK_ALLOW") {
            self.webhook.get_or_insert_with(Default::default).allow = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        Ok(())
    }

    /// `give_up_after` as a duration.
    pub fn give_up_after(&self) -> anyhow::Result<Duration> {
        humantime::parse_duration(&self.give_up_after)
            .map_err(|e| anyhow::anyhow!("push.give_up_after {:?}: {e}", self.give_up_after))
    }

    /// A copy safe to log: the webhook secret masked.
    pub fn redacted(&self) -> PushConfig {
        let mut c = self.clone();
        if let Some(w) = &mut c.webhook {
            if !w.secret.is_empty() {
                w.secret = "***".into();
            }
        }
        c
    }
}
