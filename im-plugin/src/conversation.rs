//! Conversation ids, parsed and printed in this one place: `u:<user>` is a one-to-one
//! conversation as its owner calls it (named after the other user), `g:<group>` a group.
//!
//! Everything that builds or reads a conversation id goes through here, so the format is
//! written once and a new kind of conversation is one variant, not a hunt through the crate.

use std::fmt;

/// A conversation, as the owner of a stream names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// One-to-one, with this user.
    User(String),
    /// A group (its server-assigned id).
    Group(String),
}

const USER_PREFIX: &str = "u:";
const GROUP_PREFIX: &str = "g:";

impl Conversation {
    /// Parses `u:<user>` or `g:<group>`; `None` for anything else (the part after the prefix is
    /// not checked here: callers that take ids from clients validate it).
    pub fn parse(id: &str) -> Option<Conversation> {
        if let Some(user) = id.strip_prefix(USER_PREFIX) {
            Some(Conversation::User(user.to_string()))
        } else {
            id.strip_prefix(GROUP_PREFIX)
                .map(|g| Conversation::Group(g.to_string()))
        }
    }

    /// The id of the one-to-one conversation with `user`: `u:<user>`.
    pub fn with_user(user: &str) -> String {
        format!("{USER_PREFIX}{user}")
    }

    /// The other user of a one-to-one conversation id; `None` for any other id.
    pub fn peer(id: &str) -> Option<&str> {
        id.strip_prefix(USER_PREFIX)
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conversation::User(u) => write!(f, "{USER_PREFIX}{u}"),
            Conversation::Group(g) => write!(f, "{GROUP_PREFIX}{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_other_strings_are_refused() {
        for id in ["u:alice", "g:42", "u:", "u:a:b"] {
            assert_eq!(Conversation::parse(id).unwrap().to_string(), id);
        }
        assert_eq!(Conversation::parse("alice"), None);
        assert_eq!(Conversation::parse("x:1"), None);
        assert_eq!(Conversation::with_user("bob"), "u:bob");
        assert_eq!(Conversation::peer("u:bob"), Some("bob"));
        assert_eq!(Conversation::peer("g:1"), None);
    }
}
