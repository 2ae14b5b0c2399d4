//! News between nodes, over the Redis pub/sub channel `P:news`.
//!
//! A node publishes `<node id>:p:<user>` after it recorded that a device of the user came online
//! or went offline there, `<node id>:x:<user>` after the user's blocks or presence setting
//! changed there (durably, in the log), and `<node id>:t:<1|0>/<user>/<conversation>` for a
//! typing event it let through (start or stop). Every node subscribes and hands what the others
//! published to its IM layer as [`NodeNews`]. News says only "look again": the receiver reads
//! the current state from Redis (`P:presence:U`) or the log, so news that arrives twice, late or
//! out of order changes nothing wrongly. Typing is the exception: it is the event itself, live
//! only, like the copies a node delivers to its own devices.
//!
//! Pub/sub delivers at most once, to the subscribers connected at the time. The subscription
//! therefore runs on a connection of its own, pinged every TTL / 3 and opened again whenever it
//! breaks or a ping goes unanswered, and every time it is (re)established it first hands on
//! [`NodeNews::Resync`]: news may have passed while no one listened. A subscriber that reads slowly is not buffered here without bound: the channel to
//! the IM layer is bounded and waits, and Redis disconnects a subscriber whose output buffer
//! outgrows `client-output-buffer-limit pubsub` (a resubscription and a resync follow).
//!
//! A node that stops without a word (killed, cut off) publishes nothing; its heartbeat in Redis
//! (`P:node:<id>`) expires instead. Each node looks at every heartbeat three times per presence
//! TTL and says [`NodeNews::NodeLeft`] when one went or changed, so watches look again.
//!
//! Cost: one PUBLISH per device connection and disconnection, per block or setting change and
//! per typing event let through, delivered to every node (~40 bytes each); one MGET of the 1024 heartbeat keys per node every
//! TTL / 3 (10 s by default); nothing is stored.

use std::time::Duration;

use futures::StreamExt;
use redis::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::RedisIndex;
use crate::store::{NodeNews, StoreResult};

/// How many announcements may wait for the IM layer before the subscription stops reading.
const NEWS_CAPACITY: usize = 4096;
/// How long a broken subscription waits before it subscribes again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

impl RedisIndex {
    fn news_channel(&self) -> String {
        format!("{}:news", self.prefix)
    }

    /// Tells the other nodes `news` (never a resync) from `node`.
    pub async fn publish_news(&self, node: u16, news: &NodeNews) -> StoreResult<()> {
        let message = match news {
            NodeNews::Presence(user) => format!("{node}:p:{user}"),
            NodeNews::Extras(user) => format!("{node}:x:{user}"),
            // No user id or conversation holds `/`.
            NodeNews::Typing {
                from,
                conversation,
                start,
            } => format!("{node}:t:{}/{from}/{conversation}", u8::from(*start)),
            NodeNews::NodeLeft | NodeNews::Resync => return Ok(()),
        };
        redis::cmd("PUBLISH")
            .arg(self.news_channel())
            .arg(message)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.failed(e))
    }

    /// What the nodes other than `node` publish, from a subscription of its own (pinged every
    /// `ttl / 3`), and
    /// [`NodeNews::NodeLeft`] when a node's heartbeat (`P:node:<id>`, refreshed three times per
    /// `ttl`) expires or changes, looked at every `ttl / 3`. Both last until the receiver is
    /// dropped.
    pub fn node_news(&self, node: u16, ttl: Duration) -> mpsc::Receiver<NodeNews> {
        let (tx, rx) = mpsc::channel(NEWS_CAPACITY);
        tokio::spawn(keep_subscribed(
            self.client.clone(),
            self.news_channel(),
            node,
            ttl / 3,
            tx.clone(),
        ));
        let heartbeats: Vec<String> = (0..=crate::msgid::MAX_NODE)
            .map(|id| format!("{}:node:{id}", self.prefix))
            .collect();
        tokio::spawn(watch_heartbeats(self.conn.clone(), heartbeats, ttl, tx));
        rx
    }
}

/// Reads every node's heartbeat every `ttl / 3` and says [`NodeNews::NodeLeft`] when one that
/// was there has gone or changed (a new incarnation: the node restarted, and its devices of
/// before are offline). One MGET of 1024 short keys per look.
async fn watch_heartbeats(
    conn: redis::aio::ConnectionManager,
    heartbeats: Vec<String>,
    ttl: Duration,
    tx: mpsc::Sender<NodeNews>,
) {
    let mut seen: Vec<Option<String>> = Vec::new();
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let now: Vec<Option<String>> = match redis::cmd("MGET")
            .arg(&heartbeats)
            .query_async(&mut conn.clone())
            .await
        {
            Ok(now) => now,
            Err(e) => {
                debug!(error = %e, "cannot read the nodes' heartbeats");
                continue;
            }
        };
        let left = seen
            .iter()
            .zip(&now)
            .any(|(before, now)| before.is_some() && before != now);
        seen = now;
        if left && tx.send(NodeNews::NodeLeft).await.is_err() {
            return;
        }
    }
}

/// Subscribes, and subscribes again after every break, until the receiver is gone.
async fn keep_subscribed(
    client: redis::Client,
    channel: String,
    node: u16,
    ping_every: Duration,
    tx: mpsc::Sender<NodeNews>,
) {
    let mut warned = false;
    loop {
        let outcome = tokio::select! {
            _ = tx.closed() => return,
            outcome = listen(&client, &channel, node, ping_every, &tx) => outcome,
        };
        match outcome {
            Ok(Listened::ReceiverGone) => return,
            Ok(Listened::Broke) => debug!("the node news subscription ended; subscribing again"),
            Err(e) if !warned => {
                warn!(error = %e, "cannot subscribe to node news in Redis; retrying");
                warned = true;
            }
            Err(e) => debug!(error = %e, "node news subscription failed again"),
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}

enum Listened {
    ReceiverGone,
    Broke,
}

/// One subscription: a resync first, then each announcement of another node.
async fn listen(
    client: &redis::Client,
    channel: &str,
    node: u16,
    ping_every: Duration,
    tx: &mpsc::Sender<NodeNews>,
) -> redis::RedisResult<Listened> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    if tx.send(NodeNews::Resync).await.is_err() {
        return Ok(Listened::ReceiverGone);
    }
    // A connection cut off without a reset delivers nothing and never ends: a ping that gets
    // no answer in time ends it.
    let (mut sink, mut messages) = pubsub.split();
    let mut pings = tokio::time::interval(ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            msg = messages.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
            _ = pings.tick() => {
                match tokio::time::timeout(ping_every, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        debug!("the node news subscription did not answer a ping");
                        return Ok(Listened::Broke);
                    }
                }
            }
        };
        let Ok(payload) = msg.get_payload::<String>() else {
            continue;
        };
        let news = match parse(&payload) {
            Some((from, _)) if from == node => continue,
            Some((_, news)) => news,
            None => {
                debug!(payload, "ignored odd news from another node");
                continue;
            }
        };
        if tx.send(news).await.is_err() {
            return Ok(Listened::ReceiverGone);
        }
    }
    Ok(Listened::Broke)
}

/// `<node>:<kind>:<user>` as published by [`RedisIndex::publish_news`].
fn parse(payload: &str) -> Option<(u16, NodeNews)> {
    let (node, rest) = payload.split_once(':')?;
    let node = node.parse().ok()?;
    let news = match rest.split_once(':')? {
        ("p", user) => NodeNews::Presence(user.to_string()),
        ("x", user) => NodeNews::Extras(user.to_string()),
        ("t", typing) => {
            let mut parts = typing.splitn(3, '/');
            let start = match parts.next()? {
                "1" => true,
                "0" => false,
                _ => return None,
            };
            let (from, conversation) = (parts.next()?, parts.next()?);
            NodeNews::Typing {
                from: from.to_string(),
                conversation: conversation.to_string(),
                start,
            }
        }
        _ => return None,
    };
    Some((node, news))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reads_back_as_published_and_odd_payloads_are_refused() {
        assert_eq!(
            parse("7:p:alice"),
            Some((7, NodeNews::Presence("alice".into())))
        );
        // A user id may hold a colon; only the first two separate.
        assert_eq!(parse("0:x:a:b"), Some((0, NodeNews::Extras("a:b".into()))));
        assert_eq!(
            parse("3:t:1/a:b/u:c:d"),
            Some((
                3,
                NodeNews::Typing {
                    from: "a:b".into(),
                    conversation: "u:c:d".into(),
                    start: true
                }
            ))
        );
        for odd in [
            "",
            "7",
            "7:p",
            "x:p:alice",
            "7:q:alice",
            "70000:p:alice",
            "7:t:2/a/u:b",
            "7:t:1/a",
        ] {
            assert_eq!(parse(odd), None, "{odd:?}");
        }
    }
}
