//! The admin API on the scale-out store (`redis+embedded`): bans kept in the Redis hash
//! `<key_prefix>:bans`, which every node re-reads, so a ban written by one node refuses the
//! user's CONNECT on the others; a user's devices online on any node (presence in Redis); and
//! system messages to groups and the group views, which this store shape keeps too.

mod common;

use std::process::Command;
use std::time::Duration;

use common::admin::Api;
use common::{token, Device, Proto, RedisBroker};
use serde_json::json;

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn bans_are_shared_through_redis() {
    let RedisBroker { broker: b, redis } = RedisBroker::start();
    let api = Api::new(&b).await;
    let (s, _) = api
        .post("/api/v1/users/mallory/ban", json!({"reason": "spam"}))
        .await;
    assert_eq!(s, 200);
    let stored = redis_cli(redis.port(), &["HGET", "mqim:bans", "mallory"]);
    assert!(stored.contains("\"reason\":\"spam\""), "{stored}");

    // Another node bans eve: this node closes her connection and refuses her CONNECT within
    // its refresh interval.
    let mut eve = Device::connect(&b, "eve", "x").await;
    let ban = json!({"until": null, "reason": "fraud", "by": "node-2", "at": 1}).to_string();
    redis_cli(redis.port(), &["HSET", "mqim:bans", "eve", &ban]);
    assert!(
        eve.closed_by_server(Duration::from_secs(5)).await,
        "eve is still connected"
    );
    let refused = Device::connect_raw(&b, "eve", "y", &token("eve", 60), Proto::V4).await;
    assert!(
        refused.is_err(),
        "eve's CONNECT was accepted after another node banned her"
    );
    let (_, v) = api.get("/api/v1/bans").await;
    assert_eq!(v["bans"].as_array().unwrap().len(), 2, "{v}");

    // Unbanning removes the shared entry.
    assert_eq!(api.delete("/api/v1/users/mallory/ban").await.0, 204);
    assert_eq!(
        redis_cli(redis.port(), &["HEXISTS", "mqim:bans", "mallory"]),
        "0"
    );
}

/// Waits until `GET /users/{user}` lists the devices `want` (`device@node`, sorted); returns the
/// last view.
async fn wait_for_devices(api: &Api, user: &str, want: &[&str]) -> serde_json::Value {
    let mut v = serde_json::Value::Null;
    for _ in 0..100 {
        v = api.get(&format!("/api/v1/users/{user}")).await.1;
        let got: Vec<String> = v["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| format!("{}@{}", d["device"].as_str().unwrap(), d["node"]))
            .collect();
        if got == want {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user}'s devices never became {want:?}: {v}");
}

#[tokio::test]
async fn the_user_view_lists_devices_online_on_other_nodes_from_redis() {
    let RedisBroker { broker: b, redis } = RedisBroker::start();
    let api = Api::new(&b).await;
    let mut phone = Device::connect(&b, "alice", "phone").await;
    phone.send("bob", "m1", "hi").await;

    // Node 7 (another broker on this Redis) holds alice's tablet: its liveness key and a
    // presence entry, as that node writes them.
    let port = redis.port();
    redis_cli(port, &["SET", "mqim:node:7", "inc-7"]);
    redis_cli(
        port,
        &["HSET", "mqim:presence:5:alice", "tablet", "7:inc-7:42"],
    );
    let v = wait_for_devices(&api, "alice", &["phone@0", "tablet@7"]).await;
    assert_eq!(v["presence"], "cluster", "{v}");
    assert!(v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["online"] == true));
    // The clients list is this node's connections only: the tablet is not in it.
    let (_, c) = api.get("/api/v1/clients?user=alice").await;
    let devices: Vec<&str> = c["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["phone"]);

    // Node 7 dies (its liveness key expires): its devices are no longer online.
    redis_cli(port, &["DEL", "mqim:node:7"]);
    wait_for_devices(&api, "alice", &["phone@0"]).await;
    phone.disconnect().await;
    wait_for_devices(&api, "alice", &[]).await;
}

/// Groups are kept on this store shape too: a system message to a group is its next entry in
/// every member's stream, and the group endpoints read the group from the log.
#[tokio::test]
async fn system_messages_and_group_views_work_on_the_redis_store() {
    let RedisBroker {
        broker: b,
        redis: _redis,
    } = RedisBroker::start();
    let api = Api::new(&b).await;
    let mut alice = Device::connect(&b, "alice", "phone").await;
    let mut bob = Device::connect(&b, "bob", "phone").await;
    let g = common::groups::create(&mut alice, "Ops", &["bob"], false).await;
    common::groups::next_change(&mut bob).await;
    let (s, v) = api
        .post(
            "/api/v1/messages",
            json!({"to": g, "text": "maintenance at noon"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["groupSeq"], 2, "the group's next entry: {v}");
    let ev = common::groups::next_message(&mut bob, &g).await;
    assert_eq!(ev["message"]["from"], "system", "{ev}");
    assert_eq!(ev["message"]["text"], "maintenance at noon");
    let (s, v) = api.get(&format!("/api/v1/groups/{g}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["member_count"], 2, "{v}");
    let (s, v) = api.get("/api/v1/groups/12345").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{v}"
    );
    // One-to-one system messages work as before.
    let (s, v) = api
        .post("/api/v1/messages", json!({"to": "u:alice", "text": "hi"}))
        .await;
    assert_eq!(s, 200, "{v}");
    loop {
        let ev = alice.event().await;
        if ev["message"]["conversation"] == "u:system" {
            assert_eq!(ev["message"]["from"], "system");
            break;
        }
    }
}
