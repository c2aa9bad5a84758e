//! [`Status`]: a snapshot of a running daemon (its peers, the release it is on and how far it
//! got, its store, its milestones), which the daemon publishes after every change
//! ([`Handle::status`](super::Handle::status),
//! [`Handle::watch_status`](super::Handle::watch_status)), and the local endpoints that show it:
//! the control socket `shoal-node status` reads ([`read`]) and the Prometheus endpoint
//! ([`serve_metrics`]).

mod serve;

use serde::{Deserialize, Serialize};

use super::runtime::ServiceStatus;

pub use self::serve::{read, serve_control, serve_metrics};

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
    pub services: Vec<ServiceStatus>,
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
