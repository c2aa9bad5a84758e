//! [`Launcher`]: what a daemon is started with (its key, trust root, data directory, addresses,
//! bounds, runtime), set with chained calls and then [`Launcher::start`]ed on the current tokio
//! runtime, which gives the running daemon's [`Handle`](super::Handle) or a [`StartError`].
//! The start-up itself (store, saved state, core, sockets, libp2p, the event loop) is the
//! driver's (`driver/start.rs`).
//!
//! The builder's origin node is the same daemon started with [`Launcher::origin`]: it imports a
//! release's blobs into [`Handle::store`](super::Handle::store), installs it with
//! [`Handle::seed`](super::Handle::seed) (which also gossips the announcement), publishes wave
//! control with [`Handle::publish`](super::Handle::publish), and receives the devices' signed
//! status reports from [`Handle::subscribe_reports`](super::Handle::subscribe_reports).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use libp2p::Multiaddr;
use shoal_protocol::{TrustRoot, UnixTime};

use super::identity::DeviceKey;
use super::runtime::{Runtime, StageOnly};
use super::store::{Store, StoreError};
use crate::core;

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
    /// The rotation chain given with [`Launcher::trust_chain`] does not lead to the trust root.
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

/// Wraps the store into what serves peers (see [`Launcher::serve_from`]).
pub type SourceFn = Box<dyn FnOnce(Arc<Store>) -> Arc<dyn super::transfer::BlobSource> + Send>;

/// Adjusts the core's configuration before start.
pub type TuneFn = Box<dyn FnOnce(&mut core::Config) + Send>;

/// Configures a daemon; [`Launcher::start`] runs it.
///
/// ```no_run
/// # async fn run(key: shoal_node::daemon::identity::DeviceKey, trust: shoal_protocol::TrustRoot) {
/// use shoal_node::daemon::Launcher;
/// let daemon = Launcher::new(key, trust, "/var/lib/shoal")
///     .site(Some("plant-3".into()))
///     .start()
///     .await
///     .expect("daemon started");
/// println!("{}", daemon.status().device);
/// # }
/// ```
pub struct Launcher {
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

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("device", &self.key.device_id())
            .field("fleet", &self.fleet)
            .field("data_dir", &self.data_dir)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Launcher {
    /// A daemon for device `key` of `fleet` under `trust`, keeping its files in `data_dir`.
    /// Defaults: this machine's architecture, no site, libp2p QUIC on an ephemeral loopback
    /// port, data plane on an ephemeral loopback port, no bootstrap peers, 16 GiB quota, mDNS
    /// off, no metrics, no control socket, [`StageOnly`] runtime.
    pub fn new(key: DeviceKey, trust: TrustRoot, data_dir: impl Into<PathBuf>) -> Launcher {
        let fleet = trust.fleet.clone();
        Launcher {
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
    /// device key, with this daemon's site and architecture (see [`super::enroll`]).
    pub fn enroll(mut self, enrollment: super::enroll::Enrollment) -> Self {
        self.enroll = Some(enrollment);
        self
    }
}

fn rand_seed() -> u64 {
    let k = DeviceKey::generate();
    let id = k.device_id();
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}
