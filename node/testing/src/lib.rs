//! # shoal-testing: signed test fleets and releases
//!
//! Shared by the core's and the daemon's tests, the simulator (whose fleets are test fleets) and
//! the end-to-end tests. With the `daemon` feature, [`TestPayload::seed`] puts a release into a
//! running daemon's store.
//!
//! A [`TestFleet`] holds a root key and a release key (both from fixed seeds), the trust root
//! they make, and builds signed releases, announcements and wave control messages. Chunks made
//! by [`synthetic_chunks`] have digests but no bytes: enough for the core, which never sees chunk
//! bytes; a driver that needs real bytes builds layers with [`shoal_protocol::chunking`] and
//! passes them to [`TestFleet::release_from_layers`].
//!
//! Helpers shared by several crates' tests: [`engine`] (is there a Docker Engine, the base
//! image), [`wait`] (bounded polling), [`pseudo_random`] payloads, and with the `daemon` feature
//! [`daemon`] (the test clock, logs).

#[cfg(feature = "daemon")]
pub mod daemon;
pub mod engine;
pub mod skip;
pub mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_protocol::{
    Announcement, ChunkParams, ChunkRef, Digest, Envelope, ImageRef, LayerRef, ReleaseManifest,
    ReleaseSeq, RolloutPlan, Service, ServiceSettings, SigningKey, TrustRoot, UnixTime, WaveAction,
    WaveControl, chunking, encoding,
};

use shoal_node_core::{Config, GossipMessage};

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
    /// Its signed envelope bytes (what [`shoal_node_core::Input::ManifestFetched`] carries).
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

/// `len` pseudo-random bytes from `seed` (xorshift64): incompressible test payloads that are
/// the same on every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A signed release over real bytes: what a daemon test seeds into an origin.
#[derive(Debug, Clone)]
pub struct TestPayload {
    /// The signed release.
    pub release: TestRelease,
    /// Its chunks, in order, with their bytes.
    pub blobs: Vec<(ChunkRef, Vec<u8>)>,
}

impl TestPayload {
    /// The release's size in bytes (the sum of its chunks).
    pub fn bytes(&self) -> u64 {
        self.release.announcement.release_bytes
    }

    /// The signed announcement envelope (the gossip message without its kind byte), as
    /// `shoal_node::daemon::Handle::seed` takes it.
    pub fn announcement_envelope(&self) -> Vec<u8> {
        self.release.announcement_gossip[1..].to_vec()
    }

    /// Puts every chunk and the manifest into `origin`'s store and seeds the release.
    #[cfg(feature = "daemon")]
    pub async fn seed(
        &self,
        origin: &shoal_node::daemon::Handle,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        for (_, bytes) in &self.blobs {
            origin.store().put_bytes(bytes)?;
        }
        origin.store().put_bytes(&self.release.manifest_bytes)?;
        origin
            .seed(
                self.announcement_envelope(),
                self.release.manifest_bytes.clone(),
            )
            .await?;
        Ok(())
    }
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

    /// Release `sequence` over `len` pseudo-random bytes from `seed`, cut into content-defined
    /// chunks ([`ChunkParams::DEFAULT`]) and layers of [`CHUNKS_PER_LAYER`], all at once,
    /// expiring a day after [`TEST_EPOCH`].
    pub fn random_release(&self, sequence: u64, len: usize, seed: u64) -> TestPayload {
        let data = pseudo_random(len, seed);
        let mut blobs = Vec::new();
        let mut start = 0;
        for n in chunking::cut_points(&data, ChunkParams::DEFAULT) {
            let bytes = data[start..start + n].to_vec();
            let chunk = ChunkRef {
                digest: Digest::of(&bytes),
                size: n as u32,
            };
            blobs.push((chunk, bytes));
            start += n;
        }
        let layers = blobs
            .chunks(CHUNKS_PER_LAYER)
            .map(|c| LayerRef::from_chunks(c.iter().map(|(r, _)| *r).collect()))
            .collect();
        let release = self.release_from_layers(
            sequence,
            layers,
            RolloutPlan::all_at_once(),
            TEST_EPOCH.plus_secs(86_400),
        );
        TestPayload { release, blobs }
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
