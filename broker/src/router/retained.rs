//! Retained messages: the last retained publish per topic (MQTT 3.3.1.3), cleared by an empty
//! retained publish, dropped when its message expiry passes.
//!
//! A new subscription scans the store for topics its filter matches: O(retained topics) per
//! subscribe, which is fine for the status-style use of retained messages; a trie would make it
//! O(matches) if that ever matters.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Message;

#[derive(Default)]
pub(super) struct Retained {
    by_topic: Mutex<HashMap<String, Arc<Message>>>,
}

impl Retained {
    /// Stores (or, with an empty payload, clears) the retained message of `msg.topic`.
    pub fn set(&self, msg: &Arc<Message>) {
        let mut map = self.by_topic.lock();
        if msg.payload.is_empty() {
            map.remove(&msg.topic);
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
            }
        } else {
            map.insert(msg.topic.clone(), msg.clone());
        }
    }

    /// The unexpired retained messages whose topic `filter` matches.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut map = self.by_topic.lock();
        map.retain(|_, m| !m.expired());
        map.values()
            .filter(|m| topic_matches(&m.topic, filter))
            .cloned()
            .collect()
    }

    /// Every unexpired retained message (for the state file).
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut map = self.by_topic.lock();
        map.retain(|_, m| !m.expired());
        map.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.by_topic.lock().len()
    }
}

/// Does `filter` match `topic`, with the `$` rule (MQTT-4.7.2-1)?
pub(crate) fn topic_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (t.next(), f.next()) {
            (_, Some("#")) => return true,
            (Some(_), Some("+")) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn wildcards_match_per_the_spec() {
        assert!(topic_matches("a/b", "a/+"));
        assert!(topic_matches("a", "a/#"), "MQTT-4.7.1-2");
        assert!(topic_matches("a/b/c", "#"));
        assert!(!topic_matches("a/b/c", "a/+"));
        assert!(topic_matches("/x", "+/x"));
        assert!(!topic_matches("$SYS/x", "#"), "MQTT-4.7.2-1");
        assert!(!topic_matches("$SYS/x", "+/x"));
        assert!(topic_matches("$SYS/x", "$SYS/#"));
    }
}
