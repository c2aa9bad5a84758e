//! Any bytes as a gossiped announcement or wave control message, checked against a trust root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::verify::{self, Context};
use shoal_protocol::{SigningKey, TrustRoot, UnixTime};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let trust = TrustRoot {
        fleet: "f".into(),
        version: 1,
        expires: UnixTime(u64::MAX),
        root_keys: vec![key.public_key()],
        root_threshold: 1,
        release_keys: vec![key.public_key()],
        release_threshold: 1,
    };
    let ctx = Context { trust: &trust, arch: "amd64", highest_seen: None, now: UnixTime(1) };
    let _ = verify::announcement(&ctx, data);
    let _ = verify::wave_control(&trust, data, UnixTime(1));
});
