//! Any bytes as each small message type.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::{Announcement, ReleaseManifest, StatusReport, WaveControl};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode::<Announcement>(data) {
        assert_eq!(encode(&v), data);
    }
    if let Ok(v) = decode::<WaveControl>(data) {
        assert_eq!(encode(&v), data);
    }
    if let Ok(v) = decode::<StatusReport>(data) {
        assert_eq!(encode(&v), data);
    }
    if let Ok(v) = decode::<ReleaseManifest>(data) {
        assert_eq!(encode(&v), data);
    }
    let _ = shoal_protocol::verify::status_report(data);
});
