//! How the HTTP layer steers the live rollouts without depending on the rollout loop: the
//! [`Steering`] trait, and what it answers: a fleet's rollout [`Progress`] as operators see it,
//! or a [`LiveError`].
//!
//! [`crate::live::Rollouts`] implements it; the [`crate::app::App`] holds it once the server
//! started the loop, so the API, the operator's routes and the dashboard reach it through the
//! app.

use serde::{Deserialize, Serialize};
use shoal_node::daemon::BoxFuture;

/// An operator's command to a fleet's current rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// No further device activates until resumed.
    Pause,
    /// Resume a paused rollout.
    Resume,
    /// Open the next wave now.
    Promote,
    /// Halt the release and roll back to the previous release's content as a new sequence.
    Abort,
}

/// The live rollouts, as the HTTP layer steers them.
pub trait Steering: Send + Sync + 'static {
    /// The fleet's rollout progress, if it has one.
    fn progress(&self, fleet: &str) -> Option<Progress>;
    /// Carries out `command` on the fleet's current rollout; its progress after.
    fn steer(&self, fleet: &str, command: Command) -> BoxFuture<Result<Progress, LiveError>>;
    /// A fleet or device pin of `fleet` changed (already stored).
    fn pins_changed(&self, fleet: &str) -> BoxFuture<Result<(), LiveError>>;
}

/// Why an operator command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// The fleet has no rollout (nothing was published yet).
    #[error("fleet {0:?} has no rollout")]
    NoRollout(String),
    /// No such fleet.
    #[error("no fleet {0:?}")]
    NoFleet(String),
    /// The command does not apply in the rollout's state.
    #[error("cannot {command} a rollout that is {state}")]
    NotNow {
        /// The command.
        command: &'static str,
        /// The state.
        state: String,
    },
    /// The database or the gossip failed.
    #[error("{0}")]
    Internal(String),
    /// The live loop stopped.
    #[error("the rollout loop stopped")]
    Stopped,
}

/// One wave's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveProgress {
    /// 0-based.
    pub wave: u32,
    /// Percent of the fleet in this wave.
    pub percent: u8,
    /// Devices assigned to it.
    pub devices: u32,
    /// Devices that reported.
    pub reporting: u32,
    /// Devices healthy.
    pub healthy: u32,
    /// Devices failed or rolled back.
    pub failed: u32,
    /// Whether it is open (its devices may activate).
    pub open: bool,
    /// When it opened (Unix milliseconds).
    pub opened_at_ms: Option<u64>,
}

/// One device's latest report in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// Device id (hex).
    pub device: String,
    /// Its wave.
    pub wave: u32,
    /// Its latest state (`staged`, `healthy`, ...).
    pub state: String,
    /// The report's detail.
    pub detail: String,
}

/// A rollout's progress, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The fleet.
    pub fleet: String,
    /// The release.
    pub sequence: u64,
    /// Its manifest digest (hex).
    pub manifest_digest: String,
    /// `running`, `paused`, `halted` or `complete`.
    pub state: String,
    /// Why it paused.
    pub pause_reason: Option<String>,
    /// The highest open wave.
    pub open_wave: u32,
    /// Per wave.
    pub waves: Vec<WaveProgress>,
    /// Per device that reported.
    pub devices: Vec<DeviceProgress>,
    /// The release an abort returns to.
    pub previous: Option<u64>,
    /// Wave control messages published.
    pub wave_controls: u64,
    /// Devices held out of the release because they are pinned to another one (hex).
    #[serde(default)]
    pub held_devices: Vec<String>,
}
