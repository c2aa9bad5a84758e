//! The device daemon: drives [`crate::core`] over real sockets, disks and clocks.
//!
//! Start one with a [`Launcher`] (the `shoal-node run` binary and the builder's origin node both
//! do); the [`Handle`] it returns reads the daemon's [`Status`], seeds and publishes releases,
//! and stops it.
//!
//! - `launcher`: what a daemon is started with ([`Launcher`]) and why it may not start.
//! - `handle`: the running daemon ([`Handle`]) and its commands.
//! - [`status`]: what a running daemon shows ([`Status`]), on the control socket `shoal-node
//!   status` reads and the Prometheus endpoint.
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
//! - [`runtime`]: what activates releases ([`Runtime`]): stage only, or the Docker Engine.
//! - `driver`: the event loop mapping inputs to the core and its outputs to effects, and the
//!   start-up.

pub mod config;
mod driver;
pub mod enroll;
mod handle;
pub mod identity;
pub mod launch;
mod launcher;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod quic;
pub mod runtime;
pub mod state;
pub mod status;
pub mod store;
pub mod transfer;

pub use handle::{Handle, OfferError, PublishError};
pub use launcher::{
    DEFAULT_MAX_UPLOADS, Launcher, SourceFn, StartError, TuneFn, WallClock, system_clock,
};
pub use runtime::{BoxFuture, Runtime, StageOnly};
pub use status::{MILESTONES_KEPT, Milestone, PeerStatus, Status};
