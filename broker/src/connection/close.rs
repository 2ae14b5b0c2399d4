//! Closing a connection: the DISCONNECT a 5.0 client is told (with the drain's Server Reference
//! when it is sent to another server), and, before a server-side close, answering the publishes
//! still being handled so nothing stored goes unacknowledged.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{next_ack, Conn, End, State};
use crate::codec::{AckReason, DisconnectReason, Outgoing, QoS};

/// Longest a server-side close waits for the publishes in progress to be handled.
const FINISH_PENDING: Duration = Duration::from_secs(5);

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Protocol-level close: tell a 5.0 client why, then end as abnormal (will is published).
    pub(super) async fn close_with(&mut self, reason: DisconnectReason) -> End {
        self.flush().await;
        self.send_now(Outgoing::Disconnect(reason)).await;
        End::Abnormal
    }

    pub(super) async fn close_with_server(&mut self, reason: DisconnectReason) -> End {
        self.flush().await;
        let farewell = self.shared.farewell(reason);
        self.send_now(farewell).await;
        End::Server
    }

    /// Queues the acknowledgement of a handled publish.
    pub(super) fn write_ack(&mut self, st: &mut State, pkid: u16, qos: QoS, reason: AckReason) {
        let ack = match qos {
            // A QoS 0 request is not acknowledged; it only held its place in the
            // connection's limit until it was handled.
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Outgoing::PubAck { pkid, reason }),
            QoS::ExactlyOnce => Some(Outgoing::PubRec { pkid, reason }),
        };
        if let Some(ack) = ack {
            st.qos_pending = st.qos_pending.saturating_sub(1);
            let _ = self.version.write(ack, &mut self.wbuf);
        }
    }

    /// Before a server-side close: waits (up to [`FINISH_PENDING`]) for the publishes being
    /// handled and queues their acknowledgements and what they put in the outbox (the replies),
    /// so a drained client is told about everything that was stored.
    pub(super) async fn finish_pending(&mut self, st: &mut State) {
        let deadline = Instant::now() + FINISH_PENDING;
        while st.acks.as_ref().is_some_and(|a| !a.is_empty()) {
            match tokio::time::timeout_at(deadline, next_ack(&mut st.acks)).await {
                Ok(Some((pkid, qos, reason))) => self.write_ack(st, pkid, qos, reason),
                _ => break,
            }
        }
        let mut rest = Vec::new();
        st.session.drain(usize::MAX, &mut rest);
        for d in rest {
            match d {
                d @ crate::session::Delivery::Publish { .. } => {
                    let _ = self.encode_delivery(st, d);
                }
                // General messages go back: the close hands them to the router's session.
                d @ crate::session::Delivery::General(_) => st.session.push_resumed(d),
                crate::session::Delivery::Close(_) => {}
            }
        }
    }
}
