//! The small signed messages: [`Announcement`], [`WaveControl`], [`StatusReport`].

use serde::{Deserialize, Serialize};

use crate::encoding::{LimitError, Wire, limit};
use crate::manifest::MAX_NAME_BYTES;
use crate::{DeviceId, Digest, ReleaseSeq, UnixTime};

/// Announces a release. Gossiped fleet-wide inside an [`crate::Envelope`] signed by release keys;
/// the manifest itself is then fetched like a chunk and checked against `manifest_digest` and
/// `manifest_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The fleet.
    pub fleet: String,
    /// The release sequence number.
    pub sequence: ReleaseSeq,
    /// Target architecture, so devices of another one need not fetch the manifest.
    pub arch: String,
    /// BLAKE3 of the manifest envelope's encoded bytes.
    pub manifest_digest: Digest,
    /// Size of those bytes.
    pub manifest_size: u64,
    /// Total unique chunk bytes of the release (what a fresh device fetches).
    pub release_bytes: u64,
    /// After this instant the announcement is refused.
    pub expires: UnixTime,
}

impl Announcement {
    /// The largest signed announcement envelope, in bytes.
    pub const MAX_SIGNED_BYTES: usize = 4096;
}

impl Wire for Announcement {
    const KIND: &'static str = "announcement";
    const MAX_BYTES: usize = 1024;
    fn validate(&self) -> Result<(), LimitError> {
        limit("fleet", self.fleet.len(), MAX_NAME_BYTES)?;
        limit("arch", self.arch.len(), MAX_NAME_BYTES)
    }
}

/// Most devices one [`WaveAction::Hold`] names.
pub const MAX_HELD_DEVICES: usize = 256;

/// What a wave control message tells the devices of a release.
///
/// New variants go at the end: postcard encodes the variant's index, so the bytes of the
/// existing ones never change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaveAction {
    /// Waves `0..=wave` may activate.
    Open {
        /// The highest open wave (0-based).
        wave: u32,
    },
    /// No device activates until resumed (devices already running it stay).
    Pause,
    /// Undo a pause.
    Resume,
    /// The release is abandoned: devices that have not activated it never will.
    Halt,
    /// These devices (pinned by an operator to another release) do not activate this release
    /// while held, whatever their wave; devices already running it stay. The list replaces that
    /// of any earlier `Hold` for the release; an empty list holds no one. At most
    /// [`MAX_HELD_DEVICES`]; the builder lists them in ascending order, devices read a set.
    Hold {
        /// The held devices.
        devices: Vec<DeviceId>,
    },
}

/// Steers a release's rollout. Signed by release keys; `counter` strictly increases per release
/// so an old message (say "open wave 2" from before a halt) cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveControl {
    /// The fleet.
    pub fleet: String,
    /// The release it steers.
    pub sequence: ReleaseSeq,
    /// That release's manifest digest.
    pub manifest_digest: Digest,
    /// Strictly increasing per release.
    pub counter: u64,
    /// What to do.
    pub action: WaveAction,
    /// When the builder issued it.
    pub issued_at: UnixTime,
}

impl Wire for WaveControl {
    const KIND: &'static str = "wave-control";
    /// Room for a full [`WaveAction::Hold`] list; signed, it stays under the gossip cap.
    const MAX_BYTES: usize = 9 * 1024;
    fn validate(&self) -> Result<(), LimitError> {
        limit("fleet", self.fleet.len(), MAX_NAME_BYTES)?;
        if let WaveAction::Hold { devices } = &self.action {
            limit("held devices", devices.len(), MAX_HELD_DEVICES)?;
        }
        Ok(())
    }
}

/// Where a device is with a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Every chunk is stored and verified; waiting for the device's wave.
    Staged,
    /// The update is being applied.
    Applying,
    /// The release's containers run; health not yet settled.
    Running,
    /// Health checks passed; the release is committed.
    Healthy,
    /// Applying or health checks failed.
    Failed,
    /// After a failure the device went back to its last committed release.
    RolledBack,
}

impl DeviceState {
    /// The state as shown to people (`staged`, `rolled_back`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceState::Staged => "staged",
            DeviceState::Applying => "applying",
            DeviceState::Running => "running",
            DeviceState::Healthy => "healthy",
            DeviceState::Failed => "failed",
            DeviceState::RolledBack => "rolled_back",
        }
    }
}

/// A device's report on a release, signed by the device's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The fleet.
    pub fleet: String,
    /// Who reports.
    pub device: DeviceId,
    /// The release.
    pub sequence: ReleaseSeq,
    /// Its manifest digest, binding the report to the exact release.
    pub manifest_digest: Digest,
    /// The state reached.
    pub state: DeviceState,
    /// When (device clock).
    pub time: UnixTime,
    /// Fresh per report, so replays are recognisable.
    pub nonce: u64,
    /// A short human-readable detail (an error message), at most 1 KiB.
    pub detail: String,
}

impl Wire for StatusReport {
    const KIND: &'static str = "status-report";
    const MAX_BYTES: usize = 2048;
    fn validate(&self) -> Result<(), LimitError> {
        limit("fleet", self.fleet.len(), MAX_NAME_BYTES)?;
        limit("detail", self.detail.len(), 1024)
    }
}
