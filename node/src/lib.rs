//! # shoal-node
//!
//! The device side of Shoal.
//!
//! - [`core`]: the device's sans-IO state machine ([`core::Node`]): what to trust, fetch,
//!   advertise, apply and report. No async, no sockets, no clock; depends only on
//!   `shoal-protocol`, `serde` and `thiserror`, so it builds with `--no-default-features`.
//! - `daemon` (feature `daemon`, on by default): the tokio driver with libp2p, quinn, bollard and
//!   the on-disk store.
//! - [`wire`] (feature `wire`, part of `daemon`): decoders of the bytes peers send on the data
//!   plane (control frames, blob frames), with no I/O; `node/fuzz` fuzzes them.
//! - `testing` (feature `testing`): signed test releases for tests and the simulator.

pub mod core;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "wire")]
pub mod wire;
