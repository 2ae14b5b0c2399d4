//! Firebase Cloud Messaging, HTTP v1: `POST {base}/v1/projects/{project}/messages:send` with an
//! OAuth2 access token.
//!
//! The token comes from the service-account key: an RS256 JWT assertion (`iss` = the
//! service account, `scope` = firebase.messaging, `aud` = the key's `token_uri`, one hour) is
//! exchanged at `token_uri` (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`), and the
//! access token is reused until a minute before it expires. The message is data-only (every value
//! a string) with `android.priority: high` and `collapse_key` = the conversation.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::config::FcmConfig;
use crate::notification::{Notification, ProviderKind, Registration};
use crate::provider::{retry_after, transport_error, unix_now, Outcome, Provider};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is replaced this long before Google says it expires.
const EARLY: Duration = Duration::from_secs(60);

/// The fields of a service-account JSON key this provider uses.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
    pub token_uri: String,
}

/// The FCM provider.
pub struct Fcm {
    cfg: FcmConfig,
    account: ServiceAccount,
    key: jsonwebtoken::EncodingKey,
    client: reqwest::Client,
    /// The access token in use and when to stop using it. A tokio mutex: one refresh at a time.
    access: Mutex<Option<(String, Instant)>>,
}

impl Fcm {
    pub fn new(cfg: &FcmConfig, client: reqwest::Client) -> anyhow::Result<Fcm> {
        let text = std::fs::read_to_string(&cfg.service_account_file).map_err(|e| {
            anyhow::anyhow!(
                "push.fcm.service_account_file {}: {e}",
                cfg.service_account_file.display()
            )
        })?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("push.fcm.service_account_file: {e}"))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| anyhow::anyhow!("the service account's private_key: {e}"))?;
        Ok(Fcm {
            cfg: cfg.clone(),
            account,
            key,
            client,
            access: Mutex::new(None),
        })
    }

    /// A valid access token, exchanged for a fresh assertion only when needed.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut slot = self.access.lock().await;
        if let Some((t, until)) = &*slot {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.account.private_key_id.clone();
        let now = unix_now();
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::AuthFailed(format!("signing the FCM assertion: {e}")))?;
        let resp = self
            .client
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let reason = format!("token endpoint HTTP {}: {}", status.as_u16(), text.trim());
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    Outcome::Retry { after, reason }
                } else {
                    Outcome::AuthFailed(reason)
                },
            );
        }
        #[derive(Deserialize)]
        struct TokenReply {
            access_token: String,
            expires_in: u64,
        }
        let t: TokenReply = serde_json::from_str(&text)
            .map_err(|e| Outcome::AuthFailed(format!("token endpoint answer: {e}")))?;
        let until = Instant::now() + Duration::from_secs(t.expires_in).saturating_sub(EARLY);
        *slot = Some((t.access_token.clone(), until));
        Ok(t.access_token)
    }

    /// The v1 `message` for `n` to `token`.
    pub fn message(token: &str, n: &Notification) -> serde_json::Value {
        // FCM data values must all be strings.
        let data: serde_json::Map<String, serde_json::Value> = n
            .json()
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let s = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k.clone(), s.into())
            })
            .collect();
        json!({"message": {
            "token": token,
            "data": data,
            "android": {"priority": "high", "collapse_key": n.conversation},
        }})
    }
}

#[async_trait]
impl Provider for Fcm {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    fn check_token(&self, reg: &Registration) -> Result<(), String> {
        if reg.token.is_empty() || reg.token.len() > 4096 {
            return Err("an FCM registration token is 1 to 4096 characters".into());
        }
        Ok(())
    }

    async fn send(&self, reg: &Registration, n: &Notification) -> Outcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(o) => return o,
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.project_id
        );
        let resp = self
            .client
            .post(url)
            .bearer_auth(token)
            .json(&Fcm::message(&reg.token, n))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let fcm_code = v["error"]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|d| d["errorCode"].as_str())
            .or_else(|| v["error"]["status"].as_str())
            .unwrap_or_default()
            .to_string();
        let reason = format!("HTTP {} {}", status.as_u16(), fcm_code);
        match (status, fcm_code.as_str()) {
            (s, _) if s.is_success() => Outcome::Delivered,
            (StatusCode::NOT_FOUND, _) | (_, "UNREGISTERED") => Outcome::TokenGone(reason),
            (StatusCode::UNAUTHORIZED, _) => {
                *self.access.lock().await = None;
                Outcome::Retry {
                    after: Some(Duration::ZERO),
                    reason,
                }
            }
            (StatusCode::FORBIDDEN, _) | (_, "SENDER_ID_MISMATCH" | "THIRD_PARTY_AUTH_ERROR") => {
                Outcome::AuthFailed(reason)
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => Outcome::Retry { after, reason },
            (s, _) if s.is_server_error() => Outcome::Retry { after, reason },
            _ => Outcome::Rejected(reason),
        }
    }
}
