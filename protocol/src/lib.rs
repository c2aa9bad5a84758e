//! # shoal-protocol
//!
//! The wire and file types every part of Shoal agrees on, and the pure functions over them. Nothing
//! here does I/O (beyond a [`std::io::Read`] handed in), reads a clock or draws randomness: times
//! and keys are arguments.
//!
//! The model, in the order a release travels:
//!
//! - [`Digest`]: BLAKE3, 32 bytes; every chunk, layer and manifest is named by one.
//! - [`chunking`]: content-defined chunking (FastCDC) of a layer stream into [`ChunkRef`]s; a
//!   [`LayerRef`] is the ordered chunk list plus its own digest.
//! - [`ReleaseManifest`]: what a release is (services, layers, compose settings, rollout plan).
//! - [`Announcement`], [`WaveControl`], [`StatusReport`]: the small signed messages gossiped
//!   between the builder and the devices.
//! - [`encoding`]: the canonical byte form (versioned postcard) with capped, strict decoders.
//! - [`Envelope`]: payload bytes plus ed25519 signatures by key id; [`TrustRoot`]: who may sign
//!   what, rotated TUF-style.
//! - [`registration`]: a device's signed registration with a fleet's provisioning key.
//! - [`verify`]: the one entry point a device uses to accept an announcement or a manifest.
//! - [`waves`]: which wave of a rollout a device belongs to.

#![deny(missing_docs)]

pub mod chunking;
mod digest;
pub mod encoding;
pub mod envelope;
pub mod keys;
pub mod manifest;
pub mod messages;
pub mod registration;
pub mod time;
pub mod trust;
pub mod verify;
pub mod waves;

pub use chunking::{ChunkParams, ChunkRef, LayerRef};
pub use digest::{Digest, ParseDigestError};
pub use encoding::{DecodeError, Wire};
pub use envelope::{Envelope, SignatureEntry, SignatureError, SigningKey};
pub use keys::{DeviceId, KeyId, PublicKey, Signature};
pub use manifest::{
    HealthCheck, ImageRef, ReleaseManifest, RolloutPlan, Service, ServiceSettings, UpdateStrategy,
    Wave,
};
pub use messages::{
    Announcement, DeviceState, MAX_HELD_DEVICES, StatusReport, WaveAction, WaveControl,
};
pub use time::{ReleaseSeq, UnixTime};
pub use trust::TrustRoot;
