//! Any bytes as a trust-root rotation offered to a device.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::encoding::decode;
use shoal_protocol::{Envelope, SigningKey, TrustRoot, UnixTime};

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
    if let Ok(env) = decode::<Envelope>(data) {
        let _ = trust.verify_successor(&env);
        let _ = TrustRoot::open_initial(&env);
    }
});
