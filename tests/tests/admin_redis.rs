//! Bans on the scale-out store: kept in the Redis hash `<key_prefix>:bans`, which every node
//! re-reads, so a ban written by one node refuses the user's CONNECT on the others.

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
