//! The subscription trie: topic filters (one level per node, `+` and `#` as ordinary keys) to the
//! sessions subscribed with them, plain and shared (`$share/<group>/<filter>`).
//!
//! Matching walks the topic's levels with an explicit stack (no recursion, whatever the depth)
//! and applies the `$` rule: a topic starting with `$` is not matched by a filter starting with a
//! wildcard (MQTT-4.7.2-1). It owns the index only; what a subscription means is `mod.rs`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::RSession;
use crate::codec::SubOptions;

/// One subscription as the trie holds it.
#[derive(Clone)]
pub(super) struct Sub {
    pub session: Arc<RSession>,
    pub opts: SubOptions,
    pub id: Option<usize>,
}

/// A shared subscription group on one filter: each message goes to one member.
pub(super) struct Group {
    name: Box<str>,
    pub members: Vec<Sub>,
    next: AtomicUsize,
}

impl Group {
    /// The member to try first for the next message (round robin).
    pub fn start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.members.len().max(1)
    }
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<Sub>,
    groups: Vec<Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.groups.is_empty()
    }
}

/// The index of every general subscription.
#[derive(Default)]
pub(super) struct Trie {
    root: Node,
    count: usize,
}

/// Splits `$share/<group>/<filter>` into its group and filter.
pub(crate) fn split_share(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((group, f)) => (Some(group), f),
        None => (None, filter),
    }
}

impl Trie {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces the subscription of `sub.session` on `filter`.
    pub fn insert(&mut self, filter: &str, sub: Sub) {
        let (group, path) = split_share(filter);
        let mut node = &mut self.root;
        for level in path.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match group {
            None => &mut node.subs,
            Some(g) => {
                let i = match node.groups.iter().position(|x| &*x.name == g) {
                    Some(i) => i,
                    None => {
                        node.groups.push(Group {
                            name: g.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[i].members
            }
        };
        match list.iter_mut().find(|s| s.session.id == sub.session.id) {
            Some(s) => *s = sub,
            None => {
                list.push(sub);
                self.count += 1;
            }
        }
    }

    /// Removes the subscription of session `id` on `filter`; prunes emptied nodes.
    pub fn remove(&mut self, filter: &str, id: u64) -> bool {
        let (group, path) = split_share(filter);
        let levels: Vec<&str> = path.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Calls `plain` for every plain subscription and `shared` for every group whose filter
    /// matches `topic`.
    pub fn matches<'a>(
        &'a self,
        topic: &str,
        mut plain: impl FnMut(&'a Sub),
        mut shared: impl FnMut(&'a Group),
    ) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, i)) = stack.pop() {
            let wild_ok = !(i == 0 && dollar);
            if wild_ok {
                // `a/#` also matches `a` (MQTT-4.7.1-2).
                if let Some(h) = node.children.get("#") {
                    h.subs.iter().for_each(&mut plain);
                    h.groups.iter().for_each(&mut shared);
                }
            }
            if i == levels.len() {
                node.subs.iter().for_each(&mut plain);
                node.groups.iter().for_each(&mut shared);
                continue;
            }
            if let Some(n) = node.children.get(levels[i]) {
                stack.push((n, i + 1));
            }
            if wild_ok {
                if let Some(n) = node.children.get("+") {
                    stack.push((n, i + 1));
                }
            }
        }
    }
}

/// Removes the subscription at `levels` and prunes the nodes it leaves empty. Recursive, bounded
/// by the filter's depth, which the connection limits to `MAX_LEVELS` before anything is stored.
fn remove_at(root: &mut Node, levels: &[&str], group: Option<&str>, id: u64) -> bool {
    fn go(node: &mut Node, levels: &[&str], group: Option<&str>, id: u64) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
                None => {
                    let before = node.subs.len();
                    node.subs.retain(|s| s.session.id != id);
                    node.subs.len() != before
                }
                Some(g) => {
                    let Some(i) = node.groups.iter().position(|x| &*x.name == g) else {
                        return false;
                    };
                    let members = &mut node.groups[i].members;
                    let before = members.len();
                    members.retain(|s| s.session.id != id);
                    let removed = members.len() != before;
                    if members.is_empty() {
                        node.groups.swap_remove(i);
                    }
                    removed
                }
            };
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = go(child, rest, group, id);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }
    go(root, levels, group, id)
}
