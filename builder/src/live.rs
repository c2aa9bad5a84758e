//! The live rollout loop: drives each fleet's current release through its waves.
//!
//! [`Rollouts::start`] runs one task per fleet. A fleet's task owns the
//! [`shoal_rollout::Controller`] of the fleet's newest seeded release and feeds it:
//!
//! - the devices' verified status reports, fanned out by the origin nodes ([`crate::origin`]);
//! - its timers (bake times, the progress deadline), in wall-clock milliseconds;
//! - operator commands ([`Rollouts::pause`], [`Rollouts::resume`], [`Rollouts::promote`],
//!   [`Rollouts::abort`]).
//!
//! Each wave control action the controller yields is signed with the release key, stored, and
//! gossiped through the fleet's origin ([`Gossip::publish`]). An abort halts the release and
//! rolls back by publishing a new, higher sequence whose services are those of the previous
//! release (the last one whose rollout completed, else the one before): a new manifest and
//! announcement, signed, stored, recorded as a release with git ref `rollback`, and seeded like a
//! push; the rollback goes to every wave at once.
//!
//! Devices are counted in their waves as the origin hears of them: those connected to the origin
//! when a release is seeded, every device the fleet's origin heard from before (stored), and any
//! device whose verified report arrives later, as long as it is registered in the fleet
//! ([`crate::registry`]): reports from other devices are ignored. (A fleet with no registered
//! device at all, whose devices never enrolled, counts every device its origin hears of, as
//! before the registry, and the loop logs a warning at each rollout.)
//!
//! ## Pins
//!
//! Pins ([`Rollouts::pins_changed`] after the operator API sets one) act on the devices through
//! the rollout of the fleet's newest release:
//!
//! - A device pinned to a release whose content is not this release's is **held**: a signed
//!   `Hold` wave control message lists it, it does not activate the release whatever its wave,
//!   and it counts in no wave. Unpinned, a new `Hold` without it lets it activate when its wave is
//!   open. (Content: the manifest's commit, architecture, device type and services, so a
//!   rollback release of the pinned one is not held.)
//! - A fleet pin to another release holds a new release's rollout before it starts: the release is
//!   built, seeded and staged by the devices, but no wave opens (state `held`) until the pin is
//!   removed (or moved to that release). A fleet pinned to an older release than the one rolling
//!   out (or rolled out) goes back by rolling forward, as an abort does: the rollout is halted and
//!   a new, higher sequence with the pinned release's content goes to every device at once.
//!
//! ## Restarts
//!
//! Every input is stored ([`persist::Event`]) before it is fed, and the controller is
//! deterministic, so on start-up a fleet's newest rollout is rebuilt by replaying its events: it
//! reaches the same wave, counters and state, and no wave opens that had not opened. The wave
//! control messages already published are gossiped again in order (devices drop the ones they
//! have). An abort whose rollback release was not yet published is finished.

pub mod persist;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_node::core::GossipMessage;
use shoal_node::daemon::BoxFuture;
use shoal_protocol::waves::wave_of;
use shoal_protocol::{
    DeviceId, DeviceState, Digest, Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan,
    StatusReport, UnixTime, encoding,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::app::{App, now_s};
use crate::db::Fleet;
use crate::origin::{Origins, Seeded};
use crate::store::Kind;
use persist::{Event, RolloutRow};
use shoal_rollout::{Action, Controller, State};

/// Commands and inputs queued for one fleet's task.
const FLEET_QUEUE: usize = 1024;
/// Smallest gap between two timer wake-ups, so a timer due in the past cannot spin.
const MIN_TIMER_GAP_MS: u64 = 1_000;

/// Where the live loop gossips and seeds (the origin nodes; tests use a fake).
pub trait Gossip: Send + Sync + 'static {
    /// Gossips an encoded [`GossipMessage`] through the fleet's origin.
    fn publish(&self, fleet: &str, bytes: Vec<u8>) -> BoxFuture<Result<(), String>>;
    /// Seeds a stored, signed release through the fleet's origin.
    fn seed(
        &self,
        fleet: &str,
        announcement: Vec<u8>,
        manifest_bytes: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> BoxFuture<Result<(), String>>;
    /// Devices connected to the fleet's origin now.
    fn connected(&self, fleet: &str) -> BoxFuture<Vec<DeviceId>>;
}

/// [`Gossip`] through the builder's origin nodes.
#[derive(Debug, Clone)]
pub struct OriginGossip(pub Arc<Origins>);

impl Gossip for OriginGossip {
    fn publish(&self, fleet: &str, bytes: Vec<u8>) -> BoxFuture<Result<(), String>> {
        let (o, fleet) = (self.0.clone(), fleet.to_string());
        Box::pin(async move { o.publish(&fleet, bytes).await.map_err(|e| e.to_string()) })
    }

    fn seed(
        &self,
        fleet: &str,
        announcement: Vec<u8>,
        manifest_bytes: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> BoxFuture<Result<(), String>> {
        let (o, fleet) = (self.0.clone(), fleet.to_string());
        Box::pin(async move {
            o.seed(&fleet, announcement, manifest_bytes, manifest)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn connected(&self, fleet: &str) -> BoxFuture<Vec<DeviceId>> {
        let (o, fleet) = (self.0.clone(), fleet.to_string());
        Box::pin(async move {
            o.with(&fleet, |origin| {
                origin
                    .handle()
                    .status()
                    .peers
                    .iter()
                    .filter_map(|p| parse_device(&p.device))
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    }
}

fn parse_device(hex_id: &str) -> Option<DeviceId> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(DeviceId(id))
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

enum Cmd {
    Seeded(Seeded),
    Report(StatusReport),
    Pins,
    Operator {
        event: Event,
        reply: oneshot::Sender<Result<Progress, LiveError>>,
    },
}

/// The live rollouts of every fleet. Cheap to clone.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").finish_non_exhaustive()
    }
}

struct Inner {
    app: Arc<App>,
    gossip: Arc<dyn Gossip>,
    fleets: Mutex<BTreeMap<String, mpsc::Sender<Cmd>>>,
    progress: Mutex<BTreeMap<String, Progress>>,
    clock: Clock,
}

/// Wall-clock milliseconds (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in Unix milliseconds.
pub fn system_clock_ms() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

impl Rollouts {
    /// Starts the loop: resumes every fleet's newest rollout from the database, then follows
    /// `seeded` releases and `reports`.
    pub async fn start(
        app: Arc<App>,
        gossip: Arc<dyn Gossip>,
        mut seeded: broadcast::Receiver<Seeded>,
        mut reports: broadcast::Receiver<StatusReport>,
        clock: Clock,
    ) -> Result<Rollouts, LiveError> {
        let r = Rollouts {
            inner: Arc::new(Inner {
                app: app.clone(),
                gossip,
                fleets: Mutex::new(BTreeMap::new()),
                progress: Mutex::new(BTreeMap::new()),
                clock,
            }),
        };
        let names = app
            .db
            .fleets()
            .await
            .map_err(|e| LiveError::Internal(e.to_string()))?;
        for name in names {
            r.fleet_task(&name).await?;
        }
        let this = r.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    s = seeded.recv() => match s {
                        Ok(s) => {
                            let fleet = s.fleet.clone();
                            this.send(&fleet, Cmd::Seeded(s)).await;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::error!(missed = n, "live loop missed seeded releases");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    rep = reports.recv() => match rep {
                        Ok(rep) => {
                            let fleet = rep.fleet.clone();
                            this.send(&fleet, Cmd::Report(rep)).await;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "live loop missed status reports");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        Ok(r)
    }

    async fn send(&self, fleet: &str, cmd: Cmd) {
        let tx = match self.fleet_task(fleet).await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::warn!(fleet, error = %e, "no rollout task");
                return;
            }
        };
        let _ = tx.send(cmd).await;
    }

    /// The fleet's task, started (and resumed from the database) on first use.
    async fn fleet_task(&self, fleet: &str) -> Result<mpsc::Sender<Cmd>, LiveError> {
        if let Some(tx) = self
            .inner
            .fleets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(fleet)
        {
            return Ok(tx.clone());
        }
        let f = self
            .inner
            .app
            .db
            .fleet(fleet)
            .await
            .map_err(|e| LiveError::Internal(e.to_string()))?
            .ok_or_else(|| LiveError::NoFleet(fleet.to_string()))?;
        let mut task = FleetTask {
            inner: self.inner.clone(),
            fleet: f,
            live: None,
        };
        task.resume().await;
        let (tx, rx) = mpsc::channel(FLEET_QUEUE);
        let mut fleets = self.inner.fleets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = fleets.get(fleet) {
            return Ok(tx.clone());
        }
        fleets.insert(fleet.to_string(), tx.clone());
        drop(fleets);
        tokio::spawn(task.run(rx));
        Ok(tx)
    }

    /// The fleet's rollout progress, if it has one.
    pub fn progress(&self, fleet: &str) -> Option<Progress> {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(fleet)
            .cloned()
    }

    async fn operator(&self, fleet: &str, event: Event) -> Result<Progress, LiveError> {
        let tx = self.fleet_task(fleet).await?;
        let (reply, rx) = oneshot::channel();
        tx.send(Cmd::Operator { event, reply })
            .await
            .map_err(|_| LiveError::Stopped)?;
        rx.await.map_err(|_| LiveError::Stopped)?
    }

    /// Pauses the fleet's rollout: no further device activates until resumed.
    pub async fn pause(&self, fleet: &str) -> Result<Progress, LiveError> {
        self.operator(fleet, Event::Pause).await
    }

    /// Resumes a paused rollout.
    pub async fn resume(&self, fleet: &str) -> Result<Progress, LiveError> {
        self.operator(fleet, Event::Resume).await
    }

    /// Opens the next wave now.
    pub async fn promote(&self, fleet: &str) -> Result<Progress, LiveError> {
        self.operator(fleet, Event::Promote).await
    }

    /// Halts the release and rolls back to the previous release's content as a new sequence.
    pub async fn abort(&self, fleet: &str) -> Result<Progress, LiveError> {
        self.operator(fleet, Event::Abort).await
    }

    /// A fleet or device pin of `fleet` changed (already stored): the fleet's rollout holds or
    /// releases devices, holds or releases the fleet, or rolls forward to the pinned release.
    pub async fn pins_changed(&self, fleet: &str) -> Result<(), LiveError> {
        let tx = self.fleet_task(fleet).await?;
        tx.send(Cmd::Pins).await.map_err(|_| LiveError::Stopped)
    }
}

/// A fleet's pins.
struct Pins {
    fleet: Option<ReleaseSeq>,
    devices: Vec<(DeviceId, ReleaseSeq)>,
}

/// The rollout of the fleet's newest release.
struct Live {
    controller: Controller,
    devices: BTreeMap<DeviceId, (u32, DeviceState, String)>,
    wave_controls: u64,
    /// What the release runs ([`content_key`]).
    content: Digest,
}

struct FleetTask {
    inner: Arc<Inner>,
    fleet: Fleet,
    live: Option<Live>,
}

impl FleetTask {
    fn now_ms(&self) -> u64 {
        (self.inner.clock)()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut last_timer_ms = 0u64;
        loop {
            let wake = self
                .live
                .as_ref()
                .and_then(|l| l.controller.poll_timeout())
                .map(|t| t.max(last_timer_ms + MIN_TIMER_GAP_MS));
            let sleep = match wake {
                Some(t) => Duration::from_millis(t.saturating_sub(self.now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => break,
                },
                _ = tokio::time::sleep(sleep), if wake.is_some() => {
                    let now = self.now_ms();
                    last_timer_ms = now;
                    self.on_timeout(now).await;
                }
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Seeded(s) => {
                if let Err(e) = self.start_rollout(s).await {
                    tracing::error!(fleet = %self.fleet.name, error = %e, "cannot start the rollout");
                }
            }
            Cmd::Report(r) => self.on_report(r).await,
            Cmd::Pins => {
                if let Err(e) = self.reconcile_pins().await {
                    tracing::error!(fleet = %self.fleet.name, error = %e, "cannot apply the pins");
                }
            }
            Cmd::Operator { event, reply } => {
                let result = self.on_operator(event).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Records `event` for the current rollout, then feeds it.
    async fn feed(&mut self, now_ms: u64, event: Event) -> Result<(), LiveError> {
        let Some(live) = self.live.as_ref() else {
            return Err(LiveError::NoRollout(self.fleet.name.clone()));
        };
        let seq = live.controller.sequence();
        persist::append_event(&self.inner.app.db, &self.fleet, seq, now_ms, &event)
            .await
            .map_err(|e| LiveError::Internal(e.to_string()))?;
        if let Some(live) = self.live.as_mut() {
            apply(live, now_ms, &event);
        }
        self.act(false).await;
        Ok(())
    }

    async fn on_report(&mut self, report: StatusReport) {
        if report.fleet != self.fleet.name {
            return;
        }
        // Only devices registered in this fleet count: anyone can make a device key.
        let db = &self.inner.app.db;
        let counted = match crate::registry::store::device(db, &report.device.to_string()).await {
            Ok(Some(d)) => d.fleet == self.fleet.name,
            // A fleet with no registered device at all (its devices never enrolled) counts every
            // device its origin hears of, as before the registry.
            Ok(None) => matches!(
                crate::registry::store::registered_in_fleet(db, self.fleet.id).await,
                Ok(0)
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look a device up");
                false
            }
        };
        if !counted {
            tracing::debug!(device = %report.device.short(), "report from a device not registered in the fleet ignored");
            return;
        }
        let now = self.now_ms();
        if let Err(e) =
            persist::add_device(&self.inner.app.db, &self.fleet, &report.device, now_s()).await
        {
            tracing::warn!(error = %e, "cannot record a device");
        }
        let Some(live) = self.live.as_ref() else {
            return;
        };
        if !live.controller.has_device(&report.device) {
            let _ = self.feed(now, Event::Device(report.device)).await;
        }
        let Some(live) = self.live.as_ref() else {
            return;
        };
        if report.sequence != live.controller.sequence()
            || report.manifest_digest != live.controller.manifest_digest()
        {
            return;
        }
        if let Err(e) = self.feed(now, Event::Report(report)).await {
            tracing::warn!(fleet = %self.fleet.name, error = %e, "report not recorded");
        }
        self.publish_progress();
    }

    async fn on_timeout(&mut self, now_ms: u64) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        // Timeouts that change nothing are not stored: replaying them would change nothing.
        let before = (live.controller.state().clone(), live.controller.open_wave());
        live.controller.handle_timeout(now_ms);
        let after = (live.controller.state().clone(), live.controller.open_wave());
        if before != after {
            let seq = live.controller.sequence();
            if let Err(e) = persist::append_event(
                &self.inner.app.db,
                &self.fleet,
                seq,
                now_ms,
                &Event::Timeout,
            )
            .await
            {
                tracing::error!(error = %e, "cannot record a timeout");
            }
            self.act(false).await;
        }
        self.publish_progress();
    }

    async fn on_operator(&mut self, event: Event) -> Result<Progress, LiveError> {
        let Some(live) = self.live.as_ref() else {
            return Err(LiveError::NoRollout(self.fleet.name.clone()));
        };
        let state = live.controller.state().clone();
        let allowed = match event {
            Event::Pause => state == State::Running,
            Event::Resume => matches!(state, State::Paused(_)),
            Event::Promote => matches!(state, State::Running | State::Paused(_)),
            Event::Abort => matches!(state, State::Running | State::Paused(_) | State::Held),
            _ => false,
        };
        if !allowed {
            let command = match event {
                Event::Pause => "pause",
                Event::Resume => "resume",
                Event::Promote => "promote",
                Event::Abort => "abort",
                _ => "steer",
            };
            return Err(LiveError::NotNow {
                command,
                state: state.name().to_string(),
            });
        }
        let now = self.now_ms();
        self.feed(now, event).await?;
        self.publish_progress();
        self.progress()
            .ok_or_else(|| LiveError::NoRollout(self.fleet.name.clone()))
    }

    /// Carries out the controller's queued actions. `replaying`: only advance the counters.
    async fn act(&mut self, replaying: bool) {
        loop {
            let Some(live) = self.live.as_mut() else {
                return;
            };
            let Some(action) = live.controller.poll_action() else {
                break;
            };
            let issued = UnixTime(now_s() as u64);
            if let Some(wc) = live.controller.wave_control(&action, issued) {
                live.wave_controls = wc.counter;
                if !replaying {
                    let env =
                        Envelope::seal(&wc, &self.inner.app.keys.reloaded().release_signers());
                    let bytes = GossipMessage::WaveControl(encoding::encode(&env)).encode();
                    let seq = wc.sequence;
                    if let Err(e) = persist::insert_wave_control(
                        &self.inner.app.db,
                        &self.fleet,
                        seq,
                        wc.counter,
                        &bytes,
                    )
                    .await
                    {
                        tracing::error!(error = %e, "cannot store a wave control message");
                    }
                    tracing::info!(
                        fleet = %self.fleet.name,
                        sequence = seq.0,
                        counter = wc.counter,
                        action = ?wc.action,
                        "wave control"
                    );
                    if let Err(e) = self.inner.gossip.publish(&self.fleet.name, bytes).await {
                        tracing::error!(fleet = %self.fleet.name, error = %e, "cannot publish wave control");
                    }
                }
            }
            match action {
                Action::RollBack { to_content_of } if !replaying => {
                    // Boxed: the rollback starts a rollout, which acts again.
                    if let Err(e) = Box::pin(self.roll_back(to_content_of)).await {
                        tracing::error!(fleet = %self.fleet.name, error = %e, "rollback failed");
                    }
                }
                _ => {}
            }
        }
        if let Some(live) = self.live.as_ref() {
            let seq = live.controller.sequence();
            let name = live.controller.state().name();
            let _ = persist::set_state(&self.inner.app.db, &self.fleet, seq, name).await;
        }
        self.publish_progress();
    }

    /// A new release was seeded: its rollout replaces the previous one.
    async fn start_rollout(&mut self, s: Seeded) -> Result<(), LiveError> {
        let seq = s.manifest.sequence;
        if let Some(live) = &self.live
            && live.controller.sequence() >= seq
        {
            return Ok(());
        }
        let app = self.inner.app.clone();
        let db = &app.db;
        let internal = |e: crate::db::DbError| LiveError::Internal(e.to_string());
        if let Some(live) = &self.live
            && matches!(live.controller.state(), State::Running | State::Paused(_))
        {
            let old = live.controller.sequence();
            persist::set_state(db, &self.fleet, old, "superseded")
                .await
                .map_err(internal)?;
        }
        // An abort returns to the last release whose rollout completed, else the one before.
        let previous = match persist::last_complete_before(db, &self.fleet, seq)
            .await
            .map_err(internal)?
        {
            Some(p) => Some(p),
            None => self
                .live
                .as_ref()
                .map(|l| l.controller.sequence())
                .filter(|p| *p < seq),
        };
        let started_ms = self.now_ms();
        let row = RolloutRow {
            sequence: seq,
            manifest_digest: s.manifest_digest.to_string(),
            plan: s.manifest.rollout.clone(),
            previous,
            started_ms,
            state: "running".into(),
        };
        persist::insert_rollout(db, &self.fleet, &row)
            .await
            .map_err(internal)?;
        let content = content_key(&s.manifest);
        self.live = Some(new_live(&self.fleet.name, &row, s.manifest_digest, content));
        tracing::info!(fleet = %self.fleet.name, sequence = seq.0, "rollout started");
        // The pins act before anything is published: the fleet pin keeps wave 0 shut, and the
        // held devices' list goes out ahead of it.
        let pins = self.pins().await?;
        let mut start = Vec::new();
        if let Some(p) = pins.fleet
            && !self.same_content(p, seq, content).await
        {
            start.push(Event::HoldFleet);
        }
        let held = self.held_for(&pins, seq, content).await;
        if !held.is_empty() {
            start.push(Event::Hold(held.into_iter().collect()));
        }
        for event in start {
            persist::append_event(db, &self.fleet, seq, started_ms, &event)
                .await
                .map_err(internal)?;
            if let Some(live) = self.live.as_mut() {
                apply(live, started_ms, &event);
            }
        }
        // Wave 0 opens now (unless held); then every registered device the fleet has heard of
        // joins.
        self.act(false).await;
        let registered = self.registered().await?;
        if registered.is_empty() {
            tracing::warn!(fleet = %self.fleet.name, "no device is registered in the fleet: every device the origin hears of counts in the rollout");
        }
        let counts = |d: &DeviceId| registered.is_empty() || registered.contains(d);
        let mut devices: BTreeSet<DeviceId> = persist::devices(db, &self.fleet)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|d| counts(d))
            .collect();
        for d in self.inner.gossip.connected(&self.fleet.name).await {
            if counts(&d)
                && persist::add_device(db, &self.fleet, &d, now_s())
                    .await
                    .map_err(internal)?
            {
                devices.insert(d);
            }
        }
        for d in devices {
            self.feed(started_ms, Event::Device(d)).await?;
        }
        self.publish_progress();
        Ok(())
    }

    /// Rebuilds the fleet's newest rollout from its stored events.
    async fn resume(&mut self) {
        if let Err(e) = self.try_resume().await {
            tracing::error!(fleet = %self.fleet.name, error = %e, "cannot resume the rollout");
        }
    }

    async fn try_resume(&mut self) -> Result<(), LiveError> {
        let app = self.inner.app.clone();
        let db = &app.db;
        let internal = |e: crate::db::DbError| LiveError::Internal(e.to_string());
        let Some(row) = persist::latest_rollout(db, &self.fleet)
            .await
            .map_err(internal)?
        else {
            return Ok(());
        };
        let digest: Digest = row
            .manifest_digest
            .parse()
            .map_err(|_| LiveError::Internal("stored manifest digest does not parse".into()))?;
        // The stored manifest says what the release runs (for pins); without it, only the
        // release itself counts as the same.
        let content = self
            .manifest_by_digest(&digest)
            .map(|m| content_key(&m))
            .unwrap_or(digest);
        let mut live = new_live(&self.fleet.name, &row, digest, content);
        let events = persist::events(db, &self.fleet, row.sequence)
            .await
            .map_err(internal)?;
        // Drain after each event, as the live loop did, so the action queue never overflows and
        // the wave control counter lands where it was; the pins fed at the start went in before
        // the first drain.
        let leading = events.iter().take_while(|(_, e)| e.at_start()).count();
        for (at, event) in &events[..leading] {
            apply(&mut live, *at, event);
        }
        drain_replayed(&mut live);
        for (at, event) in &events[leading..] {
            apply(&mut live, *at, event);
            drain_replayed(&mut live);
        }
        self.live = Some(live);
        self.act(true).await;
        // Gossip the published wave control messages again, in order.
        for bytes in persist::wave_controls(db, &self.fleet, row.sequence)
            .await
            .map_err(internal)?
        {
            let _ = self.inner.gossip.publish(&self.fleet.name, bytes).await;
        }
        // An abort (or a fleet pin) whose rollback never went out is finished now.
        let back_to = events.iter().rev().find_map(|(_, e)| match e {
            Event::Abort => Some(self.live.as_ref().and_then(|l| l.controller.previous())),
            Event::PinFleet(p) => Some(Some(*p)),
            _ => None,
        });
        if let Some(live) = &self.live
            && *live.controller.state() == State::Halted
            && let Some(to) = back_to
            && !persist::has_newer(db, &self.fleet, row.sequence)
                .await
                .map_err(internal)?
        {
            self.roll_back(to).await?;
        }
        // Pins changed while the builder was down act now.
        self.reconcile_pins().await?;
        tracing::info!(
            fleet = %self.fleet.name,
            sequence = row.sequence.0,
            events = events.len(),
            "rollout resumed"
        );
        Ok(())
    }

    /// Publishes a new, higher sequence with the content of `to`.
    async fn roll_back(&mut self, to: Option<ReleaseSeq>) -> Result<(), LiveError> {
        let internal = |e: String| LiveError::Internal(e);
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let of = live.controller.sequence();
        let Some(to) = to else {
            tracing::warn!(fleet = %self.fleet.name, sequence = of.0, "aborted with no earlier release to return to");
            return Ok(());
        };
        let app = self.inner.app.clone();
        let (old, commit) = self.manifest_of(to).await?;

        let _publish = app.publish_lock.lock().await;
        let sequence = app
            .db
            .next_sequence(self.fleet.id)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let created = UnixTime(now_s() as u64);
        let manifest = ReleaseManifest {
            sequence: ReleaseSeq(sequence as u64),
            created,
            expires: created.plus_secs(crate::pipeline::RELEASE_VALIDITY_S),
            rollout: RolloutPlan::all_at_once(),
            ..old
        };
        let (manifest_bytes, ann_bytes) = crate::pipeline::sign(&app, &manifest);
        let manifest_digest = app
            .store
            .put_blob(Kind::Manifest, &manifest_bytes)
            .map_err(|e| internal(e.to_string()))?;
        app.store
            .put(Kind::Announcement, &manifest_digest, &ann_bytes)
            .map_err(|e| internal(e.to_string()))?;
        persist::insert_rollback_release(
            &app.db,
            &self.fleet,
            manifest.sequence,
            &commit,
            of,
            to,
            now_s(),
            manifest.unique_bytes(),
            &manifest_digest.to_string(),
            manifest_bytes.len(),
        )
        .await
        .map_err(|e| internal(e.to_string()))?;
        tracing::info!(
            fleet = %self.fleet.name,
            aborted = of.0,
            sequence,
            content_of = to.0,
            "publishing rollback release"
        );
        let manifest = Arc::new(manifest);
        self.inner
            .gossip
            .seed(
                &self.fleet.name,
                ann_bytes,
                manifest_bytes,
                manifest.clone(),
            )
            .await
            .map_err(internal)?;
        drop(_publish);
        // The origin's seeded event starts the rollback's rollout; start it here too in case
        // the gossip is a fake that sends none (start_rollout ignores a repeat).
        self.start_rollout(Seeded {
            fleet: self.fleet.name.clone(),
            manifest,
            manifest_digest,
        })
        .await
    }

    /// The stored manifest of published release `seq`, and its commit.
    async fn manifest_of(&self, seq: ReleaseSeq) -> Result<(ReleaseManifest, String), LiveError> {
        let internal = |e: String| LiveError::Internal(e);
        let app = &self.inner.app;
        let (digest_hex, commit) = persist::published(&app.db, &self.fleet, seq)
            .await
            .map_err(|e| internal(e.to_string()))?
            .ok_or_else(|| internal(format!("release {} is not stored", seq.0)))?;
        let digest: Digest = digest_hex
            .parse()
            .map_err(|_| internal("stored manifest digest does not parse".into()))?;
        Ok((self.manifest_by_digest(&digest)?, commit))
    }

    fn manifest_by_digest(&self, digest: &Digest) -> Result<ReleaseManifest, LiveError> {
        let internal = |e: String| LiveError::Internal(e);
        let bytes = self
            .inner
            .app
            .store
            .get(Kind::Manifest, digest)
            .map_err(|e| internal(e.to_string()))?
            .ok_or_else(|| internal(format!("manifest {digest} missing")))?;
        let env: Envelope = encoding::decode(&bytes).map_err(|e| internal(e.to_string()))?;
        encoding::decode(&env.payload).map_err(|e| internal(e.to_string()))
    }

    /// Whether published release `pin` runs the content of the rollout's release (`seq`,
    /// content `content`); when unknown (its manifest cannot be read), it does not.
    async fn same_content(&self, pin: ReleaseSeq, seq: ReleaseSeq, content: Digest) -> bool {
        if pin == seq {
            return true;
        }
        match self.manifest_of(pin).await {
            Ok((m, _)) => content_key(&m) == content,
            Err(e) => {
                tracing::warn!(fleet = %self.fleet.name, pinned = pin.0, error = %e, "cannot read a pinned release");
                false
            }
        }
    }

    /// The fleet's pins: its own and its registered devices'.
    async fn pins(&self) -> Result<Pins, LiveError> {
        let internal = |e: crate::db::DbError| LiveError::Internal(e.to_string());
        let db = &self.inner.app.db;
        let fleet = persist::fleet_pin(db, &self.fleet)
            .await
            .map_err(internal)?;
        let devices = crate::registry::devices_of_fleet(db, self.fleet.id)
            .await
            .map_err(internal)?
            .into_iter()
            .filter_map(|d| {
                let pin = ReleaseSeq(u64::try_from(d.pinned_sequence?).ok()?);
                Some((d.id.parse().ok()?, pin))
            })
            .collect();
        Ok(Pins { fleet, devices })
    }

    /// The devices the rollout of `seq` (content `content`) holds: those pinned to a release
    /// of other content.
    async fn held_for(&self, pins: &Pins, seq: ReleaseSeq, content: Digest) -> BTreeSet<DeviceId> {
        let mut same = BTreeMap::new();
        let mut held = BTreeSet::new();
        for (d, p) in &pins.devices {
            let s = match same.get(p) {
                Some(s) => *s,
                None => {
                    let s = self.same_content(*p, seq, content).await;
                    same.insert(*p, s);
                    s
                }
            };
            if !s {
                held.insert(*d);
            }
        }
        held
    }

    /// The devices registered in the fleet.
    async fn registered(&self) -> Result<BTreeSet<DeviceId>, LiveError> {
        Ok(
            crate::registry::devices_of_fleet(&self.inner.app.db, self.fleet.id)
                .await
                .map_err(|e| LiveError::Internal(e.to_string()))?
                .into_iter()
                .filter_map(|d| d.id.parse().ok())
                .collect(),
        )
    }

    /// Brings the newest rollout in line with the pins (see the module docs).
    async fn reconcile_pins(&mut self) -> Result<(), LiveError> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let (seq, content) = (live.controller.sequence(), live.content);
        let pins = self.pins().await?;
        let held = self.held_for(&pins, seq, content).await;
        let now = self.now_ms();
        if let Some(live) = self.live.as_ref()
            && *live.controller.held() != held
            && *live.controller.state() != State::Halted
        {
            self.feed(now, Event::Hold(held.into_iter().collect()))
                .await?;
        }
        let fleet_pin = match pins.fleet {
            Some(p) if !self.same_content(p, seq, content).await => Some(p),
            _ => None,
        };
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let state = live.controller.state().clone();
        match (fleet_pin, state) {
            (None, State::Held) => self.feed(now, Event::ReleaseFleet).await?,
            (None, _) => {}
            (Some(p), State::Held) => {
                // Held on what the rollout before it carried; pinned to other content now, the
                // fleet goes there (the held release, never activated, is superseded).
                let db = &self.inner.app.db;
                let before = persist::rollout_before(db, &self.fleet, seq)
                    .await
                    .map_err(|e| LiveError::Internal(e.to_string()))?;
                let there = match before {
                    Some((q, state)) if state != "halted" => match self.manifest_of(q).await {
                        Ok((m, _)) => self.same_content(p, q, content_key(&m)).await,
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !there {
                    tracing::info!(fleet = %self.fleet.name, sequence = seq.0, pinned = p.0, "held fleet pinned to another release: rolling forward to it");
                    self.feed(now, Event::PinFleet(p)).await?;
                }
            }
            (Some(p), State::Running | State::Paused(_)) => {
                tracing::info!(fleet = %self.fleet.name, sequence = seq.0, pinned = p.0, "fleet pinned to an older release: rolling forward to it");
                self.feed(now, Event::PinFleet(p)).await?;
            }
            (Some(p), _) => {
                // Complete, or halted with nothing newer: roll forward to the pinned content.
                let db = &self.inner.app.db;
                let newer = persist::has_newer(db, &self.fleet, seq)
                    .await
                    .map_err(|e| LiveError::Internal(e.to_string()))?;
                if !newer {
                    tracing::info!(fleet = %self.fleet.name, sequence = seq.0, pinned = p.0, "fleet pinned to an older release: rolling forward to it");
                    self.roll_back(Some(p)).await?;
                }
            }
        }
        self.publish_progress();
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        let live = self.live.as_ref()?;
        let c = &live.controller;
        let plan = c.plan();
        let waves = (0..plan.waves.len() as u32)
            .map(|w| {
                let s = c.stats(w).unwrap_or_default();
                WaveProgress {
                    wave: w,
                    percent: plan.waves[w as usize].percent,
                    devices: s.devices,
                    reporting: s.reported,
                    healthy: s.healthy,
                    failed: s.failed,
                    open: w <= c.open_wave() && c.opened_at_ms(w).is_some(),
                    opened_at_ms: c.opened_at_ms(w),
                }
            })
            .collect();
        Some(Progress {
            fleet: self.fleet.name.clone(),
            sequence: c.sequence().0,
            manifest_digest: c.manifest_digest().to_string(),
            state: c.state().name().to_string(),
            pause_reason: match c.state() {
                State::Paused(r) => Some(r.to_string()),
                _ => None,
            },
            open_wave: c.open_wave(),
            waves,
            devices: live
                .devices
                .iter()
                .map(|(d, (wave, state, detail))| DeviceProgress {
                    device: d.to_string(),
                    wave: *wave,
                    state: state.as_str().to_string(),
                    detail: detail.clone(),
                })
                .collect(),
            previous: c.previous().map(|p| p.0),
            wave_controls: live.wave_controls,
            held_devices: c.held().iter().map(|d| d.to_string()).collect(),
        })
    }

    fn publish_progress(&self) {
        if let Some(p) = self.progress() {
            self.inner
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.fleet.name.clone(), p);
        }
    }
}

/// What a release runs, for comparing releases: the manifest's commit, architecture, device type
/// and services (a rollback release has its source's).
fn content_key(m: &ReleaseManifest) -> Digest {
    let bytes =
        serde_json::to_vec(&(&m.commit, &m.arch, &m.device_type, &m.services)).unwrap_or_default();
    Digest::of(&bytes)
}

fn new_live(fleet: &str, row: &RolloutRow, digest: Digest, content: Digest) -> Live {
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
fn drain_replayed(live: &mut Live) {
    while let Some(action) = live.controller.poll_action() {
        if let Some(wc) = live.controller.wave_control(&action, UnixTime(0)) {
            live.wave_controls = wc.counter;
        }
    }
}

/// Feeds one stored event to the controller.
fn apply(live: &mut Live, at_ms: u64, event: &Event) {
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
