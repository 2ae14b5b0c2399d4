//! Access rules for the general (non-claimed) topic tree. Deny by default.
//!
//! A rule names who it applies to (`"*"` any authenticated user, `"anonymous"`, or a user id), a
//! topic pattern with `%u` (user) and `%c` (client id) placeholders, and the access it grants. A
//! subscription is allowed only if every topic its filter can match lies inside a pattern the
//! principal may read; `users/%u/#` therefore allows `users/alice/+` for alice but not `users/#`.
//! A placeholder whose value contains `+`, `#` or `/` disables the rule for that client, so an
//! identity can never widen a pattern.
//!
//! Rules with `deny = true` take away what allow rules grant. Order of evaluation: deny rules
//! first, whatever their place in the file, then allow rules; a topic is readable (writable) when
//! no applicable deny rule matches it and an allow rule does. A subscription whose filter lies
//! wholly inside a denied pattern is refused (SUBACK 0x80 / 0x87); one that only overlaps it
//! (`#` next to a denied `$SYS/#`) is granted, and the denied topics are never delivered to it.

use serde::{Deserialize, Serialize};

use crate::session::Principal;

/// What a rule grants.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// One access rule, as written in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rule {
    /// `"*"` (any authenticated user), `"anonymous"`, or one user id.
    pub user: String,
    pub topic: String,
    pub access: Access,
    /// A deny rule: takes `access` away instead of granting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny: bool,
}

/// The rule set.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
    has_deny: bool,
}

impl Acl {
    pub fn new(rules: Vec<Rule>) -> Self {
        let has_deny = rules.iter().any(|r| r.deny);
        Acl { rules, has_deny }
    }

    /// May `who` subscribe to `filter`?
    pub fn can_subscribe(&self, who: &Principal, filter: &str) -> bool {
        let filter = strip_share(filter);
        !self
            .patterns(who, Access::Read, true)
            .any(|p| filter_within(filter, &p))
            && self
                .patterns(who, Access::Read, false)
                .any(|p| filter_within(filter, &p))
    }

    /// May `who` publish to `topic`?
    pub fn can_publish(&self, who: &Principal, topic: &str) -> bool {
        self.allowed(who, topic, Access::Write)
    }

    /// May `who` receive a message on `topic` (checked per delivery when there are deny rules)?
    pub fn can_read(&self, who: &Principal, topic: &str) -> bool {
        self.allowed(who, topic, Access::Read)
    }

    /// True if any rule denies: only then is each delivery checked.
    pub fn has_deny(&self) -> bool {
        self.has_deny
    }

    fn allowed(&self, who: &Principal, topic: &str, want: Access) -> bool {
        let m = |p: String| crate::router::topic_matches(topic, &p);
        !self.patterns(who, want, true).any(m) && self.patterns(who, want, false).any(m)
    }

    fn patterns<'a>(
        &'a self,
        who: &'a Principal,
        want: Access,
        deny: bool,
    ) -> impl Iterator<Item = String> + 'a {
        self.rules.iter().filter_map(move |r| {
            if r.deny != deny {
                return None;
            }
            let grants = r.access == Access::ReadWrite || r.access == want;
            let applies = match (&who.user, r.user.as_str()) {
                (None, "anonymous") => true,
                (Some(_), "*") => true,
                (Some(u), name) => u == name,
                (None, _) => false,
            };
            if !(grants && applies) {
                return None;
            }
            substitute(&r.topic, who)
        })
    }
}

/// `$share/<group>/<filter>` subscribes to `<filter>`; authorize that.
pub fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, f)| f)
        .unwrap_or(filter)
}

fn substitute(pattern: &str, who: &Principal) -> Option<String> {
    let unsafe_value = |v: &str| v.is_empty() || v.contains(['+', '#', '/']);
    let mut out = pattern.to_string();
    if out.contains("%u") {
        let user = who.user.as_deref()?;
        if unsafe_value(user) {
            return None;
        }
        out = out.replace("%u", user);
    }
    if out.contains("%c") {
        if unsafe_value(&who.client_id) {
            return None;
        }
        out = out.replace("%c", &who.client_id);
    }
    Some(out)
}

/// True if every topic `filter` matches is matched by `pattern`.
pub fn filter_within(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('/');
    let mut p = pattern.split('/');
    loop {
        match (f.next(), p.next()) {
            (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("#"), _) => return false,
            (Some(_), Some("+")) => {}
            (Some(fl), Some(pl)) if fl == pl && fl != "+" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal {
            user: Some("alice".into()),
            client_id: "phone".into(),
        }
    }

    fn acl() -> Acl {
        Acl::new(vec![
            Rule {
                user: "*".into(),
                topic: "users/%u/#".into(),
                access: Access::ReadWrite,
                deny: false,
            },
            Rule {
                user: "anonymous".into(),
                topic: "public/#".into(),
                access: Access::Read,
                deny: false,
            },
        ])
    }

    #[test]
    fn owner_pattern_allows_own_subtree_only() {
        let a = acl();
        assert!(a.can_subscribe(&alice(), "users/alice/inbox"));
        assert!(a.can_subscribe(&alice(), "users/alice/+"));
        assert!(a.can_subscribe(&alice(), "users/alice/#"));
        assert!(!a.can_subscribe(&alice(), "users/#"));
        assert!(!a.can_subscribe(&alice(), "users/+/inbox"));
        assert!(!a.can_subscribe(&alice(), "#"));
        assert!(!a.can_subscribe(&alice(), "users/bob/inbox"));
        assert!(a.can_publish(&alice(), "users/alice/x"));
        assert!(!a.can_publish(&alice(), "users/bob/x"));
    }

    #[test]
    fn anonymous_gets_only_anonymous_rules_and_no_placeholders() {
        let anon = Principal {
            user: None,
            client_id: "x".into(),
        };
        let a = acl();
        assert!(a.can_subscribe(&anon, "public/news"));
        assert!(!a.can_publish(&anon, "public/news"));
        assert!(!a.can_subscribe(&anon, "users/x/#"));
    }

    #[test]
    fn wildcard_in_identity_disables_the_rule() {
        let sneaky = Principal {
            user: Some("#".into()),
            client_id: "c".into(),
        };
        assert!(!acl().can_subscribe(&sneaky, "users/bob/inbox"));
    }

    #[test]
    fn shared_subscriptions_are_authorized_on_their_filter() {
        assert!(acl().can_subscribe(&alice(), "$share/g/users/alice/jobs"));
        assert!(!acl().can_subscribe(&alice(), "$share/g/users/bob/jobs"));
    }

    #[test]
    fn deny_rules_win_over_allow_rules_whatever_their_order() {
        let rule = |topic: &str, deny: bool| Rule {
            user: "*".into(),
            topic: topic.into(),
            access: Access::ReadWrite,
            deny,
        };
        let a = Acl::new(vec![
            rule("#", false),
            rule("test/nosubscribe", true),
            rule("$SYS/#", true),
        ]);
        assert!(!a.can_subscribe(&alice(), "test/nosubscribe"));
        assert!(!a.can_subscribe(&alice(), "$SYS/broker/x"));
        assert!(!a.can_publish(&alice(), "test/nosubscribe"));
        assert!(a.can_publish(&alice(), "test/other"));
        // `#` overlaps the denied topics: granted, but they are not delivered to it.
        assert!(a.can_subscribe(&alice(), "#"));
        assert!(!a.can_read(&alice(), "test/nosubscribe"));
        assert!(a.can_read(&alice(), "test/x"));
        assert!(a.has_deny());
    }
}
