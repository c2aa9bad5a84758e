//! The rollout of a fleet's newest release ([`Live`]): its [`shoal_rollout::Controller`] and what
//! it has seen, and how one stored [`Event`] is fed to it ([`apply`]), live or replayed.

use std::collections::BTreeMap;

use shoal_protocol::waves::wave_of;
use shoal_protocol::{DeviceId, DeviceState, Digest, ReleaseManifest, UnixTime};
use shoal_rollout::Controller;

use super::persist::{Event, RolloutRow};

/// The rollout of the fleet's newest release.
pub(super) struct Live {
    pub(super) controller: Controller,
    pub(super) devices: BTreeMap<DeviceId, (u32, DeviceState, String)>,
    pub(super) wave_controls: u64,
    /// What the release runs ([`content_key`]).
    pub(super) content: Digest,
}

/// What a release runs, for comparing releases: the manifest's commit, architecture, device type
/// and services (a rollback release has its source's).
pub(super) fn content_key(m: &ReleaseManifest) -> Digest {
    let bytes =
        serde_json::to_vec(&(&m.commit, &m.arch, &m.device_type, &m.services)).unwrap_or_default();
    Digest::of(&bytes)
}

pub(super) fn new_live(fleet: &str, row: &RolloutRow, digest: Digest, content: Digest) -> Live {
    Live {
        controller: Controller::with_devices(
            fleet,
            row.sequence,
            digest,
            row.plan.clone(),
            std::iter::empty(),
            row.previous,
            row.started_ms,
        ),
        devices: BTreeMap::new(),
        wave_controls: 0,
        content,
    }
}

/// Takes the actions a replayed event yielded: they were carried out before the restart, so
/// only the wave control counter advances.
pub(super) fn drain_replayed(live: &mut Live) {
    while let Some(action) = live.controller.poll_action() {
        if let Some(wc) = live.controller.wave_control(&action, UnixTime(0)) {
            live.wave_controls = wc.counter;
        }
    }
}

/// Feeds one stored event to the controller.
pub(super) fn apply(live: &mut Live, at_ms: u64, event: &Event) {
    let c = &mut live.controller;
    match event {
        Event::Device(d) => {
            c.add_device(*d);
        }
        Event::Report(r) => {
            c.handle_report(at_ms, r);
            let wave = wave_of(c.plan(), &r.device, &r.fleet, r.sequence);
            if c.has_device(&r.device) {
                live.devices
                    .insert(r.device, (wave, r.state, r.detail.clone()));
            }
        }
        Event::Timeout => c.handle_timeout(at_ms),
        Event::Pause => c.pause(),
        Event::Resume => c.resume(at_ms),
        Event::Promote => c.promote(at_ms),
        Event::Abort => c.abort(),
        Event::Hold(devices) => c.set_held(devices.iter().copied().collect()),
        Event::HoldFleet => {
            c.hold_fleet();
        }
        Event::ReleaseFleet => c.release_fleet(at_ms),
        Event::PinFleet(to) => c.abort_to(Some(*to)),
    }
}
