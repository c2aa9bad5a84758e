//! Dispatching queued events: deliveries, timers, the runtime, faults, the announcement.

use std::sync::Arc;

use shoal_node_core::{FetchStats, Input, MessageId, Node};
use shoal_testing::TEST_EPOCH;

use super::effects::core_instant;
use super::{BUILDER, Event, Runtime, Sim, nanos};
use crate::faults::Fault;

impl Sim {
    pub(crate) fn dispatch(&mut self, ev: Event) {
        match ev {
            Event::Timer(d) => {
                if self.devices[d as usize].timer_at != Some(self.now) {
                    return;
                }
                self.record(2, d, 0, 0);
                let dev = &mut self.devices[d as usize];
                dev.timer_at = None;
                let now = core_instant(self.now);
                if let Some(node) = dev.node.as_mut() {
                    if node.poll_timeout().is_some_and(|t| t <= now) {
                        node.handle_timeout(now);
                    }
                    self.drain(d);
                }
            }
            Event::Gossip { to, from, msg } => {
                self.record(3, to, from, u64::from(msg));
                let dev = &self.devices[to as usize];
                if dev.seen_gossip & (1 << msg) != 0 || !self.reachable(to, from) {
                    return;
                }
                self.devices[to as usize].seen_gossip |= 1 << msg;
                let bytes = self.gossip[msg as usize].to_vec();
                let from_id = self.peer_id(from);
                self.feed(
                    to,
                    Input::Gossip {
                        from: from_id,
                        id: MessageId(u64::from(msg)),
                        bytes,
                    },
                );
            }
            Event::Haves { from, remote } => {
                let slot = Self::batch_slot(from, remote);
                let mut batch = std::mem::take(&mut self.have_batches[slot]);
                self.record(4, from, u32::from(remote), batch.len() as u64);
                for k in 0..self.devices[from as usize].connections.len() {
                    let c = self.devices[from as usize].connections[k];
                    if c.up && c.remote == remote {
                        self.deliver_haves(c.peer, from, &batch, true);
                    }
                }
                if remote && self.devices[from as usize].origin_up {
                    // The origin is a peer too: it hears HAVEs (super-seeding uses them).
                    let peer = self.devices[from as usize].id;
                    let sequence = self.release.announcement.sequence;
                    let now = core_instant(self.now);
                    for &index in &batch {
                        self.origin.handle(
                            now,
                            Input::PeerHaveChunk {
                                peer,
                                sequence,
                                index,
                            },
                        );
                    }
                    self.drain_origin();
                }
                // Keep the buffer for the next batch, unless one started meanwhile.
                if self.have_batches[slot].is_empty() {
                    batch.clear();
                    self.have_batches[slot] = batch;
                }
            }
            Event::HavesTo { to, from, batch } => {
                self.record(15, to, from, batch.len() as u64);
                self.deliver_haves(to, from, &batch, false);
            }
            Event::Bitfield { to, from, have } => {
                self.record(5, to, from, u64::from(have.count_ones()));
                if !self.connected(to, from) {
                    return;
                }
                let peer = self.peer_id(from);
                let sequence = self.release.announcement.sequence;
                let input = Input::PeerHave {
                    peer,
                    sequence,
                    have: *have,
                };
                if to == BUILDER {
                    self.feed_origin(input);
                } else {
                    self.feed(to, input);
                }
            }
            Event::Chunk {
                to,
                from,
                index,
                result,
            } => {
                self.record(
                    6,
                    to,
                    from,
                    u64::from(index) << 1 | u64::from(result.is_ok()),
                );
                let sequence = self.release.announcement.sequence;
                let result = result.map(|(bytes, started)| {
                    if self.devices[to as usize].node.is_some() {
                        self.devices[to as usize].stored.set(index);
                    }
                    FetchStats {
                        bytes,
                        elapsed_ms: (self.now - started) / 1_000_000,
                    }
                });
                let corrupt = result.is_err();
                let peer = self.peer_id(from);
                self.feed(
                    to,
                    Input::ChunkFetched {
                        peer,
                        sequence,
                        index,
                        result,
                    },
                );
                if corrupt {
                    self.check_store(to, index);
                }
            }
            Event::Manifest { to, from, result } => {
                self.record(7, to, from, u64::from(result.is_ok()));
                let sequence = self.release.announcement.sequence;
                let result = result.map(|corrupt| {
                    if corrupt {
                        let mut b = self.release.manifest_bytes.to_vec();
                        let mid = b.len() / 2;
                        b[mid] ^= 0xff;
                        Arc::from(b)
                    } else {
                        self.release.manifest_bytes.clone()
                    }
                });
                let peer = self.peer_id(from);
                self.feed(
                    to,
                    Input::ManifestFetched {
                        peer,
                        sequence,
                        result,
                    },
                );
            }
            Event::Report {
                from,
                envelope,
                healthy,
            } => {
                self.record(8, from, 0, u64::from(healthy.unwrap_or(false)));
                self.metrics.pending_runtime -= 1;
                if let Some(h) = healthy {
                    self.wave_report(from, h);
                }
                let actions = self.control.on_report(self.now, &envelope);
                self.publish_controls(actions);
                if self.control.rejected_reports() > 0 {
                    self.fail(from, "its status report's signature did not verify".into());
                }
            }
            Event::ApplyDone { dev, seq } => {
                self.record(9, dev, 0, seq.0);
                self.metrics.pending_runtime -= 1;
                if self.devices[dev as usize].node.is_none() {
                    return;
                }
                self.metrics.pending_runtime += 1;
                let t = self.now + nanos(self.scenario.runtime.health_s);
                self.push(t, Event::Health { dev, seq });
                self.feed(
                    dev,
                    Input::ApplyFinished {
                        sequence: seq,
                        result: Ok(()),
                    },
                );
            }
            Event::Health { dev, seq } => {
                self.record(10, dev, 0, seq.0);
                self.metrics.pending_runtime -= 1;
                if self.devices[dev as usize].node.is_none() {
                    return;
                }
                let wave = self.devices[dev as usize].wave;
                let fails = self.scenario.runtime.fail_in_waves.contains(&wave)
                    || self.rng.chance(self.scenario.runtime.fail_chance);
                self.devices[dev as usize].runtime = if fails {
                    Runtime::Failed
                } else {
                    Runtime::Healthy
                };
                self.feed(
                    dev,
                    Input::HealthResult {
                        sequence: seq,
                        healthy: !fails,
                        detail: if fails { "health check failed" } else { "ok" }.to_string(),
                    },
                );
            }
            Event::Fault(f) => {
                self.record(11, 0, 0, 0);
                self.fault(f);
            }
            Event::Redial { a, b } => {
                self.record(12, a, b, 0);
                self.connect(a, b);
            }
            Event::ControlTick => {
                self.record(13, 0, 0, 0);
                let actions = self.control.tick(self.now);
                self.publish_controls(actions);
            }
            Event::Announce => {
                self.record(14, 0, 0, 0);
                self.announced = true;
                let ann = self.release.announcement_gossip.clone();
                self.publish(ann);
                // The origin node installs the release and announces its availability.
                let envelope = self.release.announcement_gossip[1..].to_vec();
                let manifest = self.release.manifest_bytes.clone();
                if let Err(e) = self.origin.seed(core_instant(self.now), envelope, manifest) {
                    self.fail(BUILDER, format!("the origin refused its own release: {e}"));
                }
                self.drain_origin();
                for d in 0..self.devices.len() as u32 {
                    if self.devices[d as usize].byzantine.is_some() {
                        for k in 0..self.devices[d as usize].connections.len() {
                            let c = self.devices[d as usize].connections[k];
                            if c.up {
                                self.byzantine_hello(d, c.peer);
                            }
                        }
                    }
                }
                let actions = self.control.start(self.now);
                self.publish_controls(actions);
            }
        }
    }

    fn wave_report(&mut self, d: u32, healthy: bool) {
        let w = self.devices[d as usize].wave as usize;
        if healthy && !std::mem::replace(&mut self.devices[d as usize].counted_healthy, true) {
            self.metrics.wave_healthy[w] += 1;
            let members = self
                .devices
                .iter()
                .filter(|x| x.byzantine.is_none() && x.wave as usize == w)
                .count() as u32;
            if self.metrics.wave_healthy[w] >= members && self.metrics.wave_finished[w].is_none() {
                self.metrics.wave_finished[w] = Some(self.now);
            }
        }
    }

    /// Publish what the controller decided, and arm its next tick.
    pub(crate) fn publish_controls(&mut self, actions: Vec<Vec<u8>>) {
        for bytes in actions {
            self.publish(bytes);
        }
        for (w, t) in self.control.opened() {
            if self.metrics.wave_opened[w as usize].is_none() {
                self.metrics.wave_opened[w as usize] = Some(t);
            }
        }
        if let Some(t) = self.control.take_tick() {
            self.push(t.max(self.now), Event::ControlTick);
        }
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Offline(d) | Fault::Crash(d) => {
                self.devices[d as usize].online = false;
                let peers: Vec<u32> = self.devices[d as usize]
                    .connections
                    .iter()
                    .map(|c| c.peer)
                    .collect();
                for p in peers {
                    self.disconnect(d, p, None);
                }
                self.disconnect(d, BUILDER, None);
                if matches!(f, Fault::Crash(_)) {
                    let dev = &mut self.devices[d as usize];
                    dev.node = None;
                    dev.timer_at = None;
                    if dev.runtime == Runtime::Applying {
                        dev.runtime = Runtime::Idle;
                    }
                }
            }
            Fault::Online(d) | Fault::Restart(d) => {
                if matches!(f, Fault::Restart(_)) {
                    self.restart(d);
                }
                self.devices[d as usize].online = true;
                self.connect_origin(d);
                let peers: Vec<u32> = self.devices[d as usize]
                    .connections
                    .iter()
                    .map(|c| c.peer)
                    .collect();
                for p in peers {
                    self.connect(d, p);
                }
            }
            Fault::PartitionStart(s) => {
                self.partitioned[s as usize] = true;
                for d in 0..self.devices.len() as u32 {
                    if self.devices[d as usize].site != s {
                        continue;
                    }
                    self.disconnect(d, BUILDER, None);
                    let peers: Vec<u32> = self.devices[d as usize]
                        .connections
                        .iter()
                        .filter(|c| c.up)
                        .map(|c| c.peer)
                        .collect();
                    for p in peers {
                        if self.devices[p as usize].site != s {
                            self.disconnect(d, p, None);
                        }
                    }
                }
            }
            Fault::PartitionEnd(s) => {
                self.partitioned[s as usize] = false;
                for d in 0..self.devices.len() as u32 {
                    if self.devices[d as usize].site != s {
                        continue;
                    }
                    self.connect_origin(d);
                    let peers: Vec<u32> = self.devices[d as usize]
                        .connections
                        .iter()
                        .map(|c| c.peer)
                        .collect();
                    for p in peers {
                        self.connect(d, p);
                    }
                }
            }
        }
    }

    /// Bring a crashed device back from its last snapshot.
    fn restart(&mut self, d: u32) {
        let dev = &self.devices[d as usize];
        let key = shoal_testing::device_key(u64::from(d));
        let mut cfg = self.fleet.config(u64::from(d));
        cfg.key = key;
        cfg.site = Some(format!("site-{}", dev.site));
        cfg.releases = self.cache.clone();
        let seed = dev.seed ^ self.now;
        let node = match dev.snapshot.clone() {
            Some(s) => Node::resume(cfg, *s, seed),
            None => Node::new(cfg, seed),
        };
        let dev = &mut self.devices[d as usize];
        dev.node = Some(node);
        dev.seen_gossip = 0;
        self.feed(
            d,
            Input::WallClock(TEST_EPOCH.plus_secs(self.now / 1_000_000_000)),
        );
        self.tell_site_members(d);
    }

    /// Tell device `d`'s core every other device of its site (mDNS), if the scenario has it.
    pub(crate) fn tell_site_members(&mut self, d: u32) {
        if !self.scenario.fleet.site_discovery {
            return;
        }
        let (n, sites) = (self.devices.len() as u32, self.scenario.fleet.sites.max(1));
        let site = self.devices[d as usize].site;
        let peers = (site..n)
            .step_by(sites as usize)
            .filter(|&p| p != d)
            .map(|p| self.devices[p as usize].id)
            .collect();
        self.feed(d, Input::SiteMembers { peers });
    }
}
