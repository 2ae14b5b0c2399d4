//! The adapter to rumqttd's `Router`, which routes the general (non-claimed) MQTT topics.
//!
//! Every rumqttd-specific line of mqim lives here, against the pinned rumqttd 0.20.0. Facts this
//! module is built around (measured, see issue 3):
//! - the router's sender names a private type, so it is held inside a closure that builds links;
//! - `LinkBuilder::build` and `LinkTx` sends block on the router's bounded channel, so all of them
//!   run on one dedicated thread fed by a bounded async channel (`Cmd`);
//! - the router keys sessions by client id alone, so each connection gets a link named by its
//!   internal connection number: no client can ever inherit another's router state;
//! - a rumqttd link costs tens of KB, so a connection gets one only when it first subscribes to a
//!   general topic. Publishes of all connections go through one shared publisher link;
//! - local links publish at QoS 0, so the publisher's QoS travels in a one-byte header in front of
//!   the payload and is removed on the way out. An empty payload (which clears a retained message
//!   in rumqttd) is passed as it is.
//!
//! It must never see claimed (IM) traffic: the connection layer routes that to the extension.

// rumqttd's `LinkError` is large; it is rumqttd's type and only ever logged here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, Publish as RPublish, QoS as RQoS,
    RetainForwardRule, Subscribe,
};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::codec::QoS;

/// A message the router forwards to a subscriber.
#[derive(Debug)]
pub struct Forwarded {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
}

type BuildLink = Box<dyn Fn(&str) -> Result<(LinkTx, LinkRx, Notification), LinkError> + Send>;

enum Cmd {
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    },
    Open {
        conn: u64,
        reply: oneshot::Sender<Option<LinkRx>>,
    },
    Subscribe {
        conn: u64,
        filter: String,
    },
    Unsubscribe {
        conn: u64,
        filter: String,
    },
    Close {
        conn: u64,
    },
}

/// Handle to the router thread. Cheap to clone.
#[derive(Clone)]
pub struct GeneralRouter {
    tx: mpsc::Sender<Cmd>,
}

/// Settings for the embedded rumqttd router.
#[derive(Clone, Debug)]
pub struct RouterSettings {
    /// Most connections that may hold a router link at once.
    pub max_links: usize,
    /// Largest packet the router must hold.
    pub max_packet_size: usize,
}

impl GeneralRouter {
    /// Starts the router and its feeder thread.
    pub fn start(settings: RouterSettings) -> anyhow::Result<GeneralRouter> {
        let config = RouterConfig {
            // +1 for the shared publisher link. The default (0) refuses every link.
            max_connections: settings.max_links + 1,
            max_outgoing_packet_count: 200,
            // The default (0) panics on the first filter. One segment must hold the largest packet.
            max_segment_size: settings.max_packet_size.max(64 * 1024) * 2,
            max_segment_count: 4,
            ..RouterConfig::default()
        };
        let router_tx = Router::new(0, config).spawn();
        let build: BuildLink =
            Box::new(move |id: &str| LinkBuilder::new(id, router_tx.clone()).build());
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("mqim-router-links".into())
            .spawn(move || feeder(build, rx))?;
        Ok(GeneralRouter { tx })
    }

    /// Publishes to the general topic tree. Waits if the router is saturated.
    pub async fn publish(&self, topic: String, payload: Bytes, qos: QoS, retain: bool) {
        let cmd = Cmd::Publish {
            topic,
            payload,
            qos,
            retain,
        };
        if self.tx.send(cmd).await.is_err() {
            warn!("router thread is gone; general publish dropped");
        }
    }

    /// Creates the router link of connection `conn`: returns its receiving side.
    pub async fn open(&self, conn: u64) -> Option<LinkRx> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Open { conn, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    pub async fn subscribe(&self, conn: u64, filter: String) {
        let _ = self.tx.send(Cmd::Subscribe { conn, filter }).await;
    }

    pub async fn unsubscribe(&self, conn: u64, filter: String) {
        let _ = self.tx.send(Cmd::Unsubscribe { conn, filter }).await;
    }

    /// Drops the link of `conn`, if it has one. Never blocks the caller.
    pub fn close(&self, conn: u64) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Cmd::Close { conn }).await;
        });
    }
}

/// Receives what the router forwards to one link, until the link closes. `on_message` returns
/// false to stop.
pub async fn forward_loop(mut rx: LinkRx, mut on_message: impl FnMut(Forwarded) -> bool) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(f))) => {
                let topic = match String::from_utf8(f.publish.topic.to_vec()) {
                    Ok(t) => t,
                    Err(_) => continue,
                };
                let (qos, payload) = unframe(f.publish.payload);
                if !on_message(Forwarded {
                    topic,
                    payload,
                    qos,
                }) {
                    return;
                }
            }
            // The router paused this link because its buffer filled; we drained it, so resume.
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Disconnect(..))) => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn frame(payload: Bytes, qos: QoS) -> Bytes {
    if payload.is_empty() {
        return payload;
    }
    let mut b = BytesMut::with_capacity(payload.len() + 1);
    b.put_u8(qos as u8);
    b.extend_from_slice(&payload);
    b.freeze()
}

fn unframe(mut payload: Bytes) -> (QoS, Bytes) {
    if payload.is_empty() {
        return (QoS::AtMostOnce, payload);
    }
    let qos = match payload[0] {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    };
    let _ = payload.split_to(1);
    (qos, payload)
}

/// `LinkTx::send` is async in name only: it blocks on the router's channel, which is why it runs
/// on this thread.
fn send_blocking(tx: &mut LinkTx, packet: Packet) {
    if let Err(e) = futures::executor::block_on(tx.send(packet)) {
        debug!(error = ?e, "router link send failed");
    }
}

fn feeder(build: BuildLink, mut rx: mpsc::Receiver<Cmd>) {
    // The publisher link's receiving side must stay alive, or the router drops the link.
    let (mut publisher, _publisher_rx) = match build("mqim-publisher") {
        Ok((tx, rx, _)) => (Some(tx), Some(rx)),
        Err(e) => {
            warn!(error = ?e, "router refused the publisher link; general topics are disabled");
            (None, None)
        }
    };
    let mut links: HashMap<u64, LinkTx> = HashMap::new();
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Publish {
                topic,
                payload,
                qos,
                retain,
            } => {
                if let Some(p) = publisher.as_mut() {
                    let publish = RPublish::new(Bytes::from(topic), frame(payload, qos), retain);
                    send_blocking(p, Packet::Publish(publish, None));
                }
            }
            Cmd::Open { conn, reply } => {
                let rx = match build(&format!("c{conn}")) {
                    Ok((tx, rx, _)) => {
                        links.insert(conn, tx);
                        Some(rx)
                    }
                    Err(e) => {
                        warn!(error = ?e, conn, "router refused a link");
                        None
                    }
                };
                let _ = reply.send(rx);
            }
            Cmd::Subscribe { conn, filter } => {
                if let Some(tx) = links.get_mut(&conn) {
                    let sub = Subscribe {
                        pkid: 1,
                        filters: vec![Filter {
                            path: filter,
                            // Everything enters the router at QoS 0 (see the module comment).
                            qos: RQoS::AtMostOnce,
                            nolocal: false,
                            preserve_retain: false,
                            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                        }],
                    };
                    send_blocking(tx, Packet::Subscribe(sub, None));
                }
            }
            Cmd::Unsubscribe { conn, filter } => {
                if let Some(tx) = links.get_mut(&conn) {
                    if let Err(e) = tx.unsubscribe(filter) {
                        debug!(error = ?e, "router unsubscribe failed");
                    }
                }
            }
            Cmd::Close { conn } => {
                if let Some(mut tx) = links.remove(&conn) {
                    let bye = Packet::Disconnect(
                        Disconnect {
                            reason_code: DisconnectReasonCode::NormalDisconnection,
                        },
                        None,
                    );
                    send_blocking(&mut tx, bye);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_header_round_trips_and_empty_payload_stays_empty() {
        let (q, p) = unframe(frame(Bytes::from_static(b"hello"), QoS::AtLeastOnce));
        assert_eq!((q, &p[..]), (QoS::AtLeastOnce, &b"hello"[..]));
        let (q, p) = unframe(frame(Bytes::new(), QoS::AtLeastOnce));
        assert_eq!((q, p.len()), (QoS::AtMostOnce, 0));
    }
}
