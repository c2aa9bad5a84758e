//! [`Snapshot`]: what a node must remember across a restart.
//!
//! The core emits [`super::Output::Persist`] whenever its durable state changes: a new highest
//! release, a verified manifest, a wave control message, a change of phase, and (at most every
//! [`super::Config::persist_interval_ms`]) the set of stored chunks. In particular the highest
//! sequence is persisted *before* the [`super::Output::Apply`] that activates it, so a crash can
//! never make the device accept an older release again. Chunks stored after the last snapshot are
//! fetched again after a resume (the daemon answers those from its store at once).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_protocol::encoding::{LimitError, Wire};
use shoal_protocol::{Digest, ReleaseSeq, UnixTime};

use super::bitfield::Bitfield;

/// Where the node is with its current release.
///
/// Exhaustive: the daemon names each phase in its status, and must learn of a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Announcement verified; fetching the manifest.
    FetchingManifest,
    /// Manifest verified; fetching chunks.
    Fetching,
    /// Every chunk stored; waiting for the device's wave.
    Staged,
    /// Handed to the runtime ([`super::Output::Apply`]).
    Applying,
    /// Running; waiting for the health verdict.
    Running,
    /// Health checks passed: committed.
    Healthy,
    /// Failed and rolled back to the last committed release.
    RolledBack,
    /// Refused (store quota, expiry): it will not be fetched or applied.
    Refused,
    /// Halted by wave control before it was applied here.
    Halted,
}

/// The durable state of a node. Encode it with [`shoal_protocol::encoding::encode`] (it is a
/// [`Wire`] type) or any serde format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The highest release whose announcement was accepted, and its manifest digest: nothing at
    /// or below it (other than itself) is accepted again.
    pub highest: Option<(ReleaseSeq, Digest)>,
    /// The highest release ever handed to the runtime: nothing at or below it is applied again.
    pub applied: Option<ReleaseSeq>,
    /// The last release committed healthy (what a rollback returns to).
    pub committed: Option<ReleaseSeq>,
    /// The current release, if any.
    pub release: Option<ReleaseSnapshot>,
    /// Wall-clock time when the snapshot was made; the node's clock never reads below it.
    pub saved_at: UnixTime,
    /// Trust-root rotation envelopes accepted after the configured root, oldest first; walked
    /// again on resume.
    pub trust_chain: Vec<Vec<u8>>,
}

/// The current release inside a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSnapshot {
    /// Its signed announcement envelope bytes.
    pub announcement: Vec<u8>,
    /// Its signed manifest envelope bytes, once fetched and verified.
    pub manifest: Option<Arc<[u8]>>,
    /// Chunks stored (over the unique chunk list), once the manifest is known.
    pub have: Option<Bitfield>,
    /// The verified wave control envelopes that make its rollout state (the latest `Open` and the
    /// latest other action), in counter order.
    pub controls: Vec<Vec<u8>>,
    /// Its phase.
    pub phase: Phase,
}

/// Most rotation envelopes a node keeps (and resends to a connecting peer).
pub const MAX_TRUST_CHAIN: usize = 256;

impl Wire for Snapshot {
    const KIND: &'static str = "node-snapshot";
    const MAX_BYTES: usize = 17 * 1024 * 1024;
    fn validate(&self) -> Result<(), LimitError> {
        shoal_protocol::encoding::limit("trust chain", self.trust_chain.len(), MAX_TRUST_CHAIN)
    }
}
