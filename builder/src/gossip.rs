//! How the services reach the fleets' peer-to-peer network: the [`Gossip`] trait.
//!
//! The builder's origin nodes ([`crate::origin`], one per fleet) are the services' way into a
//! fleet: seeding a signed release, gossiping a wave control message, listing the devices
//! connected now, telling a device where to join ([`Bootstrap`]). The services below the origin
//! module (the [`crate::app::App`] that the pipeline publishes through, the live rollout loop)
//! hold a `dyn Gossip` instead of the origin nodes themselves; `origin::OriginGossip` is the
//! real one, tests use fakes. Every release seeded is announced to the rollout loop as a
//! [`Seeded`].

use std::sync::Arc;

use serde::Serialize;
use shoal_node::daemon::BoxFuture;
use shoal_protocol::{DeviceId, Digest, ReleaseManifest, StatusReport};
use tokio::sync::broadcast;

use crate::storage::db::Fleet;

/// Where the services gossip and seed (the origin nodes; tests use a fake).
pub trait Gossip: Send + Sync + 'static {
    /// Gossips an encoded [`shoal_node::core::GossipMessage`] through the fleet's origin.
    fn publish(&self, fleet: &str, bytes: Vec<u8>) -> BoxFuture<Result<(), String>>;
    /// Seeds a stored, signed release through the fleet's origin.
    fn seed(
        &self,
        fleet: &str,
        announcement: Vec<u8>,
        manifest_bytes: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> BoxFuture<Result<(), String>>;
    /// Devices connected to the fleet's origin now.
    fn connected(&self, fleet: &str) -> BoxFuture<Vec<DeviceId>>;
    /// Starts the fleet's origin if it does not run (nothing to start by default).
    fn ensure(&self, fleet: &Fleet) -> BoxFuture<Result<(), String>> {
        let _ = fleet;
        Box::pin(async { Ok(()) })
    }
    /// The devices' verified status reports, from every fleet (none by default).
    fn reports(&self) -> Option<broadcast::Receiver<StatusReport>> {
        None
    }
    /// Where a device joins the fleet, starting its origin if needed (no origin by default).
    fn bootstrap(&self, fleet: &Fleet) -> BoxFuture<Result<Bootstrap, String>> {
        let name = fleet.name.clone();
        Box::pin(async move { Err(format!("no origin node for fleet {name:?}")) })
    }
}

/// A release the origin of its fleet seeded.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The fleet.
    pub fleet: String,
    /// The manifest.
    pub manifest: Arc<ReleaseManifest>,
    /// BLAKE3 of the signed manifest envelope.
    pub manifest_digest: Digest,
}

/// What a device needs to join a fleet: the origin peer to bootstrap from and the trust root.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    /// The fleet.
    pub fleet: String,
    /// Its architecture (as manifests name it).
    pub arch: String,
    /// The origin's device id (hex).
    pub origin_device: String,
    /// The origin's libp2p peer id.
    pub origin_peer_id: String,
    /// libp2p multiaddrs of the origin, each ending in `/p2p/<peer id>`.
    pub multiaddrs: Vec<String>,
    /// The origin's QUIC data-plane address.
    pub data_addr: String,
    /// The fleet's signed trust root, encoded, in hex (the file `shoal-node` is given).
    pub trust_root_hex: String,
}
