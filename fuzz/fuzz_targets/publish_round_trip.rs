//! A PUBLISH built from arbitrary bytes survives encode then decode, in both versions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqim_broker::codec::probe;

fuzz_target!(|data: &[u8]| {
    probe::publish_round_trip(data);
});
