//! Apple Push Notification service over HTTP/2 with token-based authentication.
//!
//! Every request carries `authorization: bearer <provider JWT>`: ES256, header `kid` = the key
//! id, claims `iss` = the team id and `iat`. Apple refuses tokens refreshed more often than
//! every 20 minutes and older than an hour, so one token is signed and reused for 50 minutes
//! (re-signed early only after `ExpiredProviderToken`). Requests: `POST /3/device/<token>` with
//! `apns-topic`, `apns-push-type`, `apns-priority`, `apns-collapse-id` (the conversation) and
//! `apns-expiration`. A `http://` base URL (local fakes) is spoken as h2c with prior knowledge.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::json;

use crate::config::ApnsConfig;
use crate::notification::{Notification, ProviderKind, Registration};
use crate::provider::{retry_after, transport_error, unix_now, Outcome, Provider};

/// How long one provider token is used.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// Apple's payload limit for regular notifications.
pub const MAX_PAYLOAD: usize = 4096;

/// The APNs provider.
pub struct Apns {
    cfg: ApnsConfig,
    key: jsonwebtoken::EncodingKey,
    client: reqwest::Client,
    /// The provider token in use and when it was signed.
    token: Mutex<Option<(String, Instant)>>,
    /// How long an undelivered push stays with Apple (`apns-expiration`).
    expiration: Duration,
}

impl Apns {
    /// Reads the `.p8` key; `client` must speak HTTP/2 (see [`Apns::client_for`]).
    pub fn new(
        cfg: &ApnsConfig,
        client: reqwest::Client,
        expiration: Duration,
    ) -> anyhow::Result<Apns> {
        let pem = std::fs::read(&cfg.key_file)
            .map_err(|e| anyhow::anyhow!("push.apns.key_file {}: {e}", cfg.key_file.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem)
            .map_err(|e| anyhow::anyhow!("push.apns.key_file is not a P-256 PEM key: {e}"))?;
        Ok(Apns {
            cfg: cfg.clone(),
            key,
            client,
            token: Mutex::new(None),
            expiration,
        })
    }

    /// An HTTP client for `cfg`'s endpoints: HTTP/2 only, h2c for `http://` test endpoints.
    pub fn client_for(cfg: &ApnsConfig) -> reqwest::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(15));
        if cfg.base_url.starts_with("http://") || cfg.sandbox_url.starts_with("http://") {
            b = b.http2_prior_knowledge();
        }
        b.build()
    }

    /// The cached provider token, signed anew only when older than [`TOKEN_LIFETIME`].
    fn provider_token(&self) -> Result<String, String> {
        let mut slot = self.token.lock();
        if let Some((t, at)) = &*slot {
            if at.elapsed() < TOKEN_LIFETIME {
                return Ok(t.clone());
            }
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.cfg.key_id.clone());
        let claims = json!({"iss": self.cfg.team_id, "iat": unix_now()});
        let t = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the APNs provider token: {e}"))?;
        *slot = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    /// The JSON payload: an alert with `mutable-content` (so a notification service extension
    /// can fetch and show the message) and the badge; badge-only pushes carry just the badge.
    pub fn payload(n: &Notification) -> serde_json::Value {
        let mut aps = json!({"badge": n.badge});
        if !n.badge_only() {
            let body = n.preview.clone().unwrap_or_else(|| "New message".into());
            aps["alert"] = json!({"title": n.from, "body": body});
            aps["mutable-content"] = 1.into();
        }
        let mut v = json!({"aps": aps, "conversation": n.conversation, "seq": n.seq.to_string()});
        if let Some(id) = n.msg_id {
            v["msgId"] = id.to_string().into();
            v["from"] = n.from.clone().into();
        }
        v
    }
}

#[async_trait]
impl Provider for Apns {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Apns
    }

    fn check_token(&self, reg: &Registration) -> Result<(), String> {
        let t = &reg.token;
        if t.len() < 32 || t.len() > 200 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("an APNs device token is 32 to 200 hex digits".into());
        }
        Ok(())
    }

    async fn send(&self, reg: &Registration, n: &Notification) -> Outcome {
        let body = serde_json::to_vec(&Apns::payload(n)).unwrap_or_default();
        if body.len() > MAX_PAYLOAD {
            return Outcome::Rejected(format!("payload is {} bytes; APNs takes 4096", body.len()));
        }
        let jwt = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Outcome::AuthFailed(e),
        };
        let base = if reg.sandbox {
            &self.cfg.sandbox_url
        } else {
            &self.cfg.base_url
        };
        let url = format!(
            "{}/3/device/{}",
            base.trim_end_matches('/'),
            reg.token.to_ascii_lowercase()
        );
        let (push_type, priority) = if n.badge_only() {
            // A badge change is shown without sound or banner: low priority, still "alert"
            // (Apple allows a badge only on alert pushes).
            ("alert", "5")
        } else {
            ("alert", "10")
        };
        let topic = reg.topic.as_deref().unwrap_or(&self.cfg.topic);
        let resp = self
            .client
            .post(url)
            .bearer_auth(jwt)
            .header("apns-topic", topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-collapse-id", collapse_id(&n.conversation))
            .header(
                "apns-expiration",
                (unix_now() + self.expiration.as_secs()).to_string(),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        let apns_reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default();
        let reason = format!("HTTP {} {}", status.as_u16(), apns_reason);
        match (status, apns_reason.as_str()) {
            (s, _) if s.is_success() => Outcome::Delivered,
            (StatusCode::GONE, _)
            | (_, "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic") => {
                Outcome::TokenGone(reason)
            }
            (StatusCode::FORBIDDEN, "ExpiredProviderToken") => {
                // Sign a fresh token for the retry.
                *self.token.lock() = None;
                Outcome::Retry {
                    after: Some(Duration::ZERO),
                    reason,
                }
            }
            (StatusCode::FORBIDDEN, _) => Outcome::AuthFailed(reason),
            (StatusCode::TOO_MANY_REQUESTS, _) => Outcome::Retry { after, reason },
            (s, _) if s.is_server_error() => Outcome::Retry { after, reason },
            _ => Outcome::Rejected(reason),
        }
    }
}

/// `apns-collapse-id` is at most 64 bytes; longer conversation ids are cut at a char boundary.
fn collapse_id(conversation: &str) -> &str {
    let mut end = conversation.len().min(64);
    while !conversation.is_char_boundary(end) {
        end -= 1;
    }
    &conversation[..end]
}
