//! The generic signed webhook provider: POST the notification's JSON to the registration's URL,
//! signed with `X-Mqim-Signature: sha256=<hex HMAC-SHA256 of the raw body>` and
//! `X-Mqim-Timestamp: <unix seconds>`.
//!
//! The URL comes from a client, so it is checked before every request: it must start with a
//! configured allow-list prefix, and it may reach a private, loopback or link-local address
//! only when that prefix names such an address literally. Names are checked where they are
//! resolved (the client's resolver), so a name that resolves to a private address is refused
//! too, and redirects are never followed.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, Url};

use crate::config::WebhookConfig;
use crate::notification::{Notification, ProviderKind, Registration};
use crate::provider::{retry_after, transport_error, unix_now, Outcome, Provider};

/// The webhook provider.
pub struct Webhook {
    secret: aws_lc_rs::hmac::Key,
    allow: Vec<String>,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig) -> anyhow::Result<Webhook> {
        if cfg.secret.is_empty() {
            anyhow::bail!("push.webhook.secret is empty: set it or MQIM_PUSH_WEBHOOK_SECRET");
        }
        if cfg.allow.is_empty() {
            anyhow::bail!("push.webhook.allow is empty: no endpoint could ever be registered");
        }
        let private_ok: HashSet<String> = cfg
            .allow
            .iter()
            .filter_map(|p| prefix_host(p))
            .filter(|h| host_is_private(h))
            .collect();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(PublicOnly { private_ok }))
            .build()?;
        Ok(Webhook {
            secret: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cfg.secret.as_bytes()),
            allow: cfg.allow.clone(),
            client,
        })
    }

    /// Checks an endpoint against the allow list and the private-address rule.
    fn check_endpoint(&self, endpoint: &str) -> Result<Url, String> {
        let url = Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("the endpoint must be http or https".into());
        }
        let Some(prefix) = self.allow.iter().find(|p| endpoint.starts_with(p.as_str())) else {
            return Err(format!(
                "{endpoint} is not under an allowed prefix (push.webhook.allow)"
            ));
        };
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host_is_private(host) && prefix_host(prefix).is_none_or(|h| !host_is_private(&h)) {
            return Err(format!(
                "{endpoint} is a private or loopback address; allow it with a prefix naming it"
            ));
        }
        Ok(url)
    }
}

/// The signature header value for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(aws_lc_rs::hmac::sign(&key, body).as_ref()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Provider for Webhook {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Webhook
    }

    fn check_token(&self, reg: &Registration) -> Result<(), String> {
        self.check_endpoint(&reg.token).map(|_| ())
    }

    async fn send(&self, reg: &Registration, n: &Notification) -> Outcome {
        let url = match self.check_endpoint(&reg.token) {
            Ok(u) => u,
            Err(e) => return Outcome::Rejected(e),
        };
        // Serializing a Value cannot fail.
        let body = serde_json::to_vec(&n.json()).unwrap_or_default();
        let sig = format!(
            "sha256={}",
            hex(aws_lc_rs::hmac::sign(&self.secret, &body).as_ref())
        );
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-mqim-signature", sig)
            .header("x-mqim-timestamp", unix_now().to_string())
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
        let reason = format!("HTTP {}: {}", status.as_u16(), text.trim());
        match status {
            s if s.is_success() => Outcome::Delivered,
            StatusCode::NOT_FOUND | StatusCode::GONE => Outcome::TokenGone(reason),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Outcome::AuthFailed(reason),
            StatusCode::TOO_MANY_REQUESTS => Outcome::Retry { after, reason },
            s if s.is_server_error() => Outcome::Retry { after, reason },
            _ => Outcome::Rejected(reason),
        }
    }
}

/// The host of an allow-list prefix such as `http://127.0.0.1:` or `https://[::1]/`.
fn prefix_host(prefix: &str) -> Option<String> {
    let rest = &prefix[prefix.find("://")? + 3..];
    let host = if let Some(v6) = rest.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        rest.split([':', '/']).next().unwrap_or_default()
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn host_is_private(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip))
}

/// False for loopback, private, link-local, CGNAT, unspecified, broadcast and multicast.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves names and keeps only public addresses, except for hosts an allow-list prefix
/// names as private (e.g. `localhost`).
struct PublicOnly {
    private_ok: HashSet<String>,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let private_ok = self.private_ok.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| private_ok || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(allow: &[&str]) -> Webhook {
        Webhook::new(&WebhookConfig {
            secret: "s".into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn endpoints_outside_the_allow_list_or_on_private_addresses_are_refused() {
        let w = hook(&["https://push.example.com/", "http://127.0.0.1:", "http://"]);
        assert!(w.check_endpoint("https://push.example.com/a").is_ok());
        assert!(w.check_endpoint("http://127.0.0.1:9000/x").is_ok());
        assert!(w.check_endpoint("ftp://push.example.com/").is_err());
        // "http://" allows any public http host, but not private ones it does not name.
        assert!(w.check_endpoint("http://10.1.2.3/x").is_err());
        assert!(w.check_endpoint("http://[::1]:80/x").is_err());
        assert!(w.check_endpoint("http://169.254.169.254/latest").is_err());
        assert!(w.check_endpoint("http://93.184.216.34/x").is_ok());
        let strict = hook(&["https://push.example.com/"]);
        assert!(strict
            .check_endpoint("https://push.example.com.evil.net/")
            .is_err());
        assert!(strict.check_endpoint("https://other.example.com/").is_err());
    }

    #[test]
    fn signature_is_lowercase_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
