//! Carrying out a node's outputs, and feeding it inputs.

use shoal_node_core::{
    Admission, DropReason, Event, FetchError, Input, Instant, Output, PeerInfo, Verdict,
};
use shoal_protocol::{DeviceState, ReleaseSeq};

use super::{BUILDER, Conn, Ev, Rec, Runtime, Sim, ns};
use crate::faults::Byzantine;
use crate::net::{Endpoint, Nanos};

/// The store quota the simulated devices run with (the core's default).
pub(crate) const STORE_QUOTA_BYTES: u64 = 16 << 30;
/// Status reports a device keeps while the builder is unreachable.
pub(crate) const MAX_QUEUED_REPORTS: usize = 8;
/// Rate of a trickling peer, bytes per second.
const TRICKLE_BYTES_PER_S: f64 = 1.0;
/// How long a dropped (not banned) peer waits before it is dialled again.
const REDIAL_S: f64 = 10.0;

pub(crate) fn ms(t: Nanos) -> Instant {
    Instant(t / 1_000_000)
}

impl Sim {
    pub(crate) fn endpoint(i: u32) -> Endpoint {
        if i == BUILDER {
            Endpoint::Builder
        } else {
            Endpoint::Device(i)
        }
    }

    pub(crate) fn pid(&self, i: u32) -> shoal_protocol::DeviceId {
        if i == BUILDER {
            self.origin_id
        } else {
            self.devs[i as usize].id
        }
    }

    fn index_of(&self, id: &shoal_protocol::DeviceId) -> Option<u32> {
        if *id == self.origin_id {
            Some(BUILDER)
        } else {
            self.ids.get(id).copied()
        }
    }

    pub(crate) fn site(&self, i: u32) -> Option<u32> {
        (i != BUILDER).then(|| self.devs[i as usize].site)
    }

    /// One-way latency between two endpoints.
    pub(crate) fn latency(&self, a: u32, b: u32) -> Nanos {
        let same = matches!((self.site(a), self.site(b)), (Some(x), Some(y)) if x == y);
        let msv = if same {
            self.sc.network.lan_latency_ms
        } else {
            self.sc.network.wan_latency_ms
        };
        ns(msv / 1000.0).max(1)
    }

    /// Latency of a control message on a reliable stream: a lost packet costs a round trip.
    fn message_delay(&mut self, a: u32, b: u32) -> Nanos {
        let l = self.latency(a, b);
        let same = matches!((self.site(a), self.site(b)), (Some(x), Some(y)) if x == y);
        let loss = if same {
            self.sc.network.lan_loss
        } else {
            self.sc.network.wan_loss
        };
        if self.rng.chance(loss) { 3 * l } else { l }
    }

    /// Whether `a` and `b` can reach each other: both online, no partition between them.
    pub(crate) fn reachable(&self, a: u32, b: u32) -> bool {
        let online = |i: u32| i == BUILDER || self.devs[i as usize].online;
        if !online(a) || !online(b) {
            return false;
        }
        match (self.site(a), self.site(b)) {
            (Some(x), Some(y)) if x == y => true,
            (x, y) => {
                !x.is_some_and(|s| self.partitioned[s as usize])
                    && !y.is_some_and(|s| self.partitioned[s as usize])
            }
        }
    }

    fn conn_mut(&mut self, a: u32, b: u32) -> Option<&mut Conn> {
        self.devs[a as usize].conns.iter_mut().find(|c| c.peer == b)
    }

    /// Whether `a` has an open connection to `b` (either may be the builder).
    pub(crate) fn connected(&self, a: u32, b: u32) -> bool {
        match (a, b) {
            (BUILDER, BUILDER) => false,
            (BUILDER, d) | (d, BUILDER) => self.devs[d as usize].origin_up,
            (a, b) => self.devs[a as usize]
                .conns
                .iter()
                .any(|c| c.peer == b && c.up),
        }
    }

    fn info(&self, about: u32, rtt: Nanos) -> PeerInfo {
        PeerInfo {
            site: self.site(about).map(|s| format!("site-{s}")),
            rtt_ms: (rtt / 1_000_000).max(1) as u32,
            origin: about == BUILDER,
        }
    }

    /// Open the connection between devices `a` and `b` if they can reach each other.
    pub(crate) fn connect(&mut self, a: u32, b: u32) {
        let now = self.now;
        let ok = self.reachable(a, b)
            && self.devs[a as usize]
                .conns
                .iter()
                .any(|c| c.peer == b && !c.up && c.blocked_until <= now);
        if !ok {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(c) = self.conn_mut(x, y) {
                c.up = true;
            }
        }
        let rtt = 2 * self.latency(a, b);
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.pid(y);
            let info = self.info(y, rtt);
            self.feed(x, Input::PeerConnected { peer, info });
            self.byzantine_hello(y, x);
        }
    }

    /// Send a status report to the builder; while it is unreachable, keep it (at most
    /// [`MAX_QUEUED_REPORTS`] per device) for when the connection comes back.
    fn send_report(&mut self, d: u32, envelope: Vec<u8>, healthy: Option<bool>) {
        if self.reachable(d, BUILDER) {
            let t = self.now + self.message_delay(d, BUILDER);
            self.m.pending_runtime += 1;
            self.push(
                t,
                Ev::Report {
                    from: d,
                    envelope,
                    healthy,
                },
            );
        } else {
            let queue = &mut self.devs[d as usize].queued_reports;
            if queue.len() >= MAX_QUEUED_REPORTS {
                queue.remove(0);
            }
            queue.push((envelope, healthy));
        }
    }

    /// Open the origin's connection to device `d`.
    pub(crate) fn connect_origin(&mut self, d: u32) {
        if self.devs[d as usize].origin_up || !self.reachable(d, BUILDER) {
            return;
        }
        self.devs[d as usize].origin_up = true;
        for (envelope, healthy) in std::mem::take(&mut self.devs[d as usize].queued_reports) {
            self.send_report(d, envelope, healthy);
        }
        let rtt = 2 * self.latency(d, BUILDER);
        let info = self.info(BUILDER, rtt);
        let peer = self.origin_id;
        self.feed(d, Input::PeerConnected { peer, info });
        let info = self.info(d, rtt);
        let peer = self.devs[d as usize].id;
        self.feed_origin(Input::PeerConnected { peer, info });
    }

    /// Feed the builder's origin node and carry out its outputs: it announces availability
    /// (`SendBitfield`) and catches peers up on gossip (`SyncGossip`); it never fetches.
    pub(crate) fn feed_origin(&mut self, input: Input) {
        self.origin.handle(ms(self.now), input);
        self.drain_origin();
    }

    pub(crate) fn drain_origin(&mut self) {
        while let Some(out) = self.origin.poll_output() {
            match out {
                Output::SendBitfield { peer, have, .. } => {
                    if let Some(p) = self.ids.get(&peer).copied()
                        && self.devs[p as usize].node.is_some()
                    {
                        let t = self.now + self.message_delay(BUILDER, p);
                        self.push(
                            t,
                            Ev::Bitfield {
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
                                Ev::Gossip {
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

    /// A byzantine device claims every chunk to a peer it just connected to.
    pub(crate) fn byzantine_hello(&mut self, byz: u32, to: u32) {
        if byz == BUILDER || self.devs[byz as usize].byz.is_none() || !self.announced {
            return;
        }
        let t = self.now + self.latency(byz, to);
        let have = Box::new(self.full.clone());
        self.push(
            t,
            Ev::Bitfield {
                to,
                from: byz,
                have,
            },
        );
    }

    /// Close the connection `a`–`b` (builder included); `block` keeps it closed until then.
    pub(crate) fn disconnect(&mut self, a: u32, b: u32, block: Option<Nanos>) {
        let was = self.connected(a, b);
        if a == BUILDER || b == BUILDER {
            let d = if a == BUILDER { b } else { a };
            self.devs[d as usize].origin_up = false;
        } else {
            for (x, y) in [(a, b), (b, a)] {
                if let Some(c) = self.conn_mut(x, y) {
                    c.up = false;
                    if let Some(until) = block {
                        c.blocked_until = c.blocked_until.max(until);
                    }
                }
            }
        }
        let (ea, eb) = (Self::endpoint(a), Self::endpoint(b));
        let gone = self.net.cancel_where(self.now, |x, y| {
            (x == ea && y == eb) || (x == eb && y == ea)
        });
        for g in gone {
            self.free_rec(g.tag as u32, false);
        }
        if was {
            for (x, y) in [(a, b), (b, a)] {
                let peer = self.pid(y);
                if x == BUILDER {
                    self.feed_origin(Input::PeerDisconnected { peer });
                } else {
                    self.feed(x, Input::PeerDisconnected { peer });
                }
            }
        }
    }

    /// Forget transfer `r`; `sent` if its receiver got every byte.
    pub(crate) fn free_rec(&mut self, r: u32, sent: bool) {
        let rec = &mut self.recs[r as usize];
        if !rec.live {
            return;
        }
        rec.live = false;
        let (to, from, index, admitted) = (rec.to, rec.from, rec.index, rec.admitted);
        if admitted {
            let peer = self.devs[to as usize].id;
            let seq = self.release.announcement.sequence;
            if from == BUILDER {
                self.origin.upload_finished(peer, seq, index, sent);
            } else if let Some(n) = self.devs[from as usize].node.as_mut() {
                n.upload_finished(peer, seq, index, sent);
            }
        }
        self.fetches.remove(&(to, from, index));
        self.free_recs.push(r);
    }

    fn new_rec(&mut self, rec: Rec) -> u32 {
        match self.free_recs.pop() {
            Some(r) => {
                self.recs[r as usize] = rec;
                r
            }
            None => {
                self.recs.push(rec);
                self.recs.len() as u32 - 1
            }
        }
    }

    /// Feed `input` to device `d`'s node and carry out its outputs.
    pub(crate) fn feed(&mut self, d: u32, input: Input) {
        let now = ms(self.now);
        let Some(node) = self.devs[d as usize].node.as_mut() else {
            return;
        };
        node.handle(now, input);
        self.drain(d);
    }

    /// Carry out every pending output of `d`, check its invariants, arm its timer.
    pub(crate) fn drain(&mut self, d: u32) {
        let mut outs = std::mem::take(&mut self.outs);
        loop {
            {
                let Some(node) = self.devs[d as usize].node.as_mut() else {
                    break;
                };
                outs.extend(std::iter::from_fn(|| node.poll_output()));
            }
            if outs.is_empty() {
                break;
            }
            for out in outs.drain(..) {
                self.effect(d, out);
            }
        }
        self.outs = outs;
        self.check(d);
        let next = self.devs[d as usize]
            .node
            .as_ref()
            .and_then(|n| n.poll_timeout())
            .map(|t| (t.0 * 1_000_000).max(self.now));
        // Only an earlier wake-up is queued; a later one is re-armed when the queued one fires.
        let dev = &mut self.devs[d as usize];
        if let Some(t) = next
            && dev.timer_at.is_none_or(|armed| t < armed)
        {
            dev.timer_at = Some(t);
            self.push(t, Ev::Timer(d));
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
                            Ev::Gossip {
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
                if p == BUILDER || self.devs[p as usize].node.is_some() {
                    let t = self.now + self.message_delay(d, p);
                    self.push(
                        t,
                        Ev::Bitfield {
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
                    self.free_rec(r, false);
                }
            }
            Output::DropPeer { peer, reason } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                let until = self.now + ns(REDIAL_S);
                self.disconnect(d, p, Some(until));
                if p != BUILDER && reason != DropReason::BadData {
                    self.push(until, Ev::Redial { a: d, b: p });
                }
            }
            Output::BanPeer { peer, until, .. } => {
                let Some(p) = self.index_of(&peer) else {
                    return;
                };
                self.m.peers_banned += 1;
                let until = until.0.saturating_mul(1_000_000);
                self.disconnect(d, p, Some(until));
            }
            Output::Persist(snap) => self.devs[d as usize].snapshot = Some(snap),
            Output::Apply { sequence, manifest } => self.apply(d, sequence, &manifest),
            Output::Rollback { .. } => {
                self.devs[d as usize].runtime = Runtime::RolledBack;
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
            Output::Event(Event::Staged { sequence })
                if sequence == self.release.announcement.sequence
                    && self.devs[d as usize].staged_at.is_none() =>
            {
                self.devs[d as usize].staged_at = Some(self.now);
            }
            Output::Event(Event::Announced { sequence })
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
        if self.devs[d as usize].origin_up
            && let Some(have) = self.origin.have().cloned()
        {
            let t = self.now + 2 * self.latency(d, BUILDER);
            let have = Box::new(have);
            self.push(
                t,
                Ev::Bitfield {
                    to: d,
                    from: BUILDER,
                    have,
                },
            );
        }
        for k in 0..self.devs[d as usize].conns.len() {
            let c = self.devs[d as usize].conns[k];
            if !c.up {
                continue;
            }
            let peer = &self.devs[c.peer as usize];
            let have = if peer.byz.is_some() {
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
                    Ev::Bitfield {
                        to: d,
                        from: c.peer,
                        have: Box::new(have),
                    },
                );
            }
        }
    }

    fn apply(&mut self, d: u32, sequence: ReleaseSeq, manifest: &shoal_protocol::ReleaseManifest) {
        let dev = &self.devs[d as usize];
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
        self.devs[d as usize].runtime = Runtime::Applying;
        self.m.pending_runtime += 1;
        let t = self.now + ns(self.sc.runtime.apply_s);
        self.push(
            t,
            Ev::ApplyDone {
                dev: d,
                seq: sequence,
            },
        );
    }

    fn advertise(&mut self, d: u32, index: u32) {
        let (mut local, mut remote) = (false, self.devs[d as usize].origin_up);
        for c in &self.devs[d as usize].conns {
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
                    self.sc.network.wan_latency_ms
                } else {
                    self.sc.network.lan_latency_ms
                };
                let t = self.now + ns(lat / 1000.0).max(1);
                self.push(
                    t,
                    Ev::Haves {
                        from: d,
                        remote: class,
                    },
                );
            }
        }
    }

    /// Deliver a batch of HAVEs from `from` to `to`, or retransmit it later if lost.
    pub(crate) fn deliver_haves(&mut self, to: u32, from: u32, batch: &[u32], may_lose: bool) {
        if !self.connected(to, from) || self.devs[to as usize].node.is_none() {
            return;
        }
        if may_lose {
            let l = self.latency(from, to);
            let delay = self.message_delay(from, to);
            if delay > l {
                let batch = batch.to_vec();
                self.push(self.now + delay - l, Ev::HavesTo { to, from, batch });
                return;
            }
        }
        let peer = self.pid(from);
        let sequence = self.release.announcement.sequence;
        let now = ms(self.now);
        let Some(node) = self.devs[to as usize].node.as_mut() else {
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
        let hop = ns(self.sc.gossip.hop_delay_ms / 1000.0);
        for k in 0..self.mesh[d as usize].len() {
            let p = self.mesh[d as usize][k];
            if self.devs[p as usize].seen_gossip & (1 << msg) != 0 {
                continue;
            }
            if self.rng.chance(self.sc.gossip.loss) {
                continue;
            }
            let t = self.now + hop + self.latency(d, p);
            self.push(
                t,
                Ev::Gossip {
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
        let hop = ns(self.sc.gossip.hop_delay_ms / 1000.0);
        for k in 0..self.origin_mesh.len() {
            let p = self.origin_mesh[k];
            let t = self.now + hop + self.latency(BUILDER, p);
            self.push(
                t,
                Ev::Gossip {
                    to: p,
                    from: BUILDER,
                    msg,
                },
            );
        }
    }

    fn reply_chunk(&mut self, to: u32, from: u32, index: u32, err: FetchError) {
        let t = self.now + 2 * self.latency(to, from);
        self.push(
            t,
            Ev::Chunk {
                to,
                from,
                index,
                result: Err(err),
            },
        );
    }

    fn serve_chunk(&mut self, to: u32, from: u32, index: u32) {
        self.m.chunk_requests += 1;
        if from != BUILDER && self.devs[from as usize].site != self.devs[to as usize].site {
            self.m.remote_requests += 1;
        }
        if from == BUILDER {
            self.m.origin_requests += 1;
        }
        if self.devs[to as usize].stored.get(index) {
            self.push(
                self.now,
                Ev::Chunk {
                    to,
                    from,
                    index,
                    result: Ok((0, self.now)),
                },
            );
            return;
        }
        if !self.connected(to, from) || !self.reachable(to, from) {
            self.reply_chunk(to, from, index, FetchError::Io);
            return;
        }
        let size = match self.release.chunks.get(index as usize) {
            Some(c) => u64::from(c.size),
            None => {
                self.reply_chunk(to, from, index, FetchError::NotFound);
                return;
            }
        };
        let mut cap = f64::INFINITY;
        let mut corrupt = false;
        let byz = (from != BUILDER)
            .then(|| self.devs[from as usize].byz)
            .flatten();
        let admitted = match byz {
            Some(Byzantine::Corrupt) => {
                corrupt = true;
                false
            }
            Some(Byzantine::FalseAdverts) => {
                self.reply_chunk(to, from, index, FetchError::NotFound);
                return;
            }
            Some(Byzantine::Trickle) => {
                cap = TRICKLE_BYTES_PER_S;
                false
            }
            None => {
                // The server's core decides: serve, busy (upload slots, super-seeding) or not here.
                let peer = self.devs[to as usize].id;
                let seq = self.release.announcement.sequence;
                let now = ms(self.now);
                let admission = if from == BUILDER {
                    self.origin.admit_upload(now, peer, seq, index)
                } else {
                    match self.devs[from as usize].node.as_mut() {
                        Some(n) => n.admit_upload(now, peer, seq, index),
                        None => Admission::NotFound,
                    }
                };
                match admission {
                    Admission::Serve => true,
                    Admission::Busy => {
                        if from == BUILDER {
                            self.m.origin_busy += 1;
                        }
                        self.reply_chunk(to, from, index, FetchError::Busy);
                        return;
                    }
                    _ => {
                        self.reply_chunk(to, from, index, FetchError::NotFound);
                        return;
                    }
                }
            }
        };
        let rec = Rec {
            to,
            from,
            index,
            started: self.now,
            bytes: size,
            corrupt,
            admitted,
            live: true,
        };
        self.start_transfer(rec, cap);
    }

    /// Start the transfer `rec` (its `started` is now) at most at `cap` bytes/s.
    fn start_transfer(&mut self, rec: Rec, cap: f64) {
        let (to, from, index, size) = (rec.to, rec.from, rec.index, rec.bytes);
        if let Some(old) = self.fetches.get(&(to, from, index)).copied() {
            // A repeated request for the same chunk from the same peer replaces the old one.
            self.net.cancel(
                self.now,
                Self::endpoint(from),
                Self::endpoint(to),
                u64::from(old),
            );
            self.free_rec(old, false);
        }
        let r = self.new_rec(rec);
        self.fetches.insert((to, from, index), r);
        let ok = self.net.start(
            self.now,
            Self::endpoint(from),
            Self::endpoint(to),
            size,
            u64::from(r),
            cap,
        );
        if !ok {
            self.free_rec(r, false);
            self.reply_chunk(to, from, index, FetchError::Io);
        }
    }

    fn serve_manifest(&mut self, to: u32, from: u32) {
        let size = self.release.manifest_bytes.len() as u64;
        if !self.connected(to, from) || !self.reachable(to, from) {
            let t = self.now + 2 * self.latency(to, from);
            self.push(
                t,
                Ev::Manifest {
                    to,
                    from,
                    result: Err(FetchError::Io),
                },
            );
            return;
        }
        let (corrupt, cap) = match from {
            BUILDER => (false, f64::INFINITY),
            f => match self.devs[f as usize].byz {
                Some(Byzantine::Corrupt) => (true, f64::INFINITY),
                Some(Byzantine::Trickle) => (false, TRICKLE_BYTES_PER_S),
                Some(Byzantine::FalseAdverts) => {
                    let t = self.now + 2 * self.latency(to, from);
                    self.push(
                        t,
                        Ev::Manifest {
                            to,
                            from,
                            result: Err(FetchError::NotFound),
                        },
                    );
                    return;
                }
                None => {
                    let has = self.devs[f as usize].node.as_ref().is_some_and(|n| {
                        n.release().is_some_and(|r| {
                            r.manifest.sequence == self.release.announcement.sequence
                        })
                    });
                    if !has {
                        let t = self.now + 2 * self.latency(to, from);
                        self.push(
                            t,
                            Ev::Manifest {
                                to,
                                from,
                                result: Err(FetchError::NotFound),
                            },
                        );
                        return;
                    }
                    (false, f64::INFINITY)
                }
            },
        };
        let rec = Rec {
            to,
            from,
            index: u32::MAX,
            started: self.now,
            bytes: size,
            corrupt,
            admitted: false,
            live: true,
        };
        self.start_transfer(rec, cap);
    }

    /// The net finished transfer `r`: the answer reaches the receiver one latency later.
    pub(crate) fn transfer_done(&mut self, r: u64) {
        let rec = self.recs[r as usize];
        if !rec.live {
            return;
        }
        self.free_rec(r as u32, true);
        let t = self.now + self.latency(rec.to, rec.from);
        if rec.index == u32::MAX {
            self.push(
                t,
                Ev::Manifest {
                    to: rec.to,
                    from: rec.from,
                    result: Ok(rec.corrupt),
                },
            );
        } else {
            let result = if rec.corrupt {
                Err(FetchError::DigestMismatch)
            } else {
                Ok((rec.bytes, rec.started))
            };
            self.push(
                t,
                Ev::Chunk {
                    to: rec.to,
                    from: rec.from,
                    index: rec.index,
                    result,
                },
            );
        }
    }

    /// Safety invariants of device `d`, after each of its inputs.
    fn check(&mut self, d: u32) {
        let Some(node) = self.devs[d as usize].node.as_ref() else {
            return;
        };
        let highest = node.highest().map_or(0, |h| h.0.0);
        let applied = node.applied().map_or(0, |s| s.0);
        let progress = node.progress();
        let have_chunks = progress.map_or(0, |p| p.have_chunks);
        let dev = &mut self.devs[d as usize];
        let now = self.now;
        let m = &mut dev.milestones;
        if let Some(p) = progress {
            m.announced.get_or_insert(now);
            if p.total_chunks > 0 {
                m.manifest.get_or_insert(now);
            }
            if have_chunks > 0 {
                m.first_chunk.get_or_insert(now);
            }
        }
        let dev = &self.devs[d as usize];
        let (last_highest, last_applied) = (dev.last_highest, dev.last_applied);
        if highest < last_highest {
            self.fail(
                d,
                format!("highest sequence went from {last_highest} down to {highest}"),
            );
        }
        if applied < last_applied {
            self.fail(
                d,
                format!("applied sequence went from {last_applied} down to {applied}"),
            );
        }
        let bytes = u64::from(have_chunks) * self.sc.chunk_bytes();
        if bytes > STORE_QUOTA_BYTES {
            self.fail(
                d,
                format!("store holds {bytes} bytes, above its quota {STORE_QUOTA_BYTES}"),
            );
        }
        let dev = &mut self.devs[d as usize];
        dev.last_highest = dev.last_highest.max(highest);
        dev.last_applied = dev.last_applied.max(applied);
    }
}
