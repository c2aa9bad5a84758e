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
//! release (the last one whose rollout completed, else the one before): publishing, so the
//! pipeline's publish step does it ([`crate::pipeline::publish::roll_back`]); the rollback goes
//! to every wave at once.
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

//!
//! ## Layout
//!
//! [`Rollouts`] (here) is the handle: one task per fleet, fed through a queue. The task
//! (`live/task.rs`) owns the fleet's newest rollout (`live/controller.rs`: the controller and
//! what it has seen), applies the pins (`live/pins.rs`), stores every input ([`persist`]) and
//! replays them on start-up (`live/replay.rs`).

mod controller;
pub mod persist;
mod pins;
mod replay;
mod task;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shoal_node::daemon::BoxFuture;
use shoal_protocol::StatusReport;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::app::App;
use crate::gossip::{Gossip, Seeded};
use crate::steering::{Command, LiveError, Progress, Steering};
use persist::Event;
use task::FleetTask;

/// Commands and inputs queued for one fleet's task.
const FLEET_QUEUE: usize = 1024;

pub(crate) enum Cmd {
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

pub(crate) struct Inner {
    pub(crate) app: Arc<App>,
    pub(crate) gossip: Arc<dyn Gossip>,
    pub(crate) fleets: Mutex<BTreeMap<String, mpsc::Sender<Cmd>>>,
    pub(crate) progress: Mutex<BTreeMap<String, Progress>>,
    pub(crate) clock: Clock,
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
        let mut task = FleetTask::new(self.inner.clone(), f);
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
impl Steering for Rollouts {
    fn progress(&self, fleet: &str) -> Option<Progress> {
        Rollouts::progress(self, fleet)
    }

    fn steer(&self, fleet: &str, command: Command) -> BoxFuture<Result<Progress, LiveError>> {
        let (this, fleet) = (self.clone(), fleet.to_string());
        let event = match command {
            Command::Pause => Event::Pause,
            Command::Resume => Event::Resume,
            Command::Promote => Event::Promote,
            Command::Abort => Event::Abort,
        };
        Box::pin(async move { this.operator(&fleet, event).await })
    }

    fn pins_changed(&self, fleet: &str) -> BoxFuture<Result<(), LiveError>> {
        let (this, fleet) = (self.clone(), fleet.to_string());
        Box::pin(async move { Rollouts::pins_changed(&this, &fleet).await })
    }
}
