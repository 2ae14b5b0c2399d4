//! A hand-built MQTT client over a raw socket, for what real client libraries will not send:
//! malformed packets, forbidden properties, exact byte sequences.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{Broker, WAIT};

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// A packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// What CONNECT carries.
#[derive(Clone, Debug, Default)]
pub struct ConnectOpts<'a> {
    /// 4 (3.1.1) or 5.
    pub level: u8,
    pub client_id: &'a str,
    pub clean: bool,
    pub keep_alive: u16,
    pub creds: Option<(&'a str, &'a str)>,
    /// Topic, payload, QoS; raw 5.0 will properties.
    pub will: Option<(&'a str, &'a str, u8)>,
    pub will_props: Vec<u8>,
    /// Raw 5.0 CONNECT properties.
    pub props: Vec<u8>,
}

pub fn connect_packet(o: &ConnectOpts) -> Vec<u8> {
    let mut flags = 0u8;
    if o.clean {
        flags |= 0x02;
    }
    if let Some((_, _, qos)) = o.will {
        flags |= 0x04 | (qos << 3);
    }
    if o.creds.is_some() {
        flags |= 0x80 | 0x40;
    }
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(o.level);
    body.push(flags);
    body.extend_from_slice(&o.keep_alive.to_be_bytes());
    if o.level == 5 {
        varint(&mut body, o.props.len());
        body.extend_from_slice(&o.props);
    }
    put_str(&mut body, o.client_id.as_bytes());
    if let Some((topic, msg, _)) = o.will {
        if o.level == 5 {
            varint(&mut body, o.will_props.len());
            body.extend_from_slice(&o.will_props);
        }
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, msg.as_bytes());
    }
    if let Some((user, pass)) = o.creds {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
    }
    packet(0x10, &body)
}

/// A PUBLISH; `props` are raw 5.0 properties (`None` for 3.1.1).
pub fn publish_packet(
    topic: &str,
    qos: u8,
    pkid: u16,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if let Some(p) = props {
        varint(&mut body, p.len());
        body.extend_from_slice(p);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// A SUBSCRIBE of one filter with raw options; 5.0 gets an empty property list.
pub fn subscribe_packet(v5: bool, pkid: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    put_str(&mut body, filter.as_bytes());
    body.push(options);
    packet(0x82, &body)
}

/// A raw connection.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub async fn open(b: &Broker) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", b.mqtt_port))
            .await
            .unwrap();
        Raw { s }
    }

    /// Connects and returns the CONNACK body.
    pub async fn connect(b: &Broker, o: &ConnectOpts<'_>) -> (Raw, Vec<u8>) {
        let mut r = Raw::open(b).await;
        r.send(&connect_packet(o)).await;
        let (kind, body) = r.expect().await;
        assert_eq!(kind, 0x20, "expected CONNACK, got {kind:#x} {body:02x?}");
        (r, body)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// Reads one packet: `Ok(None)` at EOF.
    pub async fn read(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let first = match self.s.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = self.s.read_u8().await?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.s.read_exact(&mut body).await?;
        Ok(Some((first, body)))
    }

    /// The next packet; panics on EOF or timeout.
    pub async fn expect(&mut self) -> (u8, Vec<u8>) {
        timeout(WAIT, self.read())
            .await
            .expect("no packet in time")
            .expect("read")
            .expect("connection closed")
    }

    /// Reads until the server closes; returns the packets it sent before closing.
    pub async fn until_closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        loop {
            match timeout(WAIT, self.read()).await.expect("still open") {
                Ok(Some(p)) => got.push(p),
                Ok(None) | Err(_) => return got,
            }
        }
    }

    /// The next packet within `d`, if any.
    pub async fn try_expect(&mut self, d: Duration) -> Option<(u8, Vec<u8>)> {
        timeout(d, self.read())
            .await
            .ok()
            .and_then(|r| r.ok().flatten())
    }
}

/// A config file that lets every user and anonymous client read and write every general topic;
/// `extra` is appended (more rules, `[mqtt]` settings).
pub fn open_acl_broker(extra: &str) -> (Broker, tempfile::TempDir) {
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("mqim.toml");
    let text = format!(
        "{extra}\n[[acl]]\nuser = \"*\"\ntopic = \"#\"\naccess = \"readwrite\"\n\n\
         [[acl]]\nuser = \"anonymous\"\ntopic = \"#\"\naccess = \"readwrite\"\n"
    );
    std::fs::write(&path, text).unwrap();
    let b = Broker::start_with(&[
        ("MQIM_CONFIG", path.to_str().unwrap()),
        ("MQIM_ALLOW_ANONYMOUS", "true"),
    ]);
    (b, conf)
}
