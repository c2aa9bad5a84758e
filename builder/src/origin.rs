//! The builder's origin peers: one embedded `shoal_node` daemon per fleet.
//!
//! Each fleet's origin node ([`shoal_node::daemon::Launcher::origin`]) is how a release leaves
//! the builder: after a successful build the pipeline calls [`Origins::seed`], which gossips the
//! signed announcement and lets devices fetch the manifest and chunks from the origin over QUIC.
//! The node's device key is `<data>/keys/origin-<fleet>.key` (mode 0600, made on first start);
//! its trust root is the fleet's; its state lives in `<data>/origin/<fleet>/`.
//!
//! The origin keeps no second copy of the chunks: its data plane serves the builder's own
//! [`crate::storage::blobs::Store`] through a [`FleetSource`], which compresses each blob as it is sent
//! (zstd level 1) and serves only blobs of releases seeded for that fleet, so a device of one
//! fleet cannot read another fleet's images by digest.
//!
//! The services reach the origins through [`OriginGossip`], the [`Gossip`] the
//! [`crate::app::App`] and the live rollout loop hold.
//!
//! Devices' signed status reports, verified by the origin node, are fanned out to every
//! [`Origins::subscribe_reports`] subscriber (the rollout loop and the device registry), and
//! every seeded release to [`Origins::subscribe_seeded`].
//!
//! Trust-root rotations reach devices through the origin too: it starts on the fleet's current
//! root with the fleet's rotation chain ([`crate::rotation::chain`]), which its node hands to
//! every peer that connects (a device provisioned with an older root walks the versions between),
//! and a watcher polls the fleet's rotations every [`ROTATION_POLL`], so a rotation installed
//! while the builder serves (`shoal-builder keys rotate` from another process) is installed in
//! the origin's node and gossiped to the fleet within about a second. The bootstrap information
//! follows the newest root.
//!
//! Listen addresses come from `serve --p2p-listen/--data-listen` ([`OriginConfig`]); a fixed
//! port is offset by the fleet's row id minus one, so several fleets never collide and each
//! keeps its ports across restarts. Port 0 picks a free port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use shoal_node::core::TrustRootError;
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::store::StoredBlob;
use shoal_node::daemon::transfer::{BlobKind, BlobSource};
use shoal_node::daemon::{BoxFuture, Handle, OfferError, StartError};
use shoal_protocol::{
    DeviceId, Digest, Envelope, ReleaseManifest, ReleaseSeq, StatusReport, TrustRoot, encoding,
};
use tokio::sync::broadcast;

use crate::app::App;
use crate::gossip::{Bootstrap, Gossip, Seeded};
use crate::storage::blobs::{Kind, Store};
use crate::storage::db::{Fleet, ReleaseFilter};

/// zstd level of blobs compressed for sending.
pub const SEND_COMPRESSION_LEVEL: i32 = 1;
/// Reports buffered for a slow subscriber before it misses some.
pub const REPORT_CHANNEL: usize = 4096;
/// How often each origin looks for rotations installed while it serves.
pub const ROTATION_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the origin nodes listen.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// libp2p listen addresses (gossip, discovery).
    pub p2p_listen: Vec<Multiaddr>,
    /// The QUIC data plane's address.
    pub data_listen: SocketAddr,
}

impl OriginConfig {
    /// Ephemeral loopback ports (tests, the local fleet).
    pub fn loopback_ephemeral() -> OriginConfig {
        OriginConfig {
            p2p_listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// The addresses of the fleet with row id `fleet_id`: fixed ports offset by `fleet_id - 1`.
    fn for_fleet(&self, fleet_id: i64) -> (Vec<Multiaddr>, SocketAddr) {
        let offset = u16::try_from(fleet_id.saturating_sub(1)).unwrap_or(u16::MAX);
        let shift = |p: u16| if p == 0 { 0 } else { p.saturating_add(offset) };
        let listen = self
            .p2p_listen
            .iter()
            .map(|a| {
                a.iter()
                    .map(|p| match p {
                        Protocol::Udp(port) => Protocol::Udp(shift(port)),
                        Protocol::Tcp(port) => Protocol::Tcp(shift(port)),
                        other => other,
                    })
                    .collect()
            })
            .collect();
        let mut data = self.data_listen;
        data.set_port(shift(data.port()));
        (listen, data)
    }
}

/// Why an origin node could not be started or could not seed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// No such fleet.
    #[error("no fleet {0:?}")]
    NoFleet(String),
    /// The fleet's trust root file is missing or does not verify.
    #[error("trust root {path}: {message}")]
    TrustRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The origin's device key could not be read or made.
    #[error("origin key {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The daemon did not start (port taken, bad address, ...).
    #[error("origin node of fleet {fleet}: {source}")]
    Start {
        /// The fleet.
        fleet: String,
        /// The daemon's error.
        source: Box<StartError>,
    },
    /// The origin node refused the release (it would not verify on devices either).
    #[error("origin node refused the release: {0}")]
    Seed(String),
    /// A stored manifest or announcement is missing or does not decode.
    #[error("stored release: {0}")]
    Stored(String),
    /// Database.
    #[error(transparent)]
    Db(#[from] crate::storage::db::DbError),
}

/// Serves one fleet's blobs from the builder's store, compressing them as they are sent.
#[derive(Debug)]
pub struct FleetSource {
    store: Arc<Store>,
    allowed: RwLock<BTreeSet<Digest>>,
}

impl FleetSource {
    /// A source serving nothing yet.
    pub fn new(store: Arc<Store>) -> FleetSource {
        FleetSource {
            store,
            allowed: RwLock::new(BTreeSet::new()),
        }
    }

    /// Allows the manifest and every chunk of a release.
    pub fn allow_release(&self, manifest_digest: Digest, manifest: &ReleaseManifest) {
        let mut allowed = self.allowed.write().unwrap_or_else(|e| e.into_inner());
        allowed.insert(manifest_digest);
        for c in manifest.unique_chunks() {
            allowed.insert(c.digest);
        }
    }

    /// Whether a blob may be served.
    pub fn allows(&self, digest: &Digest) -> bool {
        self.allowed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }
}

impl BlobSource for FleetSource {
    fn get(&self, kind: BlobKind, digest: &Digest) -> Option<StoredBlob> {
        if !self.allows(digest) {
            return None;
        }
        let kind = match kind {
            BlobKind::Chunk => Kind::Chunk,
            BlobKind::Manifest => Kind::Manifest,
            _ => return None,
        };
        let raw = match self.store.get(kind, digest) {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot read a blob to serve");
                return None;
            }
        };
        let raw_size = u32::try_from(raw.len()).ok()?;
        let compressed = zstd::bulk::compress(&raw, SEND_COMPRESSION_LEVEL).ok()?;
        Some(StoredBlob {
            raw_size,
            compressed,
        })
    }
}

/// One fleet's origin node.
#[derive(Debug)]
pub struct Origin {
    fleet: String,
    arch: String,
    handle: Arc<Handle>,
    source: Arc<FleetSource>,
    trust_root_bytes: Arc<RwLock<Vec<u8>>>,
    key: DeviceKey,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    /// The running daemon.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The origin's device id.
    pub fn device_id(&self) -> DeviceId {
        self.handle.device_id()
    }

    /// The fleet's bootstrap information.
    pub fn bootstrap(&self) -> Bootstrap {
        Bootstrap {
            fleet: self.fleet.clone(),
            arch: self.arch.clone(),
            origin_device: self.handle.device_id().to_string(),
            origin_peer_id: self.key.peer_id().to_string(),
            multiaddrs: self
                .handle
                .listen_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            data_addr: self.handle.data_addr().to_string(),
            trust_root_hex: hex::encode(
                &*self
                    .trust_root_bytes
                    .read()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
        }
    }
}

/// The origin nodes of every fleet, started on demand.
#[derive(Debug)]
pub struct Origins {
    root: PathBuf,
    store: Arc<Store>,
    config: OriginConfig,
    nodes: tokio::sync::RwLock<BTreeMap<String, Origin>>,
    reports: broadcast::Sender<StatusReport>,
    seeded: broadcast::Sender<Seeded>,
}

impl Origins {
    /// Origins for the data directory of `app`; none is started yet.
    pub fn new(app: &App, config: OriginConfig) -> Origins {
        Origins {
            root: app.root.clone(),
            store: app.store.clone(),
            config,
            nodes: tokio::sync::RwLock::new(BTreeMap::new()),
            reports: broadcast::channel(REPORT_CHANNEL).0,
            seeded: broadcast::channel(64).0,
        }
    }

    /// Verified status reports from the devices of every fleet.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<StatusReport> {
        self.reports.subscribe()
    }

    /// Releases as they are seeded.
    pub fn subscribe_seeded(&self) -> broadcast::Receiver<Seeded> {
        self.seeded.subscribe()
    }

    /// Starts the origin of every fleet and seeds each fleet's newest published release.
    pub async fn start_all(&self, app: &App) -> Result<(), OriginError> {
        for name in app.db.fleets().await? {
            let fleet = app
                .db
                .fleet(&name)
                .await?
                .ok_or_else(|| OriginError::NoFleet(name.clone()))?;
            self.ensure(&fleet).await?;
            self.reseed_latest(app, &fleet).await?;
        }
        Ok(())
    }

    /// Starts the fleet's origin if it is not running.
    pub async fn ensure(&self, fleet: &Fleet) -> Result<(), OriginError> {
        if self.nodes.read().await.contains_key(&fleet.name) {
            return Ok(());
        }
        let mut nodes = self.nodes.write().await;
        if nodes.contains_key(&fleet.name) {
            return Ok(());
        }
        let origin = self.start_one(fleet).await?;
        tracing::info!(
            fleet = %fleet.name,
            device = %origin.device_id().short(),
            addrs = ?origin.handle.listen_addrs(),
            data = %origin.handle.data_addr(),
            "origin node started"
        );
        let mut origin = origin;
        origin.watcher = Some(tokio::spawn(watch_rotations(
            self.root.clone(),
            fleet.name.clone(),
            origin.handle.clone(),
            origin.trust_root_bytes.clone(),
        )));
        let mut rx = origin.handle.subscribe_reports();
        let out = self.reports.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(report) => {
                        let _ = out.send(report);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "origin reports arrived faster than handled");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        nodes.insert(fleet.name.clone(), origin);
        Ok(())
    }

    async fn start_one(&self, fleet: &Fleet) -> Result<Origin, OriginError> {
        let trust_path = crate::app::trust_root_path(&self.root, &fleet.name);
        let trust_err = |message: String| OriginError::TrustRoot {
            path: trust_path.clone(),
            message,
        };
        // The rotations that led to the current root, read before the root itself: a rotation
        // installed in between is picked up by the watcher.
        let chain = crate::rotation::chain(&self.root, &fleet.name).unwrap_or_else(|e| {
            tracing::warn!(fleet = %fleet.name, error = %e, "cannot read the fleet's rotations");
            Vec::new()
        });
        let trust_root_bytes = std::fs::read(&trust_path).map_err(|e| trust_err(e.to_string()))?;
        let env: Envelope =
            encoding::decode(&trust_root_bytes).map_err(|e| trust_err(e.to_string()))?;
        let trust = TrustRoot::open_initial(&env).map_err(|e| trust_err(e.to_string()))?;
        let key = load_or_create_key(
            &self
                .root
                .join("keys")
                .join(format!("origin-{}.key", fleet.name)),
        )?;
        let (listen, data_listen) = self.config.for_fleet(fleet.id);
        let source = Arc::new(FleetSource::new(self.store.clone()));
        let serve = source.clone();
        let builder = || {
            let serve = serve.clone();
            shoal_node::daemon::Launcher::new(
                key.clone(),
                trust.clone(),
                self.root.join("origin").join(&fleet.name),
            )
            .arch(fleet.arch.clone())
            .origin(true)
            .mdns(false)
            .listen(listen.clone())
            .data_listen(data_listen)
            .serve_from(move |_| serve)
        };
        let started = match builder().trust_chain(chain).start().await {
            Err(StartError::TrustChain(e)) => {
                // Devices provisioned with the current root still work; older ones cannot catch
                // up from this origin until the chain is repaired.
                tracing::warn!(
                    fleet = %fleet.name,
                    error = %e,
                    "the fleet's rotations do not lead to its trust root; not relaying them"
                );
                builder().start().await
            }
            other => other,
        };
        let handle = started.map_err(|source| OriginError::Start {
            fleet: fleet.name.clone(),
            source: Box::new(source),
        })?;
        Ok(Origin {
            fleet: fleet.name.clone(),
            arch: fleet.arch.clone(),
            handle: Arc::new(handle),
            source,
            trust_root_bytes: Arc::new(RwLock::new(trust_root_bytes)),
            key,
            watcher: None,
        })
    }

    /// Seeds the fleet's newest published release again (after a restart).
    async fn reseed_latest(&self, app: &App, fleet: &Fleet) -> Result<(), OriginError> {
        let filter = ReleaseFilter {
            status: Some("success".into()),
            ..ReleaseFilter::default()
        };
        let releases = app.db.releases(fleet.id, &filter, 50).await?;
        let Some(latest) = releases
            .iter()
            .filter(|r| r.manifest_digest.is_some())
            .max_by_key(|r| r.sequence)
        else {
            return Ok(());
        };
        let digest: Digest = latest
            .manifest_digest
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| OriginError::Stored("manifest digest does not parse".into()))?;
        let (ann, manifest_bytes, manifest) = self.load_release(&digest)?;
        self.seed(&fleet.name, ann, manifest_bytes, Arc::new(manifest))
            .await
    }

    /// Reads a stored release: announcement bytes, manifest bytes, opened manifest (its
    /// signature is checked again by the origin node when seeded).
    pub fn load_release(
        &self,
        manifest_digest: &Digest,
    ) -> Result<(Vec<u8>, Vec<u8>, ReleaseManifest), OriginError> {
        let stored = |kind| {
            self.store
                .get(kind, manifest_digest)
                .map_err(|e| OriginError::Stored(e.to_string()))?
                .ok_or_else(|| {
                    OriginError::Stored(format!("{kind:?} {} missing", manifest_digest.short()))
                })
        };
        let manifest_bytes = stored(Kind::Manifest)?;
        let ann = stored(Kind::Announcement)?;
        let env: Envelope = encoding::decode(&manifest_bytes)
            .map_err(|e| OriginError::Stored(format!("manifest: {e}")))?;
        let manifest: ReleaseManifest = encoding::decode(&env.payload)
            .map_err(|e| OriginError::Stored(format!("manifest payload: {e}")))?;
        Ok((ann, manifest_bytes, manifest))
    }

    /// Seeds a release whose blobs are in the builder's store through the fleet's origin, which
    /// gossips its announcement.
    pub async fn seed(
        &self,
        fleet: &str,
        announcement: Vec<u8>,
        manifest_bytes: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> Result<(), OriginError> {
        let nodes = self.nodes.read().await;
        let origin = nodes
            .get(fleet)
            .ok_or_else(|| OriginError::NoFleet(fleet.to_string()))?;
        let digest = Digest::of(&manifest_bytes);
        origin.source.allow_release(digest, &manifest);
        origin
            .handle
            .seed(announcement, manifest_bytes.into())
            .await
            .map_err(|e| OriginError::Seed(e.to_string()))?;
        let _ = self.seeded.send(Seeded {
            fleet: fleet.to_string(),
            manifest,
            manifest_digest: digest,
        });
        Ok(())
    }

    /// Gossips a signed message (wave control) through the fleet's origin.
    pub async fn publish(&self, fleet: &str, bytes: Vec<u8>) -> Result<(), OriginError> {
        let nodes = self.nodes.read().await;
        let origin = nodes
            .get(fleet)
            .ok_or_else(|| OriginError::NoFleet(fleet.to_string()))?;
        origin
            .handle
            .publish(bytes)
            .await
            .map_err(|e| OriginError::Seed(e.to_string()))
    }

    /// The bootstrap information of a fleet, starting its origin if needed.
    pub async fn bootstrap(&self, fleet: &Fleet) -> Result<Bootstrap, OriginError> {
        self.ensure(fleet).await?;
        let nodes = self.nodes.read().await;
        nodes
            .get(&fleet.name)
            .map(Origin::bootstrap)
            .ok_or_else(|| OriginError::NoFleet(fleet.name.clone()))
    }

    /// Runs `f` on the fleet's origin, if it runs.
    pub async fn with<T>(&self, fleet: &str, f: impl FnOnce(&Origin) -> T) -> Option<T> {
        self.nodes.read().await.get(fleet).map(f)
    }

    /// The highest sequence the fleet's origin holds.
    pub async fn highest(&self, fleet: &str) -> Option<ReleaseSeq> {
        self.with(fleet, |o| o.handle.status().highest.map(ReleaseSeq))
            .await
            .flatten()
    }

    /// Stops every origin node.
    pub async fn shutdown(&self) {
        let nodes = std::mem::take(&mut *self.nodes.write().await);
        for (_, origin) in nodes {
            if let Some(w) = origin.watcher {
                w.abort();
                let _ = w.await;
            }
            if let Ok(handle) = Arc::try_unwrap(origin.handle) {
                handle.shutdown().await;
            }
        }
    }
}

/// [`Gossip`] through the builder's origin nodes.
#[derive(Debug, Clone)]
pub struct OriginGossip(pub Arc<Origins>);

impl Gossip for OriginGossip {
    fn publish(&self, fleet: &str, bytes: Vec<u8>) -> BoxFuture<Result<(), String>> {
        let (o, fleet) = (self.0.clone(), fleet.to_string());
        Box::pin(async move { o.publish(&fleet, bytes).await.map_err(|e| e.to_string()) })
    }

    fn seed(
        &self,
        fleet: &str,
        announcement: Vec<u8>,
        manifest_bytes: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> BoxFuture<Result<(), String>> {
        let (o, fleet) = (self.0.clone(), fleet.to_string());
        Box::pin(async move {
            o.seed(&fleet, announcement, manifest_bytes, manifest)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn ensure(&self, fleet: &Fleet) -> BoxFuture<Result<(), String>> {
        let (o, fleet) = (self.0.clone(), fleet.clone());
        Box::pin(async move { o.ensure(&fleet).await.map_err(|e| e.to_string()) })
    }

    fn bootstrap(&self, fleet: &Fleet) -> BoxFuture<Result<Bootstrap, String>> {
        let (o, fleet) = (self.0.clone(), fleet.clone());
        Box::pin(async move { o.bootstrap(&fleet).await.map_err(|e| e.to_string()) })
    }

    fn reports(&self) -> Option<broadcast::Receiver<StatusReport>> {
        Some(self.0.subscribe_reports())
    }

    fn connected(&self, fleet: &str) -> BoxFuture<Vec<DeviceId>> {
        let (o, fleet) = (self.0.clone(), fleet.to_string());
        Box::pin(async move {
            o.with(&fleet, |origin| {
                origin
                    .handle()
                    .status()
                    .peers
                    .iter()
                    .filter_map(|p| parse_device(&p.device))
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    }
}

fn parse_device(hex_id: &str) -> Option<DeviceId> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(DeviceId(id))
}

/// Installs in the origin's node, and so gossips, every rotation of the fleet newer than the
/// root it verifies with, polling every [`ROTATION_POLL`].
async fn watch_rotations(
    data: PathBuf,
    fleet: String,
    handle: Arc<Handle>,
    trust_root_bytes: Arc<RwLock<Vec<u8>>>,
) {
    let mut warned: BTreeSet<(u64, Digest)> = BTreeSet::new();
    let mut tick = tokio::time::interval(ROTATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let chain = {
            let (dir, name) = (data.clone(), fleet.clone());
            match tokio::task::spawn_blocking(move || crate::rotation::chain(&dir, &name)).await {
                Ok(Ok(chain)) => chain,
                Ok(Err(e)) => {
                    tracing::debug!(%fleet, error = %e, "cannot read the fleet's rotations");
                    continue;
                }
                Err(_) => continue,
            }
        };
        for bytes in chain {
            let Some(version) = encoding::decode::<Envelope>(&bytes)
                .ok()
                .and_then(|env| encoding::decode::<TrustRoot>(&env.payload).ok())
                .map(|r| r.version)
            else {
                // Possibly being written right now; read again next time.
                continue;
            };
            if version <= handle.status().trust_version {
                continue;
            }
            let digest = Digest::of(&bytes);
            match handle.offer_trust_root(bytes.clone()).await {
                Ok(v) => {
                    tracing::info!(%fleet, version = v, "trust root rotated; gossiped to the fleet");
                    *trust_root_bytes.write().unwrap_or_else(|e| e.into_inner()) = bytes;
                }
                Err(OfferError::Stopped) => return,
                // The status read above was older than the node: installed already.
                Err(OfferError::Refused(TrustRootError::Stale { .. })) => continue,
                Err(e) => {
                    if warned.insert((version, digest)) {
                        tracing::warn!(%fleet, version, error = %e, "rotation not installed in the origin");
                    }
                    break;
                }
            }
        }
    }
}

fn load_or_create_key(path: &Path) -> Result<DeviceKey, OriginError> {
    let err = |message: String| OriginError::Key {
        path: path.to_owned(),
        message,
    };
    if path.exists() {
        DeviceKey::load(path).map_err(|e| err(e.to_string()))
    } else {
        DeviceKey::create(path).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_are_offset_per_fleet_and_port_zero_stays_zero() {
        let c = OriginConfig {
            p2p_listen: vec!["/ip4/0.0.0.0/udp/7481/quic-v1".parse().unwrap()],
            data_listen: "0.0.0.0:7482".parse().unwrap(),
        };
        let (l, d) = c.for_fleet(3);
        assert_eq!(l[0].to_string(), "/ip4/0.0.0.0/udp/7483/quic-v1");
        assert_eq!(d.port(), 7484);
        let (l, d) = OriginConfig::loopback_ephemeral().for_fleet(5);
        assert_eq!(l[0].to_string(), "/ip4/127.0.0.1/udp/0/quic-v1");
        assert_eq!(d.port(), 0);
    }

    #[test]
    fn a_fleet_source_serves_only_allowed_blobs_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let bytes = vec![7u8; 10_000];
        let digest = store.put_blob(Kind::Chunk, &bytes).unwrap();
        let source = FleetSource::new(store);
        assert!(source.get(BlobKind::Chunk, &digest).is_none());
        source.allowed.write().unwrap().insert(digest);
        let blob = source.get(BlobKind::Chunk, &digest).unwrap();
        assert_eq!(blob.raw_size, 10_000);
        assert!(blob.compressed.len() < 1_000);
        let raw = shoal_node::daemon::store::verify_blob(
            &digest,
            blob.raw_size,
            Some(10_000),
            1 << 20,
            &blob.compressed,
        )
        .unwrap();
        assert_eq!(raw, bytes);
        // A manifest of that digest is not in the store.
        assert!(source.get(BlobKind::Manifest, &digest).is_none());
    }
}
