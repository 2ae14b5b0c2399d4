//! Per-user send rate limit (IM-MECHANISMS.md, "abuse"): a keyed GCRA limiter from `governor`,
//! swept periodically so users who went quiet do not keep state.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Limits how fast each user may send. `None` inside means unlimited.
pub struct SendLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl SendLimiter {
    /// `per_sec` sends per second with bursts of `burst`; `per_sec == 0` disables the limit.
    pub fn new(per_sec: u32, burst: u32) -> SendLimiter {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        SendLimiter { limiter }
    }

    /// True if `user` may send now (and counts the send).
    pub fn allow(&self, user: &str) -> bool {
        match &self.limiter {
            // Keyed by an owned String: governor's keyed check takes `&K`.
            Some(l) => l.check_key(&user.to_string()).is_ok(),
            None => true,
        }
    }

    /// Forgets users whose state has fully recovered.
    pub fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_per_user() {
        let l = SendLimiter::new(1, 3);
        assert!((0..3).all(|_| l.allow("alice")));
        assert!(!l.allow("alice"));
        assert!(l.allow("bob"), "users are limited separately");
        let off = SendLimiter::new(0, 0);
        assert!((0..10_000).all(|_| off.allow("alice")));
    }
}
