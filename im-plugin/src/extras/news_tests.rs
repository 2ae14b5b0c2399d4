//! Two nodes sharing a store (`crate::testing::nodes`: one real Redis, one shared log): what one
//! node changes, the other follows. A presence watch on node A sees a user come and go on node B;
//! even when B stops without a word; a block or presence setting made through A holds on B;
//! typing through A reaches a peer on B; and B catches up on news it missed when its
//! subscription comes back, also after it stopped answering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqim_schemas::v1::{
    reply, BlockRequest, PresenceWatchRequest, SendRequest, SettingsRequest, TypingRequest,
    UnblockRequest,
};
use parking_lot::Mutex;
use serde_json::Value;
use tempfile::TempDir;

use crate::config::ImConfig;
use crate::error::ImError;
use crate::presence::DeviceLink;
use crate::store::extras::ExtrasLog;
use crate::store::lsm::LsmStore;
use crate::testing::nodes::node_with;
use crate::testing::RedisServer;
use crate::topics::{downlink, Format};
use crate::ImPlugin;

/// A device subscribed to its JSON downlink, keeping what it was sent.
struct Device {
    user: &'static str,
    conn: u64,
    got: Mutex<Vec<Value>>,
}

impl DeviceLink for Device {
    fn conn_id(&self) -> u64 {
        self.conn
    }
    fn user(&self) -> &str {
        self.user
    }
    fn device(&self) -> &str {
        "phone"
    }
    fn is_subscribed(&self, topic: &str) -> bool {
        topic == downlink(self.user, "phone", Format::Json)
    }
    fn deliver(&self, _topic: &str, payload: Bytes) -> bool {
        let value = serde_json::from_slice(&payload).expect("a JSON downlink");
        self.got.lock().push(value);
        true
    }
}

fn device(user: &'static str, conn: u64) -> (Arc<Device>, Arc<dyn DeviceLink>) {
    let d = Arc::new(Device {
        user,
        conn,
        got: Mutex::default(),
    });
    (d.clone(), d)
}

impl Device {
    /// The presence events received so far, as `(user, online, lastSeen > 0)`.
    fn presence(&self) -> Vec<(String, bool, bool)> {
        self.got
            .lock()
            .iter()
            .filter_map(|d| d["event"].get("presence"))
            .map(|p| {
                let user = p["user"].as_str().unwrap_or_default().to_string();
                let last_seen = p
                    .get("lastSeen")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s != "0");
                (user, p["online"] == true, last_seen)
            })
            .collect()
    }
}

/// Waits up to 10 s for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(
    plugin: &Arc<ImPlugin>,
    from: &Arc<dyn DeviceLink>,
    to: &str,
    cmid: &str,
) -> Result<reply::Result, ImError> {
    crate::ops::send::start(
        plugin,
        from,
        SendRequest {
            to: format!("u:{to}"),
            client_msg_id: cmid.into(),
            text: Some("hi".into()),
            ..SendRequest::default()
        },
    )
    .await
}

/// A connection of the test's own to the cluster's Redis.
async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

struct Cluster {
    redis: RedisServer,
    log: Arc<LsmStore>,
    a: Arc<ImPlugin>,
    b: Arc<ImPlugin>,
    _dir: TempDir,
}

/// Nodes A and B, announcing presence 100 ms after it settles, with heartbeats that expire
/// after 900 ms; both subscribed to the news when this returns.
async fn cluster() -> Cluster {
    let redis = RedisServer::start();
    let dir = TempDir::new().expect("temp dir");
    let log = Arc::new(LsmStore::open(&dir.path().join("log")).expect("log"));
    let im = ImConfig {
        presence_debounce_ms: 100,
        ..ImConfig::default()
    };
    let ttl = Duration::from_millis(900);
    let a = node_with(1, &redis, &log, &dir, im.clone(), ttl).await;
    let b = node_with(2, &redis, &log, &dir, im, ttl).await;
    // News published before a node subscribed never reaches it.
    let conn = redis_conn(&redis).await;
    let subscribers = || {
        let mut conn = conn.clone();
        async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("nodes:news")
                .query_async(&mut conn)
                .await
                .expect("PUBSUB NUMSUB");
            n
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers().await < 2 {
        assert!(Instant::now() < deadline, "the nodes never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Cluster {
        redis,
        log,
        a,
        b,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_node_sees_the_user_come_and_go_on_another() {
    let c = cluster().await;
    let olga = olga_watches_pia(&c).await;

    // pia's phone connects to node B, then leaves it.
    let (_pia, pia_link) = device("pia", 2);
    c.b.device_online(pia_link);
    eventually("olga on A hears that pia is online on B", || {
        olga.presence() == [("pia".into(), true, false)]
    })
    .await;
    c.b.device_offline("pia", "phone", 2);
    eventually("olga on A hears that pia went offline on B", || {
        olga.presence().len() == 2
    })
    .await;
    assert_eq!(
        olga.presence()[1],
        ("pia".into(), false, true),
        "offline, with when pia was last seen"
    );
}

/// olga on A watches pia (they have a conversation): the watch reports pia offline.
async fn olga_watches_pia(c: &Cluster) -> Arc<Device> {
    let (olga, olga_link) = device("olga", 1);
    c.a.device_online(olga_link.clone());
    let sent = send(&c.a, &olga_link, "pia", "hello").await;
    assert!(matches!(sent, Ok(reply::Result::Sent(_))), "{sent:?}");
    let watched = crate::ops::presence::watch(
        &c.a,
        &olga_link,
        PresenceWatchRequest {
            users: vec!["pia".into()],
        },
    )
    .await;
    let Ok(reply::Result::PresenceWatch(watched)) = watched else {
        panic!("watch: {watched:?}");
    };
    assert!(!watched.users[0].online, "pia is offline at first");
    olga
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_hears_the_user_go_offline_when_their_node_stops_without_a_word() {
    let c = cluster().await;
    let olga = olga_watches_pia(&c).await;
    let (_pia, pia_link) = device("pia", 2);
    c.b.device_online(pia_link);
    eventually("olga hears that pia is online on B", || {
        olga.presence() == [("pia".into(), true, false)]
    })
    .await;

    // B stops: no offline is recorded or announced; its heartbeat in Redis expires.
    let Cluster {
        redis: _redis,
        a: _a,
        b,
        _dir,
        ..
    } = c;
    let gone = Arc::downgrade(&b);
    drop(b);
    eventually("node B is gone", || gone.upgrade().is_none()).await;
    eventually("olga hears that pia is offline", || {
        olga.presence().len() == 2
    })
    .await;
    assert!(!olga.presence()[1].1, "{:?}", olga.presence());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_and_a_setting_made_through_one_node_hold_on_another() {
    let c = cluster().await;
    let (_olga, olga) = device("olga", 1);
    let (_pia, pia) = device("pia", 2);
    assert!(matches!(
        send(&c.b, &olga, "pia", "before").await,
        Ok(reply::Result::Sent(_))
    ));

    let blocked = crate::ops::block::block(
        &c.a,
        &pia,
        BlockRequest {
            user: "olga".into(),
        },
    )
    .await;
    assert!(
        matches!(blocked, Ok(reply::Result::Block(_))),
        "{blocked:?}"
    );
    eventually("B knows that pia blocks olga", || {
        c.b.extras.blocks("pia", "olga")
    })
    .await;
    let refused = send(&c.b, &olga, "pia", "while-blocked").await;
    assert!(
        refused.is_err_and(|e| e.code == mqim_schemas::v1::ErrorCode::PermissionDenied),
        "a blocked user's send through the other node is refused"
    );

    let unblocked = crate::ops::block::unblock(
        &c.a,
        &pia,
        UnblockRequest {
            user: "olga".into(),
        },
    )
    .await;
    assert!(matches!(unblocked, Ok(reply::Result::Unblock(_))));
    eventually("B knows that pia no longer blocks olga", || {
        !c.b.extras.blocks("pia", "olga")
    })
    .await;
    assert!(matches!(
        send(&c.b, &olga, "pia", "after").await,
        Ok(reply::Result::Sent(_))
    ));

    let hidden = crate::ops::presence::settings(
        &c.a,
        &pia,
        SettingsRequest {
            presence_visible: Some(false),
        },
    )
    .await;
    assert!(hidden.is_ok(), "{hidden:?}");
    eventually("B knows that pia hides her presence", || {
        !c.b.extras.presence_visible("pia")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catches_up_on_news_it_missed_when_its_subscription_returns() {
    let c = cluster().await;
    let mut conn = redis_conn(&c.redis).await;
    // Past the resync that follows each subscription.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A block that reached the log with no news (as if the news was lost on the way).
    c.log.set_block("pia", "olga", true).await.expect("block");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.b.extras.blocks("pia", "olga"), "no news, no reload");

    // Redis drops every subscriber; B subscribes again and reloads.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 2, "both nodes were subscribed");
    eventually("B read the block it missed", || {
        c.b.extras.blocks("pia", "olga")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_through_one_node_reaches_the_peer_on_another_unless_blocked() {
    let c = cluster().await;
    let (_olga, olga) = device("olga", 1);
    let (pia, pia_link) = device("pia", 2);
    c.b.device_online(pia_link.clone());
    let typing = |state: &str| {
        crate::ops::typing::start(
            &c.a,
            &olga,
            TypingRequest {
                conversation: "u:pia".into(),
                state: state.into(),
            },
        )
    };
    let typed = |d: &Device| -> Vec<(String, String, String)> {
        d.got
            .lock()
            .iter()
            .filter_map(|d| d["event"].get("typing"))
            .map(|t| {
                let field = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (field("conversation"), field("user"), field("state"))
            })
            .collect()
    };
    assert!(typing("start").await.is_ok());
    eventually("pia on B sees olga typing", || !typed(&pia).is_empty()).await;
    assert_eq!(
        typed(&pia),
        [(
            "u:olga".to_string(),
            "olga".to_string(),
            "start".to_string()
        )]
    );

    let blocked = crate::ops::block::block(
        &c.b,
        &pia_link,
        BlockRequest {
            user: "olga".into(),
        },
    )
    .await;
    assert!(blocked.is_ok(), "{blocked:?}");
    eventually("A knows that pia blocks olga", || {
        c.a.extras.blocks("pia", "olga")
    })
    .await;
    assert!(typing("stop").await.is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        typed(&pia).len(),
        1,
        "a blocker never sees the blocked typing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_answering_is_opened_again_and_catches_up() {
    let c = cluster().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis answers nobody for 2 s (as a connection cut off without a reset), and a block
    // reaches the log meanwhile with no news.
    assert_eq!(c.redis.command(&["CLIENT", "PAUSE", "2000", "ALL"]), "+OK");
    c.log.set_block("pia", "olga", true).await.expect("block");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The node's ping went unanswered; it subscribed again and read what it missed.
    eventually("B read the block it missed", || {
        c.b.extras.blocks("pia", "olga")
    })
    .await;
}
