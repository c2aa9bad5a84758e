//! Any bytes as a manifest fetched for an announcement that names exactly those bytes, so the
//! fuzzer reaches the envelope and manifest decoders behind the digest check.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::verify::{self, Context};
use shoal_protocol::{Announcement, Digest, ReleaseSeq, UnixTime};

fuzz_target!(|data: &[u8]| {
    let trust = shoal_protocol_fuzz::trust_root();
    let ann = Announcement {
        fleet: "f".into(),
        sequence: ReleaseSeq(1),
        arch: "amd64".into(),
        manifest_digest: Digest::of(data),
        manifest_size: data.len() as u64,
        release_bytes: 0,
        expires: UnixTime(u64::MAX),
    };
    let ctx = Context {
        trust: &trust,
        arch: "amd64",
        highest_seen: None,
        now: UnixTime(1),
    };
    let _ = verify::manifest(&ctx, &ann, data);
});
