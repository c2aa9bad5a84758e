//! The device daemon: drives [`crate::core`] over real sockets, disks and clocks.
//!
//! Start one with [`Builder`] (the `shoal-node run` binary and the builder's origin node both
//! do); the [`Handle`] it returns reads status, seeds and publishes releases, and stops it.
//!
//! - [`identity`]: the device key (Shoal device id, libp2p peer id, QUIC certificate key).
//! - [`config`]: the TOML configuration file; [`launch`]: from it to a running daemon.
//! - [`enroll`]: registration with the builder's device registry (provisioning key).
//! - [`quic`]: the data plane's QUIC endpoint, authenticated by the device key.
//! - [`transfer`]: the chunk request/response protocol, pipelined on QUIC streams.
//! - [`peer`]: the per-connection control stream (hello, bitfields, HAVEs, missed gossip).
//! - [`net`]: libp2p (gossipsub with validation, identify, Kademlia, mDNS).
//! - [`store`]: chunks and manifests on disk by digest, with a byte quota.
//! - [`state`]: atomic state files.
//! - [`metrics`]: counters by peer class, encoded by prometheus-client.
//! - [`local`]: the metrics endpoint and the control socket.
//! - [`runtime`]: the Docker Engine runtime that activates releases.
//! - `driver`: the event loop mapping core outputs to effects.

pub mod config;
mod driver;
pub mod enroll;
mod handle;
pub mod identity;
pub mod launch;
pub mod local;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod quic;
pub mod runtime;
pub mod state;
pub mod store;
pub mod transfer;

pub use handle::{
    BoxFuture, Builder, DEFAULT_MAX_UPLOADS, Handle, MILESTONES_KEPT, Milestone, OfferError,
    PeerStatus, PublishError, Runtime, SourceFn, StageOnly, StartError, Status, TuneFn, WallClock,
    system_clock,
};
