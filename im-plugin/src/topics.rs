//! The IM topic tree: `im/{user}/{device}/{up|down}/{json|pb}`. Pure parsing, no state.

/// The claimed prefix.
pub const PREFIX: &str = "im/";

/// Payload encoding of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Pb,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Pb => "pb",
        }
    }
}

/// Direction of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// A parsed IM topic.
#[derive(Debug, PartialEq, Eq)]
pub struct ImTopic<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub direction: Direction,
    pub format: Format,
}

/// Parses an exact IM topic (no wildcards).
pub fn parse(topic: &str) -> Option<ImTopic<'_>> {
    let rest = topic.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let user = parts.next()?;
    let device = parts.next()?;
    let direction = match parts.next()? {
        "up" => Direction::Up,
        "down" => Direction::Down,
        _ => return None,
    };
    let format = match parts.next()? {
        "json" => Format::Json,
        "pb" => Format::Pb,
        _ => return None,
    };
    if parts.next().is_some() || !valid_user_id(user) || !valid_device_id(device) {
        return None;
    }
    Some(ImTopic {
        user,
        device,
        direction,
        format,
    })
}

/// The downlink topic of a device.
pub fn downlink(user: &str, device: &str, format: Format) -> String {
    format!("{PREFIX}{user}/{device}/down/{}", format.as_str())
}

/// A user id fits in one topic level and cannot act as a wildcard.
pub fn valid_user_id(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128 && !user.contains(['/', '+', '#', '\0'])
}

/// Device ids (MQTT client ids) follow the same rule.
pub fn valid_device_id(device: &str) -> bool {
    valid_user_id(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_topics_and_rejects_everything_else() {
        let t = parse("im/alice/phone/up/json").unwrap();
        assert_eq!(
            (t.user, t.device, t.direction, t.format),
            ("alice", "phone", Direction::Up, Format::Json)
        );
        assert_eq!(parse("im/alice/phone/down/pb").unwrap().format, Format::Pb);
        for bad in [
            "im/alice/phone/up",
            "im/alice/phone/up/json/x",
            "im/+/phone/up/json",
            "im/alice/#",
            "im//phone/up/json",
            "im/alice/phone/sideways/json",
            "im/alice/phone/up/xml",
            "other/alice/phone/up/json",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
