//! Any bytes as a gossiped announcement or wave control message, checked against a trust root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::UnixTime;
use shoal_protocol::verify::{self, Context};

fuzz_target!(|data: &[u8]| {
    let trust = shoal_protocol_fuzz::trust_root();
    let ctx = Context {
        trust: &trust,
        arch: "amd64",
        highest_seen: None,
        now: UnixTime(1),
    };
    let _ = verify::announcement(&ctx, data);
    let _ = verify::wave_control(&trust, data, UnixTime(1));
});
