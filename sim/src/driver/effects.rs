//! Carrying out a node's outputs, and feeding it inputs: [`Sim::feed`] hands a device's core an
//! input and [`Sim::drain`] turns each of its outputs into a simulated effect (messages, HAVE
//! batches, gossip, fetches, the runtime, status reports) and arms its timer; the origin's
//! outputs go through [`Sim::feed_origin`].

use shoal_node_core::{DropReason, Input, Instant, Output, Verdict};
use shoal_protocol::{DeviceState, ReleaseSeq};

use super::{BUILDER, Event, Runtime, Sim, nanos};
use crate::net::Nanos;

/// Status reports a device keeps while the builder is unreachable.
pub(crate) const MAX_QUEUED_REPORTS: usize = 8;
/// How long a dropped (not banned) peer waits before it is dialled again.
const REDIAL_S: f64 = 10.0;

/// The core's clock (milliseconds) at virtual time `t`.
pub(crate) fn core_instant(t: Nanos) -> Instant {
    Instant(t / 1_000_000)
}

impl Sim {
    /// Send a status report to the builder; while it is unreachable, keep it (at most
    /// [`MAX_QUEUED_REPORTS`] per device) for when the connection comes back.
    pub(crate) fn send_report(&mut self, d: u32, envelope: Vec<u8>, healthy: Option<bool>) {
        if self.reachable(d, BUILDER) {
            let t = self.now + self.message_delay(d, BUILDER);
            self.metrics.pending_runtime += 1;
            self.push(
                t,
                Event::Report {
                    from: d,
                    envelope,
                    healthy,
                },
            );
        } else {
            let queue = &mut self.devices[d as usize].queued_reports;
            if queue.len() >= MAX_QUEUED_REPORTS {
                queue.remove(0);
            }
            queue.push((envelope, healthy));
        }
    }

    /// Feed the builder's origin node and carry out its outputs: it announces availability
    /// (`SendBitfield`) and catches peers up on gossip (`SyncGossip`); it never fetches.
    pub(crate) fn feed_origin(&mut self, input: Input) {
        self.origin.handle(core_instant(self.now), input);
        self.drain_origin();
    }

    pub(crate) fn drain_origin(&mut self) {
        while let Some(out) = self.origin.poll_output() {
            match out {
                Output::SendBitfield { peer, have, .. } => {
                    if let Some(p) = self.ids.get(&peer).copied()
                        && self.devices[p as usize].node.is_some()
                    {
                        let t = self.now + self.message_delay(BUILDER, p);
                        self.push(
                            t,
                            Event::Bitfield {
                                to: p,
                                from: BUILDER,
                                have: Box::new(have),
                            },
                        );
                    }
                }
                Output::SyncGossip { peer, messages } => {
                    let Some(p) = self.ids.get(&peer).copied() else {
                        continue;
                    };
                    for bytes in messages {
                        if let Some(&msg) = self.gossip_index.get(&bytes) {
                            let t = self.now + self.latency(BUILDER, p);
                            self.push(
                                t,
                                Event::Gossip {
                                    to: p,
                                    from: BUILDER,
                                    msg,
                                },
                            );
                        }
                    }
                }
                Output::DropPeer { peer, .. } | Output::BanPeer { peer, .. } => {
                    if let Some(p) = self.ids.get(&peer).copied() {
                        self.disconnect(BUILDER, p, None);
                    }
                }
                _ => {}
            }
        }
    }

    /// Feed `input` to device `d`'s node and carry out its outputs.
    pub(crate) fn feed(&mut self, d: u32, input: Input) {
        let now = core_instant(self.now);
        let Some(node) = self.devices[d as usize].node.as_mut() else {
            return;
        };
        node.handle(now, input);
        self.drain(d);
    }

    /// Carry out every pending output of `d`, check its invariants, arm its timer.
    pub(crate) fn drain(&mut self, d: u32) {
        let mut outputs = std::mem::take(&mut self.outputs);
        loop {
            {
                let Some(node) = self.devices[d as usize].node.as_mut() else {
                    break;
                };
                outputs.extend(std::iter::from_fn(|| node.poll_output()));
            }
            if outputs.is_empty() {
                break;
            }
            for out in outputs.drain(..) {
                self.effect(d, out);
            }
        }
        self.outputs = outputs;
        self.check(d);
        let next = self.devices[d as usize]
            .node
            .as_ref()
            .and_then(|n| n.poll_timeout())
            .map(|t| (t.0 * 1_000_000).max(self.now));
        // Only an earlier wake-up is queued; a later one is re-armed when the queued one fires.
        let dev = &mut self.devices[d as usize];
        if let Some(t) = next
            && dev.timer_at.is_none_or(|armed| t < armed)
        {
            dev.timer_at = Some(t);
            self.push(t, Event::Timer(d));
        }
    }

    fn effect(&mut self, d: u32, out: Output) {
        match out {
            Output::GossipVerdict {
                id,
                verdict: Verdict::Accept,
            } => {
                self.forward_gossip(d, id.0 as u16);
            }
            Output::SyncGossip { peer, messages } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                for bytes in messages {
                    if let Some(&msg) = self.gossip_index.get(&bytes)
                        && p != BUILDER
                    {
                        let t = self.now + self.latency(d, p);
                        self.push(
                            t,
                            Event::Gossip {
                                to: p,
                                from: d,
                                msg,
                            },
                        );
                    }
                }
            }
            Output::SendBitfield { peer, have, .. } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                if p == BUILDER || self.devices[p as usize].node.is_some() {
                    let t = self.now + self.message_delay(d, p);
                    self.push(
                        t,
                        Event::Bitfield {
                            to: p,
                            from: d,
                            have: Box::new(have),
                        },
                    );
                }
            }
            Output::Advertise { index, .. } => self.advertise(d, index),
            Output::FetchManifest { peer, .. } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                self.serve_manifest(d, p);
            }
            Output::FetchChunk { peer, index, .. } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                self.serve_chunk(d, p, index);
            }
            Output::CancelFetch { peer, index, .. } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                if let Some(r) = self.fetches.get(&(d, p, index)).copied() {
                    self.net
                        .cancel(self.now, Self::endpoint(p), Self::endpoint(d), u64::from(r));
                    self.free_transfer(r, false);
                }
            }
            Output::DropPeer { peer, reason } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                let until = self.now + nanos(REDIAL_S);
                self.disconnect(d, p, Some(until));
                if p != BUILDER && reason != DropReason::BadData {
                    self.push(until, Event::Redial { a: d, b: p });
                }
            }
            Output::BanPeer { peer, until, .. } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                self.metrics.peers_banned += 1;
                let until = until.0.saturating_mul(1_000_000);
                self.disconnect(d, p, Some(until));
            }
            Output::Persist(snap) => self.devices[d as usize].snapshot = Some(snap),
            Output::Apply { sequence, manifest } => self.apply(d, sequence, &manifest),
            Output::Rollback { .. } => {
                self.devices[d as usize].runtime = Runtime::RolledBack;
            }
            Output::Report { envelope, report } => {
                if report.sequence != self.release.announcement.sequence {
                    return;
                }
                let healthy = match report.state {
                    DeviceState::Healthy => Some(true),
                    DeviceState::Failed | DeviceState::RolledBack => Some(false),
                    _ => None,
                };
                self.send_report(d, envelope, healthy);
            }
            Output::Event(shoal_node_core::Event::Staged { sequence })
                if sequence == self.release.announcement.sequence
                    && self.devices[d as usize].staged_at.is_none() =>
            {
                self.devices[d as usize].staged_at = Some(self.now);
            }
            Output::Event(shoal_node_core::Event::Announced { sequence })
                if sequence == self.release.announcement.sequence =>
            {
                self.resend_availability(d);
            }
            Output::Event(_) => {}
            _ => {}
        }
    }

    /// Availability sent to `d` before it knew the release was dropped by its core; the
    /// transport asks its peers again once `d` accepted the announcement (see the "Requests
    /// from sim" in `/work/core-api.md`).
    fn resend_availability(&mut self, d: u32) {
        let seq = self.release.announcement.sequence;
        if self.devices[d as usize].origin_up
            && let Some(have) = self.origin.have().cloned()
        {
            let t = self.now + 2 * self.latency(d, BUILDER);
            let have = Box::new(have);
            self.push(
                t,
                Event::Bitfield {
                    to: d,
                    from: BUILDER,
                    have,
                },
            );
        }
        for k in 0..self.devices[d as usize].connections.len() {
            let c = self.devices[d as usize].connections[k];
            if !c.up {
                continue;
            }
            let peer = &self.devices[c.peer as usize];
            let have = if peer.byzantine.is_some() {
                Some(self.full.clone())
            } else {
                peer.node.as_ref().and_then(|n| {
                    n.release()
                        .is_some_and(|r| r.manifest.sequence == seq)
                        .then(|| n.have().cloned())
                        .flatten()
                })
            };
            if let Some(have) = have {
                let t = self.now + 2 * self.latency(d, c.peer);
                self.push(
                    t,
                    Event::Bitfield {
                        to: d,
                        from: c.peer,
                        have: Box::new(have),
                    },
                );
            }
        }
    }

    fn apply(&mut self, d: u32, sequence: ReleaseSeq, manifest: &shoal_protocol::ReleaseManifest) {
        let dev = &self.devices[d as usize];
        if sequence != self.release.announcement.sequence || *manifest != self.release.manifest {
            self.fail(
                d,
                format!("applied {sequence} whose manifest was not the signed one"),
            );
            return;
        }
        let opened = self.control.max_open();
        if opened.is_none_or(|w| dev.wave > w) {
            self.fail(
                d,
                format!(
                    "applied {sequence} in wave {} while the open wave is {opened:?}",
                    dev.wave
                ),
            );
            return;
        }
        self.devices[d as usize].runtime = Runtime::Applying;
        self.metrics.pending_runtime += 1;
        let t = self.now + nanos(self.scenario.runtime.apply_s);
        self.push(
            t,
            Event::ApplyDone {
                dev: d,
                seq: sequence,
            },
        );
    }

    fn advertise(&mut self, d: u32, index: u32) {
        let (mut local, mut remote) = (false, self.devices[d as usize].origin_up);
        for c in &self.devices[d as usize].connections {
            if c.up {
                if c.remote {
                    remote = true;
                } else {
                    local = true;
                }
            }
        }
        for (class, any) in [(false, local), (true, remote)] {
            if !any {
                continue;
            }
            let batch = &mut self.have_batches[Self::batch_slot(d, class)];
            batch.push(index);
            if batch.len() == 1 {
                let lat = if class {
                    self.scenario.network.wan_latency_ms
                } else {
                    self.scenario.network.lan_latency_ms
                };
                let t = self.now + nanos(lat / 1000.0).max(1);
                self.push(
                    t,
                    Event::Haves {
                        from: d,
                        remote: class,
                    },
                );
            }
        }
    }

    /// Deliver a batch of HAVEs from `from` to `to`, or retransmit it later if lost.
    pub(crate) fn deliver_haves(&mut self, to: u32, from: u32, batch: &[u32], may_lose: bool) {
        if !self.connected(to, from) || self.devices[to as usize].node.is_none() {
            return;
        }
        if may_lose {
            let l = self.latency(from, to);
            let delay = self.message_delay(from, to);
            if delay > l {
                let batch = batch.to_vec();
                self.push(self.now + delay - l, Event::HavesTo { to, from, batch });
                return;
            }
        }
        let peer = self.peer_id(from);
        let sequence = self.release.announcement.sequence;
        let now = core_instant(self.now);
        let Some(node) = self.devices[to as usize].node.as_mut() else {
            return;
        };
        // A HAVE the core ignores (`Node::ignores_have`) only moves its clock: no output, no
        // state a check or a timer depends on, so a batch of only those needs no drain.
        let mut news = false;
        for &index in batch {
            news |= node.handle_have_chunk(now, peer, sequence, index);
        }
        if news {
            self.drain(to);
        }
    }

    fn forward_gossip(&mut self, d: u32, msg: u16) {
        let hop = nanos(self.scenario.gossip.hop_delay_ms / 1000.0);
        for k in 0..self.mesh[d as usize].len() {
            let p = self.mesh[d as usize][k];
            if self.devices[p as usize].seen_gossip & (1 << msg) != 0 {
                continue;
            }
            if self.rng.chance(self.scenario.gossip.loss) {
                continue;
            }
            let t = self.now + hop + self.latency(d, p);
            self.push(
                t,
                Event::Gossip {
                    to: p,
                    from: d,
                    msg,
                },
            );
        }
    }

    /// Publish a gossip message from the origin.
    pub(crate) fn publish(&mut self, bytes: Vec<u8>) {
        let msg = self.gossip.len() as u16;
        if msg >= 64 {
            return;
        }
        self.gossip_index.insert(bytes.clone(), msg);
        self.gossip.push(bytes.into());
        let hop = nanos(self.scenario.gossip.hop_delay_ms / 1000.0);
        for k in 0..self.origin_mesh.len() {
            let p = self.origin_mesh[k];
            let t = self.now + hop + self.latency(BUILDER, p);
            self.push(
                t,
                Event::Gossip {
                    to: p,
                    from: BUILDER,
                    msg,
                },
            );
        }
    }
}
