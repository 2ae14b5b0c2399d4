//! The MQTT 5.0 subset the drain scenario's clients need, on top of `client.rs`'s frame reader:
//! CONNECT and SUBSCRIBE at protocol level 5 (no properties), CONNACK and SUBACK reason codes,
//! and the server's DISCONNECT read for its reason code and Server Reference (property 0x1C),
//! which is where a draining mqim sends its clients (0x9C "use another server").

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::client::{
    exchange, put_remaining_length, put_str, Answers, ConnectError, ConnectOptions, Connection,
};

/// Packet type of DISCONNECT (upper nibble).
const DISCONNECT: u8 = 14;
/// Property identifiers a server's DISCONNECT may carry.
const SESSION_EXPIRY: u8 = 0x11;
const REASON_STRING: u8 = 0x1F;
const USER_PROPERTY: u8 = 0x26;
const SERVER_REFERENCE: u8 = 0x1C;

/// How an established connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server sent DISCONNECT with this reason code and, maybe, a Server Reference.
    Disconnect {
        reason: u8,
        server_reference: Option<String>,
    },
    /// The socket closed (or failed) without a DISCONNECT.
    Closed,
}

/// Appends a CONNECT at protocol level 5 (clean start, no properties, no will).
fn encode_connect_v5(buf: &mut BytesMut, o: &ConnectOptions<'_>) {
    let mut flags = 0b0000_0010u8; // clean start
                                   // "MQTT" + level + flags + keep alive + properties length (0), then the client id.
    let mut len = 10 + 1 + 2 + o.client_id.len();
    if let Some(u) = o.username {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = o.password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    buf.put_u8(0x10);
    put_remaining_length(buf, len);
    put_str(buf, b"MQTT");
    buf.put_u8(5);
    buf.put_u8(flags);
    buf.put_u16(o.keep_alive_secs);
    buf.put_u8(0);
    put_str(buf, o.client_id.as_bytes());
    for s in [o.username, o.password].into_iter().flatten() {
        put_str(buf, s.as_bytes());
    }
}

/// Appends a level-5 SUBSCRIBE for one filter at QoS 1 (no properties).
fn encode_subscribe_v5(buf: &mut BytesMut, pkid: u16, topic: &str) {
    buf.put_u8(0x82);
    put_remaining_length(buf, 2 + 1 + 2 + topic.len() + 1);
    buf.put_u16(pkid);
    buf.put_u8(0);
    put_str(buf, topic.as_bytes());
    buf.put_u8(1);
}

/// A variable byte integer at `b[*at..]`, advancing `at`.
fn var_int(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    for shift in 0..4 {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A length-prefixed UTF-8 string at `b[*at..]`, advancing `at`.
fn string(b: &[u8], at: &mut usize) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*b.get(*at)?, *b.get(*at + 1)?]));
    let s = b.get(*at + 2..*at + 2 + len)?;
    *at += 2 + len;
    String::from_utf8(s.to_vec()).ok()
}

/// The reason code and Server Reference of a DISCONNECT body (an empty body is 0x00).
pub fn parse_disconnect(body: &[u8]) -> Ending {
    let Some(&reason) = body.first() else {
        return Ending::Disconnect {
            reason: 0,
            server_reference: None,
        };
    };
    let mut server_reference = None;
    let mut at = 1;
    if let Some(len) = var_int(body, &mut at) {
        let end = (at + len).min(body.len());
        while at < end {
            let id = body[at];
            at += 1;
            let ok = match id {
                SERVER_REFERENCE => string(body, &mut at).map(|s| server_reference = Some(s)),
                REASON_STRING => string(body, &mut at).map(drop),
                USER_PROPERTY => {
                    string(body, &mut at).and_then(|_| string(body, &mut at).map(drop))
                }
                SESSION_EXPIRY => {
                    at += 4;
                    Some(())
                }
                _ => None,
            };
            if ok.is_none() {
                break;
            }
        }
    }
    Ending::Disconnect {
        reason,
        server_reference,
    }
}

/// TCP connect, level-5 CONNECT, CONNACK, SUBSCRIBE QoS 1 to `topic`, SUBACK; within `timeout`.
pub async fn connect_and_subscribe_v5(
    addr: SocketAddr,
    src: Option<IpAddr>,
    opts: &ConnectOptions<'_>,
    topic: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    tokio::time::timeout(timeout, handshake(addr, src, opts, topic))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn handshake(
    addr: SocketAddr,
    src: Option<IpAddr>,
    opts: &ConnectOptions<'_>,
    topic: &str,
) -> Result<Connection, ConnectError> {
    let mut connect = BytesMut::with_capacity(128 + opts.password.map_or(0, str::len));
    encode_connect_v5(&mut connect, opts);
    let mut subscribe = BytesMut::with_capacity(16 + topic.len());
    encode_subscribe_v5(&mut subscribe, 1, topic);
    // 5.0: CONNACK's reason code is its second byte; SUBACK's follows the packet id and the
    // properties (length first).
    let answers = Answers {
        connack: |b| b.get(1).copied(),
        suback: |b| {
            let mut at = 2;
            let props = var_int(b, &mut at)?;
            b.get(at + props).copied()
        },
    };
    exchange(addr, src, &connect, &subscribe, &answers).await
}

impl Connection {
    /// Holds an idle level-5 connection (PINGREQ every `ping_every`) until the server ends it;
    /// says how.
    pub async fn until_ended(mut self, ping_every: Duration) -> Ending {
        let mut next_ping = tokio::time::Instant::now() + ping_every;
        loop {
            tokio::select! {
                r = self.reader.next(&mut self.stream) => match r {
                    Ok(Some(f)) if f.kind() == DISCONNECT => return parse_disconnect(&f.body),
                    Ok(Some(_)) => self.reader.shrink(),
                    Ok(None) | Err(_) => return Ending::Closed,
                },
                _ = tokio::time::sleep_until(next_ping) => {
                    if self.stream.write_all(&crate::client::PINGREQ_BYTES).await.is_err() {
                        return Ending::Closed;
                    }
                    next_ping += ping_every;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_disconnect_yields_its_reason_and_server_reference() {
        // 0x9C, properties: reason string "bye", Server Reference "127.0.0.1:1884".
        let mut body = vec![0x9c];
        let props: Vec<u8> = [
            vec![REASON_STRING, 0, 3],
            b"bye".to_vec(),
            vec![SERVER_REFERENCE, 0, 14],
            b"127.0.0.1:1884".to_vec(),
        ]
        .concat();
        body.push(props.len() as u8);
        body.extend(props);
        assert_eq!(
            parse_disconnect(&body),
            Ending::Disconnect {
                reason: 0x9c,
                server_reference: Some("127.0.0.1:1884".into())
            }
        );
        assert_eq!(
            parse_disconnect(&[0x8b]),
            Ending::Disconnect {
                reason: 0x8b,
                server_reference: None
            }
        );
    }
}
