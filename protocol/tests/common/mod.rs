//! Shared fixtures for the protocol tests: keys, a trust root and a signed release.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use shoal_protocol::chunking::{ChunkRef, LayerRef};
use shoal_protocol::encoding::encode;
use shoal_protocol::{
    Announcement, Digest, Envelope, ImageRef, ReleaseManifest, ReleaseSeq, RolloutPlan, Service,
    ServiceSettings, SigningKey, TrustRoot, UnixTime,
};

pub const NOW: UnixTime = UnixTime(1_800_000_000);
pub const FLEET: &str = "garden";
pub const ARCH: &str = "aarch64";

pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Root keys 1..=3 (threshold 2), release keys 11..=12 (threshold 1).
pub fn trust_root() -> TrustRoot {
    TrustRoot {
        fleet: FLEET.into(),
        version: 1,
        expires: NOW.plus_secs(365 * 86_400),
        root_keys: vec![
            key(1).public_key(),
            key(2).public_key(),
            key(3).public_key(),
        ],
        root_threshold: 2,
        release_keys: vec![key(11).public_key(), key(12).public_key()],
        release_threshold: 1,
    }
}

pub fn manifest(seq: u64) -> ReleaseManifest {
    let chunks: Vec<ChunkRef> = (0..4u8)
        .map(|i| ChunkRef {
            digest: Digest::of(&[i, seq as u8]),
            size: 200_000 + u32::from(i),
        })
        .collect();
    let mut services = BTreeMap::new();
    let mut environment = BTreeMap::new();
    environment.insert("GREETING".to_string(), "hello".to_string());
    services.insert(
        "main".to_string(),
        Service {
            image: ImageRef {
                config: b"{\"architecture\":\"arm64\"}".to_vec(),
                config_digest: Digest::of(b"{\"architecture\":\"arm64\"}"),
                layers: vec![LayerRef::from_chunks(chunks)],
            },
            settings: ServiceSettings {
                command: Some(vec!["/bin/sh".into(), "-c".into(), "sleep 1d".into()]),
                environment,
                ports: vec!["8080:80".into()],
                restart: Some("always".into()),
                ..ServiceSettings::default()
            },
        },
    );
    ReleaseManifest {
        fleet: FLEET.into(),
        sequence: ReleaseSeq(seq),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        created: NOW,
        expires: NOW.plus_secs(30 * 86_400),
        arch: ARCH.into(),
        device_type: "raspberrypi4-64".into(),
        services,
        rollout: RolloutPlan::canary(),
    }
}

/// A release signed by release key 11: (announcement envelope bytes, manifest envelope bytes).
pub fn signed_release(m: &ReleaseManifest) -> (Vec<u8>, Vec<u8>) {
    signed_release_by(m, &[&key(11)])
}

pub fn signed_release_by(m: &ReleaseManifest, keys: &[&SigningKey]) -> (Vec<u8>, Vec<u8>) {
    let manifest_bytes = encode(&Envelope::seal(m, keys));
    let ann = Announcement {
        fleet: m.fleet.clone(),
        sequence: m.sequence,
        arch: m.arch.clone(),
        manifest_digest: Digest::of(&manifest_bytes),
        manifest_size: manifest_bytes.len() as u64,
        release_bytes: m.unique_bytes(),
        expires: NOW.plus_secs(7 * 86_400),
    };
    (encode(&Envelope::seal(&ann, keys)), manifest_bytes)
}
