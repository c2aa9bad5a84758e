//! One fleet's rollout task: commands, device reports and timers in; the controller's actions
//! (signed wave control, rollbacks) out; every input stored before it is fed, and replayed on
//! start-up ([`FleetTask::resume`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_node::core::GossipMessage;
use shoal_protocol::{DeviceId, Envelope, ReleaseSeq, StatusReport, UnixTime, encoding};
use shoal_rollout::{Action, State};
use tokio::sync::mpsc;

use super::controller::{Live, apply, content_key, new_live};
use super::persist::{self, Event, RolloutRow};
use super::pins;
use super::{Cmd, Inner, LiveError, Progress};
use crate::app::now_s;
use crate::gossip::Seeded;
use crate::pipeline::publish;
use crate::steering::{DeviceProgress, WaveProgress};
use crate::storage::db::{DbError, Fleet};

/// Smallest gap between two timer wake-ups, so a timer due in the past cannot spin.
const MIN_TIMER_GAP_MS: u64 = 1_000;

/// One fleet's task: its newest rollout, fed by commands, reports and timers.
pub(super) struct FleetTask {
    pub(super) inner: Arc<Inner>,
    pub(super) fleet: Fleet,
    pub(super) live: Option<Live>,
}

impl FleetTask {
    /// A task with no rollout yet ([`FleetTask::resume`] rebuilds the stored one).
    pub(super) fn new(inner: Arc<Inner>, fleet: Fleet) -> FleetTask {
        FleetTask {
            inner,
            fleet,
            live: None,
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        (self.inner.clock)()
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
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
    pub(super) async fn feed(&mut self, now_ms: u64, event: Event) -> Result<(), LiveError> {
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
        let counted = match crate::registry::tables::device(db, &report.device.to_string()).await {
            Ok(Some(d)) => d.fleet == self.fleet.name,
            // A fleet with no registered device at all (its devices never enrolled) counts every
            // device its origin hears of, as before the registry.
            Ok(None) => matches!(
                crate::registry::tables::registered_in_fleet(db, self.fleet.id).await,
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
    pub(super) async fn act(&mut self, replaying: bool) {
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
    pub(super) async fn start_rollout(&mut self, s: Seeded) -> Result<(), LiveError> {
        let seq = s.manifest.sequence;
        if let Some(live) = &self.live
            && live.controller.sequence() >= seq
        {
            return Ok(());
        }
        let app = self.inner.app.clone();
        let db = &app.db;
        let internal = |e: DbError| LiveError::Internal(e.to_string());
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
        let pins = pins::load(&self.inner.app, &self.fleet).await?;
        let mut start = Vec::new();
        if let Some(p) = pins.fleet
            && !pins::same_content(&self.inner.app, &self.fleet, p, seq, content).await
        {
            start.push(Event::HoldFleet);
        }
        let held = pins::held_for(&self.inner.app, &self.fleet, &pins, seq, content).await;
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
        let registered = pins::registered(&self.inner.app, &self.fleet).await?;
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

    /// Brings the newest rollout in line with the pins (see the module docs).
    pub(super) async fn reconcile_pins(&mut self) -> Result<(), LiveError> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let (seq, content) = (live.controller.sequence(), live.content);
        let pins = pins::load(&self.inner.app, &self.fleet).await?;
        let held = pins::held_for(&self.inner.app, &self.fleet, &pins, seq, content).await;
        let now = self.now_ms();
        if let Some(live) = self.live.as_ref()
            && *live.controller.held() != held
            && *live.controller.state() != State::Halted
        {
            self.feed(now, Event::Hold(held.into_iter().collect()))
                .await?;
        }
        let fleet_pin = match pins.fleet {
            Some(p) if !pins::same_content(&self.inner.app, &self.fleet, p, seq, content).await => {
                Some(p)
            }
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
                    Some((q, state)) if state != "halted" => {
                        match publish::published_manifest(&self.inner.app, &self.fleet, q).await {
                            Ok((m, _)) => {
                                pins::same_content(
                                    &self.inner.app,
                                    &self.fleet,
                                    p,
                                    q,
                                    content_key(&m),
                                )
                                .await
                            }
                            Err(_) => false,
                        }
                    }
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

    /// Publishes a new, higher sequence with the content of `to` ([`publish::roll_back`]) and
    /// starts its rollout.
    pub(super) async fn roll_back(&mut self, to: Option<ReleaseSeq>) -> Result<(), LiveError> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let of = live.controller.sequence();
        let Some(to) = to else {
            tracing::warn!(fleet = %self.fleet.name, sequence = of.0, "aborted with no earlier release to return to");
            return Ok(());
        };
        let seeded = publish::roll_back(
            &self.inner.app,
            self.inner.gossip.as_ref(),
            &self.fleet,
            of,
            to,
        )
        .await
        .map_err(|e| LiveError::Internal(e.to_string()))?;
        // The origin's seeded event starts the rollback's rollout; start it here too in case
        // the gossip is a fake that sends none (start_rollout ignores a repeat).
        self.start_rollout(seeded).await
    }

    pub(super) fn progress(&self) -> Option<Progress> {
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

    pub(super) fn publish_progress(&self) {
        if let Some(p) = self.progress() {
            self.inner
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.fleet.name.clone(), p);
        }
    }
}
