//! The one trait every push provider implements, and the outcomes the bridge acts on.
//! Providers classify their own answers; the bridge decides what to do with the class
//! (retry with backoff, drop the registration, pause the provider).

use std::time::Duration;

use async_trait::async_trait;

use crate::notification::{Notification, ProviderKind, Registration};

/// What became of one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Delivered,
    /// Try again later (5xx, 429, transport errors); `after` from `Retry-After` if given.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The token is no longer valid: the registration is removed.
    TokenGone(String),
    /// The provider refused this payload or token format; retrying would not help.
    Rejected(String),
    /// Our credentials were refused: the provider is paused until the operator fixes them.
    AuthFailed(String),
}

impl Outcome {
    /// The push-log status word.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::TokenGone(_) => "token_gone",
            Outcome::Rejected(_) => "rejected",
            Outcome::AuthFailed(_) => "auth_failed",
        }
    }

    /// The push-log reason (empty when delivered).
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Delivered => "",
            Outcome::Retry { reason, .. } => reason,
            Outcome::TokenGone(r) | Outcome::Rejected(r) | Outcome::AuthFailed(r) => r,
        }
    }
}

/// A push service.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;

    /// Checks a token at registration time; the error is shown to the client.
    fn check_token(&self, reg: &Registration) -> Result<(), String>;

    /// Sends one push. Never panics on a provider's answer; every failure is an [`Outcome`].
    async fn send(&self, reg: &Registration, n: &Notification) -> Outcome;
}

/// `Retry-After` in seconds (the HTTP-date form is rare from push services and is ignored).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The outcome of a request that never got an answer.
pub(crate) fn transport_error(e: &reqwest::Error) -> Outcome {
    Outcome::Retry {
        after: None,
        reason: format!("transport: {e}"),
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
