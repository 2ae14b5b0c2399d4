//! Group helpers for the end-to-end tests: create a group, send to it, read group events and
//! conversations as a member's device does.

use serde_json::{json, Value};

use super::Device;

/// Creates a group as `d`'s user; returns its id (`g:<n>`).
pub async fn create(d: &mut Device, name: &str, members: &[&str], large: bool) -> String {
    let r = d
        .call(json!({"groupCreate": {"name": name, "members": members, "large": large}}))
        .await;
    let g = &r["groupCreate"]["group"];
    assert!(g.is_object(), "groupCreate failed: {r}");
    assert_eq!(g["name"], name);
    assert_eq!(g["owner"], d.user);
    g["id"].as_str().expect("group id").to_string()
}

pub async fn gsend(d: &mut Device, group: &str, cmid: &str, text: &str) -> Value {
    let r = d
        .call(json!({"send": {"to": group, "clientMsgId": cmid, "text": text}}))
        .await;
    assert!(r.get("sent").is_some(), "group send failed: {r}");
    r["sent"].clone()
}

pub fn num(v: &Value) -> u64 {
    v.as_str().map_or(0, |s| s.parse().unwrap())
}

pub fn error_code(r: &Value) -> &str {
    r["error"]["code"].as_str().unwrap_or("")
}

/// The next event that is a group message; asserts it is from `group`.
pub async fn next_message(d: &mut Device, group: &str) -> Value {
    loop {
        let ev = d.event().await;
        if ev.get("message").is_some() {
            assert_eq!(ev["message"]["conversation"], group, "{ev}");
            return ev;
        }
    }
}

/// The next event that is a group change; returns it.
pub async fn next_change(d: &mut Device) -> Value {
    loop {
        let ev = d.event().await;
        if ev.get("group").is_some() {
            return ev;
        }
    }
}

pub async fn conversation(d: &mut Device, id: &str) -> Value {
    let r = d.call(json!({"conversations": {}})).await;
    r["conversations"]["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or(Value::Null)
}
