//! Fixtures shared by the fuzz targets.

use shoal_protocol::{SigningKey, TrustRoot, UnixTime};

/// A one-key trust root for fleet `f` that never expires.
pub fn trust_root() -> TrustRoot {
    let key = SigningKey::from_bytes(&[7; 32]);
    TrustRoot {
        fleet: "f".into(),
        version: 1,
        expires: UnixTime(u64::MAX),
        root_keys: vec![key.public_key()],
        root_threshold: 1,
        release_keys: vec![key.public_key()],
        release_threshold: 1,
    }
}
