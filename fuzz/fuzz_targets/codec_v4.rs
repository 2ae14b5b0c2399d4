//! Arbitrary bytes after CONNECT, decoded as MQTT 3.1.1 packets.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

/// The broker's codec, compiled from its own files.
#[path = "../../broker/src/codec/mod.rs"]
mod codec;

use codec::{probe, Version};

fuzz_target!(|data: &[u8]| {
    probe::decode_all(Version::V311, data);
});
