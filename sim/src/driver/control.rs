//! The rollout controller as the simulator drives it: status reports in, signed wave control
//! messages out. (Interim: opens wave 0 only, until the builder's controller core is wired in.)

use shoal_node::testing::{TestFleet, TestRelease};
use shoal_protocol::{RolloutPlan, WaveAction};

use crate::net::Nanos;

#[derive(Debug)]
pub(crate) struct Control {
    plan: RolloutPlan,
    fleet: Option<(TestFleet, TestRelease)>,
    counter: u64,
    opened: Vec<(u32, Nanos)>,
    tick: Option<Nanos>,
}

impl Control {
    pub(crate) fn new(plan: RolloutPlan, _devices: u32) -> Control {
        Control {
            plan,
            fleet: None,
            counter: 0,
            opened: Vec::new(),
            tick: None,
        }
    }

    pub(crate) fn bind(&mut self, fleet: TestFleet, release: TestRelease) {
        self.fleet = Some((fleet, release));
    }

    fn sign(&mut self, action: WaveAction) -> Vec<u8> {
        self.counter += 1;
        let (f, r) = self.fleet.as_ref().expect("bound before start");
        f.wave_control(r, self.counter, action)
    }

    pub(crate) fn start(&mut self, now: Nanos) -> Vec<Vec<u8>> {
        self.opened.push((0, now));
        vec![self.sign(WaveAction::Open { wave: 0 })]
    }

    pub(crate) fn on_report(&mut self, _now: Nanos, _envelope: &[u8]) -> Vec<Vec<u8>> {
        Vec::new()
    }

    pub(crate) fn tick(&mut self, _now: Nanos) -> Vec<Vec<u8>> {
        Vec::new()
    }

    pub(crate) fn take_tick(&mut self) -> Option<Nanos> {
        self.tick.take()
    }

    pub(crate) fn opened(&self) -> Vec<(u32, Nanos)> {
        self.opened.clone()
    }

    pub(crate) fn max_open(&self) -> Option<u32> {
        self.opened.iter().map(|o| o.0).max()
    }

    pub(crate) fn paused(&self) -> bool {
        false
    }

    pub(crate) fn settled(&self) -> bool {
        self.plan.waves.len() == 1
    }
}
