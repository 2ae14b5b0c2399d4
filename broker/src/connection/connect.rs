//! The handshake of one connection: CONNECT read within the connect timeout, checked and
//! authenticated, the session registered (taking over or resuming an earlier one) and CONNACK
//! queued; or the refusal with its reason code. What it hands on is [`Accepted`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::{Conn, State, MAX_CLIENT_ID, TOPIC_ALIAS_MAX};
use crate::codec::{
    self, CodecError, ConnAck, ConnAckCode, Incoming, Outgoing, QoS, Version, Will,
};
use crate::extension::{AuthDecision, ConnectInfo};
use crate::session::{ConnMeta, Principal, Session};

/// What the handshake hands to the session phase.
pub(super) struct Accepted {
    pub(super) session: Arc<Session>,
    pub(super) state: State,
    /// Boxed: most connections have none, and those that do should not make every
    /// connection's task larger.
    pub(super) will: Option<Box<Will>>,
    pub(super) keep_alive: u16,
    pub(super) restored: Option<Vec<(String, QoS)>>,
}

/// Counts one CONNECT outcome.
fn count_connect(result: &'static str) {
    crate::metrics::get()
        .connects
        .get_or_create(&[("result", result)])
        .inc();
}

/// Is `id` a client id mqim accepts? Not `/`, `+`, `#` (they would widen ACL patterns and IM
/// topics), no control characters, at most [`MAX_CLIENT_ID`] bytes.
pub fn valid_client_id(id: &str) -> bool {
    id.len() <= MAX_CLIENT_ID && !id.contains(['/', '+', '#']) && !id.chars().any(char::is_control)
}
impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn read_connect(&mut self) -> Result<codec::Connect, CodecError> {
        loop {
            let sniffed = match codec::sniff_version(&self.rbuf) {
                Err(CodecError::UnsupportedVersion(level)) => {
                    // MQTT-3.1.2-2: CONNACK 0x01, then close.
                    let _ = self
                        .writer
                        .write_all(&codec::UNSUPPORTED_VERSION_CONNACK)
                        .await;
                    let _ = self.writer.flush().await;
                    return Err(CodecError::UnsupportedVersion(level));
                }
                other => other?,
            };
            if let Some(v) = sniffed {
                self.version = v;
                match v.read(&mut self.rbuf, self.shared.limits.max_packet_size) {
                    Ok(Incoming::Connect(c)) => return Ok(*c),
                    Ok(_) => {
                        return Err(CodecError::Malformed("first packet is not CONNECT".into()))
                    }
                    Err(CodecError::Incomplete(n)) => self.rbuf.reserve(n),
                    Err(e) => return Err(e),
                }
            }
            let n = self
                .reader
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| CodecError::Malformed(e.to_string()))?;
            if n == 0 {
                return Err(CodecError::Malformed("closed".into()));
            }
        }
    }
    async fn refuse(&mut self, code: ConnAckCode) {
        self.send_now(Outgoing::ConnAck(Box::new(ConnAck::refuse(code))))
            .await;
    }

    /// Reads CONNECT, authenticates, registers the session and queues CONNACK. `None` when the
    /// client was refused or went away.
    pub(super) async fn handshake(&mut self) -> Option<Box<Accepted>> {
        let peer = self.peer;
        let mut connect =
            match tokio::time::timeout(self.shared.limits.connect_timeout, self.read_connect())
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "connection closed before a valid CONNECT");
                    return None;
                }
                Err(_) => {
                    debug!(%peer, "no CONNECT in time");
                    return None;
                }
            };
        let shared = self.shared.clone();
        let conn_id = shared.next_conn_id();
        let mut client_id = connect.client_id.clone();
        let mut assigned = None;
        if client_id.is_empty() {
            // 3.1.1: an empty id only with clean session 1 (MQTT-3.1.3-8); 5.0: the server
            // assigns one and says which (MQTT-3.1.3-7, 3.2.2.3.7).
            if self.version == Version::V311 && !connect.clean_start {
                count_connect("bad_client_id");
                self.refuse(ConnAckCode::BadClientId).await;
                return None;
            }
            client_id = shared.assign_client_id(conn_id);
            if self.version == Version::V5 {
                assigned = Some(client_id.clone());
            }
        } else if !valid_client_id(&client_id) {
            debug!(%peer, "refused: client id not allowed");
            count_connect("bad_client_id");
            self.refuse(ConnAckCode::BadClientId).await;
            return None;
        }
        let info = ConnectInfo {
            client_id: &client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            peer: self.peer,
        };
        let user = match shared.ext.authenticate(&info).await {
            AuthDecision::User(u) => Some(u),
            AuthDecision::Anonymous if shared.limits.allow_anonymous => None,
            AuthDecision::Anonymous => {
                info!(peer = %self.peer, %client_id, "refused: no credentials and anonymous access is off");
                count_connect("not_authorized");
                self.refuse(ConnAckCode::NotAuthorized).await;
                return None;
            }
            AuthDecision::Denied(why) => {
                info!(peer = %self.peer, %client_id, reason = %why, "refused: not authorized");
                count_connect("not_authorized");
                self.refuse(ConnAckCode::NotAuthorized).await;
                return None;
            }
            AuthDecision::Banned(why) => {
                info!(peer = %self.peer, %client_id, reason = %why, "refused: banned");
                count_connect("banned");
                self.refuse(ConnAckCode::Banned).await;
                return None;
            }
        };
        count_connect("ok");
        let principal = Principal { user, client_id };
        let session = Arc::new(
            Session::new(
                conn_id,
                principal.clone(),
                self.version,
                shared.limits.outbox_limit,
            )
            .with_meta(ConnMeta {
                peer,
                transport: self.transport,
                keep_alive: connect.keep_alive,
                connected_at: mqim_im_plugin::now_ms(),
            }),
        );
        // How long the session outlives the connection: 3.1.1 clean_session=0 gets the
        // configured maximum; 5.0 its session expiry interval, capped by it.
        let max_expiry = u32::try_from(shared.limits.session_expiry.as_secs()).unwrap_or(u32::MAX);
        let (expiry, announced) = match self.version {
            Version::V311 if !connect.clean_start => (max_expiry, None),
            Version::V311 => (0, None),
            Version::V5 => {
                let asked = connect.session_expiry.unwrap_or(0);
                let e = asked.min(max_expiry);
                (e, (e != asked).then_some(e))
            }
        };
        let persistent = expiry > 0;
        let restored = shared
            .sessions
            .open(&session, connect.clean_start, persistent);
        let mut general = shared
            .router
            .attach(&principal, &session, connect.clean_start);
        if general.is_none() && persistent && connect.will.as_ref().is_some_and(|w| w.delay > 0) {
            // A delayed will needs a session to be cancelled by the client's return.
            general = Some(shared.router.session(&session));
        }
        if let Some(g) = &general {
            g.set_expiry(expiry);
        }
        let ack = ConnAck {
            session_present: restored.is_some() || general.is_some(),
            code: ConnAckCode::Success,
            max_packet_size: shared.limits.max_packet_size as u32,
            assigned_client_id: assigned,
            receive_max: shared.receive_max(),
            topic_alias_max: TOPIC_ALIAS_MAX,
            session_expiry: announced,
        };
        self.version
            .write(Outgoing::ConnAck(Box::new(ack)), &mut self.wbuf)
            .ok();
        let keep_alive = connect.keep_alive;
        // Only the will is needed from here on; the credentials are not kept for the session.
        let will = connect.will.take().map(Box::new);
        drop(connect.password.take());
        let state = State {
            session: session.clone(),
            general,
            next_pkid: 0,
            inflight: HashMap::new(),
            max_inflight: usize::from(connect.receive_maximum.unwrap_or(u16::MAX))
                .min(shared.limits.max_inflight),
            client_max_packet: connect.max_packet_size.map(|m| m as usize),
            qos2_in: HashSet::new(),
            acks: None,
            qos_pending: 0,
            aliases: None,
            expiry,
        };
        // Boxed so the caller's future holds a pointer, not the session state.
        Some(Box::new(Accepted {
            session,
            state,
            will,
            keep_alive,
            restored,
        }))
    }
}
