//! # shoal-node
//!
//! The device side of Shoal.
//!
//! - [`core`]: the device's sans-IO state machine ([`core::Node`]): what to trust, fetch,
//!   advertise, apply and report. It is its own crate, `shoal-node-core` (`node/core/`), whose
//!   dependencies (`shoal-protocol`, `serde`, `thiserror`) keep it free of clocks, sockets and
//!   files; re-exported here.
//! - `daemon` (feature `daemon`, on by default): the tokio driver with libp2p, quinn, bollard and
//!   the on-disk store.
//! - [`wire`] (feature `wire`, part of `daemon`): decoders of the bytes peers send on the data
//!   plane (control frames, blob frames), with no I/O; `node/fuzz` fuzzes them.

pub use shoal_node_core as core;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "wire")]
pub mod wire;
