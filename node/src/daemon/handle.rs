//! [`Handle`]: a running daemon, as [`Launcher::start`](super::Launcher::start) returns it.
//! Its getters read what the daemon publishes (status, addresses, store, counters, reports);
//! its commands (publish, seed, offer a trust root, dial, shut down) go to the daemon's event
//! loop as `Command`s and come back with a typed answer ([`PublishError`], [`OfferError`]).

use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::Multiaddr;
use shoal_protocol::{DeviceId, StatusReport};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::metrics::Counters;
use super::status::Status;
use super::store::Store;
use crate::core;

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

/// What a [`Handle`] asks of the event loop.
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
    /// Bootstrap peers (the origin's addresses, from the builder after enrollment).
    Bootstrap {
        addrs: Vec<Multiaddr>,
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
