//! The router's state on disk, so persistent sessions and retained messages survive a restart
//! (as with Mosquitto's persistence: written at shutdown and every few seconds, read at start; a
//! `kill -9` loses what changed since the last write).
//!
//! One file, replaced atomically (written beside it, then renamed). Messages are stored as MQTT
//! 5.0 PUBLISH frames written and read by the codec, their message expiry interval set to what
//! remains, so every property survives unchanged. What is stored: retained messages, and for
//! each persistent session its identity, remaining expiry, subscriptions with their options and
//! identifiers, and its queue of undelivered QoS 1/2 messages. Live sessions are stored as
//! offline ones (their connections end with the process).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, BytesMut};
use parking_lot::Mutex;

use super::{Message, Outbound, RSession, RState, Router, Sub};
use crate::codec::{Incoming, Outgoing, Publish, QoS, RetainHandling, SubOptions, Version};
use crate::session::Principal;

const MAGIC: &[u8; 8] = b"MQIMGS1\n";

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn get_bytes(b: &mut &[u8]) -> anyhow::Result<Vec<u8>> {
    let n = get_u32(b)? as usize;
    if b.remaining() < n {
        bail!("truncated");
    }
    let v = b[..n].to_vec();
    b.advance(n);
    Ok(v)
}

fn get_str(b: &mut &[u8]) -> anyhow::Result<String> {
    Ok(String::from_utf8(get_bytes(b)?)?)
}

fn get_u32(b: &mut &[u8]) -> anyhow::Result<u32> {
    if b.remaining() < 4 {
        bail!("truncated");
    }
    Ok(b.get_u32())
}

fn get_u8(b: &mut &[u8]) -> anyhow::Result<u8> {
    if b.remaining() < 1 {
        bail!("truncated");
    }
    Ok(b.get_u8())
}

fn remaining_secs(expires: Option<Instant>, now: Instant) -> Option<u32> {
    expires.map(|e| e.saturating_duration_since(now).as_secs().max(1) as u32)
}

/// `msg` as a 5.0 PUBLISH frame at `qos` with `retain`.
fn put_message(b: &mut BytesMut, msg: &Message, qos: QoS, retain: bool, now: Instant) {
    let mut props = msg.props.clone();
    if let Some(left) = remaining_secs(msg.expires, now) {
        props
            .get_or_insert_with(Default::default)
            .message_expiry_interval = Some(left);
    }
    let p = Publish {
        topic: msg.topic.clone(),
        payload: msg.payload.clone(),
        qos,
        retain,
        dup: false,
        pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
        props,
    };
    let mut frame = BytesMut::new();
    let _ = Version::V5.write(Outgoing::Publish(p), &mut frame);
    b.put_u32(frame.len() as u32);
    b.put_slice(&frame);
}

fn get_message(b: &mut &[u8], now: Instant) -> anyhow::Result<Message> {
    let mut frame = BytesMut::from(&get_bytes(b)?[..]);
    let Incoming::Publish(p) = Version::V5.read(&mut frame, usize::MAX)? else {
        bail!("not a PUBLISH");
    };
    let expires = p
        .props
        .as_ref()
        .and_then(|x| x.message_expiry_interval)
        .map(|s| now + Duration::from_secs(u64::from(s)));
    Ok(Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        props: p.props,
        expires,
        origin: 0,
    })
}

fn opts_byte(o: &SubOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::Always => 0,
        RetainHandling::IfNew => 1,
        RetainHandling::Never => 2,
    };
    (o.qos as u8) | (u8::from(o.no_local) << 2) | (u8::from(o.retain_as_published) << 3) | (rh << 4)
}

fn opts_from(b: u8) -> SubOptions {
    SubOptions {
        qos: match b & 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        },
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::Always,
            1 => RetainHandling::IfNew,
            _ => RetainHandling::Never,
        },
    }
}

impl Router {
    /// The state worth keeping, encoded.
    pub fn snapshot(&self) -> Vec<u8> {
        let now = Instant::now();
        let mut b = BytesMut::new();
        b.put_slice(MAGIC);
        let retained = self.retained.all();
        b.put_u32(retained.len() as u32);
        for m in &retained {
            put_message(&mut b, m, m.qos, true, now);
        }
        let sessions: Vec<Arc<RSession>> = self.sessions.lock().values().cloned().collect();
        let mut body = BytesMut::new();
        let mut count = 0u32;
        for rs in sessions {
            let st = rs.state.lock();
            // A live session is kept for as long as its connection asked; an offline one for
            // what remains of it.
            let left = match st.offline_since {
                None => st.expiry.as_secs() as u32,
                Some(at) => st.expiry.saturating_sub(now.duration_since(at)).as_secs() as u32,
            };
            if st.gone || left == 0 {
                continue;
            }
            count += 1;
            body.put_u8(u8::from(rs.key.user.is_some()));
            put_str(&mut body, rs.key.user.as_deref().unwrap_or(""));
            put_str(&mut body, &rs.key.client_id);
            body.put_u32(left);
            body.put_u32(st.subs.len() as u32);
            for (filter, (opts, id)) in &st.subs {
                put_str(&mut body, filter);
                body.put_u8(opts_byte(opts));
                body.put_u32(id.unwrap_or(0) as u32);
            }
            let queue: Vec<&Outbound> = st.queue.iter().map(|b| &**b).collect();
            body.put_u32(queue.len() as u32);
            for out in queue {
                put_message(&mut body, &out.msg, out.qos, out.retain, now);
                body.put_u32(out.sub_ids.len() as u32);
                for id in &out.sub_ids {
                    body.put_u32(*id as u32);
                }
            }
        }
        b.put_u32(count);
        b.put_slice(&body);
        b.to_vec()
    }

    /// Loads a snapshot into an empty router: sessions come back offline.
    pub fn restore(&self, data: &[u8]) -> anyhow::Result<(usize, usize)> {
        let now = Instant::now();
        let mut b = data;
        if b.len() < MAGIC.len() || &b[..MAGIC.len()] != MAGIC {
            bail!("not a general-state file");
        }
        b.advance(MAGIC.len());
        let n = get_u32(&mut b)?;
        for _ in 0..n {
            let m = get_message(&mut b, now).context("retained message")?;
            if !m.expired() {
                self.retained.set(&Arc::new(m));
            }
        }
        let n = get_u32(&mut b)?;
        for _ in 0..n {
            let has_user = get_u8(&mut b)? == 1;
            let user = get_str(&mut b)?;
            let key = Principal {
                user: has_user.then_some(user),
                client_id: get_str(&mut b)?,
            };
            let left = get_u32(&mut b)?;
            let nsubs = get_u32(&mut b)?;
            let mut subs = HashMap::new();
            for _ in 0..nsubs {
                let filter = get_str(&mut b)?;
                let opts = opts_from(get_u8(&mut b)?);
                let id = get_u32(&mut b)? as usize;
                subs.insert(filter, (opts, (id != 0).then_some(id)));
            }
            let nq = get_u32(&mut b)?;
            let mut queue = VecDeque::new();
            for _ in 0..nq {
                let msg = get_message(&mut b, now)?;
                let nids = get_u32(&mut b)?;
                let mut sub_ids = Vec::new();
                for _ in 0..nids {
                    sub_ids.push(get_u32(&mut b)? as usize);
                }
                let (qos, retain) = (msg.qos, msg.retain);
                queue.push_back(Box::new(Outbound {
                    msg: Arc::new(msg),
                    qos,
                    retain,
                    dup: false,
                    pkid: 0,
                    sub_ids,
                }));
            }
            let rs = Arc::new(RSession {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                key: key.clone(),
                state: Mutex::new(RState {
                    live: None,
                    subs: subs.clone(),
                    queue,
                    dropped: 0,
                    expiry: Duration::from_secs(u64::from(left)),
                    offline_since: Some(now),
                    generation: 0,
                    gone: false,
                }),
            });
            {
                let mut trie = self.trie.write();
                for (filter, (opts, id)) in subs {
                    trie.insert(
                        &filter,
                        Sub {
                            session: rs.clone(),
                            opts,
                            id,
                        },
                    );
                }
            }
            self.sessions.lock().insert(key, rs);
        }
        Ok((self.sessions.lock().len(), self.retained.len()))
    }
}
