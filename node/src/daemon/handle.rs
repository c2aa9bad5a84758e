//! The embeddable daemon: [`Builder`] configures it, [`Builder::start`] runs it on the current
//! tokio runtime and returns a [`Handle`].
//!
//! The builder's origin node is the same daemon started with [`Builder::origin`]: it imports a
//! release's blobs into [`Handle::store`], installs it with [`Handle::seed`] (which also gossips
//! the announcement), publishes wave control with [`Handle::publish`], and receives the devices'
//! signed status reports from [`Handle::subscribe_reports`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use shoal_protocol::{DeviceId, ReleaseManifest, ReleaseSeq, StatusReport, TrustRoot, UnixTime};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::identity::DeviceKey;
use super::metrics::Counters;
use super::store::{Store, StoreError};
use crate::core;

/// A boxed future, for [`Runtime`] methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What activates a release on the device (loads images, starts containers) and judges its
/// health. The Docker Engine runtime implements it; [`StageOnly`] is for nodes that only stage
/// and serve.
pub trait Runtime: Send + Sync + 'static {
    /// Activates `sequence`; `Err` carries a short reason.
    fn apply(
        &self,
        sequence: ReleaseSeq,
        manifest: Arc<ReleaseManifest>,
        store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>>;
    /// Health verdict on the applied release, with a short detail.
    fn health(&self, sequence: ReleaseSeq) -> BoxFuture<(bool, String)>;
    /// Returns to the committed release `to`.
    fn rollback(&self, from: ReleaseSeq, to: Option<ReleaseSeq>) -> BoxFuture<()>;
    /// Called once when the daemon starts, before any release is applied, with the committed
    /// release of the saved state: finishes or undoes whatever a crash interrupted, so the
    /// device runs `committed` again. The default does nothing.
    fn recover(
        &self,
        _committed: Option<ReleaseSeq>,
        _store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// The service containers the runtime runs now (for `shoal-node status`). The default: none.
    fn services(&self) -> Vec<super::runtime::ServiceStatus> {
        Vec::new()
    }
}

/// A runtime that starts nothing: activation succeeds once every chunk of the release reads
/// back from the store and verifies again, and health is reported as passing with a detail
/// saying no containers run. For seeders, relays and tests of distribution.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOnly;

impl Runtime for StageOnly {
    fn apply(
        &self,
        _sequence: ReleaseSeq,
        manifest: Arc<ReleaseManifest>,
        store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for chunk in manifest.unique_chunks() {
                    match store.read(&chunk.digest) {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(format!("chunk {} missing", chunk.digest.short())),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        })
    }

    fn health(&self, _sequence: ReleaseSeq) -> BoxFuture<(bool, String)> {
        Box::pin(async { (true, "stage-only node: no containers to check".to_string()) })
    }

    fn rollback(&self, _from: ReleaseSeq, _to: Option<ReleaseSeq>) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The saved state could not be read.
    #[error(transparent)]
    State(#[from] super::state::StateError),
    /// The saved snapshot does not decode.
    #[error("saved node state {path} does not decode: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        source: shoal_protocol::DecodeError,
    },
    /// The enrollment's builder URL cannot be used (for example `ftp://`).
    #[error("enrollment: {0}")]
    Enroll(super::enroll::EnrollError),
    /// The rotation chain given with [`Builder::trust_chain`] does not lead to the trust root.
    #[error("rotation chain: {0}")]
    TrustChain(core::TrustRootError),
    /// The data plane's endpoint could not be set up (for example, its port is taken).
    #[error(transparent)]
    Quic(#[from] super::quic::QuicError),
    /// libp2p could not be set up.
    #[error(transparent)]
    Net(#[from] super::net::NetError),
    /// A libp2p listen address could not be used (taken port, bad address).
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// libp2p's message.
        message: String,
    },
    /// The metrics or control endpoint could not be bound.
    #[error("cannot bind {what} at {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Its address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why [`Handle::publish`] or [`Handle::seed`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The node's own core refused the message (bad signature, expired, replayed...).
    #[error("refused by the node: {0}")]
    Refused(String),
    /// The daemon has stopped.
    #[error("daemon stopped")]
    Stopped,
}

/// Why [`Handle::offer_trust_root`] did not install a rotation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// The node's core refused it.
    #[error("trust root refused: {0}")]
    Refused(core::TrustRootError),
    /// The daemon has stopped.
    #[error("daemon stopped")]
    Stopped,
}

/// A connected peer, as shown by `shoal-node status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its device id (hex).
    pub device: String,
    /// Its data-plane address.
    pub addr: String,
    /// same site, remote, origin or unknown.
    pub class: String,
    /// Smoothed RTT in milliseconds.
    pub rtt_ms: u32,
}

/// A snapshot of the daemon for the local CLI, tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This device (hex).
    pub device: String,
    /// The fleet.
    pub fleet: String,
    /// The site label.
    pub site: Option<String>,
    /// The data plane's bound address.
    pub data_addr: String,
    /// libp2p listen addresses.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Peers banned now.
    pub banned_peers: u64,
    /// The highest release accepted.
    pub highest: Option<u64>,
    /// The current (target) release.
    pub target: Option<u64>,
    /// Its phase (`fetching`, `staged`, ...).
    pub phase: Option<String>,
    /// Unique chunks stored of it.
    pub have_chunks: u32,
    /// Unique chunks in it.
    pub total_chunks: u32,
    /// Chunk fetches in flight.
    pub in_flight: u32,
    /// The release applied last.
    pub applied: Option<u64>,
    /// The release committed (healthy) last.
    pub committed: Option<u64>,
    /// The last refusal, if any (quota, expiry).
    pub refused: Option<String>,
    /// Bytes in the store.
    pub store_bytes: u64,
    /// The store's quota.
    pub store_quota_bytes: u64,
    /// Chunk bytes received.
    pub bytes_in: u64,
    /// Chunk bytes sent.
    pub bytes_out: u64,
    /// The service containers running (Docker runtime).
    #[serde(default)]
    pub services: Vec<super::runtime::ServiceStatus>,
    /// The version of the fleet's trust root the daemon verifies with.
    #[serde(default)]
    pub trust_version: u64,
    /// What happened to recent releases here and when, oldest first (at most
    /// [`MILESTONES_KEPT`]).
    #[serde(default)]
    pub milestones: Vec<Milestone>,
    /// Whether the device is registered with the builder (`None`: no enrollment configured).
    #[serde(default)]
    pub enrolled: Option<bool>,
    /// Why enrollment failed last or was refused, if it did.
    #[serde(default)]
    pub enroll_error: Option<String>,
}

/// Milestones a [`Status`] keeps.
pub const MILESTONES_KEPT: usize = 64;

/// One step of a release on this device and when the daemon saw it, by the system clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    /// The release.
    pub sequence: u64,
    /// `announced`, `manifest`, `staged`, `halted`, or a state the device reported
    /// (`applying`, `running`, `healthy`, `failed`, `rolled_back`).
    pub what: String,
    /// When (Unix milliseconds, system clock).
    pub at_ms: u64,
}

impl Status {
    /// When the first milestone `what` of release `seq` happened (Unix milliseconds).
    pub fn milestone(&self, seq: u64, what: &str) -> Option<u64> {
        self.milestones
            .iter()
            .find(|m| m.sequence == seq && m.what == what)
            .map(|m| m.at_ms)
    }
}

impl Status {
    /// Whether the target release `seq` is staged or beyond (applied, running, healthy).
    pub fn has_staged(&self, seq: u64) -> bool {
        self.target == Some(seq)
            && self.total_chunks > 0
            && self.have_chunks == self.total_chunks
            && matches!(
                self.phase.as_deref(),
                Some("staged" | "applying" | "running" | "healthy")
            )
    }
}

pub(super) enum Command {
    Publish {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
    Seed {
        announcement: Vec<u8>,
        manifest: Arc<[u8]>,
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
    Dial {
        addr: Multiaddr,
    },
    PublishUnchecked {
        bytes: Vec<u8>,
    },
    OfferTrustRoot {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<u64, core::TrustRootError>>,
    },
    Shutdown,
}

/// Reads wall-clock time (replaceable for tests).
pub type WallClock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        UnixTime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    })
}

/// Blobs a daemon serves at once by default.
pub const DEFAULT_MAX_UPLOADS: usize = 8;

/// Wraps the store into what serves peers (see [`Builder::serve_from`]).
pub type SourceFn = Box<dyn FnOnce(Arc<Store>) -> Arc<dyn super::transfer::BlobSource> + Send>;

/// Adjusts the core's configuration before start.
pub type TuneFn = Box<dyn FnOnce(&mut core::Config) + Send>;

/// Configures a daemon.
pub struct Builder {
    pub(super) key: DeviceKey,
    pub(super) trust: TrustRoot,
    pub(super) fleet: String,
    pub(super) data_dir: PathBuf,
    pub(super) arch: String,
    pub(super) site: Option<String>,
    pub(super) listen: Vec<Multiaddr>,
    pub(super) data_listen: SocketAddr,
    pub(super) bootstrap: Vec<Multiaddr>,
    pub(super) quota_bytes: u64,
    pub(super) mdns: bool,
    pub(super) kademlia: bool,
    pub(super) max_uploads: usize,
    pub(super) metrics: Option<SocketAddr>,
    pub(super) control_socket: bool,
    pub(super) origin: bool,
    pub(super) runtime: Arc<dyn Runtime>,
    pub(super) clock: WallClock,
    pub(super) tune: Option<TuneFn>,
    pub(super) seed: u64,
    pub(super) source: Option<SourceFn>,
    pub(super) trust_chain: Vec<Vec<u8>>,
    pub(super) enroll: Option<super::enroll::Enrollment>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("device", &self.key.device_id())
            .field("fleet", &self.fleet)
            .field("data_dir", &self.data_dir)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A daemon for device `key` of `fleet` under `trust`, keeping its files in `data_dir`.
    /// Defaults: this machine's architecture, no site, libp2p QUIC on an ephemeral loopback
    /// port, data plane on an ephemeral loopback port, no bootstrap peers, 16 GiB quota, mDNS
    /// off, no metrics, no control socket, [`StageOnly`] runtime.
    pub fn new(key: DeviceKey, trust: TrustRoot, data_dir: impl Into<PathBuf>) -> Builder {
        let fleet = trust.fleet.clone();
        Builder {
            key,
            trust,
            fleet,
            data_dir: data_dir.into(),
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64".into(),
                "aarch64" => "arm64".into(),
                other => other.into(),
            },
            site: None,
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap: Vec::new(),
            quota_bytes: 16 << 30,
            mdns: false,
            kademlia: true,
            max_uploads: DEFAULT_MAX_UPLOADS,
            metrics: None,
            control_socket: false,
            origin: false,
            runtime: Arc::new(StageOnly),
            clock: system_clock(),
            tune: None,
            seed: rand_seed(),
            source: None,
            trust_chain: Vec::new(),
            enroll: None,
        }
    }

    /// The device architecture (as manifests name it).
    pub fn arch(mut self, arch: impl Into<String>) -> Self {
        self.arch = arch.into();
        self
    }
    /// The site label.
    pub fn site(mut self, site: Option<String>) -> Self {
        self.site = site;
        self
    }
    /// libp2p listen addresses.
    pub fn listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.listen = addrs;
        self
    }
    /// The data plane's UDP address.
    pub fn data_listen(mut self, addr: SocketAddr) -> Self {
        self.data_listen = addr;
        self
    }
    /// Peers dialed at start.
    pub fn bootstrap(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.bootstrap = addrs;
        self
    }
    /// The store's quota in bytes.
    pub fn store_quota_bytes(mut self, bytes: u64) -> Self {
        self.quota_bytes = bytes;
        self
    }
    /// LAN discovery.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }
    /// Discover peers beyond the bootstrap peers with Kademlia queries (on by default).
    pub fn kademlia(mut self, on: bool) -> Self {
        self.kademlia = on;
        self
    }
    /// Most blobs served at once; requests beyond are answered "busy" (default
    /// [`DEFAULT_MAX_UPLOADS`]).
    pub fn max_uploads(mut self, n: usize) -> Self {
        self.max_uploads = n;
        self
    }
    /// Serve Prometheus metrics at this address.
    pub fn metrics(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics = addr;
        self
    }
    /// Serve `shoal-node status` on `<data_dir>/control.sock`.
    pub fn control_socket(mut self, on: bool) -> Self {
        self.control_socket = on;
        self
    }
    /// Run as the builder's origin node (seeds releases, never applies).
    pub fn origin(mut self, on: bool) -> Self {
        self.origin = on;
        self
    }
    /// The runtime that activates releases.
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = runtime;
        self
    }
    /// The wall clock (tests set a fixed epoch).
    pub fn wall_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }
    /// Adjusts the core's bounds and timeouts before start.
    pub fn tune_core(mut self, f: impl FnOnce(&mut core::Config) + Send + 'static) -> Self {
        self.tune = Some(Box::new(f));
        self
    }

    /// Serves peers' blob requests from what `wrap` makes of the daemon's store instead of the
    /// store itself (tests use it to make a byzantine or slow peer).
    pub fn serve_from(
        mut self,
        wrap: impl FnOnce(Arc<Store>) -> Arc<dyn super::transfer::BlobSource> + Send + 'static,
    ) -> Self {
        self.source = Some(Box::new(wrap));
        self
    }

    /// The signed rotations (encoded envelopes, oldest first) that led to `trust`, handed on to
    /// peers that connect so that devices provisioned with an older root catch up (the
    /// builder's origin starts on its fleet's newest root). Checked at start: each must follow
    /// the one before it and the last must be `trust`.
    pub fn trust_chain(mut self, chain: Vec<Vec<u8>>) -> Self {
        self.trust_chain = chain;
        self
    }

    /// Registers with the builder's device registry at start, in the background, signed by the
    /// device key, with this builder's site and architecture (see [`super::enroll`]).
    pub fn enroll(mut self, enrollment: super::enroll::Enrollment) -> Self {
        self.enroll = Some(enrollment);
        self
    }

    /// Starts the daemon on the current tokio runtime.
    pub async fn start(self) -> Result<Handle, StartError> {
        super::driver::start(self).await
    }
}

fn rand_seed() -> u64 {
    let k = DeviceKey::generate();
    let id = k.device_id();
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// A running daemon.
#[derive(Debug)]
pub struct Handle {
    pub(super) device: DeviceId,
    pub(super) data_addr: SocketAddr,
    pub(super) listen_addrs: Vec<Multiaddr>,
    pub(super) store: Arc<Store>,
    pub(super) counters: Arc<Counters>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) reports: broadcast::Sender<StatusReport>,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) metrics_addr: Option<SocketAddr>,
    pub(super) endpoint: quinn::Endpoint,
    pub(super) enrollment: Option<watch::Receiver<super::enroll::EnrollState>>,
}

impl Handle {
    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }
    /// The data plane's bound address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }
    /// libp2p listen addresses, each ending in `/p2p/<peer id>` (usable as bootstrap).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }
    /// The metrics endpoint's bound address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }
    /// The chunk store (an origin imports releases into it).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
    /// The data plane's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }
    /// A receiver of status updates.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }
    /// Where enrollment stands (`None`: no enrollment configured).
    pub fn enrollment(&self) -> Option<super::enroll::EnrollState> {
        self.enrollment.as_ref().map(|rx| rx.borrow().clone())
    }
    /// Waits until enrollment is over (registered or refused) or `timeout` passes; the state
    /// then (`None`: no enrollment configured).
    pub async fn wait_enrollment(
        &self,
        timeout: std::time::Duration,
    ) -> Option<super::enroll::EnrollState> {
        let mut rx = self.enrollment.clone()?;
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_final())).await;
        let state = rx.borrow().clone();
        Some(state)
    }
    /// Signed status reports received from devices (verified), for the origin.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<StatusReport> {
        self.reports.subscribe()
    }

    /// Gossips a message ([`core::GossipMessage::encode`]d) after the node's own core accepted it.
    pub async fn publish(&self, bytes: Vec<u8>) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish { bytes, reply })
            .await
            .map_err(|_| PublishError::Stopped)?;
        rx.await.map_err(|_| PublishError::Stopped)?
    }

    /// Installs a release whose blobs are all in [`Handle::store`] (announcement envelope bytes,
    /// manifest envelope bytes) and gossips its announcement.
    pub async fn seed(
        &self,
        announcement: Vec<u8>,
        manifest: Arc<[u8]>,
    ) -> Result<(), PublishError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Seed {
                announcement,
                manifest,
                reply,
            })
            .await
            .map_err(|_| PublishError::Stopped)?;
        rx.await.map_err(|_| PublishError::Stopped)?
    }

    /// Gossips bytes without asking the node's own core first. Only for tests that need a
    /// misbehaving publisher; honest callers use [`Handle::publish`].
    pub async fn publish_unchecked(&self, bytes: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::PublishUnchecked { bytes })
            .await;
    }

    /// Installs the fleet's next trust-root version (its signed rotation envelope) and gossips
    /// it; the typed reason when the node's core refuses it (an older version, a gap, bad
    /// signatures, expired). Returns the new version.
    pub async fn offer_trust_root(&self, bytes: Vec<u8>) -> Result<u64, OfferError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::OfferTrustRoot { bytes, reply })
            .await
            .map_err(|_| OfferError::Stopped)?;
        rx.await
            .map_err(|_| OfferError::Stopped)?
            .map_err(OfferError::Refused)
    }

    /// Dials a libp2p address.
    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.commands.send(Command::Dial { addr }).await;
    }

    /// Waits until `pred` holds for the status, or `timeout` passes; returns the last status and
    /// whether it held.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> (Status, bool) {
        let mut rx = self.status.clone();
        let ok = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s)))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        (rx.borrow().clone(), ok)
    }

    /// Stops the daemon and waits for it.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let _ = self.task.await;
    }

    /// Stops the daemon at once, as a crash would (no final state write).
    pub fn kill(self) {
        self.endpoint.close(0u32.into(), b"killed");
        self.task.abort();
    }
}
