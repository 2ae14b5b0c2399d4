//! The checks rumqttc's decoders do not make, on one raw, complete frame from a client, before
//! it is decoded: fixed-header flags, packet ids, UTF-8 strings (valid, no U+0000), property
//! lists (each property known, allowed in that packet, at most once, with a legal value, and
//! inside its packet) and subscription options. Each failure is the spec's Malformed Packet
//! (0x81) or Protocol Error (0x82); the connection answers it. It reads, it never allocates.
//!
//! Only what a client sends is checked; server-only packets are refused by the connection.

use super::{skip, CodecError, Frame, Version};

type R<T> = Result<T, CodecError>;

fn malformed<T>(why: impl Into<String>) -> R<T> {
    Err(CodecError::Malformed(why.into()))
}

fn protocol<T>(why: impl Into<String>) -> R<T> {
    Err(CodecError::Protocol(why.into()))
}

/// Checks `bytes`, one whole frame described by `f`.
pub(super) fn check(v: Version, f: &Frame, bytes: &[u8]) -> R<()> {
    let mut b = &bytes[f.header_len..];
    let flags = f.byte1 & 0x0f;
    let fixed = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            malformed(format!(
                "packet type {} with reserved flags {flags:#06b} (MQTT-2.2.2-2)",
                f.kind()
            ))
        }
    };
    match f.kind() {
        1 => {
            fixed(0)?;
            connect(v, &mut b)?;
        }
        3 => publish(v, flags, &mut b)?,
        4 | 5 | 7 => {
            fixed(0)?;
            ack(v, &mut b)?;
        }
        6 => {
            fixed(2)?;
            ack(v, &mut b)?;
        }
        8 => {
            fixed(2)?;
            subscribe(v, &mut b)?;
        }
        10 => {
            fixed(2)?;
            unsubscribe(v, &mut b)?;
        }
        12 => {
            fixed(0)?;
            if !b.is_empty() {
                return malformed("PINGREQ with a body");
            }
        }
        14 => {
            fixed(0)?;
            if v == Version::V311 && !b.is_empty() {
                return malformed("3.1.1 DISCONNECT with a body");
            }
            if b.len() >= 2 {
                skip(&mut b, 1)?;
                props(&mut b, DISCONNECT)?;
                if !b.is_empty() {
                    return malformed("bytes after the DISCONNECT properties");
                }
            }
        }
        15 if v == Version::V5 => fixed(0)?,
        0 | 15 => return malformed("reserved packet type"),
        // Server-only packets (CONNACK, SUBACK, UNSUBACK, PINGRESP): the connection refuses them.
        _ => {}
    }
    Ok(())
}

fn u8_(b: &mut &[u8]) -> R<u8> {
    let Some((&x, rest)) = b.split_first() else {
        return malformed("field past the end of the packet");
    };
    *b = rest;
    Ok(x)
}

fn u16_(b: &mut &[u8]) -> R<u16> {
    Ok(u16::from_be_bytes([u8_(b)?, u8_(b)?]))
}

fn binary<'a>(b: &mut &'a [u8]) -> R<&'a [u8]> {
    let n = usize::from(u16_(b)?);
    if b.len() < n {
        return malformed("string or binary past the end of the packet");
    }
    let (x, rest) = b.split_at(n);
    *b = rest;
    Ok(x)
}

/// A UTF-8 string (MQTT 1.5.4): valid UTF-8 without U+0000.
fn string<'a>(b: &mut &'a [u8]) -> R<&'a str> {
    let raw = binary(b)?;
    match std::str::from_utf8(raw) {
        Ok(s) if !s.contains('\0') => Ok(s),
        Ok(_) => malformed("U+0000 in a UTF-8 string (MQTT-1.5.4-2)"),
        Err(_) => malformed("invalid UTF-8 (MQTT-1.5.4-1)"),
    }
}

fn varint(b: &mut &[u8]) -> R<u32> {
    let mut v = 0u32;
    for i in 0..4 {
        let x = u8_(b)?;
        v |= u32::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Ok(v);
        }
    }
    malformed("variable byte integer over four bytes")
}

fn pkid(b: &mut &[u8]) -> R<u16> {
    let id = u16_(b)?;
    if id == 0 {
        return protocol("packet identifier 0 (MQTT-2.2.1-3)");
    }
    Ok(id)
}

// Which properties each packet may carry (MQTT 2.2.2.2).
const CONNECT: &[u8] = &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16];
const WILL: &[u8] = &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26];
/// A client's PUBLISH: no subscription identifier (MQTT-3.3.4-6).
const PUBLISH: &[u8] = &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x03];
const ACK: &[u8] = &[0x1F, 0x26];
const SUBSCRIBE: &[u8] = &[0x0B, 0x26];
const UNSUBSCRIBE: &[u8] = &[0x26];
const DISCONNECT: &[u8] = &[0x11, 0x1F, 0x26, 0x1C];

/// Walks one property list, which must lie inside the packet.
fn props(b: &mut &[u8], allowed: &[u8]) -> R<()> {
    let len = varint(b)? as usize;
    if b.len() < len {
        return malformed("property length past the end of the packet");
    }
    let (mut p, rest) = b.split_at(len);
    *b = rest;
    let mut seen = 0u64;
    while !p.is_empty() {
        let id = u8_(&mut p)?;
        if id >= 64 || !allowed.contains(&id) {
            return protocol(format!("property {id:#04x} not allowed here"));
        }
        if id != 0x26 {
            if seen & (1 << id) != 0 {
                return protocol(format!("property {id:#04x} included twice"));
            }
            seen |= 1 << id;
        }
        match id {
            // One byte, 0 or 1.
            0x01 | 0x17 | 0x19 => {
                if u8_(&mut p)? > 1 {
                    return protocol(format!("property {id:#04x} must be 0 or 1"));
                }
            }
            // Receive Maximum (0 is a protocol error, MQTT-3.1.2... 3.3.2.3.2), Topic Alias
            // Maximum; Topic Alias 0 is answered with DISCONNECT 0x94 by the connection.
            0x21 => {
                if u16_(&mut p)? == 0 {
                    return protocol("Receive Maximum 0");
                }
            }
            0x22 | 0x23 => {
                u16_(&mut p)?;
            }
            0x27 => {
                let v =
                    u32::from_be_bytes([u8_(&mut p)?, u8_(&mut p)?, u8_(&mut p)?, u8_(&mut p)?]);
                if v == 0 {
                    return protocol("Maximum Packet Size 0");
                }
            }
            0x02 | 0x11 | 0x18 => skip(&mut p, 4)?,
            0x0B => {
                let v = varint(&mut p)?;
                if v == 0 {
                    return protocol("Subscription Identifier 0");
                }
            }
            0x08 => {
                let t = string(&mut p)?;
                if t.contains(['+', '#']) {
                    return protocol("wildcard in a Response Topic (MQTT-3.3.2-14)");
                }
            }
            0x03 | 0x15 | 0x1C | 0x1F => {
                string(&mut p)?;
            }
            0x09 | 0x16 => {
                binary(&mut p)?;
            }
            0x26 => {
                string(&mut p)?;
                string(&mut p)?;
            }
            _ => return protocol(format!("property {id:#04x} not allowed here")),
        }
    }
    Ok(())
}

fn connect(v: Version, b: &mut &[u8]) -> R<()> {
    let name = string(b)?;
    let level = u8_(b)?;
    let name_ok = matches!((name, level), ("MQTT", 4 | 5) | ("MQIsdp", 3));
    if !name_ok {
        return protocol(format!("protocol name {name:?} at level {level}"));
    }
    let flags = u8_(b)?;
    if flags & 0x01 != 0 {
        return malformed("CONNECT reserved flag set (MQTT-3.1.2-3)");
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if will_qos == 3 {
        return malformed("will QoS 3 (MQTT-3.1.2-14)");
    }
    if !will && (will_qos != 0 || will_retain) {
        return malformed("will QoS or retain without a will (MQTT-3.1.2-13)");
    }
    let (user, pass) = (flags & 0x80 != 0, flags & 0x40 != 0);
    if v == Version::V311 && pass && !user {
        return malformed("password without user name (MQTT-3.1.2-22)");
    }
    u16_(b)?;
    if v == Version::V5 {
        props(b, CONNECT)?;
    }
    string(b)?;
    if will {
        if v == Version::V5 {
            props(b, WILL)?;
        }
        let topic = string(b)?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return protocol("will topic is not a topic name");
        }
        binary(b)?;
    }
    if user {
        string(b)?;
    }
    if pass {
        binary(b)?;
    }
    if !b.is_empty() {
        return malformed("bytes after the end of CONNECT");
    }
    Ok(())
}

fn publish(v: Version, flags: u8, b: &mut &[u8]) -> R<()> {
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return malformed("PUBLISH with QoS 3 (MQTT-3.3.1-4)");
    }
    if qos == 0 && flags & 0x08 != 0 {
        return malformed("DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2)");
    }
    string(b)?;
    if qos > 0 {
        pkid(b)?;
    }
    if v == Version::V5 {
        props(b, PUBLISH)?;
    }
    Ok(())
}

fn ack(v: Version, b: &mut &[u8]) -> R<()> {
    u16_(b)?;
    match v {
        Version::V311 if !b.is_empty() => malformed("3.1.1 acknowledgement longer than 2 bytes"),
        Version::V311 => Ok(()),
        Version::V5 => {
            if b.is_empty() {
                return Ok(());
            }
            u8_(b)?;
            if !b.is_empty() {
                props(b, ACK)?;
            }
            if !b.is_empty() {
                return malformed("bytes after the acknowledgement's properties");
            }
            Ok(())
        }
    }
}

fn subscribe(v: Version, b: &mut &[u8]) -> R<()> {
    pkid(b)?;
    if v == Version::V5 {
        props(b, SUBSCRIBE)?;
    }
    if b.is_empty() {
        return protocol("SUBSCRIBE without a filter (MQTT-3.8.3-3)");
    }
    while !b.is_empty() {
        let filter = string(b)?;
        let opts = u8_(b)?;
        if opts & 0x03 == 3 {
            return malformed("subscription QoS 3");
        }
        match v {
            Version::V311 if opts & 0xfc != 0 => {
                return malformed("reserved subscription option bits (MQTT-3.8.3-4)")
            }
            Version::V5 if opts & 0xc0 != 0 => {
                return malformed("reserved subscription option bits (MQTT-3-8.3-5)")
            }
            Version::V5 if (opts >> 4) & 0x03 == 3 => {
                return protocol("retain handling 3");
            }
            Version::V5 if opts & 0x04 != 0 && filter.starts_with("$share/") => {
                return protocol("No Local on a shared subscription (MQTT-3.8.3-4)");
            }
            _ => {}
        }
    }
    Ok(())
}

fn unsubscribe(v: Version, b: &mut &[u8]) -> R<()> {
    pkid(b)?;
    if v == Version::V5 {
        props(b, UNSUBSCRIBE)?;
    }
    if b.is_empty() {
        return protocol("UNSUBSCRIBE without a filter (MQTT-3.10.3-2)");
    }
    while !b.is_empty() {
        string(b)?;
    }
    Ok(())
}
