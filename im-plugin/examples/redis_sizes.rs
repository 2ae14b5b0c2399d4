//! Bytes of Redis memory per message of the split store's index, measured on a real Redis.
//!
//! Usage: `cargo run --release -p mqim-im-plugin --example redis_sizes [-- USERS MESSAGES]`
//! (default 200 users, 20,000 messages). Needs `redis-server` on the PATH (`scripts/test`
//! installs it); starts its own on a free port and an embedded log in a temp dir.
//!
//! Sends MESSAGES one-to-one messages between random pairs of USERS, then prints Redis's
//! `used_memory` growth per message and `MEMORY USAGE` of one key of each kind; then marks every
//! conversation read and prints the memory again (read messages leave the unread sets).

use std::sync::Arc;

use anyhow::Context as _;
use mqim_im_plugin::store::lsm::LsmStore;
use mqim_im_plugin::store::redis_index::{RedisConfig, RedisIndex};
use mqim_im_plugin::store::split::{SplitOptions, SplitStore};
use mqim_im_plugin::store::{InboxStore, MessageStore, NewMessage};
use mqim_im_plugin::testing::RedisServer;
use rand::Rng as _;

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .context("no used_memory")?
        .trim()
        .parse()
        .context("used_memory")
}

/// Keys matching `pattern` of Redis type `kind`, and their `MEMORY USAGE` in total.
async fn usage_of(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    kind: &str,
) -> anyhow::Result<(usize, i64)> {
    let all: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(conn).await?;
    let mut keys = Vec::new();
    for k in all {
        let t: String = redis::cmd("TYPE").arg(&k).query_async(conn).await?;
        if t == kind {
            keys.push(k);
        }
    }
    let mut total = 0;
    for k in &keys {
        let bytes: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await?;
        total += bytes.unwrap_or(0);
    }
    Ok((keys.len(), total))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let users: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let messages: usize = args.next().map_or(Ok(20_000), |s| s.parse())?;

    let redis = RedisServer::start();
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(LsmStore::open(dir.path())?);
    let cfg = RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    };
    let store = SplitStore::new(
        RedisIndex::connect(&cfg, 24 * 3600).await?,
        log,
        SplitOptions::default(),
    );
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let name = |i: usize| format!("user{i:05}");

    // Every user known to the index first, so the baseline includes their counters.
    for u in 0..users {
        store.last_seq(&name(u)).await?;
    }
    let before = used_memory(&mut conn).await?;
    let mut rng = rand::rng();
    let base = 1u64 << 62;
    let mut pending = Vec::new();
    for i in 0..messages {
        let from = rng.random_range(0..users);
        let mut to = rng.random_range(0..users - 1);
        if to >= from {
            to += 1;
        }
        pending.push(store.append_message(NewMessage {
            from: name(from),
            to: name(to),
            client_msg_id: format!("{:036}", i), // a UUID's length
            msg_id: base + i as u64,
            ts: 1_800_000_000_000 + i as i64,
            text: Some("hello".into()),
            body: None,
            kind: None,
        }));
        if pending.len() == 256 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending.drain(..) {
        p.await?;
    }
    let after = used_memory(&mut conn).await?;
    println!("{users} users, {messages} messages (36-byte clientMsgIds, user ids of 9 bytes)");
    println!(
        "used_memory: +{} bytes, {:.0} bytes per message",
        after - before,
        (after - before) as f64 / messages as f64
    );
    for (what, pattern, kind) in [
        ("seq counters", "mqim:seq:*", "hash"),
        ("dedup cache", "mqim:dedup:*", "string"),
        ("unread counts", "mqim:unread:*", "hash"),
        ("unread sets", "mqim:unread:*", "zset"),
        ("recency", "mqim:recent:*", "zset"),
    ] {
        let (n, bytes) = usage_of(&mut conn, pattern, kind).await?;
        println!(
            "{what:>14}: {n:>6} keys, {bytes:>10} bytes, {:>6.1} bytes per message",
            bytes as f64 / messages as f64
        );
    }

    // Everyone reads everything.
    for u in 0..users {
        let page = store.conversations(&name(u), 10_000).await?;
        for c in page.conversations {
            if let Some(last) = c.last {
                store.mark_read(&name(u), &c.id, last.msg_id).await?;
            }
        }
    }
    let read = used_memory(&mut conn).await?;
    println!(
        "after reading everything: used_memory +{} bytes over the start, {:.0} per message",
        read - before,
        (read - before) as f64 / messages as f64
    );
    let (n, bytes) = usage_of(&mut conn, "mqim:readupto:*", "hash").await?;
    println!("  read pointers: {n:>6} keys, {bytes:>10} bytes");
    Ok(())
}
