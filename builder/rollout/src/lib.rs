//! # shoal-rollout: the rollout controller core
//!
//! [`Controller`] steers one release through the waves of its [`shoal_protocol::RolloutPlan`], from the devices'
//! signed status reports, and does nothing itself: it takes reports and time as arguments and
//! yields [`Action`]s that the builder (or the simulator) carries out by signing and publishing
//! [`shoal_protocol::WaveControl`] messages ([`Controller::wave_control`] numbers them) or, on abort, by
//! publishing a new release. It builds without the `server` feature.
//!
//! ## Rules
//!
//! - Wave 0 opens when the controller is created.
//! - A report counts once per device: the latest (by report time, then state order) wins.
//!   Reports for another fleet, sequence or manifest, or (with a device list) from an unknown
//!   device, are ignored. `healthy` is a success; `failed` and `rolled_back` are failures;
//!   anything else is still in progress and concludes nothing.
//! - The open wave **succeeds** once at least its minimum sample (capped at the wave's size) has
//!   concluded, the healthy share of those reaches the success threshold, and its bake time has
//!   passed since it opened. Then the next wave opens, or, after the last, the rollout completes.
//! - With the fleet's device list ([`Controller::with_devices`]), a wave with no device in it
//!   (none of the list falls in it, or all of them are held) is **skipped**: it succeeds as soon
//!   as it is judged, without its bake time, so a lone device in a late wave does not wait behind
//!   empty ones. [`Controller::poll_timeout`] is due at once while the open wave is such a wave.
//!   From wave sizes alone ([`Controller::new`]) an empty wave succeeds after its bake time.
//! - Any open wave whose failures reach its error threshold — counted over the larger of its
//!   concluded reports and its minimum sample, so two early failures in a wave of a hundred do
//!   not stop everything, but a sample's worth do — **pauses** the rollout.
//! - A wave that has not succeeded by the progress deadline after it opened pauses the rollout.
//! - Too few reports means wait, never advance.
//! - Operator commands: [`Controller::pause`], [`Controller::resume`], [`Controller::promote`]
//!   (open the next wave now), [`Controller::abort`] (halt, and roll back by publishing a new,
//!   higher sequence with the previous release's content).
//! - Pins ([`Controller::set_held`], [`Controller::hold_fleet`], [`Controller::release_fleet`],
//!   [`Controller::abort_to`]): devices pinned to another release are **held**: a signed `Hold`
//!   list tells them not to activate this release (it goes out before any queued wave opening),
//!   and they count in no wave's size or reports while held. A fleet pin to another release holds
//!   a rollout that has not started: no wave opens until the pin goes (the devices stage the
//!   release meanwhile); one that has started is halted and rolled forward to the pinned
//!   release's content.

mod controller;

pub use controller::{Action, Controller, PauseReason, State, WaveStats};
