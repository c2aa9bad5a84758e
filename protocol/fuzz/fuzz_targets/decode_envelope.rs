//! Any bytes as a signed envelope: decode must return a value or a typed error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::Envelope;
use shoal_protocol::encoding::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode::<Envelope>(data) {
        // Canonical: what decodes re-encodes to the same bytes.
        assert_eq!(encode(&env), data);
    }
});
