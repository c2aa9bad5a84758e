//! Signed test fleets and releases, for unit tests, the simulator and the daemon's tests
//! (feature `testing`).
//!
//! A [`TestFleet`] holds a root key and a release key (both from fixed seeds), the trust root
//! they make, and builds signed releases, announcements and wave control messages. Chunks made
//! by [`synthetic_chunks`] have digests but no bytes: enough for the core, which never sees chunk
//! bytes; a driver that needs real bytes builds layers with [`shoal_protocol::chunking`] and
//! passes them to [`TestFleet::release_from_layers`].

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_protocol::{
    Announcement, ChunkRef, Digest, Envelope, ImageRef, LayerRef, ReleaseManifest, ReleaseSeq,
    RolloutPlan, Service, ServiceSettings, SigningKey, TrustRoot, UnixTime, WaveAction,
    WaveControl, encoding,
};

use crate::core::{Config, GossipMessage};

/// The architecture test releases are built for.
pub const TEST_ARCH: &str = "amd64";
/// Wall-clock time test fleets start at.
pub const TEST_EPOCH: UnixTime = UnixTime(1_800_000_000);
/// Chunks per layer in test releases.
pub const CHUNKS_PER_LAYER: usize = 1024;

/// A fleet with its keys and trust root.
#[derive(Debug, Clone)]
pub struct TestFleet {
    /// The fleet's name.
    pub fleet: String,
    /// The root key.
    pub root_key: SigningKey,
    /// The release key.
    pub release_key: SigningKey,
    /// The trust root: version 1, one root key, one release key, valid for ten years.
    pub trust: TrustRoot,
}

/// A signed release and what announces it.
#[derive(Debug, Clone)]
pub struct TestRelease {
    /// The manifest.
    pub manifest: ReleaseManifest,
    /// Its signed envelope bytes (what [`crate::core::Input::ManifestFetched`] carries).
    pub manifest_bytes: Arc<[u8]>,
    /// The announcement.
    pub announcement: Announcement,
    /// The announcement as a gossip message ([`GossipMessage::encode`]d).
    pub announcement_gossip: Vec<u8>,
    /// The release's unique chunks (bit `i` of a bitfield is `chunks[i]`).
    pub chunks: Vec<ChunkRef>,
}

/// `count` chunks of `size` bytes named by content ids `first..first + count`: releases that
/// share ids share chunks.
pub fn synthetic_chunks(first: u64, count: u32, size: u32) -> Vec<ChunkRef> {
    (0..u64::from(count))
        .map(|i| ChunkRef {
            digest: Digest::of(&(first + i).to_le_bytes()),
            size,
        })
        .collect()
}

/// The key of test device `n`.
pub fn device_key(n: u64) -> SigningKey {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&n.to_le_bytes());
    secret[31] = 0xd5;
    SigningKey::from_bytes(&secret)
}

impl TestFleet {
    /// A fleet named `fleet` with fixed keys.
    pub fn new(fleet: &str) -> TestFleet {
        let root_key = SigningKey::from_bytes(&[0x52; 32]);
        let release_key = SigningKey::from_bytes(&[0x4c; 32]);
        let trust = TrustRoot {
            fleet: fleet.to_string(),
            version: 1,
            expires: TEST_EPOCH.plus_secs(10 * 365 * 86_400),
            root_keys: vec![root_key.public_key()],
            root_threshold: 1,
            release_keys: vec![release_key.public_key()],
            release_threshold: 1,
        };
        TestFleet {
            fleet: fleet.to_string(),
            root_key,
            release_key,
            trust,
        }
    }

    /// A node config for device `n` of this fleet (architecture [`TEST_ARCH`]).
    pub fn config(&self, n: u64) -> Config {
        Config::new(device_key(n), self.trust.clone(), TEST_ARCH)
    }

    /// A release of `chunks` (split into layers of [`CHUNKS_PER_LAYER`]), expiring a day after
    /// [`TEST_EPOCH`].
    pub fn release(&self, sequence: u64, chunks: Vec<ChunkRef>, plan: RolloutPlan) -> TestRelease {
        let layers = chunks
            .chunks(CHUNKS_PER_LAYER)
            .map(|c| LayerRef::from_chunks(c.to_vec()))
            .collect();
        self.release_from_layers(sequence, layers, plan, TEST_EPOCH.plus_secs(86_400))
    }

    /// A release of one service, `main`, with these layers.
    pub fn release_from_layers(
        &self,
        sequence: u64,
        layers: Vec<LayerRef>,
        plan: RolloutPlan,
        expires: UnixTime,
    ) -> TestRelease {
        let config = br#"{"architecture":"amd64"}"#.to_vec();
        let mut services = BTreeMap::new();
        services.insert(
            "main".to_string(),
            Service {
                image: ImageRef {
                    config_digest: Digest::of(&config),
                    config,
                    layers,
                },
                settings: ServiceSettings::default(),
            },
        );
        let manifest = ReleaseManifest {
            fleet: self.fleet.clone(),
            sequence: ReleaseSeq(sequence),
            commit: format!("{sequence:040x}"),
            created: TEST_EPOCH,
            expires,
            arch: TEST_ARCH.to_string(),
            device_type: "generic-amd64".to_string(),
            services,
            rollout: plan,
        };
        self.release_of(manifest)
    }

    /// Signs `manifest` with the release key and announces it.
    pub fn release_of(&self, manifest: ReleaseManifest) -> TestRelease {
        let manifest_bytes: Arc<[u8]> =
            encoding::encode(&Envelope::seal(&manifest, &[&self.release_key])).into();
        let chunks = manifest.unique_chunks();
        let announcement = Announcement {
            fleet: self.fleet.clone(),
            sequence: manifest.sequence,
            arch: manifest.arch.clone(),
            manifest_digest: Digest::of(&manifest_bytes),
            manifest_size: manifest_bytes.len() as u64,
            release_bytes: chunks.iter().map(|c| u64::from(c.size)).sum(),
            expires: manifest.expires,
        };
        let announcement_gossip = self.announce(&announcement);
        TestRelease {
            manifest,
            manifest_bytes,
            announcement,
            announcement_gossip,
            chunks,
        }
    }

    /// `ann` signed by the release key, as a gossip message.
    pub fn announce(&self, ann: &Announcement) -> Vec<u8> {
        GossipMessage::Announcement(encoding::encode(&Envelope::seal(ann, &[&self.release_key])))
            .encode()
    }

    /// A signed wave control message for `release`, as a gossip message.
    pub fn wave_control(&self, release: &TestRelease, counter: u64, action: WaveAction) -> Vec<u8> {
        let wc = WaveControl {
            fleet: self.fleet.clone(),
            sequence: release.announcement.sequence,
            manifest_digest: release.announcement.manifest_digest,
            counter,
            action,
            issued_at: TEST_EPOCH,
        };
        GossipMessage::WaveControl(encoding::encode(&Envelope::seal(&wc, &[&self.release_key])))
            .encode()
    }
}
