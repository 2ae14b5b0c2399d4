//! The rate of typing events: at most one per user per conversation per interval, plus the
//! `stop` that ends a `start` (so an indicator is not left on); anything beyond is dropped
//! silently (the next one a peer sees carries the current state anyway). The table is bounded:
//! when full, entries older than the interval are swept, and if it is still full the event is
//! dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most (user, conversation) pairs remembered.
pub const MAX_ENTRIES: usize = 100_000;

/// The last typing event let through per (user, conversation): when, and whether it was a start.
#[derive(Default)]
pub struct TypingLimiter {
    last: Mutex<HashMap<(String, String), (Instant, bool)>>,
}

impl TypingLimiter {
    /// Should this typing event of `user` in `conversation` go out? Records it if so.
    pub fn allow(&self, user: &str, conversation: &str, start: bool, every: Duration) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        let key = (user.to_string(), conversation.to_string());
        let allowed = match last.get(&key) {
            None => true,
            Some((at, was_start)) => now.duration_since(*at) >= every || (*was_start && !start),
        };
        if !allowed {
            return false;
        }
        if !last.contains_key(&key) && last.len() >= MAX_ENTRIES {
            last.retain(|_, (at, _)| now.duration_since(*at) < every);
            if last.len() >= MAX_ENTRIES {
                return false;
            }
        }
        last.insert(key, (now, start));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_starts_becomes_one_and_a_stop_still_goes_out() {
        let t = TypingLimiter::default();
        let every = Duration::from_secs(60);
        assert!(t.allow("alice", "u:bob", true, every));
        for _ in 0..10 {
            assert!(!t.allow("alice", "u:bob", true, every));
        }
        assert!(t.allow("alice", "u:bob", false, every));
        assert!(!t.allow("alice", "u:bob", false, every));
        // Another conversation has its own rate.
        assert!(t.allow("alice", "u:carol", true, every));
    }
}
