//! A PUBLISH built from arbitrary bytes survives encode then decode, in both versions.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

/// The broker's codec, compiled from its own files.
#[path = "../../broker/src/codec/mod.rs"]
mod codec;

use codec::probe;

fuzz_target!(|data: &[u8]| {
    probe::publish_round_trip(data);
});
