//! [`Controller`]: the state machine; see the [module docs](super) for its rules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use shoal_protocol::waves::wave_of;
use shoal_protocol::{
    DeviceId, DeviceState, Digest, MAX_HELD_DEVICES, ReleaseSeq, RolloutPlan, StatusReport,
    UnixTime, WaveAction, WaveControl,
};

/// Most actions queued before the caller polls them (each decision adds at most two).
const MAX_QUEUED_ACTIONS: usize = 64;

/// What the controller asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Publish `WaveAction::Open { wave }`: waves `0..=wave` may activate.
    OpenWave(u32),
    /// Publish `WaveAction::Pause`.
    Pause {
        /// Why.
        reason: PauseReason,
    },
    /// Publish `WaveAction::Resume`.
    Resume,
    /// Publish `WaveAction::Halt`: devices that have not activated the release never will.
    Halt,
    /// Publish `WaveAction::Hold { devices }`: these devices (ascending) do not activate the
    /// release while held.
    Hold(Vec<DeviceId>),
    /// Publish a new release, with a higher sequence, whose content is that of `to_content_of`
    /// (`None`: there was no earlier release to return to).
    RollBack {
        /// The release whose content to republish.
        to_content_of: Option<ReleaseSeq>,
    },
    /// The last wave succeeded: the rollout is complete.
    Complete,
}

impl Action {
    /// The wave control action to publish for this, if any.
    pub fn wave_action(&self) -> Option<WaveAction> {
        match self {
            Action::OpenWave(wave) => Some(WaveAction::Open { wave: *wave }),
            Action::Pause { .. } => Some(WaveAction::Pause),
            Action::Resume => Some(WaveAction::Resume),
            Action::Halt => Some(WaveAction::Halt),
            Action::Hold(devices) => Some(WaveAction::Hold {
                devices: devices.clone(),
            }),
            Action::RollBack { .. } | Action::Complete => None,
        }
    }
}

/// Why the rollout paused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PauseReason {
    /// A wave's failures reached its error threshold.
    ErrorThreshold {
        /// The wave.
        wave: u32,
        /// Failed reports.
        failed: u32,
        /// Concluded reports.
        concluded: u32,
    },
    /// The open wave did not succeed before the progress deadline.
    Deadline {
        /// The wave.
        wave: u32,
    },
    /// The operator paused it.
    Operator,
}

impl std::fmt::Display for PauseReason {
    /// Why, for people: "wave 1: 3 of 5 devices failed".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PauseReason::ErrorThreshold {
                wave,
                failed,
                concluded,
            } => write!(f, "wave {wave}: {failed} of {concluded} devices failed"),
            PauseReason::Deadline { wave } => write!(f, "wave {wave} missed the progress deadline"),
            PauseReason::Operator => f.write_str("paused by an operator"),
        }
    }
}

/// Where the rollout is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Waves are being opened as they succeed.
    Running,
    /// Paused; [`Controller::resume`] continues.
    Paused(PauseReason),
    /// Held by a fleet pin to another release: no wave has opened, and none opens until
    /// [`Controller::release_fleet`] (the devices stage the release meanwhile).
    Held,
    /// Aborted; final.
    Halted,
    /// Every wave succeeded; final.
    Complete,
}

impl State {
    /// The state's name, as the API and the dashboard show it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused(_) => "paused",
            State::Held => "held",
            State::Halted => "halted",
            State::Complete => "complete",
        }
    }
}

/// The reports counted for one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaveStats {
    /// Devices in the wave (as given to the controller).
    pub devices: u32,
    /// Devices that reported anything.
    pub reported: u32,
    /// Devices whose latest report is `healthy`.
    pub healthy: u32,
    /// Devices whose latest report is `failed` or `rolled_back`.
    pub failed: u32,
}

impl WaveStats {
    fn concluded(&self) -> u32 {
        self.healthy + self.failed
    }

    fn add(&mut self, state: DeviceState, sign: i32) {
        let bump = |x: &mut u32| *x = x.saturating_add_signed(sign);
        bump(&mut self.reported);
        match state {
            DeviceState::Healthy => bump(&mut self.healthy),
            DeviceState::Failed | DeviceState::RolledBack => bump(&mut self.failed),
            _ => {}
        }
    }
}

fn state_rank(s: DeviceState) -> u8 {
    match s {
        DeviceState::Staged => 0,
        DeviceState::Applying => 1,
        DeviceState::Running => 2,
        DeviceState::Healthy => 3,
        DeviceState::Failed => 4,
        DeviceState::RolledBack => 5,
    }
}

/// The rollout of one release. Time is monotonic milliseconds chosen by the caller (`now_ms`).
#[derive(Debug)]
pub struct Controller {
    fleet: String,
    sequence: ReleaseSeq,
    manifest_digest: Digest,
    plan: RolloutPlan,
    previous: Option<ReleaseSeq>,
    devices: Option<BTreeSet<DeviceId>>,
    /// Devices held out of the release (pinned elsewhere): not counted in their waves.
    held: BTreeSet<DeviceId>,
    stats: Vec<WaveStats>,
    latest: BTreeMap<DeviceId, (UnixTime, u8, DeviceState, u32)>,
    open: u32,
    opened_at_ms: Vec<Option<u64>>,
    state: State,
    actions: VecDeque<Action>,
    counter: u64,
}

impl Controller {
    /// A controller for release `sequence` (manifest `manifest_digest`) of `fleet`, with
    /// `wave_devices[i]` devices in wave `i` (missing entries count as 0). `previous` is the
    /// release an abort returns to. Wave 0 opens at `now_ms`.
    pub fn new(
        fleet: impl Into<String>,
        sequence: ReleaseSeq,
        manifest_digest: Digest,
        plan: RolloutPlan,
        wave_devices: &[u32],
        previous: Option<ReleaseSeq>,
        now_ms: u64,
    ) -> Controller {
        let n = plan.waves.len().max(1);
        let stats = (0..n)
            .map(|i| WaveStats {
                devices: wave_devices.get(i).copied().unwrap_or(0),
                ..WaveStats::default()
            })
            .collect();
        let mut c = Controller {
            fleet: fleet.into(),
            sequence,
            manifest_digest,
            plan,
            previous,
            devices: None,
            held: BTreeSet::new(),
            stats,
            latest: BTreeMap::new(),
            open: 0,
            opened_at_ms: vec![None; n],
            state: State::Running,
            actions: VecDeque::new(),
            counter: 0,
        };
        c.opened_at_ms[0] = Some(now_ms);
        c.push(Action::OpenWave(0));
        c
    }

    /// Like [`Controller::new`], from the fleet's device list: wave sizes follow from
    /// [`wave_of`], and reports from devices not on the list are ignored.
    pub fn with_devices(
        fleet: impl Into<String>,
        sequence: ReleaseSeq,
        manifest_digest: Digest,
        plan: RolloutPlan,
        devices: impl IntoIterator<Item = DeviceId>,
        previous: Option<ReleaseSeq>,
        now_ms: u64,
    ) -> Controller {
        let fleet = fleet.into();
        let devices: BTreeSet<DeviceId> = devices.into_iter().collect();
        let mut counts = vec![0u32; plan.waves.len().max(1)];
        for d in &devices {
            let w = wave_of(&plan, d, &fleet, sequence) as usize;
            if let Some(c) = counts.get_mut(w) {
                *c += 1;
            }
        }
        let mut c = Controller::new(
            fleet,
            sequence,
            manifest_digest,
            plan,
            &counts,
            previous,
            now_ms,
        );
        c.devices = Some(devices);
        c
    }

    /// Adds a device that joined the fleet during the rollout: from now on it counts in its
    /// wave's size, and its reports are taken. Nothing changes for a known device or for a
    /// controller made from wave sizes alone ([`Controller::new`]). Returns whether it was added.
    pub fn add_device(&mut self, device: DeviceId) -> bool {
        let Some(devices) = self.devices.as_mut() else {
            return false;
        };
        if !devices.insert(device) {
            return false;
        }
        if !self.held.contains(&device) {
            let w = self.wave(&device) as usize;
            self.stats[w].devices += 1;
        }
        true
    }

    fn wave(&self, device: &DeviceId) -> u32 {
        let w = wave_of(&self.plan, device, &self.fleet, self.sequence);
        w.min(self.stats.len() as u32 - 1)
    }

    /// The devices held out of the release.
    pub fn held(&self) -> &BTreeSet<DeviceId> {
        &self.held
    }

    /// Holds exactly `devices` out of the release (an operator pinned them to another one; at
    /// most [`MAX_HELD_DEVICES`], the lowest ids kept): they do not count in their waves' sizes
    /// or reports while held, and an [`Action::Hold`] tells the devices. The hold goes out before
    /// any `OpenWave` still queued, so no held device activates in between. Nothing happens when
    /// the set is unchanged or the rollout is halted. The waves are judged again at the next
    /// report or timeout (not here: at the start of a rollout no device has joined yet, and an
    /// empty wave would be skipped).
    pub fn set_held(&mut self, devices: BTreeSet<DeviceId>) {
        let devices: BTreeSet<DeviceId> = devices.into_iter().take(MAX_HELD_DEVICES).collect();
        if devices == self.held || self.state == State::Halted {
            return;
        }
        let old = std::mem::replace(&mut self.held, devices);
        for d in old
            .symmetric_difference(&self.held)
            .copied()
            .collect::<Vec<_>>()
        {
            let listed = self.devices.as_ref().is_none_or(|l| l.contains(&d));
            let sign = if self.held.contains(&d) { -1 } else { 1 };
            let w = self.wave(&d) as usize;
            if listed {
                let n = &mut self.stats[w].devices;
                *n = n.saturating_add_signed(sign);
            }
            if let Some((_, _, state, w)) = self.latest.get(&d).copied() {
                self.stats[w as usize].add(state, sign);
            }
        }
        let hold = Action::Hold(self.held.iter().copied().collect());
        if self.actions.len() < MAX_QUEUED_ACTIONS {
            let at = self
                .actions
                .iter()
                .position(|a| matches!(a, Action::OpenWave(_)))
                .unwrap_or(self.actions.len());
            self.actions.insert(at, hold);
        }
    }

    /// Fleet pin: holds a release whose rollout has not started (its `OpenWave(0)` not yet
    /// polled): no wave opens until [`Controller::release_fleet`]. Returns whether it did.
    pub fn hold_fleet(&mut self) -> bool {
        let Some(i) = self.actions.iter().position(|a| *a == Action::OpenWave(0)) else {
            return false;
        };
        if self.state != State::Running || self.counter > 0 || self.open != 0 {
            return false;
        }
        self.actions.remove(i);
        self.opened_at_ms[0] = None;
        self.state = State::Held;
        true
    }

    /// The fleet pin no longer holds the release: wave 0 opens at `now_ms`.
    pub fn release_fleet(&mut self, now_ms: u64) {
        if self.state == State::Held {
            self.state = State::Running;
            self.opened_at_ms[0] = Some(now_ms);
            self.push(Action::OpenWave(0));
            self.evaluate(now_ms);
        }
    }

    /// Whether the device is on the controller's list.
    pub fn has_device(&self, device: &DeviceId) -> bool {
        self.devices.as_ref().is_some_and(|d| d.contains(device))
    }

    /// The release this rollout steers.
    pub fn sequence(&self) -> ReleaseSeq {
        self.sequence
    }

    /// Its manifest digest.
    pub fn manifest_digest(&self) -> Digest {
        self.manifest_digest
    }

    /// Its plan.
    pub fn plan(&self) -> &RolloutPlan {
        &self.plan
    }

    /// The release an abort returns to.
    pub fn previous(&self) -> Option<ReleaseSeq> {
        self.previous
    }

    /// The rollout's state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The highest open wave.
    pub fn open_wave(&self) -> u32 {
        self.open
    }

    /// When wave `i` opened, if it has.
    pub fn opened_at_ms(&self, wave: u32) -> Option<u64> {
        self.opened_at_ms.get(wave as usize).copied().flatten()
    }

    /// The counts of wave `i`.
    pub fn stats(&self, wave: u32) -> Option<WaveStats> {
        self.stats.get(wave as usize).copied()
    }

    /// The next action, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Controller::handle_timeout`] is next due (a bake time ending, a deadline).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state != State::Running {
            return None;
        }
        let w = &self.plan.waves[self.open as usize];
        let opened = self.opened_at_ms[self.open as usize]?;
        if self.skipped(self.open) {
            // Due at once: nothing to wait for.
            return Some(opened);
        }
        let bake = opened.saturating_add(w.bake_time_s.saturating_mul(1000));
        let deadline = opened.saturating_add(self.plan.progress_deadline_s.saturating_mul(1000));
        Some(if self.sample_met(self.open) {
            bake.min(deadline)
        } else {
            deadline
        })
    }

    /// Takes a device's report (its signature already checked with
    /// `shoal_protocol::verify::status_report`).
    pub fn handle_report(&mut self, now_ms: u64, report: &StatusReport) {
        if report.fleet != self.fleet
            || report.sequence != self.sequence
            || report.manifest_digest != self.manifest_digest
            || self
                .devices
                .as_ref()
                .is_some_and(|d| !d.contains(&report.device))
        {
            return;
        }
        let key = (report.time, state_rank(report.state));
        // A held device's latest report is kept, and counts once it is no longer held.
        let counted = !self.held.contains(&report.device);
        if let Some((t, r, old, w)) = self.latest.get(&report.device).copied() {
            if (t, r) > key {
                return;
            }
            if counted {
                self.stats[w as usize].add(old, -1);
            }
        }
        let wave = self.wave(&report.device);
        if counted {
            self.stats[wave as usize].add(report.state, 1);
        }
        self.latest
            .insert(report.device, (report.time, key.1, report.state, wave));
        self.evaluate(now_ms);
    }

    /// Re-evaluates at `now_ms` (bake times, deadlines).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.evaluate(now_ms);
    }

    /// Operator: pause.
    pub fn pause(&mut self) {
        if self.state == State::Running {
            self.state = State::Paused(PauseReason::Operator);
            self.push(Action::Pause {
                reason: PauseReason::Operator,
            });
        }
    }

    /// Operator: resume a paused rollout. The open wave's deadline starts again at `now_ms`.
    pub fn resume(&mut self, now_ms: u64) {
        if matches!(self.state, State::Paused(_)) {
            self.state = State::Running;
            self.opened_at_ms[self.open as usize] = Some(now_ms);
            self.push(Action::Resume);
            self.evaluate(now_ms);
        }
    }

    /// Operator: open the next wave now, whatever the reports say.
    pub fn promote(&mut self, now_ms: u64) {
        if matches!(self.state, State::Running | State::Paused(_)) {
            if matches!(self.state, State::Paused(_)) {
                self.state = State::Running;
                self.push(Action::Resume);
            }
            self.advance(now_ms);
        }
    }

    /// Operator: abort. Halts the release and asks for a rollback release.
    pub fn abort(&mut self) {
        self.abort_to(self.previous);
    }

    /// Halts the release and asks for a release with the content of `to` (an abort, or a
    /// fleet pin to an older release while this one rolls out).
    pub fn abort_to(&mut self, to: Option<ReleaseSeq>) {
        if matches!(self.state, State::Running | State::Paused(_) | State::Held) {
            self.state = State::Halted;
            self.push(Action::Halt);
            self.push(Action::RollBack { to_content_of: to });
        }
    }

    /// The signed-to-be wave control message for `action`, with the next counter (strictly
    /// increasing, starting at 1); `None` for actions that are not wave control.
    pub fn wave_control(&mut self, action: &Action, issued_at: UnixTime) -> Option<WaveControl> {
        let action = action.wave_action()?;
        self.counter += 1;
        Some(WaveControl {
            fleet: self.fleet.clone(),
            sequence: self.sequence,
            manifest_digest: self.manifest_digest,
            counter: self.counter,
            action,
            issued_at,
        })
    }

    fn push(&mut self, a: Action) {
        if self.actions.len() < MAX_QUEUED_ACTIONS {
            self.actions.push_back(a);
        }
    }

    /// The sample the wave needs: its minimum sample, at most its size, at least one.
    fn needed(&self, wave: u32) -> u32 {
        let w = &self.plan.waves[wave as usize];
        let s = &self.stats[wave as usize];
        w.min_sample.min(s.devices).max(1)
    }

    /// Whether `wave` is known to be empty: the device list is known ([`Controller::with_devices`])
    /// and none of its devices is in the wave (or all of them are held). Such a wave succeeds at
    /// once, without waiting for its bake time. From wave sizes alone ([`Controller::new`]) an
    /// empty wave still bakes.
    fn skipped(&self, wave: u32) -> bool {
        self.devices.is_some() && self.stats[wave as usize].devices == 0
    }

    fn sample_met(&self, wave: u32) -> bool {
        let s = &self.stats[wave as usize];
        s.devices == 0 || s.concluded() >= self.needed(wave)
    }

    fn evaluate(&mut self, now_ms: u64) {
        if self.state != State::Running {
            return;
        }
        for wave in 0..=self.open {
            let w = &self.plan.waves[wave as usize];
            let s = self.stats[wave as usize];
            let base = s.concluded().max(w.min_sample).max(1);
            if s.failed > 0
                && u64::from(s.failed) * 100 >= u64::from(w.error_threshold_pct) * u64::from(base)
            {
                let reason = PauseReason::ErrorThreshold {
                    wave,
                    failed: s.failed,
                    concluded: s.concluded(),
                };
                self.state = State::Paused(reason.clone());
                self.push(Action::Pause { reason });
                return;
            }
        }
        let wave = self.open;
        let w = &self.plan.waves[wave as usize];
        let s = self.stats[wave as usize];
        let Some(opened) = self.opened_at_ms[wave as usize] else {
            return;
        };
        let baked = now_ms >= opened.saturating_add(w.bake_time_s.saturating_mul(1000));
        let success = s.devices == 0
            || (s.concluded() >= self.needed(wave)
                && u64::from(s.healthy) * 100
                    >= u64::from(w.success_threshold_pct) * u64::from(s.concluded()));
        if success && (baked || self.skipped(wave)) {
            self.advance(now_ms);
        } else if now_ms
            >= opened.saturating_add(self.plan.progress_deadline_s.saturating_mul(1000))
        {
            let reason = PauseReason::Deadline { wave };
            self.state = State::Paused(reason.clone());
            self.push(Action::Pause { reason });
        }
    }

    fn advance(&mut self, now_ms: u64) {
        if self.open as usize + 1 >= self.plan.waves.len() {
            self.state = State::Complete;
            self.push(Action::Complete);
            return;
        }
        self.open += 1;
        self.opened_at_ms[self.open as usize] = Some(now_ms);
        self.push(Action::OpenWave(self.open));
        // An empty or already-concluded wave may succeed at once.
        self.evaluate(now_ms);
    }
}
