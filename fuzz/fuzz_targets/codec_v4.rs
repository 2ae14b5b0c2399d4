//! Arbitrary bytes after CONNECT, decoded as MQTT 3.1.1 packets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqim_broker::codec::{probe, Version};

fuzz_target!(|data: &[u8]| {
    probe::decode_all(Version::V311, data);
});
