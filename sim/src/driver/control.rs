//! The rollout controller as the simulator drives it: the builder's own controller core
//! ([`shoal_rollout::Controller`]) fed with the devices' signed status reports; its
//! actions become signed wave control messages the origin publishes on the gossip mesh.

use shoal_node_core::GossipMessage;
use shoal_protocol::{DeviceId, Envelope, RolloutPlan, encoding, verify};
use shoal_rollout::{Controller, State};
use shoal_testing::{TEST_EPOCH, TestFleet, TestRelease};

use super::setup::FLEET;
use crate::net::Nanos;

fn millis(t: Nanos) -> u64 {
    t / 1_000_000
}

#[derive(Debug)]
pub(crate) struct Control {
    plan: RolloutPlan,
    fleet: Option<(TestFleet, TestRelease, Vec<DeviceId>)>,
    controller: Option<Controller>,
    armed: Option<u64>,
    rejected_reports: u64,
}

impl Control {
    pub(crate) fn new(plan: RolloutPlan) -> Control {
        Control {
            plan,
            fleet: None,
            controller: None,
            armed: None,
            rejected_reports: 0,
        }
    }

    /// The fleet, release and device list the controller will steer.
    pub(crate) fn bind(&mut self, fleet: TestFleet, release: TestRelease, devices: Vec<DeviceId>) {
        self.fleet = Some((fleet, release, devices));
    }

    /// Start the rollout (wave 0 opens); returns the gossip messages to publish.
    pub(crate) fn start(&mut self, now: Nanos) -> Vec<Vec<u8>> {
        let Some((_, release, devices)) = &self.fleet else {
            return Vec::new();
        };
        self.controller = Some(Controller::with_devices(
            FLEET,
            release.announcement.sequence,
            release.announcement.manifest_digest,
            self.plan.clone(),
            devices.iter().copied(),
            None,
            millis(now),
        ));
        self.actions(now)
    }

    fn actions(&mut self, now: Nanos) -> Vec<Vec<u8>> {
        let (Some(controller), Some((fleet, _, _))) =
            (self.controller.as_mut(), self.fleet.as_ref())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(action) = controller.poll_action() {
            let issued = TEST_EPOCH.plus_secs(now / 1_000_000_000);
            if let Some(wc) = controller.wave_control(&action, issued) {
                let env = Envelope::seal(&wc, &[&fleet.release_key]);
                out.push(GossipMessage::WaveControl(encoding::encode(&env)).encode());
            }
        }
        out
    }

    /// A status report envelope reached the builder.
    pub(crate) fn on_report(&mut self, now: Nanos, envelope: &[u8]) -> Vec<Vec<u8>> {
        match verify::status_report(envelope) {
            Ok(report) => {
                if let Some(controller) = self.controller.as_mut() {
                    controller.handle_report(millis(now), &report);
                }
            }
            Err(_) => self.rejected_reports += 1,
        }
        self.actions(now)
    }

    /// The controller's timer fired.
    pub(crate) fn tick(&mut self, now: Nanos) -> Vec<Vec<u8>> {
        self.armed = None;
        if let Some(controller) = self.controller.as_mut() {
            controller.handle_timeout(millis(now));
        }
        self.actions(now)
    }

    /// A new wake-up time to arm, if it changed.
    pub(crate) fn take_tick(&mut self) -> Option<Nanos> {
        let next = self.controller.as_ref()?.poll_timeout()?;
        if self.armed == Some(next) {
            return None;
        }
        self.armed = Some(next);
        Some(next * 1_000_000)
    }

    /// Waves opened so far and when.
    pub(crate) fn opened(&self) -> Vec<(u32, Nanos)> {
        let Some(controller) = &self.controller else {
            return Vec::new();
        };
        (0..self.plan.waves.len() as u32)
            .filter_map(|w| controller.opened_at_ms(w).map(|t| (w, t * 1_000_000)))
            .collect()
    }

    /// The highest wave opened, if the rollout started.
    pub(crate) fn max_open(&self) -> Option<u32> {
        self.controller.as_ref().map(Controller::open_wave)
    }

    /// Whether the rollout paused or halted.
    pub(crate) fn paused(&self) -> bool {
        self.controller
            .as_ref()
            .is_some_and(|c| matches!(c.state(), State::Paused(_) | State::Halted))
    }

    /// Whether the rollout reached a state it will not leave by itself.
    pub(crate) fn settled(&self) -> bool {
        self.controller
            .as_ref()
            .is_some_and(|c| *c.state() != State::Running)
    }

    /// Status reports whose signature did not verify.
    pub(crate) fn rejected_reports(&self) -> u64 {
        self.rejected_reports
    }
}
