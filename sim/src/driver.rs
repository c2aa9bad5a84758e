//! The driver: many [`shoal_node_core::Node`]s, the builder's origin and the rollout controller
//! in one discrete-event loop over virtual time.
//!
//! Every device runs the real core. The driver only carries out the core's outputs as simulated
//! effects and feeds the results back as inputs:
//!
//! - chunk and manifest fetches become flows in the [`crate::net`] model (the request starts the
//!   flow; the answer arrives one one-way latency after its last byte);
//! - HAVE messages travel in per-link batches (everything advertised while the first is in
//!   flight rides along), bitfields and gossip sync as single messages;
//! - gossip is flooded over a random mesh of the configured degree with a per-hop delay and
//!   loss, deduplicated per node by message (as gossipsub does) and forwarded only when the core
//!   says [`Verdict::Accept`](shoal_node_core::Verdict);
//! - the runtime applies a release in `apply_s` and reports health `health_s` later;
//! - the builder's origin is a core node too, in origin mode ([`Node::seed`]): it holds every
//!   chunk, sends its availability, and decides its uploads (at most [`ORIGIN_UPLOAD_SLOTS`],
//!   super-seeding); every chunk request to any node goes through that node's
//!   `admit_upload`; the builder publishes the announcement and the controller's wave control
//!   messages and hands status reports to the controller.
//!
//! After every event the invariants are checked ([`Violation`]); a failure names the replay
//! command. At the end, the liveness phase checks that every online honest device staged the
//! release once the faults had healed. The trace hash is BLAKE3 over the ordered event records.

mod connections;
mod control;
mod effects;
mod events;
mod invariants;
mod serving;
mod setup;

use rustc_hash::FxHashMap as HashMap;
use slab::Slab;
use std::sync::Arc;

use shoal_node_core::{Bitfield, FetchError, Node, ReleaseCache, Snapshot};
use shoal_protocol::{DeviceId, ReleaseSeq};
use shoal_testing::{TestFleet, TestRelease};

use crate::faults::{self, Byzantine};
use crate::net::{Nanos, Net, SECOND};
use crate::rng::Rng;
use crate::scenario::Scenario;
use dary_heap::QuaternaryHeap;
use std::cmp::Reverse;

/// Concurrent chunk uploads the origin node admits (its `Config::max_uploads`).
pub const ORIGIN_UPLOAD_SLOTS: u32 = 64;

/// Index standing for the builder's origin in device-indexed places.
pub(crate) const BUILDER: u32 = u32::MAX;

/// An invariant the run broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invariant violated at t={time_s:.3}s on device {device}: {what}\nreplay: {replay}")]
pub struct Violation {
    /// Virtual time, seconds.
    pub time_s: f64,
    /// Device index.
    pub device: u32,
    /// What went wrong.
    pub what: String,
    /// The command that replays the run.
    pub replay: String,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A safety invariant was broken.
    #[error(transparent)]
    Invariant(#[from] Violation),
}

/// A device's connection to one peer of its peer graph (open or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    /// The peer's device index.
    pub(crate) peer: u32,
    /// The peer is on another site (kept here: HAVE batches go out per site class, and
    /// looking the peer's site up touched its whole device record).
    pub(crate) remote: bool,
    /// Open.
    pub(crate) up: bool,
    /// Not reconnected before this time (dropped or banned).
    pub(crate) blocked_until: Nanos,
}

/// Where a device's runtime stands with the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    Idle,
    Applying,
    Healthy,
    Failed,
    RolledBack,
}

/// A simulated device: its core (none while crashed or byzantine), its place in the network and
/// what the driver tracks about it.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) id: DeviceId,
    pub(crate) node: Option<Node>,
    pub(crate) site: u32,
    pub(crate) byzantine: Option<Byzantine>,
    pub(crate) online: bool,
    pub(crate) timer_at: Option<Nanos>,
    pub(crate) snapshot: Option<Box<Snapshot>>,
    pub(crate) connections: Vec<Connection>,
    pub(crate) origin_up: bool,
    pub(crate) seen_gossip: u64,
    /// Chunks the driver verified and stored for this device (its on-disk store).
    pub(crate) stored: Bitfield,
    pub(crate) staged_at: Option<Nanos>,
    /// When the node first accepted the announcement, verified the manifest and stored a
    /// chunk (for the report's timeline).
    pub(crate) milestones: Milestones,
    pub(crate) last_highest: u64,
    pub(crate) last_applied: u64,
    pub(crate) wave: u32,
    pub(crate) runtime: Runtime,
    pub(crate) seed: u64,
    /// Status reports waiting for the builder to be reachable again.
    pub(crate) queued_reports: Vec<(Vec<u8>, Option<bool>)>,
    /// Whether a healthy report of this device was counted in its wave (a device reports its
    /// state again when an origin connects; the builder counts each device once).
    pub(crate) counted_healthy: bool,
}

/// When a device reached each step before staging (see [`Device::milestones`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Milestones {
    pub(crate) announced: Option<Nanos>,
    pub(crate) manifest: Option<Nanos>,
    pub(crate) first_chunk: Option<Nanos>,
}

/// A queued event.
#[derive(Debug)]
pub(crate) enum Event {
    Timer(u32),
    Gossip {
        to: u32,
        from: u32,
        msg: u16,
    },
    /// HAVEs `from` advertised, to all its connected peers on its site (`remote` false) or
    /// on other sites (`remote` true).
    Haves {
        from: u32,
        remote: bool,
    },
    /// HAVEs to one peer whose first delivery was lost.
    HavesTo {
        to: u32,
        from: u32,
        batch: Vec<u32>,
    },
    Bitfield {
        to: u32,
        from: u32,
        have: Box<Bitfield>,
    },
    Chunk {
        to: u32,
        from: u32,
        index: u32,
        result: Result<(u64, Nanos), FetchError>,
    },
    Manifest {
        to: u32,
        from: u32,
        result: Result<bool, FetchError>,
    },
    Report {
        from: u32,
        envelope: Vec<u8>,
        healthy: Option<bool>,
    },
    ApplyDone {
        dev: u32,
        seq: ReleaseSeq,
    },
    Health {
        dev: u32,
        seq: ReleaseSeq,
    },
    Fault(faults::Fault),
    Redial {
        a: u32,
        b: u32,
    },
    ControlTick,
    Announce,
}

/// A queued event's key: (time, insertion number, slot of the event in [`Sim::slots`]). The
/// insertion numbers are unique, so events pop in (time, insertion) order whatever the heap does
/// with equal keys (there are none): the trace depends on the keys alone.
pub(crate) type Key = (Nanos, u64, u32);

/// One chunk or manifest transfer in the network.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) to: u32,
    pub(crate) from: u32,
    /// Chunk index, or `u32::MAX` for the manifest.
    pub(crate) index: u32,
    pub(crate) started: Nanos,
    pub(crate) bytes: u64,
    pub(crate) corrupt: bool,
    /// The server's core admitted it (`upload_finished` is due when it ends).
    pub(crate) admitted: bool,
}

/// Figures gathered during a run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    pub(crate) events: u64,
    pub(crate) peers_banned: u64,
    pub(crate) corrupt_stored: u64,
    pub(crate) wave_opened: Vec<Option<Nanos>>,
    pub(crate) wave_finished: Vec<Option<Nanos>>,
    pub(crate) wave_healthy: Vec<u32>,
    /// Runtime steps and status reports still on their way.
    pub(crate) pending_runtime: u32,
    pub(crate) origin_requests: u64,
    pub(crate) origin_busy: u64,
    pub(crate) chunk_requests: u64,
    pub(crate) remote_requests: u64,
}

/// A simulation in progress. Build with [`Sim::new`], run with [`Sim::run`].
pub struct Sim {
    pub(crate) scenario: Scenario,
    pub(crate) seed: u64,
    pub(crate) replay: String,
    pub(crate) now: Nanos,
    /// The event queue, earliest key first.
    pub(crate) queue: QuaternaryHeap<Reverse<Key>>,
    /// The queued events, by slot (the heap moves only the keys).
    pub(crate) slots: Slab<Event>,
    pub(crate) next_seq: u64,
    pub(crate) net: Net,
    pub(crate) devices: Vec<Device>,
    pub(crate) ids: HashMap<DeviceId, u32>,
    pub(crate) origin_id: DeviceId,
    pub(crate) fleet: TestFleet,
    pub(crate) release: TestRelease,
    pub(crate) full: Bitfield,
    pub(crate) gossip: Vec<Arc<[u8]>>,
    pub(crate) gossip_index: HashMap<Vec<u8>, u16>,
    pub(crate) mesh: Vec<Vec<u32>>,
    pub(crate) origin_mesh: Vec<u32>,
    /// Transfers in the network, by the tag the network knows them by.
    pub(crate) transfers: Slab<Transfer>,
    pub(crate) fetches: HashMap<(u32, u32, u32), u32>,
    /// HAVEs advertised and not yet sent, per device and latency class: index `2 * device +
    /// remote` (see [`Sim::batch_slot`]).
    pub(crate) have_batches: Vec<Vec<u32>>,
    /// The builder's origin: a core node in origin mode (seeded with the release).
    pub(crate) origin: Node,
    pub(crate) partitioned: Vec<bool>,
    pub(crate) fault_plan: faults::Plan,
    pub(crate) control: control::Control,
    pub(crate) announced: bool,
    pub(crate) rng: Rng,
    pub(crate) trace: blake3::Hasher,
    pub(crate) metrics: Metrics,
    pub(crate) outputs: Vec<shoal_node_core::Output>,
    pub(crate) cache: ReleaseCache,
    pub(crate) violation: Option<Violation>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("scenario", &self.scenario.name)
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

/// What a finished run hands to the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Staging times (s) of online honest devices that staged, sorted.
    pub staged_s: Vec<f64>,
    /// Online honest devices at the end.
    pub online: u32,
    /// Whether every online honest device staged.
    pub liveness_ok: bool,
    /// Virtual end time, seconds.
    pub end_s: f64,
    /// Events processed.
    pub events: u64,
    /// Trace hash (hex).
    pub trace_hash: String,
    /// Bytes the origin sent.
    pub builder_egress_bytes: u64,
    /// Largest WAN ingress of a site.
    pub max_site_ingress_bytes: u64,
    /// Chunks stored that were corrupt.
    pub corrupt_chunks_stored: u64,
    /// Bans issued by devices.
    pub peers_banned: u64,
    /// Per wave: (devices, opened, finished) in seconds.
    pub waves: Vec<(u32, Option<f64>, Option<f64>)>,
    /// Whether the rollout paused or halted.
    pub rollout_paused: bool,
    /// Devices whose runtime ends healthy on the release.
    pub activated: u32,
    /// Devices that rolled back.
    pub rolled_back: u32,
    /// Highest wave each device activated in (for tests): (wave, activated).
    pub activations_by_wave: Vec<u32>,
    /// Rollbacks per wave.
    pub rollbacks_by_wave: Vec<u32>,
    /// Request counters: (all chunk requests, to another site, to the origin, origin `Busy`).
    pub requests: (u64, u64, u64, u64),
    /// Per online honest device that staged: (announced, manifest, first chunk, staged), in
    /// seconds.
    pub milestones: Vec<[f64; 4]>,
    /// Bytes moved over the network in all (cancelled transfers included).
    pub total_bytes: u64,
}

pub(crate) fn seconds(t: Nanos) -> f64 {
    t as f64 / SECOND as f64
}

pub(crate) fn nanos(s: f64) -> Nanos {
    (s * SECOND as f64).round() as Nanos
}

impl Sim {
    pub(crate) fn push(&mut self, t: Nanos, ev: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self.slots.insert(ev) as u32;
        self.queue.push(Reverse((t, seq, slot)));
    }

    /// The slot of `d`'s HAVE batch to its peers on its site (`remote` false) or elsewhere.
    pub(crate) fn batch_slot(d: u32, remote: bool) -> usize {
        2 * d as usize + usize::from(remote)
    }

    pub(crate) fn fail(&mut self, device: u32, what: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                time_s: seconds(self.now),
                device,
                what,
                replay: self.replay.clone(),
            });
        }
    }

    fn record(&mut self, kind: u8, a: u32, b: u32, c: u64) {
        let mut buf = [0u8; 25];
        buf[..8].copy_from_slice(&self.now.to_le_bytes());
        buf[8] = kind;
        buf[9..13].copy_from_slice(&a.to_le_bytes());
        buf[13..17].copy_from_slice(&b.to_le_bytes());
        buf[17..25].copy_from_slice(&c.to_le_bytes());
        self.trace.update(&buf);
    }

    /// Run to the end: until every online honest device staged and the rollout settled after
    /// the faults healed, nothing is left to happen, or a limit is hit. Fails on the first
    /// broken invariant.
    pub fn run(mut self) -> Result<Outcome, RunError> {
        let max_t = nanos(self.scenario.limits.max_time_s);
        let mut check_every = 0u32;
        let mut last_check: Nanos = 0;
        loop {
            if let Some(v) = self.violation.take() {
                return Err(v.into());
            }
            let tq = self.queue.peek().map(|Reverse(k)| k.0);
            let tn = self.net.next_time();
            let t = match (tq, tn) {
                (None, None) => {
                    if self.net.is_dirty() {
                        self.net.flush(self.now);
                        continue;
                    }
                    break;
                }
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            if t > self.now && self.net.is_dirty() {
                self.net.flush(self.now);
                continue;
            }
            if t > max_t || self.metrics.events >= self.scenario.limits.max_events {
                break;
            }
            if t > self.now && (check_every >= 4096 || t >= last_check + SECOND / 20) {
                check_every = 0;
                last_check = t;
                if self.finished() {
                    break;
                }
            }
            self.now = t.max(self.now);
            self.metrics.events += 1;
            if tn == Some(t) && tq.is_none_or(|q| q > t || tn <= tq) {
                if let Some(done) = self.net.pop_done(self.now) {
                    self.record(1, 0, 0, done.tag);
                    self.transfer_done(done.tag);
                }
            } else if let Some(Reverse((_, _, slot))) = self.queue.pop()
                && let Some(event) = self.slots.try_remove(slot as usize)
            {
                self.dispatch(event);
            }
            check_every += 1;
        }
        if let Some(v) = self.violation.take() {
            return Err(v.into());
        }
        Ok(self.outcome())
    }

    /// Whether the run has nothing left to show.
    fn finished(&self) -> bool {
        if self.now < self.fault_plan.healed_at
            || self.metrics.pending_runtime > 0
            || !self.announced
        {
            return false;
        }
        let all_staged = self
            .devices
            .iter()
            .filter(|d| d.byzantine.is_none() && d.online && d.node.is_some())
            .all(|d| self.converged(d));
        all_staged && self.control.settled()
    }

    /// Whether an online honest device holds the release (or went past it): staged at some
    /// point, and now holding every chunk or having handed the release to its runtime.
    fn converged(&self, d: &Device) -> bool {
        let seq = self.release.announcement.sequence;
        d.staged_at.is_some()
            && d.node.as_ref().is_some_and(|n| {
                n.applied().is_some_and(|a| a >= seq)
                    || n.progress().is_some_and(|p| {
                        p.sequence == seq && p.total_chunks > 0 && p.have_chunks == p.total_chunks
                    })
            })
    }

    fn outcome(mut self) -> Outcome {
        self.net.settle_all(self.now);
        let mut staged: Vec<f64> = Vec::new();
        let mut milestones = Vec::new();
        let mut online = 0;
        let mut ok = true;
        let nw = self.scenario.rollout.waves.len();
        let mut per_wave = vec![0u32; nw];
        let mut act = vec![0u32; nw];
        let mut rb = vec![0u32; nw];
        let (mut activated, mut rolled_back) = (0, 0);
        for d in &self.devices {
            if d.byzantine.is_some() {
                continue;
            }
            per_wave[d.wave as usize] += 1;
            match d.runtime {
                Runtime::Healthy => {
                    activated += 1;
                    act[d.wave as usize] += 1;
                }
                Runtime::RolledBack | Runtime::Failed => {
                    rolled_back += 1;
                    rb[d.wave as usize] += 1;
                    act[d.wave as usize] += 1;
                }
                Runtime::Applying => act[d.wave as usize] += 1,
                Runtime::Idle => {}
            }
            if !(d.online && d.node.is_some()) {
                continue;
            }
            online += 1;
            match d.staged_at {
                Some(t) if self.converged(d) => {
                    staged.push(seconds(t));
                    let m = d.milestones;
                    let at = |x: Option<Nanos>| seconds(x.unwrap_or(t).min(t));
                    milestones.push([
                        at(m.announced),
                        at(m.manifest),
                        at(m.first_chunk),
                        seconds(t),
                    ]);
                }
                _ => ok = false,
            }
        }
        staged.sort_by(f64::total_cmp);
        let c = self.net.counters();
        let max_ingress = c.site_ingress.iter().copied().fold(0.0, f64::max);
        let waves = (0..nw)
            .map(|w| {
                (
                    per_wave[w],
                    self.metrics.wave_opened[w].map(seconds),
                    self.metrics.wave_finished[w].map(seconds),
                )
            })
            .collect();
        Outcome {
            staged_s: staged,
            online,
            liveness_ok: ok,
            end_s: seconds(self.now),
            events: self.metrics.events,
            trace_hash: self.trace.finalize().to_hex().to_string(),
            builder_egress_bytes: c.builder_egress.round() as u64,
            max_site_ingress_bytes: max_ingress.round() as u64,
            corrupt_chunks_stored: self.metrics.corrupt_stored,
            peers_banned: self.metrics.peers_banned,
            waves,
            rollout_paused: self.control.paused(),
            activated,
            rolled_back,
            activations_by_wave: act,
            rollbacks_by_wave: rb,
            requests: (
                self.metrics.chunk_requests,
                self.metrics.remote_requests,
                self.metrics.origin_requests,
                self.metrics.origin_busy,
            ),
            milestones,
            total_bytes: c.total.round() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_stops_the_run_and_names_the_replay_command() {
        let mut sc = Scenario::default();
        sc.fleet.devices = 4;
        sc.fleet.sites = 1;
        sc.release.size_mib = 0.5;
        let mut sim = Sim::new(&sc, 7, "shoal-sim run --scenario x.toml --seed 7".into());
        sim.fail(2, "test violation".into());
        let err = sim.run().unwrap_err();
        let RunError::Invariant(v) = &err;
        assert_eq!(v.device, 2);
        assert_eq!(v.replay, "shoal-sim run --scenario x.toml --seed 7");
        let text = err.to_string();
        assert!(
            text.contains("test violation") && text.ends_with("--seed 7"),
            "{text}"
        );
    }

    #[test]
    fn a_sequence_going_down_is_caught() {
        let mut sc = Scenario::default();
        sc.fleet.devices = 3;
        sc.fleet.sites = 1;
        sc.release.size_mib = 0.5;
        let mut sim = Sim::new(&sc, 1, "replay".into());
        // Pretend device 0 had seen a higher sequence than its node reports.
        sim.devices[0].last_highest = 5;
        sim.feed(
            0,
            shoal_node_core::Input::WallClock(shoal_testing::TEST_EPOCH),
        );
        let err = sim.run().unwrap_err();
        let RunError::Invariant(v) = err;
        assert!(
            v.what.contains("highest sequence went from 5"),
            "{}",
            v.what
        );
        assert_eq!(v.device, 0);
    }
}
