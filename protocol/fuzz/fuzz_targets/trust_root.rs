//! Any bytes as a trust-root rotation offered to a device.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::encoding::decode;
use shoal_protocol::{Envelope, TrustRoot};

fuzz_target!(|data: &[u8]| {
    let trust = shoal_protocol_fuzz::trust_root();
    if let Ok(env) = decode::<Envelope>(data) {
        let _ = trust.verify_successor(&env);
        let _ = TrustRoot::open_initial(&env);
    }
});
