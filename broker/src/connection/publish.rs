//! Publishes in both directions: a client's PUBLISH (topic aliases, validation, claimed tree or
//! router, acknowledged in order), the deliveries the connection encodes (expiry, subscription
//! ids, the client's maximum packet size, packet ids), and the will (with its delay).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::FutureExt;
use rumqttc::mqttbytes::{has_wildcards, valid_topic};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::{Conn, End, Inflight, State, TOPIC_ALIAS_MAX};
use crate::codec::{
    AckReason, DisconnectReason, Outgoing, Properties, Publish, QoS, Version, Will,
};
use crate::extension::PublishOutcome;
use crate::router::{Message, RSession, MAX_LEVELS};
use crate::session::{Delivery, Session};

/// A topic name a client may publish to: not empty, no wildcards, not too deep.
fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && valid_topic(topic)
        && !has_wildcards(topic)
        && topic.split('/').nth(MAX_LEVELS).is_none()
}

pub(super) fn is_claimed(topic: &str, prefix: &str) -> bool {
    topic.starts_with(prefix) || prefix.strip_suffix('/') == Some(topic)
}

/// A message as the router carries it: per-connection properties removed, expiry fixed now.
fn message(
    topic: String,
    payload: bytes::Bytes,
    qos: QoS,
    retain: bool,
    mut props: Option<Box<Properties>>,
    origin: u64,
) -> Message {
    let mut expires = None;
    if let Some(p) = props.as_mut() {
        p.topic_alias = None;
        p.subscription_identifiers.clear();
        expires = p
            .message_expiry_interval
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
    }
    Message {
        topic,
        payload,
        qos,
        retain,
        props,
        expires,
        origin,
    }
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(super) async fn on_publish(&mut self, st: &mut State, mut p: Publish) -> Option<End> {
        st.session
            .msgs_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // 5.0 topic aliases (MQTT 3.3.2.3.4): 0 or above our maximum ends the connection.
        if let Some(alias) = p.props.as_ref().and_then(|x| x.topic_alias) {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                debug!(
                    conn = st.session.conn_id,
                    alias, "invalid topic alias: closing"
                );
                return Some(self.close_with(DisconnectReason::TopicAliasInvalid).await);
            }
            let aliases = st.aliases.get_or_insert_with(Default::default);
            if p.topic.is_empty() {
                match aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        debug!(
                            conn = st.session.conn_id,
                            alias, "unknown topic alias: closing"
                        );
                        return Some(self.close_with(DisconnectReason::ProtocolError).await);
                    }
                }
            } else if valid_topic_name(&p.topic) {
                aliases.insert(alias, p.topic.clone());
            }
        }
        if !valid_topic_name(&p.topic) {
            debug!(conn = st.session.conn_id, topic = %p.topic, "invalid topic name: closing");
            return Some(self.close_with(DisconnectReason::ProtocolError).await);
        }
        if p.qos != QoS::AtMostOnce
            && self.version == Version::V5
            && st.qos_pending >= u32::from(self.shared.receive_max())
        {
            // Our receive maximum (MQTT-3.3.4-9): a 5.0 client that exceeds it is closed.
            // 3.1.1 clients are simply not read from past the limit (back-pressure, below).
            debug!(
                conn = st.session.conn_id,
                "receive maximum exceeded: closing"
            );
            return Some(
                self.close_with(DisconnectReason::ReceiveMaximumExceeded)
                    .await,
            );
        }
        if p.qos == QoS::ExactlyOnce && !st.qos2_in.insert(p.pkid) {
            // A retransmitted QoS 2 publish we already handled: answer again, act once.
            let _ = self.version.write(
                Outgoing::PubRec {
                    pkid: p.pkid,
                    reason: AckReason::Success,
                },
                &mut self.wbuf,
            );
            return None;
        }
        let shared = self.shared.clone();
        let claimed = is_claimed(&p.topic, shared.ext.claimed_prefix());
        let done: BoxFuture<'static, AckReason> = if claimed {
            if st.session.user().is_none() {
                futures::future::ready(AckReason::NotAuthorized).boxed()
            } else {
                shared
                    .ext
                    .on_publish(&st.session, &p.topic, p.payload)
                    .map(|o| match o {
                        PublishOutcome::Accepted => AckReason::Success,
                        PublishOutcome::NotAuthorized => AckReason::NotAuthorized,
                    })
                    .boxed()
            }
        } else if shared.acl.can_publish(&st.session.principal, &p.topic) {
            let origin = st.general.as_ref().map_or(0, |g| g.id);
            let msg = message(p.topic, p.payload, p.qos, p.retain, p.props, origin);
            shared.router.publish(msg);
            futures::future::ready(AckReason::Success).boxed()
        } else {
            debug!(conn = st.session.conn_id, topic = %p.topic, "publish denied by ACL");
            futures::future::ready(AckReason::NotAuthorized).boxed()
        };
        if p.qos != QoS::AtMostOnce {
            st.qos_pending += 1;
        }
        // Every publish, QoS 0 too, takes a place in the connection's queue until handled: the
        // queue's length is what stops reading at `max_pending_acks`.
        let (pkid, qos) = (p.pkid, p.qos);
        st.acks
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(done.map(move |r| (pkid, qos, r)).boxed());
        None
    }

    /// Encodes one delivery. Returns a reason if the session must close.
    pub(super) fn encode_delivery(
        &mut self,
        st: &mut State,
        d: Delivery,
    ) -> Option<DisconnectReason> {
        let (mut p, general) = match d {
            Delivery::Close(reason) => return Some(reason),
            Delivery::Publish {
                topic,
                payload,
                qos,
                retain,
            } => (
                Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    dup: false,
                    pkid: 0,
                    props: None,
                },
                None,
            ),
            Delivery::General(out) => {
                let msg = &out.msg;
                let remaining = match msg.expires {
                    Some(at) => match at.checked_duration_since(Instant::now()) {
                        // Expired: dropped (MQTT-3.3.2-5).
                        None => return None,
                        Some(left) if left.is_zero() => return None,
                        Some(left) => Some(left.as_secs().max(1) as u32),
                    },
                    None => None,
                };
                let acl = &self.shared.acl;
                if acl.has_deny() && !acl.can_read(&st.session.principal, &msg.topic) {
                    return None;
                }
                let props = if self.version == Version::V5
                    && (msg.props.is_some() || !out.sub_ids.is_empty())
                {
                    let mut p = msg.props.clone().unwrap_or_default();
                    // The remaining lifetime, counted down (MQTT-3.3.2-6).
                    p.message_expiry_interval = remaining;
                    p.subscription_identifiers = out.sub_ids.clone();
                    Some(p)
                } else {
                    None
                };
                let p = Publish {
                    topic: msg.topic.clone(),
                    payload: msg.payload.clone(),
                    qos: out.qos,
                    retain: out.retain,
                    dup: out.dup,
                    pkid: out.pkid,
                    props,
                };
                (p, Some(out))
            }
        };
        if p.qos == QoS::AtMostOnce {
            p.pkid = 0;
        } else if p.pkid == 0 || st.inflight.contains_key(&p.pkid) {
            p.pkid = st.alloc_pkid();
        }
        let (pkid, qos) = (p.pkid, p.qos);
        let before = self.wbuf.len();
        if let Err(e) = self.version.write(Outgoing::Publish(p), &mut self.wbuf) {
            warn!(error = %e, "could not encode a delivery");
            self.wbuf.truncate(before);
            return None;
        }
        if st
            .client_max_packet
            .is_some_and(|m| self.wbuf.len() - before > m)
        {
            // Over the client's Maximum Packet Size: not sent, as if delivered (MQTT-3.1.2-25).
            self.wbuf.truncate(before);
            return None;
        }
        st.session
            .msgs_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if qos != QoS::AtMostOnce {
            let f = match general {
                Some(mut out) => {
                    out.pkid = pkid;
                    Inflight::General(out)
                }
                None => Inflight::Claimed,
            };
            st.inflight.insert(pkid, f);
        }
        None
    }

    /// Publishes `will` for `session`, now or after its will delay (MQTT 3.1.3.2.2): the delay
    /// ends early with the session, and a client back in time cancels it.
    pub(super) fn publish_will(
        &self,
        session: &Session,
        will: Will,
        resumable: Option<(Arc<RSession>, u64)>,
        expiry: u32,
    ) {
        let shared = self.shared.clone();
        if is_claimed(&will.topic, shared.ext.claimed_prefix())
            || !valid_topic_name(&will.topic)
            || !shared.acl.can_publish(&session.principal, &will.topic)
        {
            debug!(conn = session.conn_id, topic = %will.topic, "will not published (not allowed)");
            return;
        }
        let origin = resumable.as_ref().map_or(0, |(g, _)| g.id);
        let delay = will.delay.min(expiry);
        // The message's expiry starts when it is published, after the delay.
        let build = move || {
            message(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                will.props,
                origin,
            )
        };
        match resumable {
            Some((rs, generation)) if delay > 0 => {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                    if rs.generation() == generation {
                        shared.router.publish(build());
                    }
                });
            }
            _ => {
                shared.router.publish(build());
            }
        }
    }
}
